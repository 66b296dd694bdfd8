"""Image data: sources (digits, folders, caption tables, Hugging Face datasets), the training set, the latent cache.

* :mod:`~robust_gen.image.data.sources`: images and their metadata records from each kind of source;
* :mod:`~robust_gen.image.data.dataset`: the training set (cached latents, corruption, crop/flip augmentation,
  control metadata);
* :mod:`~robust_gen.image.data.latents`: the on-disk cache of first-stage latents;
* :mod:`~robust_gen.image.data.imaging`: conversions between uint8 images and the model range, grids.
"""
