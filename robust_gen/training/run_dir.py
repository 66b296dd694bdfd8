"""The run directory: one folder per training run holding everything needed to inspect or resume it.

Layout (written by the trainer and the recipes)::

    run_dir/
      config.yaml            the resolved config (Hydra also writes .hydra/)
      corruption_manifest.json
      metrics.jsonl          one JSON object per logged step
      tensorboard/           TensorBoard event files
      checkpoints/step_XXXXXXX/   model.safetensors, ema.safetensors, optimizer.pt, state.json, config.yaml
      checkpoints/latest     name of the newest complete checkpoint
      samples/               what the recipe renders along the way
      .lock                  held while a process trains here (:func:`lock_run`)
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, ClassVar

__all__ = [
    "RunDirLocked", "RunLock", "atomic_open", "atomic_write_bytes", "atomic_write_text", "fsync_dir", "lock_run",
    "save_figure", "set_run_aside", "write_json",
]


class RunDirLocked(RuntimeError):
    """Another live process holds the run directory."""


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory entry (after a rename) so the rename survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync it and rename it onto ``path``, on error remove it.

    Readers see the old file or the new one, never half of one; the folder must exist.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
    >>> with atomic_open(p, "w") as f:
    ...     _ = f.write("hello")
    >>> p.read_text()
    'hello'
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; give them the mode open() would
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`), creating the folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def save_figure(figure: Any, path: str | os.PathLike, *, dpi: float | None = None) -> Path:
    """Render a matplotlib ``Figure`` (format from the suffix, PNG by default) and write it atomically, like every
    other file of a run: a kill mid-write leaves the previous plot, never half of one. ``dpi``: the figure's own
    when None.

    Examples
    --------
    >>> import tempfile
    >>> from matplotlib.figure import Figure
    >>> path = save_figure(Figure(figsize=(1, 1)), Path(tempfile.mkdtemp()) / "plots" / "empty.png")
    >>> path.read_bytes()[:4]
    b'\\x89PNG'
    """
    path = Path(path)
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lstrip(".") or "png", dpi=dpi or "figure")
    atomic_write_bytes(path, buffer.getvalue())
    return path


#: What a fresh start (``trainer.restart=true``) moves aside: the training state a new run would mix with its own.
TRAINING_STATE = ("checkpoints", "metrics.jsonl", "summary.json", "tensorboard")


def set_run_aside(run_dir: str | os.PathLike, reason: str) -> list[Path]:
    """Move a run's training state aside under a dated name (``checkpoints.replaced-<UTC time>``), never deleting
    it, so that training starts over at step 0; returns the new names. Called with the run lock held.

    Examples
    --------
    >>> import tempfile
    >>> run = Path(tempfile.mkdtemp())
    >>> (run / "checkpoints").mkdir()
    >>> [p.name.split("-")[0] for p in set_run_aside(run, "a test")]
    ['checkpoints.replaced']
    """
    import logging
    import time

    run_dir = Path(run_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    moved = []
    for name in TRAINING_STATE:
        old = run_dir / name
        if old.exists():
            aside = run_dir / f"{old.stem}.replaced-{stamp}{old.suffix}"
            old.rename(aside)
            moved.append(aside)
    if moved:
        logging.getLogger(__name__).warning(
            "trainer.restart=true and %s: %s moved aside; training starts at step 0", reason,
            ", ".join(p.name for p in moved),
        )
    return moved


class RunLock:
    """An exclusive, advisory lock on a run directory, released when the process exits (even on SIGKILL).

    A second training process pointed at the same directory fails fast with :class:`RunDirLocked` instead of
    interleaving checkpoints with the first.

    Within one process the lock nests (a recipe may lock its run early and the trainer lock it again); another
    process gets :class:`RunDirLocked` (tested in ``tests/test_trainer.py``).

    Examples
    --------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with RunLock(d):
    ...     with RunLock(d):
    ...         print("nested")
    nested
    """

    #: Locks this process holds, by resolved run directory: acquiring a held one again nests instead of failing,
    #: so a recipe can lock its run before its first stage and the trainer reuses that lock.
    _held: ClassVar[dict[Path, list]] = {}

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self._fd: int | None = None
        self._nested = False

    def acquire(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        key = self.run_dir.resolve()
        if key in RunLock._held:
            RunLock._held[key][1] += 1
            self._nested = True
            return self
        fd = os.open(self.run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirLocked(
                f"run directory {self.run_dir} is in use by another process (pid {holder}); wait for it to finish, "
                "or choose another directory with hydra.run.dir=..."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        RunLock._held[key] = [self, 1]
        return self

    def release(self) -> None:
        key = self.run_dir.resolve()
        if key in RunLock._held:
            RunLock._held[key][1] -= 1
            if RunLock._held[key][1] > 0:
                return
            owner = RunLock._held.pop(key)[0]
            if owner is not self:
                owner.release()
                return
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def lock_run(run_dir: str | os.PathLike) -> Iterator[None]:
    """The one way to hold a run directory: the recipes take it before anything is written (Hydra's ``.hydra/``
    included, see :mod:`robust_gen.training.entry`) and keep it through every stage; the trainer takes it again,
    which within the process only counts a nesting level, so a trainer used on its own is protected too.

    Only the node's first process (``LOCAL_RANK`` unset or 0) locks: the others of a launch share its run.

    Examples
    --------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with lock_run(d):
    ...     with lock_run(d):
    ...         print("one lock, nested")
    one lock, nested
    """
    if os.environ.get("LOCAL_RANK", "0") != "0":
        yield
        return
    with RunLock(run_dir):
        yield
