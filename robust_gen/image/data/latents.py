"""Encode the dataset once and cache the latents on disk, instead of running the encoder at every step.

The cache is one safetensors file per (autoencoder weights, images, canvas size, flips) combination, named by a
SHA-256 of all of them, so a changed autoencoder or dataset can never be served stale latents. It holds the
posterior mean and standard deviation of every image (and of its mirror image when flips are on), so training
can still draw ``z = mean + std * eps`` fresh each step as LDM does; deterministic encoders (VQ, pixel space)
store the mean only.

The latent scaling factor is ``1 / std`` of the latents over the dataset (Rombach et al. 2022, the "scale_factor"
of LDM and diffusers' ``vae.config.scaling_factor``): the diffusion model then sees unit-variance inputs. The
latents' variance is computed exactly from the posterior, ``var(mean) + E[std^2]``, without sampling.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from robust_gen.image.data.imaging import to_model_range
from robust_gen.image.model.autoencoder import ImageAutoencoder

__all__ = ["LatentTable", "cache_key", "encode_images", "latent_std", "load_or_encode"]

log = logging.getLogger(__name__)


@dataclass
class LatentTable:
    """Latents of every image: ``mean`` and ``std`` shaped ``[N, V, C, h, w]`` (V = 2 with mirror images, else 1).

    ``std`` is None for deterministic encoders; ``scaling_factor`` multiplies latents before diffusion.
    """

    mean: torch.Tensor
    std: torch.Tensor | None
    scaling_factor: float
    key: str = ""

    @property
    def views(self) -> int:
        return int(self.mean.shape[1])


def cache_key(autoencoder: ImageAutoencoder, images: np.ndarray, flips: bool) -> str:
    """SHA-256 naming the latents of ``images`` under ``autoencoder`` (with or without mirror images).

    Examples
    --------
    >>> ae = ImageAutoencoder(None, "none", 1)
    >>> a = cache_key(ae, np.zeros((2, 4, 4, 1), np.uint8), flips=False)
    >>> a == cache_key(ae, np.ones((2, 4, 4, 1), np.uint8), flips=False), len(a)
    (False, 64)
    """
    h = hashlib.sha256(autoencoder.fingerprint().encode())
    h.update(json.dumps({"shape": list(images.shape), "dtype": str(images.dtype), "flips": bool(flips)}).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()


def encode_images(
    autoencoder: ImageAutoencoder, images: np.ndarray, *, flips: bool = False, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Posterior mean and std (or None) of uint8 ``[N, S, S, C]`` images: ``[N, V, C, h, w]`` on the CPU.

    Examples
    --------
    >>> mean, std = encode_images(ImageAutoencoder(None, "none", 1), np.zeros((3, 4, 4, 1), np.uint8), flips=True)
    >>> mean.shape, std
    (torch.Size([3, 2, 1, 4, 4]), None)
    """
    means, stds = [], []
    for start in range(0, len(images), batch_size):
        pixels = to_model_range(images[start : start + batch_size])
        views = [pixels, pixels.flip(-1)] if flips else [pixels]
        encoded = [autoencoder.encode(view) for view in views]
        means.append(torch.stack([m.cpu() for m, _ in encoded], dim=1))
        if encoded[0][1] is not None:
            stds.append(torch.stack([s.cpu() for _, s in encoded], dim=1))
    return torch.cat(means), (torch.cat(stds) if stds else None)


def latent_std(mean: torch.Tensor, std: torch.Tensor | None) -> float:
    """Standard deviation of latents drawn from the posteriors: ``sqrt(var(mean) + E[std^2])``.

    Examples
    --------
    >>> round(latent_std(torch.tensor([-1.0, 1.0]), torch.ones(2)), 6)  # var(mean) = 1, E[std^2] = 1
    1.414214
    """
    variance = mean.double().var(unbiased=False)
    if std is not None:
        variance = variance + std.double().pow(2).mean()
    return float(variance.sqrt())


def load_or_encode(
    autoencoder: ImageAutoencoder,
    images: np.ndarray,
    cache_dir: str | Path,
    *,
    flips: bool = False,
    scaling_factor: float | str = "data",
    batch_size: int = 64,
) -> LatentTable:
    """Latents of ``images`` from the cache in ``cache_dir``, encoding and writing them on a miss.

    Parameters
    ----------
    scaling_factor:
        ``"data"``: ``1 / std`` of the latents (:func:`latent_std`); ``"config"``: the autoencoder config's
        ``scaling_factor`` (e.g. 0.18215 for Stable Diffusion's VAE); or a number. Pixel space uses 1.

    Examples
    --------
    >>> import tempfile
    >>> ae, d = ImageAutoencoder(None, "none", 1), tempfile.mkdtemp()
    >>> table = load_or_encode(ae, np.full((2, 4, 4, 1), 255, np.uint8), d)
    >>> table.mean.shape, table.scaling_factor, len(list(Path(d).glob("latents-*.safetensors")))
    (torch.Size([2, 1, 1, 4, 4]), 1.0, 1)
    """
    key = cache_key(autoencoder, images, flips)
    path = Path(cache_dir) / f"latents-{key[:24]}.safetensors"
    if path.is_file():
        try:
            return _read(path, key)
        except Exception as e:  # a cache file cut short by a kill: encode again
            log.warning("ignoring unreadable latent cache %s (%s); encoding again", path, e)
    log.info("encoding %d images into latents (cache: %s)", len(images), path)
    mean, std = encode_images(autoencoder, images, flips=flips, batch_size=batch_size)
    if autoencoder.kind == "none":
        scale = 1.0
    elif scaling_factor == "data":
        scale = 1.0 / max(latent_std(mean, std), 1e-8)
    elif scaling_factor == "config":
        scale = float(autoencoder.model.config.scaling_factor)
    else:
        scale = float(scaling_factor)
    table = LatentTable(mean.contiguous(), None if std is None else std.contiguous(), scale, key)
    _write(path, table)
    return table


def _write(path: Path, table: LatentTable) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"mean": table.mean}
    if table.std is not None:
        tensors["std"] = table.std
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={"key": table.key, "scaling_factor": repr(table.scaling_factor)})
    os.replace(tmp, path)


def _read(path: Path, key: str) -> LatentTable:
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if metadata.get("key") != key:
            raise ValueError("its key does not match")
        names = set(f.keys())
        mean = f.get_tensor("mean")
        std = f.get_tensor("std") if "std" in names else None
    log.info("latents loaded from cache %s", path)
    return LatentTable(mean, std, float(metadata["scaling_factor"]), key)
