"""The image recipe: latent diffusion on class- or text-conditioned images, trained on possibly corrupted data.

Modules (import what you need; nothing heavy is imported here):

* :mod:`~robust_gen.image.data.sources`: the digits, image folders, caption tables, Hugging Face datasets -> images and
  metadata records;
* :mod:`~robust_gen.image.data.dataset`: the training set (cached latents, corruption, crop/flip augmentation, control
  metadata);
* :mod:`~robust_gen.image.model.autoencoder` and :mod:`~robust_gen.image.data.latents`: the first stage (pretrained, trained
  here, or pixel space) and the on-disk latent cache;
* :mod:`~robust_gen.image.model.conditioners`, :mod:`~robust_gen.image.model.denoiser`, :mod:`~robust_gen.image.task`: class /
  text conditioning, U-Net / DiT backbones with condition routing, the training step;
* :mod:`~robust_gen.image.sampling`: guided sampling, ``images.npz`` and grids;
* :mod:`~robust_gen.image.build`: all of the above from the Hydra config, and a trained run back from its folder.
"""

from robust_gen.environment import check_torch_family

# diffusers imports torchaudio whenever it is installed, so a mismatched torchaudio breaks the image stack too:
# say so with the versions and the fix before diffusers fails with an undefined symbol.
check_torch_family()
