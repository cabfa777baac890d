"""Data generators: PSF models and measured-PSF preparation (:mod:`.psf`), camera-shake kernels
(:mod:`.motion_kernels`), built-in sample cases (:mod:`.samples`).  numpy/scipy only."""
