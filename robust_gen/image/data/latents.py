"""Encode the dataset once and cache the latents on disk, instead of running the encoder at every step.

The cache is one safetensors file per (autoencoder weights, images, canvas size, flips) combination, named by a
SHA-256 of all of them, so a changed autoencoder or dataset can never be served stale latents. It holds the
posterior mean and standard deviation of every image (and of its mirror image when flips are on), so training
can still draw ``z = mean + std * eps`` fresh each step as LDM does; deterministic encoders (VQ, pixel space)
store the mean only.

For datasets that do not fit in memory (``latents.format=sharded``) the cache is a folder of ``.npy`` shards of
``shard_size`` images each, read memory-mapped by index during training (:class:`ShardedLatents`), the layout of
the precomputed-latent training of DiT-style models. The shards are written by :func:`encode_shards`: several
processes (``accelerate launch recipes/image/encode.py``) each take every k-th shard, a shard is complete when
its statistics file is written (last, atomically), so a killed encode resumes where it stopped; one process then
combines the per-shard statistics into the scaling factor and writes ``meta.json`` (:func:`finish_shards`).

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
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from robust_gen.image.data.imaging import to_model_range
from robust_gen.image.model.autoencoder import ImageAutoencoder
from robust_gen.training.run_dir import write_json

__all__ = [
    "LatentTable",
    "ShardedLatents",
    "cache_key",
    "encode_images",
    "encode_shards",
    "finish_shards",
    "latent_std",
    "load_or_encode",
    "load_or_encode_shards",
    "open_shards",
    "shard_folder",
]

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
    if hasattr(images, "fingerprint"):  # lazily read files: their list, sizes and times, not a million decodes
        h.update(images.fingerprint().encode())
    else:
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
    scale = _scale(autoencoder, scaling_factor, latent_std(mean, std) if scaling_factor == "data" else 1.0)
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


# ---------------------------------------------------------------- sharded cache (data that does not fit in memory)

META_FILE = "meta.json"


class ShardedLatents:
    """``[N, V, C, h, w]`` float32 latents in ``.npy`` shards, read by index.

    ``array[i, ...]`` (an int first index, then any numpy index) reads image ``i``'s latents with one positioned
    read (``os.pread``) from the shard that holds it and returns a torch tensor of the indexed part. Reads go
    through the page cache but are never mapped into the process: its resident memory stays flat however many
    images an epoch visits (a memory map would keep every page it touched, plus read-ahead, resident).
    """

    def __init__(self, folder: Path, name: str, shape: tuple[int, ...], shard_size: int) -> None:
        self.folder, self.name, self.shape, self.shard_size = Path(folder), name, tuple(shape), int(shard_size)
        self._offsets: dict[int, int] = {}
        self._item = int(np.prod(self.shape[1:]))

    def __len__(self) -> int:
        return self.shape[0]

    def _path(self, number: int) -> Path:
        return self.folder / f"shard-{number:05d}.{self.name}.npy"

    def _data_offset(self, number: int) -> int:
        """Where shard ``number``'s array data starts (after its .npy header), checked once per shard."""
        if number not in self._offsets:
            with open(self._path(number), "rb") as f:
                major, _ = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read_header(f)
                if dtype != np.float32 or fortran or tuple(shape[1:]) != self.shape[1:]:
                    raise ValueError(f"latent shard {self._path(number)} holds {dtype} {shape}, expected float32 "
                                     f"[n, {', '.join(map(str, self.shape[1:]))}]; encode the cache again")
                self._offsets[number] = f.tell()
        return self._offsets[number]

    def __getitem__(self, key: Any) -> torch.Tensor:
        rest: tuple = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if not isinstance(key, (int, np.integer)):
            raise TypeError("sharded latents are read one image at a time: index them with an int first")
        index = int(key)
        if not 0 <= index < self.shape[0]:
            raise IndexError(f"latent {index} is outside a cache of {self.shape[0]}")
        number, row = divmod(index, self.shard_size)
        offset = self._data_offset(number) + row * self._item * 4
        fd = os.open(self._path(number), os.O_RDONLY)
        try:
            data = os.pread(fd, self._item * 4, offset)
        finally:
            os.close(fd)
        values = np.frombuffer(data, dtype=np.float32).reshape(self.shape[1:])
        return torch.from_numpy(np.array(values[rest] if rest else values))


def shard_folder(cache_dir: str | Path, key: str) -> Path:
    """The folder of the sharded cache named by ``key`` inside ``cache_dir``."""
    return Path(cache_dir) / f"latents-{key[:24]}"


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
    np.save(tmp, array, allow_pickle=False)
    os.replace(tmp, path)


def encode_shards(
    autoencoder: ImageAutoencoder,
    images: Any,
    folder: str | Path,
    *,
    flips: bool = False,
    batch_size: int = 64,
    shard_size: int = 4096,
    process_index: int = 0,
    num_processes: int = 1,
) -> list[int]:
    """Encode this process's missing shards (every ``num_processes``-th, from ``process_index``); return them.

    A shard is complete when ``shard-NNNNN.json`` (its statistics) exists; complete shards are skipped, so
    running again after a kill resumes. ``images`` is any uint8 ``[N, S, S, C]`` array-like that slices (an array
    or an :class:`~robust_gen.image.data.file_index.ImageFiles`).

    Examples
    --------
    >>> import tempfile
    >>> ae, d = ImageAutoencoder(None, "none", 1), Path(tempfile.mkdtemp())
    >>> images = np.zeros((5, 4, 4, 1), np.uint8)
    >>> encode_shards(ae, images, d, shard_size=2, process_index=1, num_processes=2)  # the second of two
    [1]
    >>> encode_shards(ae, images, d, shard_size=2)  # the rest; shard 1 is done already
    [0, 2]
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    count = -(-len(images) // shard_size)
    written = []
    for number in range(process_index, count, num_processes):
        if (folder / f"shard-{number:05d}.json").is_file():
            continue
        start, stop = number * shard_size, min(len(images), (number + 1) * shard_size)
        means, stds = [], []
        for first in range(start, stop, batch_size):  # bounded memory: one batch of images decoded at a time
            mean, std = encode_images(autoencoder, images[first : min(stop, first + batch_size)], flips=flips,
                                      batch_size=batch_size)
            means.append(mean.float().numpy())
            if std is not None:
                stds.append(std.float().numpy())
        mean = np.concatenate(means)
        _save_npy(folder / f"shard-{number:05d}.mean.npy", mean)
        stats = {"count": int(mean.size), "sum": float(mean.sum(dtype=np.float64)),
                 "sum_sq": float(np.square(mean, dtype=np.float64).sum()), "sum_var": 0.0, "has_std": bool(stds),
                 "shape": list(mean.shape[1:])}
        if stds:
            std = np.concatenate(stds)
            _save_npy(folder / f"shard-{number:05d}.std.npy", std)
            stats["sum_var"] = float(np.square(std, dtype=np.float64).sum())
        write_json(folder / f"shard-{number:05d}.json", stats)  # last: marks the shard complete
        written.append(number)
        log.info("latent shard %d/%d written (images %d..%d)", number + 1, count, start, stop - 1)
    return written


def finish_shards(
    autoencoder: ImageAutoencoder,
    folder: str | Path,
    key: str,
    num_images: int,
    *,
    shard_size: int,
    scaling_factor: float | str = "data",
) -> LatentTable:
    """Combine the shards' statistics into the scaling factor, write ``meta.json`` and open the cache.

    The latent variance ``var(mean) + E[std^2]`` is summed per shard in float64 (:func:`latent_std`'s formula).
    Raises naming the missing shards when some process has not finished its share.
    """
    folder = Path(folder)
    count = -(-num_images // shard_size)
    missing = [n for n in range(count) if not (folder / f"shard-{n:05d}.json").is_file()]
    if missing:
        raise FileNotFoundError(f"latent shards {missing[:10]} of {count} in {folder} are not written yet; run the "
                                "encode step again (it resumes) until every process has finished")
    stats = [json.loads((folder / f"shard-{n:05d}.json").read_text()) for n in range(count)]
    total = sum(s["count"] for s in stats)
    mean = sum(s["sum"] for s in stats) / total
    variance = sum(s["sum_sq"] for s in stats) / total - mean**2 + sum(s["sum_var"] for s in stats) / total
    scale = _scale(autoencoder, scaling_factor, float(np.sqrt(max(variance, 0.0))))
    meta = {"key": key, "num_images": int(num_images), "shard_size": int(shard_size), "shape": stats[0]["shape"],
            "has_std": bool(stats[0]["has_std"]), "scaling_factor": scale}
    write_json(folder / META_FILE, meta)
    table = open_shards(folder, key)
    assert table is not None  # just written
    return table


def _scale(autoencoder: ImageAutoencoder, scaling_factor: float | str, std: float) -> float:
    if autoencoder.kind == "none":
        return 1.0
    if scaling_factor == "data":
        return 1.0 / max(std, 1e-8)
    if scaling_factor == "config":
        return float(autoencoder.model.config.scaling_factor)
    return float(scaling_factor)


def open_shards(folder: str | Path, key: str) -> LatentTable | None:
    """The complete sharded cache in ``folder`` made under ``key``, or None (absent, unfinished or stale)."""
    meta_path = Path(folder) / META_FILE
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("key") != key:
        log.warning("ignoring the sharded latent cache %s: it was made from other images or another autoencoder",
                    folder)
        return None
    shape = (int(meta["num_images"]), *meta["shape"])
    mean = ShardedLatents(Path(folder), "mean", shape, meta["shard_size"])
    std = ShardedLatents(Path(folder), "std", shape, meta["shard_size"]) if meta["has_std"] else None
    return LatentTable(mean, std, float(meta["scaling_factor"]), key)  # type: ignore[arg-type]


def load_or_encode_shards(
    autoencoder: ImageAutoencoder,
    images: Any,
    cache_dir: str | Path,
    *,
    flips: bool = False,
    scaling_factor: float | str = "data",
    batch_size: int = 64,
    shard_size: int = 4096,
) -> LatentTable:
    """The sharded cache of ``images`` in ``cache_dir``: opened when complete, else encoded here (all missing
    shards, one process) and finished. The parallel form is ``recipes/image/encode.py`` under accelerate.

    Examples
    --------
    >>> import tempfile
    >>> ae, d = ImageAutoencoder(None, "none", 1), tempfile.mkdtemp()
    >>> table = load_or_encode_shards(ae, np.full((5, 4, 4, 1), 255, np.uint8), d, shard_size=2)
    >>> table.mean.shape, table.mean[4, 0].shape, table.scaling_factor
    ((5, 1, 1, 4, 4), torch.Size([1, 4, 4]), 1.0)
    """
    key = cache_key(autoencoder, images, flips)
    folder = shard_folder(cache_dir, key)
    table = open_shards(folder, key)
    if table is not None:
        log.info("latents opened from the sharded cache %s", folder)
        return table
    log.info("encoding %d images into latent shards of %d (cache: %s)", len(images), shard_size, folder)
    encode_shards(autoencoder, images, folder, flips=flips, batch_size=batch_size, shard_size=shard_size)
    return finish_shards(autoencoder, folder, key, len(images), shard_size=shard_size, scaling_factor=scaling_factor)
