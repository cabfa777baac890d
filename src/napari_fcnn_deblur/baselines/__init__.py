"""Classical non-blind deconvolution (hyper-Laplacian, Wiener, Richardson–Lucy) on the engine's spectral core."""
