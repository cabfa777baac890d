"""Execution: options and their validation, plane layouts, intensity map, noise estimate, kernels,
devices, memory-bounded tiles, the prepared run (:class:`~.run.DeblurRun`) and the lazy dask path."""
