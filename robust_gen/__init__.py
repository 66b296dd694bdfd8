"""robust_gen: robust training of diffusion models on corrupted data, for images and speech."""

__version__ = "0.1.0"
