"""A shared cache of trained first-stage autoencoders (and their latent caches), so that a command with another
loss, corruption or model starts its diffusion training at once instead of training the same autoencoder again.

An entry is named by :func:`autoencoder_fingerprint`: a SHA-256 of what determines the trained weights, namely the
``autoencoder`` settings that shape training (``kind``, ``model``, ``train``), the seed, the training images
themselves (so data settings that do not change the pixels, such as ``flip`` or captions, share an entry, and a
changed image folder never does) and the torch / diffusers versions (whose numerics and file format it was made
with). Layout, under ``autoencoder.cache_dir`` (default ``<cache>/autoencoders``, the shared cache folder of
:func:`robust_gen.environment.default_cache_dir`)::

    <fingerprint>/autoencoder/   save_pretrained folder, training.json, reconstructions.png
    <fingerprint>/latents/       latent caches of this autoencoder (robust_gen.image.data.latents)
    <fingerprint>.lock           held while one process trains the entry; the others wait, then reuse it

A run copies the entry's ``autoencoder/`` into its own folder (a run stays self-contained: sampling reads the
run, and deleting the cache breaks nothing). Entries are written under a temporary name and renamed when
complete, under the lock, so two runs racing on one fingerprint train it once and never see half an entry.

Examples
--------
>>> import tempfile
>>> images = np.zeros((2, 4, 4, 1), np.uint8)
>>> key = autoencoder_fingerprint({"kind": "kl", "train": {"steps": 2}, "dir_name": "x"}, images, seed=0)
>>> key == autoencoder_fingerprint({"kind": "kl", "train": {"steps": 2}, "dir_name": "y"}, images, seed=0)
True
>>> key == autoencoder_fingerprint({"kind": "kl", "train": {"steps": 3}}, images, seed=0), len(key)
(False, 16)
>>> root = Path(tempfile.mkdtemp())
>>> entry = fetch_or_train(root, key, lambda folder: (folder.mkdir(), (folder / "config.json").write_text("{}")))
>>> (entry / "autoencoder" / "config.json").is_file()
True
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from robust_gen.environment import default_cache_dir

__all__ = ["TRAINING_KEYS", "autoencoder_fingerprint", "cache_root", "copy_folder", "fetch_or_train", "is_complete"]

log = logging.getLogger(__name__)

#: The ``autoencoder`` settings that change the trained weights (the rest, such as ``dir_name``, ``cache_dir`` or
#: ``scaling_factor``, only say where it goes or how its latents are scaled).
TRAINING_KEYS = ("kind", "model", "train")
#: Raise when the training code changes what a given configuration produces, so old entries are not reused.
FORMAT = 1


def cache_root(cfg: dict) -> Path | None:
    """The cache folder of the ``autoencoder`` config ``cfg``, or None when ``autoencoder.cache=false``.

    Examples
    --------
    >>> cache_root({"cache": False}) is None, cache_root({"cache_dir": "/tmp/ae"})
    (True, PosixPath('/tmp/ae'))
    """
    if not cfg.get("cache", True):
        return None
    configured = cfg.get("cache_dir")
    return Path(configured).expanduser() if configured else default_cache_dir() / "autoencoders"


def autoencoder_fingerprint(cfg: dict, images: np.ndarray, seed: int) -> str:
    """16 hex digits naming the autoencoder that ``cfg`` (the ``autoencoder`` group) trains on ``images``."""
    import diffusers
    import torch

    settings = {
        "format": FORMAT,
        "autoencoder": {k: cfg.get(k) for k in TRAINING_KEYS},
        "seed": int(seed),
        "images": [list(images.shape), str(images.dtype)],
        "versions": [torch.__version__, diffusers.__version__],
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    return digest.hexdigest()[:16]


def is_complete(model_dir: Path) -> bool:
    """Whether ``model_dir`` holds a whole ``save_pretrained`` autoencoder (config and weights)."""
    return (model_dir / "config.json").is_file() and any(model_dir.glob("*.safetensors"))


@contextlib.contextmanager
def _exclusive(lock_path: Path, fingerprint: str) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path``, waiting (and saying so) while another process holds it."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process that is training autoencoder %s", fingerprint)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock (and the kernel releases it if the process dies)


def fetch_or_train(root: Path, fingerprint: str, train: Callable[[Path], None]) -> Path:
    """The cache entry ``root/<fingerprint>``, calling ``train(folder)`` once to fill its ``autoencoder/`` folder.

    ``train`` writes a ``save_pretrained`` folder at the path it is given (a temporary one, renamed here when
    complete). Logs ``reusing cached autoencoder <fingerprint>`` on a hit.
    """
    entry = root / fingerprint
    model_dir = entry / "autoencoder"
    if not is_complete(model_dir):
        root.mkdir(parents=True, exist_ok=True)
        with _exclusive(root / f"{fingerprint}.lock", fingerprint):
            if not is_complete(model_dir):  # nobody trained it while we waited
                log.info("training autoencoder %s for the shared cache %s", fingerprint, root)
                tmp = entry / f".autoencoder.{os.getpid()}.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.parent.mkdir(parents=True, exist_ok=True)
                train(tmp)
                shutil.rmtree(model_dir, ignore_errors=True)  # an incomplete one left by a killed run
                os.replace(tmp, model_dir)
                return entry
    log.info("reusing cached autoencoder %s (%s)", fingerprint, model_dir)
    return entry


def copy_folder(source: Path, target: Path) -> None:
    """Copy the folder ``source`` to ``target`` under a temporary name, then rename (replacing an incomplete
    ``target``: callers copy only where no complete autoencoder is)."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
