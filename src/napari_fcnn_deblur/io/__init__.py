"""Files: trained cascade files (:mod:`.models`), the authors' MatConvNet release (:mod:`.matconvnet`), images (:mod:`.images`)."""
