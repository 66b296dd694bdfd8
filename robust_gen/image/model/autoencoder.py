"""The first stage of latent diffusion (Rombach et al. 2022): a diffusers ``AutoencoderKL`` or ``VQModel``.

Three modes (``autoencoder.mode``):

* ``pretrained``: ``from_pretrained`` on a hub id (``stabilityai/sd-vae-ft-mse``) or a local directory;
* ``trained``: a small autoencoder trained by the recipe's first stage on the dataset, saved with
  ``save_pretrained`` into ``<run_dir>/autoencoder`` and reused from there when the command is re-run; trained
  once per data / settings / seed in a shared cache (:mod:`robust_gen.image.model.autoencoder_cache`) and copied
  into every run that asks for the same one;
* ``none``: pixel space (the "latents" are the pixels in [-1, 1]).

:class:`ImageAutoencoder` hides the three behind ``encode`` / ``decode`` on [-1, 1] pixel tensors with the data's
channel count (grayscale data goes through an RGB autoencoder as three equal channels, and comes back as their
mean). The first stage here is trained with a reconstruction loss plus LDM's small KL weight (or the VQ
codebook/commitment loss); LDM's perceptual and adversarial terms are left out (no LPIPS network ships offline).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from robust_gen.image.data.imaging import save_grid, to_model_range, to_uint8
from robust_gen.image.model.autoencoder_cache import (
    autoencoder_fingerprint,
    cache_root,
    copy_folder,
    fetch_or_train,
)
from robust_gen.training.run_dir import write_json

__all__ = ["AUTOENCODER_KINDS", "ImageAutoencoder", "build_autoencoder", "load_pretrained", "train_autoencoder"]

log = logging.getLogger(__name__)

AUTOENCODER_KINDS = ("kl", "vq")
MODES = ("pretrained", "trained", "none")


def _model_class(kind: str):
    from diffusers import AutoencoderKL, VQModel

    if kind not in AUTOENCODER_KINDS:
        raise ValueError(f"autoencoder.kind must be one of {AUTOENCODER_KINDS}, got {kind!r}")
    return AutoencoderKL if kind == "kl" else VQModel


class ImageAutoencoder:
    """Encode [-1, 1] pixels to latents and back, for a diffusers autoencoder or for pixel space.

    Parameters
    ----------
    model:
        A diffusers ``AutoencoderKL`` / ``VQModel``, or None for pixel space.
    kind:
        ``"kl"``, ``"vq"`` or ``"none"``.
    data_channels:
        Channels of the data (1 or 3).

    Examples
    --------
    >>> ae = ImageAutoencoder(None, "none", data_channels=1)
    >>> mean, std = ae.encode(torch.zeros(2, 1, 8, 8))
    >>> mean.shape, std, ae.factor
    (torch.Size([2, 1, 8, 8]), None, 1)
    """

    #: The shared cache entry it came from (:mod:`robust_gen.image.model.autoencoder_cache`), where its latents
    #: are cached too; None when it does not come from the cache.
    cache_folder: Path | None = None

    def __init__(self, model: torch.nn.Module | None, kind: str, data_channels: int) -> None:
        if (model is None) != (kind == "none"):
            raise ValueError("pixel space (kind='none') takes no model, and kinds 'kl' / 'vq' need one")
        self.model, self.kind, self.data_channels = model, kind, int(data_channels)
        if model is not None:
            model.requires_grad_(False).eval()
            ae_channels = int(model.config.in_channels)
            if ae_channels != self.data_channels and not (self.data_channels == 1 and ae_channels == 3):
                raise ValueError(
                    f"the autoencoder takes {ae_channels}-channel images but the data has {self.data_channels}; "
                    "set data.channels to match, or use another autoencoder"
                )

    @property
    def factor(self) -> int:
        """Spatial downsampling factor (pixels per latent cell)."""
        if self.model is None:
            return 1
        return 2 ** (len(self.model.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        if self.model is None:
            return self.data_channels
        if self.kind == "vq":
            return int(self.model.config.vq_embed_dim or self.model.config.latent_channels)
        return int(self.model.config.latent_channels)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device if self.model is not None else torch.device("cpu")

    def to(self, device: torch.device | str) -> ImageAutoencoder:
        if self.model is not None:
            self.model.to(device)
        return self

    def _model_input(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[1] != self.data_channels:
            raise ValueError(f"expected {self.data_channels}-channel pixels, got shape {list(pixels.shape)}")
        if self.model is not None and self.model.config.in_channels != pixels.shape[1]:
            pixels = pixels.expand(-1, self.model.config.in_channels, -1, -1)
        return pixels.to(self.device)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Latent mean and standard deviation (None for deterministic encoders) of ``[B, C, H, W]`` pixels."""
        x = self._model_input(pixels)
        if self.model is None:
            return x.float(), None
        if self.kind == "vq":
            return self.model.encode(x).latents.float(), None
        dist = self.model.encode(x).latent_dist
        return dist.mean.float(), dist.std.float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] with the data's channel count."""
        if self.model is None:
            return latents.clamp(-1.0, 1.0)
        pixels = self.model.decode(latents.to(self.device)).sample.float()
        if pixels.shape[1] != self.data_channels:
            pixels = pixels.mean(dim=1, keepdim=True)
        return pixels.clamp(-1.0, 1.0)

    def fingerprint(self) -> str:
        """SHA-256 of the autoencoder's kind, config and weights: changes whenever its latents would."""
        h = hashlib.sha256(f"{self.kind}:{self.data_channels}".encode())
        if self.model is not None:
            config = {k: v for k, v in dict(self.model.config).items() if not k.startswith("_")}
            config.pop("scaling_factor", None)  # written back after encoding; does not change the latents
            h.update(json.dumps(config, sort_keys=True, default=str).encode())
            for name, tensor in sorted(self.model.state_dict().items()):
                h.update(name.encode())
                h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()


def load_pretrained(path: str, kind: str = "kl", subfolder: str | None = None, revision: str | None = None):
    """``AutoencoderKL`` / ``VQModel`` ``from_pretrained`` a hub id or a local directory, with a clear error.

    Examples
    --------
    >>> load_pretrained("/nonexistent/vae")
    Traceback (most recent call last):
    ...
    OSError: could not load the pretrained autoencoder '/nonexistent/vae' ...
    """
    cls = _model_class(kind)
    kwargs: dict[str, Any] = {"subfolder": subfolder} if subfolder else {}
    if revision:
        kwargs["revision"] = revision
    local = Path(path).expanduser()
    try:
        return cls.from_pretrained(str(local) if local.is_dir() else path, **kwargs)
    except Exception as e:  # hub offline, missing files, bad config: all end the same way for the user
        cause = e
    raise OSError(
        f"could not load the pretrained autoencoder {path!r} ({type(cause).__name__}: {cause}). Offline, point "
        "autoencoder.path at a local directory saved with save_pretrained, or use autoencoder=trained (a small "
        "autoencoder trained on the data by the recipe's first stage) or autoencoder=none (pixel space)"
    ) from cause


def train_autoencoder(
    model: torch.nn.Module,
    kind: str,
    images: np.ndarray,
    *,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 1e-3,
    kl_weight: float = 1e-6,
    recon: str = "l1",
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict[str, float]:
    """Train ``model`` to reconstruct ``images`` (uint8 ``[N, S, S, C]``); returns a log of the run.

    The loss is the per-pixel reconstruction error (``l1``, LDM's pixel term, or ``l2``) plus ``kl_weight``
    times the KL to N(0, I) (LDM's KL-regularised f=4 models use 1e-6), or plus the VQ codebook and commitment
    terms for a ``VQModel``. Batches and posterior samples come from a generator seeded with ``seed``.

    Examples
    --------
    >>> from diffusers import AutoencoderKL
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> ae = AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=[8], norm_num_groups=4, latent_channels=2)
    >>> log = train_autoencoder(ae, "kl", np.zeros((4, 8, 8, 1), np.uint8), steps=2, batch_size=2, progress=False)
    >>> sorted(log)
    ['final_loss', 'recon_mse', 'seconds', 'steps']
    """
    if recon not in ("l1", "l2"):
        raise ValueError(f"autoencoder.recon must be 'l1' or 'l2', got {recon!r}")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"autoencoder steps and batch_size must be >= 1, got {steps}, {batch_size}")
    data = to_model_range(images)
    if data.shape[1] != model.config.in_channels:
        data = data.expand(-1, model.config.in_channels, -1, -1)
    generator = torch.Generator().manual_seed(seed)
    model.to(device).train().requires_grad_(True)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    start, loss = time.perf_counter(), torch.tensor(float("nan"))
    for _ in tqdm(range(steps), desc="autoencoder", disable=not progress, dynamic_ncols=True):
        batch = data[torch.randint(0, len(data), (batch_size,), generator=generator)].to(device)
        if kind == "vq":
            out = model(batch)
            reconstruction, extra = out.sample, out.commit_loss.mean()
        else:
            posterior = model.encode(batch).latent_dist
            noise = torch.randn(posterior.mean.shape, generator=generator).to(device)
            reconstruction = model.decode(posterior.mean + posterior.std * noise).sample
            extra = kl_weight * posterior.kl().mean()
        error = F.l1_loss(reconstruction, batch) if recon == "l1" else F.mse_loss(reconstruction, batch)
        loss = error + extra
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval().requires_grad_(False)
    with torch.no_grad():
        probe = data[: min(len(data), 256)].to(device)
        latents = model.encode(probe).latents if kind == "vq" else model.encode(probe).latent_dist.mean
        mse = float(F.mse_loss(model.decode(latents).sample, probe))
    return {"steps": steps, "final_loss": loss.item(), "recon_mse": mse, "seconds": time.perf_counter() - start}


def _build_small(kind: str, model_kwargs: dict, channels: int, sample_size: int) -> torch.nn.Module:
    kwargs = dict(model_kwargs)
    blocks = len(kwargs.get("block_out_channels", (64,)))
    kwargs.setdefault("down_block_types", ["DownEncoderBlock2D"] * blocks)
    kwargs.setdefault("up_block_types", ["UpDecoderBlock2D"] * blocks)
    return _model_class(kind)(in_channels=channels, out_channels=channels, sample_size=sample_size, **kwargs)


def build_autoencoder(
    cfg: dict,
    *,
    run_dir: str | Path,
    images: np.ndarray,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> ImageAutoencoder:
    """The autoencoder of ``cfg`` (the ``autoencoder`` config group); trains and saves it in ``trained`` mode.

    ``trained`` mode reuses ``<run_dir>/autoencoder`` when a complete one is there (re-running a command after a
    kill skips the stage); otherwise it copies the one of the shared cache (:mod:`.autoencoder_cache`, trained
    there first when missing; ``autoencoder.cache=false`` trains in the run folder only). Folders are written
    under a temporary name and renamed when complete. The returned autoencoder's ``cache_folder`` is its cache
    entry (where its latents are cached too), or None.
    """
    mode, kind, channels = cfg.get("mode"), cfg.get("kind", "kl"), int(images.shape[-1])
    if mode not in MODES:
        raise ValueError(f"autoencoder.mode must be one of {MODES}, got {mode!r}")
    if mode == "none":
        return ImageAutoencoder(None, "none", channels)
    if mode == "pretrained":
        if not cfg.get("path"):
            raise ValueError("autoencoder=pretrained needs autoencoder.path (a hub id or a local directory)")
        model = load_pretrained(cfg["path"], kind, cfg.get("subfolder"), cfg.get("revision"))
        return ImageAutoencoder(model, kind, channels).to(device)
    folder = Path(run_dir) / cfg.get("dir_name", "autoencoder")
    root = cache_root(cfg)
    entry = root / autoencoder_fingerprint(cfg, images, seed) if root is not None else None
    train = lambda target: _train_into(target, cfg, images, seed, device, progress)  # noqa: E731
    if (folder / "config.json").is_file():
        log.info("reusing the autoencoder trained earlier in %s", folder)
    elif entry is None or not _copy_from_cache(entry, folder, train):
        entry = None
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        train(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    model = _model_class(kind).from_pretrained(str(folder))
    _check_same_architecture(model, cfg.get("model") or {}, folder)
    autoencoder = ImageAutoencoder(model, kind, channels).to(device)
    autoencoder.cache_folder = entry
    return autoencoder


def _copy_from_cache(entry: Path, folder: Path, train) -> bool:
    """Copy the cache ``entry``'s autoencoder (trained there first when missing) to ``folder``; False, with a
    warning, when the cache folder cannot be used (a read-only home, say): the run then trains its own."""
    try:
        fetch_or_train(entry.parent, entry.name, train)
        copy_folder(entry / "autoencoder", folder)
    except OSError as error:
        log.warning("the shared autoencoder cache %s is not usable (%s); training in the run folder instead. Set "
                    "autoencoder.cache_dir=<writable folder>, or autoencoder.cache=false", entry.parent, error)
        return False
    return True


def _train_into(folder: Path, cfg: dict, images: np.ndarray, seed: int, device, progress: bool) -> None:
    """Train the autoencoder of ``cfg`` on ``images`` and save it (with its training log) into ``folder``."""
    kind, channels = cfg.get("kind", "kl"), int(images.shape[-1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _build_small(kind, cfg.get("model") or {}, channels, int(images.shape[1]))
    train = cfg.get("train") or {}
    log.info("training the autoencoder (%d parameters) for %d steps", sum(p.numel() for p in model.parameters()),
             train.get("steps", 300))
    report = train_autoencoder(model, kind, images, seed=seed, device=device, progress=progress, **train)
    log.info("autoencoder trained in %.1f s: reconstruction MSE %.5f", report["seconds"], report["recon_mse"])
    model.save_pretrained(str(folder))
    write_json(folder / "training.json", report)
    _save_reconstructions(ImageAutoencoder(model, kind, channels), images[:16], folder / "reconstructions.png")


def _check_same_architecture(model: torch.nn.Module, model_kwargs: dict, folder: Path) -> None:
    """Refuse to reuse a trained autoencoder whose architecture differs from the configured one."""
    for key, wanted in model_kwargs.items():
        saved = model.config.get(key)
        if (list(saved) if isinstance(saved, (list, tuple)) else saved) != wanted:
            raise ValueError(
                f"{folder} holds an autoencoder with {key}={saved}, but autoencoder.model.{key}={wanted}; use another "
                "run directory, or delete the folder to train the configured one"
            )


def _save_reconstructions(autoencoder: ImageAutoencoder, images: np.ndarray, path: Path) -> None:
    """Originals in the first row(s), their reconstructions below: a quick look at the first stage."""
    pixels = to_model_range(images)
    mean, _ = autoencoder.encode(pixels)
    recon = to_uint8(autoencoder.decode(mean).cpu())
    save_grid(np.concatenate([images, recon]), path, nrow=len(images), upscale=2)
