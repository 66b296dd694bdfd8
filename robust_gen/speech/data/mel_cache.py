"""A disk cache of log-mels: each audio file's mel is computed once and read back at every later use.

Training reads the same utterances thousands of times; recomputing their STFT every time wastes CPU that the
data loader of a GPU run does not have. :class:`MelCache` stores each mel as an ``.npz`` (with the clip's length
and levels, which the data checks need) under a folder named by a digest of the :class:`MelConfig`, so runs with
the same features share entries and a changed setting never reads stale ones.

For corpora of LibriTTS size (hundreds of thousands of utterances) :func:`fill_mel_cache` computes the missing
entries with several worker processes first; each worker returns only the facts the data checks need (length,
levels, frame count), so the caller never holds the mels in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from robust_gen.speech.data.audio import load_audio, peak_db, rms_db
from robust_gen.speech.data.mel import MelConfig, MelSpectrogram
from robust_gen.training.run_dir import atomic_open

__all__ = ["MelCache", "MelEntry", "MelFacts", "fill_mel_cache", "load_mel"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MelEntry:
    """A cached log-mel ``[n_mels, frames]`` and facts about its audio."""

    mel: np.ndarray
    num_samples: int
    peak_db: float
    rms_db: float


class MelCache:
    """Log-mels computed once per audio file and stored as ``.npz`` under ``root/mel-<digest of MelConfig>/``.

    An entry's name hashes the audio's absolute path, size and modification time, so an edited file gets a new
    entry. Writes are atomic (temporary file + rename): concurrent runs may share a cache.

    Examples
    --------
    >>> import tempfile
    >>> from robust_gen.speech.data.audio import save_audio
    >>> folder = tempfile.mkdtemp()
    >>> save_audio(f"{folder}/a.wav", 0.3 * torch.randn(22050), 22050)
    >>> cache = MelCache(f"{folder}/cache", MelConfig())
    >>> entry = cache.load_or_compute(f"{folder}/a.wav")
    >>> entry.mel.shape, cache.entry_path(f"{folder}/a.wav").exists()
    ((80, 86), True)
    """

    def __init__(self, root: str | os.PathLike, mel_config: MelConfig) -> None:
        self.root, self.mel_config = Path(root), mel_config
        digest = hashlib.sha256(json.dumps(asdict(mel_config), sort_keys=True).encode()).hexdigest()[:12]
        self.folder = Path(root) / f"mel-{digest}"
        self._mel: MelSpectrogram | None = None

    def entry_path(self, audio_path: str | os.PathLike) -> Path:
        path = Path(audio_path).resolve()
        stat = path.stat()
        key = hashlib.sha256(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:24]
        return self.folder / key[:2] / f"{key}.npz"

    def load_or_compute(self, audio_path: str | os.PathLike) -> MelEntry:
        """The cached entry of ``audio_path``, computing and storing it on a miss (audio errors propagate)."""
        if not Path(audio_path).is_file():
            raise FileNotFoundError(f"audio file {audio_path} does not exist")
        entry_file = self.entry_path(audio_path)
        if entry_file.is_file():
            try:
                with np.load(entry_file) as data:
                    return MelEntry(
                        data["mel"], int(data["num_samples"]), float(data["peak_db"]), float(data["rms_db"])
                    )
            except (OSError, ValueError, KeyError):
                log.warning("mel cache entry %s is unreadable; recomputing it", entry_file)
        if self._mel is None:
            self._mel = MelSpectrogram(self.mel_config)
        threads = torch.get_num_threads()
        # One clip's STFT is too small to gain from threads; on a busy machine they cost 10-30x instead.
        torch.set_num_threads(1)
        try:
            wav = load_audio(audio_path, self.mel_config.sample_rate)
            with torch.no_grad():
                mel = (
                    self._mel(wav).numpy().astype(np.float32)
                    if wav.numel() > self.mel_config.padding
                    else None
                )
        finally:
            torch.set_num_threads(threads)
        if mel is None:
            mel = np.zeros((self.mel_config.n_mels, 0), dtype=np.float32)
        entry = MelEntry(mel, int(wav.numel()), peak_db(wav), rms_db(wav))
        self._store(entry_file, entry)
        return entry

    @staticmethod
    def _store(entry_file: Path, entry: MelEntry) -> None:
        entry_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(entry_file, "wb") as file:
            np.savez(file, mel=entry.mel, num_samples=entry.num_samples, peak_db=entry.peak_db, rms_db=entry.rms_db)


@dataclass(frozen=True)
class MelFacts:
    """What the data checks need of a cached entry, without its mel: samples, levels and frames."""

    num_samples: int
    peak_db: float
    rms_db: float
    num_frames: int

    @classmethod
    def of(cls, entry: MelEntry) -> MelFacts:
        return cls(entry.num_samples, entry.peak_db, entry.rms_db, int(entry.mel.shape[1]))


def _facts_of_chunk(root: str, mel_config: MelConfig, paths: list[str]) -> list[tuple[str, MelFacts | str]]:
    """Worker: fill the cache for ``paths``; each path's facts, or the error message when its audio is bad."""
    torch.set_num_threads(1)
    cache = MelCache(root, mel_config)
    results: list[tuple[str, MelFacts | str]] = []
    for path in paths:
        try:
            results.append((path, MelFacts.of(cache.load_or_compute(path))))
        except (OSError, ValueError) as error:  # bad audio: the caller's checks name it
            results.append((path, f"{type(error).__name__}: {error}"))
    return results


def fill_mel_cache(
    cache: MelCache, audio_paths: list[str], *, workers: int = 2, chunk_size: int = 64
) -> dict[str, MelFacts | str]:
    """Compute every missing entry of ``audio_paths`` in ``cache`` with ``workers`` processes.

    Returns ``path -> MelFacts`` (or the error message of a bad file: the caller decides what bad input means).
    Worker processes are spawned (not forked), so a parent that already runs torch threads is safe; entries are
    written atomically, so a killed fill resumes with the entries already there.

    Examples
    --------
    >>> import tempfile
    >>> from robust_gen.speech.data.audio import save_audio
    >>> folder = tempfile.mkdtemp()
    >>> save_audio(f"{folder}/a.wav", 0.3 * torch.randn(22050), 22050)
    >>> facts = fill_mel_cache(MelCache(f"{folder}/c", MelConfig()), [f"{folder}/a.wav", f"{folder}/b.wav"],
    ...                        workers=1)
    >>> facts[f"{folder}/a.wav"].num_frames, facts[f"{folder}/b.wav"].startswith("FileNotFoundError")
    (86, True)
    """
    chunks = [audio_paths[i : i + chunk_size] for i in range(0, len(audio_paths), chunk_size)]
    facts: dict[str, MelFacts | str] = {}
    if workers <= 1:
        for chunk in chunks:
            facts.update(_facts_of_chunk(str(cache.root), cache.mel_config, chunk))
        return facts
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for done in pool.map(_facts_of_chunk, [str(cache.root)] * len(chunks), [cache.mel_config] * len(chunks),
                             chunks):
            facts.update(done)
    return facts


def load_mel(mel_file: str | os.PathLike) -> torch.Tensor:
    """The log-mel ``[n_mels, frames]`` stored in a :class:`MelCache` entry."""
    with np.load(mel_file) as data:
        return torch.from_numpy(np.array(data["mel"], dtype=np.float32))
