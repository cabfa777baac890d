"""Training the cascades (stage-wise, then γ and end-to-end fine-tuning), resumable on the CPU, one command on a GPU."""
