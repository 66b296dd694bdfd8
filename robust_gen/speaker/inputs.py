"""Collect synthesized speech and reference recordings for speaker similarity.

Synthesized speech: audio files, folders, globs, a ``samples.jsonl`` folder, or a run directory of the
speech recipe (``<run>/samples/step_XXXXXXX/samples.jsonl``, lines ``{"path", "text", "speaker"}`` with
paths relative to that folder). Without a speaker field the speaker is the file name before its last ``_``
(``us_m1_3.wav`` -> ``us_m1``). References: audio files or globs (speaker from the name), a folder with
one sub-folder per speaker, or a ``path|text|speaker`` filelist.

Unusable inputs are not errors here: they are listed as ``{"file", "reason", "role"}`` entries (see
:func:`record_skip`) so a long evaluation reports them instead of stopping.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "AUDIO_SUFFIXES",
    "SAMPLES_JSONL",
    "AudioItem",
    "collect_references",
    "collect_synthesized",
    "file_fingerprint",
    "is_run_dir",
    "parse_step",
    "read_samples_jsonl",
    "record_skip",
    "speaker_from_filename",
]

AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".au", ".mp3"})
SAMPLES_JSONL = "samples.jsonl"


@dataclass(frozen=True)
class AudioItem:
    """One synthesized file to score, with its speaker and (for run directories) run label and step."""

    path: Path
    speaker: str
    run: str = ""
    step: int | None = None


def file_fingerprint(path: str | os.PathLike) -> str:
    """A key of a file that changes whenever it is replaced or edited: SHA-1 of (resolved path, mtime, size).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> file = pathlib.Path(tempfile.mkdtemp()) / "a.wav"; _ = file.write_bytes(b"x")
    >>> before = file_fingerprint(file); _ = file.write_bytes(b"xy")
    >>> before == file_fingerprint(file), len(before)
    (False, 40)
    """
    file = Path(path).resolve()
    stat = file.stat()
    return hashlib.sha1(f"{file}|{stat.st_mtime_ns}|{stat.st_size}".encode()).hexdigest()


def speaker_from_filename(path: str | os.PathLike) -> str | None:
    """The speaker encoded in a file name: everything before the last ``_`` of the stem (None if absent).

    Examples
    --------
    >>> speaker_from_filename("samples/step_0001000/us_m1_3.wav")
    'us_m1'
    >>> speaker_from_filename("take.wav") is None
    True
    """
    head, sep, _ = Path(path).stem.rpartition("_")
    return head if sep and head else None


def _is_audio(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_SUFFIXES


def record_skip(skipped: list[dict], file, reason: str, role: str) -> None:
    """Append the ``{"file", "reason", "role"}`` entry of an unusable file to ``skipped``.

    Examples
    --------
    >>> skipped = []
    >>> record_skip(skipped, Path("a_0.wav"), "empty audio", "synthesized")
    >>> skipped
    [{'file': 'a_0.wav', 'reason': 'empty audio', 'role': 'synthesized'}]
    """
    skipped.append({"file": str(file), "reason": reason, "role": role})


def _audio_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and _is_audio(p) and not p.name.startswith("."))


def _expand(spec: str | os.PathLike) -> list[Path] | Path:
    """A glob pattern's matches (sorted), or the path itself; FileNotFoundError when nothing is there."""
    text = os.fspath(spec)
    if glob.has_magic(text):
        matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(text), recursive=True))
        if not matches:
            raise FileNotFoundError(f"no file matches {text!r}")
        return matches
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    return path


def _with_speakers(files: Iterable[Path], skipped: list[dict], role: str) -> Iterator[tuple[Path, str]]:
    """``(file, speaker)`` for each file whose name tells its speaker; the others are recorded as skipped."""
    for file in files:
        speaker = speaker_from_filename(file)
        if speaker is None:
            record_skip(skipped, file, "cannot tell the speaker from the file name (expected <speaker>_<i>.wav)", role)
        else:
            yield file, speaker


def _named_items(files: Iterable[Path], skipped: list[dict], run: str, step: int | None) -> list[AudioItem]:
    return [AudioItem(file, speaker, run, step) for file, speaker in _with_speakers(files, skipped, "synthesized")]


def parse_step(name: str) -> int | None:
    """The training step in a sample folder name (``step_0001000`` -> 1000), None without digits.

    Examples
    --------
    >>> parse_step("step_0001000"), parse_step("final")
    (1000, None)
    """
    match = re.search(r"(\d+)$", name)
    return int(match.group(1)) if match else None


def read_samples_jsonl(
    path: str | os.PathLike, *, run: str = "", step: int | None = None
) -> tuple[list[AudioItem], list[dict]]:
    """Read a ``samples.jsonl`` (one ``{"path", "text", "speaker"}`` object per line) into items.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> (folder / "s1_0.wav").touch()
    >>> _ = (folder / "samples.jsonl").write_text('{"path": "s1_0.wav", "text": "Hi.", "speaker": "s1"}\\n'
    ...                                          '{"path": "gone_1.wav", "text": "Bye."}\\n')
    >>> items, skipped = read_samples_jsonl(folder / "samples.jsonl", step=5)
    >>> [(i.path.name, i.speaker, i.step) for i in items], skipped[0]["reason"]
    ([('s1_0.wav', 's1', 5)], 'listed in samples.jsonl but missing')
    """
    path = Path(path)
    items: list[AudioItem] = []
    skipped: list[dict] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            relative = entry["path"]
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f'{path}, line {number}: expected a JSON object with a "path" key ({error}): {line[:200]!r}'
            ) from error
        file = path.parent / str(relative)
        speaker = entry.get("speaker") or speaker_from_filename(file)
        if not file.is_file():
            record_skip(skipped, file, "listed in samples.jsonl but missing", "synthesized")
        elif not speaker:
            record_skip(skipped, file, "no speaker in samples.jsonl and none in the file name", "synthesized")
        else:
            items.append(AudioItem(file, str(speaker), run, step))
    return items, skipped


def is_run_dir(path: Path) -> bool:
    """True for a speech-recipe run directory: ``samples/*/samples.jsonl`` exists below it."""
    return path.is_dir() and any((path / "samples").glob(f"*/{SAMPLES_JSONL}"))


def collect_synthesized(
    inputs: Sequence[str | os.PathLike], *, run: str | None = None
) -> tuple[list[AudioItem], list[dict]]:
    """Resolve synthesized-speech inputs (files, folders, globs, ``samples.jsonl`` folders, run directories).

    Parameters
    ----------
    inputs : sequence of str or PathLike
        What to score.
    run : str, optional
        Run label for the items; run directories default to their folder name, other inputs to ``""``.

    Returns
    -------
    items, skipped
        The files to score and the ``{"file", "reason", "role"}`` entries of those left out.
    """
    items: list[AudioItem] = []
    skipped: list[dict] = []
    for spec in inputs:
        target = _expand(spec)
        if isinstance(target, list):
            items += _named_items(
                [p for p in target if p.is_file() and _is_audio(p)], skipped, run or "", None
            )
        elif target.is_file() and target.name == SAMPLES_JSONL:
            found, lost = read_samples_jsonl(target, run=run or "", step=parse_step(target.parent.name))
            items += found
            skipped += lost
        elif target.is_file():
            if not _is_audio(target):
                raise ValueError(
                    f"{target} is neither an audio file ({', '.join(sorted(AUDIO_SUFFIXES))}) nor {SAMPLES_JSONL}"
                )
            items += _named_items([target], skipped, run or "", None)
        elif is_run_dir(target):
            label = run if run is not None else target.resolve().name
            for jsonl in sorted((target / "samples").glob(f"*/{SAMPLES_JSONL}")):
                found, lost = read_samples_jsonl(jsonl, run=label, step=parse_step(jsonl.parent.name))
                items += found
                skipped += lost
        elif (target / SAMPLES_JSONL).is_file():
            found, lost = read_samples_jsonl(
                target / SAMPLES_JSONL, run=run or "", step=parse_step(target.name)
            )
            items += found
            skipped += lost
        else:
            files = _audio_in(target)
            if not files:
                raise ValueError(f"no audio files under {target}")
            items += _named_items(files, skipped, run or "", None)
    return items, skipped


def collect_references(inputs: Sequence[str | os.PathLike]) -> tuple[dict[str, list[Path]], list[dict]]:
    """Resolve reference inputs into ``{speaker: [files]}`` (a speaker may map to an empty list).

    Each input is an audio file or glob (speaker from the file name), a folder (one sub-folder per
    speaker; audio directly inside is named by file name), or a ``path|text|speaker`` filelist.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("alice/a.wav", "alice/b.wav", "bob/c.flac"):
    ...     (root / name).parent.mkdir(exist_ok=True); (root / name).touch()
    >>> (root / "carol").mkdir()
    >>> references, skipped = collect_references([root])
    >>> {s: len(f) for s, f in references.items()}, skipped[0]["reason"]
    ({'alice': 2, 'bob': 1, 'carol': 0}, 'reference speaker folder has no audio files')
    """
    from robust_gen.speech.data.filelists import read_filelist

    references: dict[str, list[Path]] = defaultdict(list)
    skipped: list[dict] = []

    def add_named(files: Iterable[Path]) -> None:
        for file, speaker in _with_speakers(files, skipped, "reference"):
            references[speaker].append(file)

    for spec in inputs:
        target = _expand(spec)
        if isinstance(target, list):
            add_named(p for p in target if p.is_file() and _is_audio(p))
        elif target.is_file() and _is_audio(target):
            add_named([target])
        elif target.is_file():
            records = read_filelist(target, on_missing="skip")
            for record in records:
                references[record["speaker"]].append(Path(record["path"]))
            for missing in records.skipped:
                record_skip(skipped, missing, f"listed in filelist {target} but missing", "reference")
        else:
            direct = [p for p in sorted(target.iterdir()) if p.is_file() and _is_audio(p)]
            folders = [d for d in sorted(target.iterdir()) if d.is_dir() and not d.name.startswith(".")]
            if not direct and not folders:
                raise ValueError(f"no reference audio under {target} (expected one sub-folder per speaker)")
            add_named(direct)
            for folder in folders:
                files = _audio_in(folder)
                references[folder.name].extend(files)
                if not files:
                    record_skip(skipped, folder, "reference speaker folder has no audio files", "reference")
    return dict(references), skipped
