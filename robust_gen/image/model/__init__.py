"""Image models: the first stage (autoencoder), the conditioners, the denoisers.

* :mod:`~robust_gen.image.model.autoencoder`: pretrained (hub id or local folder), trained here, or pixel space;
* :mod:`~robust_gen.image.model.conditioners`: class and text conditioning (null embeddings for guidance);
* :mod:`~robust_gen.image.model.denoiser`: U-Net / DiT backbones with semantic and control routing.
"""
