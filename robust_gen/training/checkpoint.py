"""Atomic, verifiable, safely loadable checkpoints.

A checkpoint is a folder ``checkpoints/step_XXXXXXX`` built under a temporary name and renamed into place only
when complete, with a ``checksums.json`` (SHA-256 of every file) written last. ``checkpoints/latest`` names the
newest complete one. Loading walks checkpoints newest first and skips, with a warning, any whose files are
missing or do not match their checksums, so a checkpoint truncated by a kill or a full disk costs one interval
of work, never the run.

Nothing is unpickled: weights are safetensors, optimizer state loads with ``torch.load(weights_only=True)``,
and the trainer's own state is JSON.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from robust_gen.training.run_dir import atomic_write_text, fsync_dir, write_json

__all__ = [
    "Checkpoint",
    "UnverifiedCheckpointsError",
    "find_checkpoints",
    "load_checkpoint",
    "load_latest_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

CHECKSUMS = "checksums.json"


class UnverifiedCheckpointsError(RuntimeError):
    """A folder holds checkpoints but none of them verifies: starting over would silently overwrite them."""


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    path: Path
    step: int
    tensors: dict[str, dict[str, torch.Tensor]]  # e.g. {"model": ..., "ema": ...}
    objects: dict[str, Any]  # torch.load(weights_only=True) payloads, e.g. {"optimizer": ...}
    state: dict[str, Any]  # the trainer's JSON state
    config_yaml: str | None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _contiguous(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; tied weights get their own copy here.
    out, seen = {}, set()
    for name, tensor in state_dict.items():
        t = tensor.detach().cpu()
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else None
        out[name] = t.clone().contiguous() if key in seen or not t.is_contiguous() else t
        if key is not None:
            seen.add(key)
    return out


def save_checkpoint(
    checkpoint_dir: str | Path,
    step: int,
    *,
    tensors: dict[str, dict[str, torch.Tensor]],
    objects: dict[str, Any] | None = None,
    state: dict[str, Any] | None = None,
    config_yaml: str | None = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically and prune all but the newest ``keep`` complete ones.

    Examples
    --------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> p = save_checkpoint(d, 10, tensors={"model": {"w": torch.ones(2)}}, state={"step": 10})
    >>> load_latest_checkpoint(d).tensors["model"]["w"].tolist()
    [1.0, 1.0]
    """
    if not isinstance(keep, int) or keep < 1:
        raise ValueError(f"trainer.keep_checkpoints must be an integer >= 1, got {keep!r} (0 would delete them all)")
    root = Path(checkpoint_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final = root / name
    tmp = root / f".tmp-{name}"
    # Half-written checkpoints of a killed process (the run lock guarantees no live writer besides us).
    for stale in root.glob(".tmp-step_*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir()
    try:
        for key, state_dict in tensors.items():
            save_file(_contiguous(state_dict), str(tmp / f"{key}.safetensors"))
        for key, obj in (objects or {}).items():
            torch.save(obj, tmp / f"{key}.pt")
        write_json(tmp / "state.json", {"step": step, **(state or {})})
        if config_yaml is not None:
            atomic_write_text(tmp / "config.yaml", config_yaml)
        checksums = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        write_json(tmp / CHECKSUMS, checksums)
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        fsync_dir(root)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if _out_of_space(e, root):
            raise OSError(
                errno.ENOSPC,
                f"no space left on the device holding {root} while writing checkpoint {name} ({e}); the previous "
                f"checkpoints are intact. Free space there (or point the run at another disk), then re-run the "
                f"command to resume",
            ) from e
        raise
    atomic_write_text(root / "latest", name + "\n")
    for old in find_checkpoints(root)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _out_of_space(error: BaseException, folder: Path) -> bool:
    """Whether a failed write was (most likely) a full disk: torch.save reports ENOSPC as a bare C++ stream error."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    text = str(error)
    if "No space left" in text:
        return True
    if isinstance(error, RuntimeError) and ("iostream error" in text or "failed writing" in text):
        try:
            return shutil.disk_usage(folder).free < (64 << 20)
        except OSError:
            return False
    return False


def find_checkpoints(checkpoint_dir: str | Path) -> list[Path]:
    """Complete-looking checkpoint folders, newest first (temporary folders are ignored)."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if p.is_dir() and (p / CHECKSUMS).exists()]
    return sorted(found, key=lambda p: p.name, reverse=True)


def _verify(path: Path) -> str | None:
    """Return why ``path`` is not a valid checkpoint, or None when it is."""
    try:
        expected = json.loads((path / CHECKSUMS).read_text())
    except (OSError, ValueError) as e:
        return f"unreadable {CHECKSUMS}: {e}"
    for name, digest in expected.items():
        file = path / name
        if not file.exists():
            return f"missing {name}"
        if _sha256(file) != digest:
            return f"{name} does not match its checksum (truncated or corrupted)"
    return None


def load_latest_checkpoint(checkpoint_dir: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint | None:
    """Load the newest valid checkpoint, skipping (with a warning) any that fail verification.

    Returns None when the folder holds no checkpoint at all. A ``step_*`` folder newer than the one loaded that has
    no ``checksums.json`` is named in a warning. When checkpoints exist but none verifies,
    :class:`UnverifiedCheckpointsError` lists them: a caller that started over would overwrite them.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> load_latest_checkpoint(d) is None
    True
    >>> (d / "step_00000005").mkdir()
    >>> load_latest_checkpoint(d)
    Traceback (most recent call last):
    ...
    robust_gen.training.checkpoint.UnverifiedCheckpointsError: ... none of the 1 checkpoint(s) ... verifies: ...
    """
    root = Path(checkpoint_dir)
    all_folders = sorted((p for p in root.glob("step_*") if p.is_dir()), reverse=True) if root.is_dir() else []
    problems: dict[Path, str] = {}
    for path in all_folders:
        problem = _verify(path) if (path / CHECKSUMS).exists() else f"no {CHECKSUMS} (written by an interrupted save?)"
        if problem is None:
            try:
                checkpoint = _load(path, map_location)
            except Exception as e:  # a file that passes its checksum but still fails to parse
                problem = f"failed to load: {e}"
            else:
                for skipped, why in problems.items():
                    log.warning("checkpoint %s is newer than %s but cannot be used (%s); resuming from the older "
                                "one", skipped, path.name, why)
                return checkpoint
        problems[path] = problem
        log.warning("skipping checkpoint %s: %s", path, problem)
    if problems:
        listing = "; ".join(f"{p.name}: {why}" for p, why in problems.items())
        raise UnverifiedCheckpointsError(
            f"{root}: none of the {len(problems)} checkpoint(s) there verifies: {listing}. Nothing was overwritten. "
            "To start over from step 0 (the old checkpoints are moved aside, not deleted) re-run with "
            "trainer.restart=true, or train into a new run directory (hydra.run.dir=...)"
        )
    return None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load one checkpoint folder after verifying its checksums; ``ValueError`` names what is wrong."""
    path = Path(path)
    if not (path / CHECKSUMS).is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint folder (no {CHECKSUMS}); pick one of checkpoints/step_*")
    problem = _verify(path)
    if problem is not None:
        raise ValueError(f"checkpoint {path} is damaged: {problem}; use an older one from {path.parent}")
    return _load(path, map_location)


def resolve_checkpoint(
    path: str | Path, step: int | str = "latest", map_location: str | torch.device = "cpu"
) -> Checkpoint:
    """Load a checkpoint given a run directory, its ``checkpoints/`` folder, or one ``step_*`` folder.

    With a run or checkpoints folder, ``step="latest"`` takes the newest valid checkpoint and a number takes that
    step's.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> run = pathlib.Path(tempfile.mkdtemp())
    >>> _ = save_checkpoint(run / "checkpoints", 3, tensors={"model": {"w": torch.zeros(1)}})
    >>> resolve_checkpoint(run).step, resolve_checkpoint(run / "checkpoints" / "step_00000003").step
    (3, 3)
    """
    path = Path(path)
    if (path / CHECKSUMS).is_file():
        return load_checkpoint(path, map_location)
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    if step == "latest":
        checkpoint = load_latest_checkpoint(folder, map_location)
        if checkpoint is None:
            raise FileNotFoundError(f"no valid checkpoint under {folder}; train first, or name a step_* folder")
        return checkpoint
    wanted = folder / f"step_{int(step):08d}"
    if not wanted.is_dir():
        available = [p.name for p in find_checkpoints(folder)]
        raise FileNotFoundError(f"checkpoint {wanted} not found; available: {available}")
    return load_checkpoint(wanted, map_location)


def _load(path: Path, map_location) -> Checkpoint:
    tensors = {p.stem: load_file(str(p), device=str(map_location)) for p in path.glob("*.safetensors")}
    objects = {p.stem: torch.load(p, map_location=map_location, weights_only=True) for p in path.glob("*.pt")}
    state = json.loads((path / "state.json").read_text())
    config = (path / "config.yaml").read_text() if (path / "config.yaml").exists() else None
    return Checkpoint(path=path, step=int(state["step"]), tensors=tensors, objects=objects, state=state, config_yaml=config)
