"""Image-recipe objects with untrained weights, built from the repository's configs, for the benchmarks.

Speed does not depend on the weights, so the benchmarks build the recipe's task module (conditioner, denoiser,
objective: :func:`robust_gen.image.build.build_task`, exactly what ``recipes/image/train.py`` trains) and its
first stage straight from ``configs/image`` with random weights instead of training them first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from robust_gen.image.build import build_task
from robust_gen.image.model.autoencoder import ImageAutoencoder
from robust_gen.image.task import ImageDiffusionTask
from robust_gen.training.recipe import CONFIG_ROOT

__all__ = ["AUTOENCODERS", "IMAGE_MODELS", "random_autoencoder", "random_task"]

#: The ``model`` config group's options (configs/image/model/*.yaml).
IMAGE_MODELS = tuple(sorted(p.stem for p in (CONFIG_ROOT / "image" / "model").glob("*.yaml")))

#: First stages the benchmarks can build: the recipe's trained one (configs/image/autoencoder/trained.yaml, factor 4,
#: 4 latent channels) and Stable Diffusion's KL-f8 architecture (block_out_channels 128-256-512-512).
AUTOENCODERS = ("tiny", "sd")
_SD_VAE = {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "latent_channels": 4,
           "norm_num_groups": 32}


def random_autoencoder(kind: str, channels: int, size: int, seed: int = 0) -> ImageAutoencoder:
    """An ``AutoencoderKL`` with random weights: ``"tiny"`` (the recipe's trained first stage) or ``"sd"``.

    Examples
    --------
    >>> ae = random_autoencoder("tiny", channels=1, size=32)
    >>> ae.factor, ae.latent_channels
    (4, 4)
    """
    from diffusers import AutoencoderKL

    if kind == "tiny":
        model_cfg = OmegaConf.to_container(OmegaConf.load(CONFIG_ROOT / "image" / "autoencoder" / "trained.yaml").model)
    elif kind == "sd":
        model_cfg = dict(_SD_VAE)
    else:
        raise ValueError(f"unknown autoencoder {kind!r}; choose one of {AUTOENCODERS}")
    blocks = len(model_cfg["block_out_channels"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoencoderKL(in_channels=channels, out_channels=channels, sample_size=size,
                              down_block_types=["DownEncoderBlock2D"] * blocks,
                              up_block_types=["UpDecoderBlock2D"] * blocks, **model_cfg)
    return ImageAutoencoder(model, "kl", channels)


def random_task(
    cfg: DictConfig,
    *,
    latent_shape: Sequence[int],
    num_classes: int = 10,
    scaling_factor: float = 1.0,
    seed: int = 0,
) -> ImageDiffusionTask:
    """The recipe's task module for ``cfg`` (``compose_config("image", overrides=...)``) with random weights.

    Examples
    --------
    >>> from robust_gen.training.recipe import compose_config
    >>> task = random_task(compose_config("image"), latent_shape=(4, 8, 8))
    >>> type(task.denoiser.backbone).__name__, float(task.scaling_factor)
    ('UNet2DConditionModel', 1.0)
    """
    meta = {"num_classes": int(num_classes), "latent_shape": [int(v) for v in latent_shape],
            "scaling_factor": float(scaling_factor)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_task(cfg, meta)
