"""Data generators: PSF models and measured-PSF preparation (:mod:`.psf`, 2D; :mod:`.psf3d`, 3D
z-stacks), camera-shake kernels (:mod:`.motion_kernels`), built-in sample cases (:mod:`.samples`),
3D fluorescence phantoms and camera simulation (:mod:`.phantoms`).  numpy/scipy only."""
