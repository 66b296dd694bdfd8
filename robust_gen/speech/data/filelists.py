"""Speech datasets as filelists: records ``{"path", "text", "speaker"}`` read from three layouts.

* A filelist, one utterance per line: ``path|text|speaker`` (Grad-TTS / VITS style). Relative paths are
  resolved against the filelist's own folder; blank lines and ``#`` comments are skipped.
* LJSpeech: ``metadata.csv`` with ``id|text|normalized_text`` and the audio in ``wavs/<id>.wav``;
  a single speaker.
* LibriTTS: ``<speaker>/<chapter>/<utt>.wav`` next to ``<utt>.normalized.txt``.

Every reader takes ``on_missing``: ``"error"`` raises FileNotFoundError on the first missing audio
file, ``"skip"`` leaves the record out and lists it in the returned list's ``skipped`` attribute, so a
pipeline can report how many utterances it lost.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

from robust_gen.training.run_dir import atomic_open

OnMissing = Literal["error", "skip"]
FIELDS = ("path", "text", "speaker")


class Records(list):
    """A list of ``{"path", "text", "speaker"}`` dicts, plus ``skipped``: audio paths left out as missing.

    Examples
    --------
    >>> records = Records([{"path": "/a.wav", "text": "Hi.", "speaker": "s1"}], skipped=["/b.wav"])
    >>> len(records), records.skipped
    (1, ['/b.wav'])
    """

    def __init__(self, records: Iterable[dict[str, str]] = (), skipped: Iterable[str] = ()) -> None:
        super().__init__(records)
        self.skipped: list[str] = list(skipped)


def read_filelist(
    path: str | os.PathLike, *, on_missing: OnMissing = "error", default_speaker: str | None = None
) -> Records:
    """Parse a ``path|text|speaker`` filelist.

    Parameters
    ----------
    path : str or PathLike
        The filelist (UTF-8 text).
    on_missing : {"error", "skip"}
        What to do when a line's audio file does not exist.
    default_speaker : str, optional
        When given, two-field lines ``path|text`` are accepted and get this speaker.

    Returns
    -------
    Records
        Records in file order, with absolute ``path`` strings.

    Raises
    ------
    FileNotFoundError
        The filelist is missing, or (``on_missing="error"``) an audio file is.
    ValueError
        A malformed line; the message names the file and the line number.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> (folder / "a.wav").touch()
    >>> _ = (folder / "list.txt").write_text("# utterances\\na.wav|Hello there.|s1\\n\\nb.wav|Gone.|s2\\n")
    >>> records = read_filelist(folder / "list.txt", on_missing="skip")
    >>> [(pathlib.Path(r["path"]).name, r["text"], r["speaker"]) for r in records]
    [('a.wav', 'Hello there.', 's1')]
    >>> len(records.skipped)
    1
    """
    _check_policy(on_missing)
    filelist = Path(path)
    lines = _read_lines(filelist)
    folder = filelist.resolve().parent
    records = Records()
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split("|")
        if len(fields) == 2 and default_speaker is not None:
            fields.append(default_speaker)
        # An empty transcript is a bad utterance, not a malformed line: under "skip" it reaches the data checks,
        # which leave it out and count it (skipped_utterances.json) like any other bad utterance.
        required = (fields[0], fields[2]) if on_missing == "skip" and len(fields) == 3 else fields
        if len(fields) != 3 or not all(field.strip() for field in required):
            expected = "path|text|speaker" + (" or path|text" if default_speaker is not None else "")
            raise ValueError(
                f"{filelist}, line {number}: expected {expected} with non-empty fields, got {line!r}"
            )
        audio, text, speaker = (field.strip() for field in fields)
        _add_record(records, folder / audio, text, speaker, on_missing, f"{filelist}, line {number}")
    return records


def read_ljspeech(
    root: str | os.PathLike, *, speaker: str = "LJ", on_missing: OnMissing = "error"
) -> Records:
    """Read the LJSpeech layout: ``root/metadata.csv`` (``id|text|normalized_text``) and ``root/wavs``.

    The normalized text (numbers and abbreviations spelled out) is used when present, else the raw text.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "wavs").mkdir()
    >>> (root / "wavs" / "LJ001-0001.wav").touch()
    >>> _ = (root / "metadata.csv").write_text("LJ001-0001|Dr. Smith, 1 time.|Doctor Smith, one time.\\n")
    >>> [(r["text"], r["speaker"]) for r in read_ljspeech(root)]
    [('Doctor Smith, one time.', 'LJ')]
    """
    _check_policy(on_missing)
    root = Path(root).resolve()
    metadata = root / "metadata.csv"
    records = Records()
    for number, line in enumerate(_read_lines(metadata), start=1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) not in (2, 3) or not fields[0].strip() or not fields[1].strip():
            raise ValueError(f"{metadata}, line {number}: expected id|text|normalized_text, got {line!r}")
        normalized = fields[2].strip() if len(fields) == 3 else ""
        text = normalized or fields[1].strip()
        audio = root / "wavs" / f"{fields[0].strip()}.wav"
        _add_record(records, audio, text, speaker, on_missing, f"{metadata}, line {number}")
    return records


def read_libritts(root: str | os.PathLike, *, on_missing: OnMissing = "error") -> Records:
    """Read the LibriTTS layout: ``root/<speaker>/<chapter>/<utt>.wav`` with ``<utt>.normalized.txt``.

    ``root`` is one subset folder (e.g. ``LibriTTS/train-clean-100``). Utterances are found through their
    ``.normalized.txt`` files and sorted by path; the speaker is the first folder level.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> chapter = root / "19" / "198"
    >>> chapter.mkdir(parents=True)
    >>> _ = (chapter / "19_198_000000_000000.normalized.txt").write_text("Northanger Abbey.\\n")
    >>> (chapter / "19_198_000000_000000.wav").touch()
    >>> [(r["text"], r["speaker"]) for r in read_libritts(root)]
    [('Northanger Abbey.', '19')]
    """
    _check_policy(on_missing)
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"LibriTTS folder {root} does not exist")
    suffix = ".normalized.txt"
    transcripts = sorted(root.glob(f"*/*/*{suffix}"))
    if not transcripts:
        raise ValueError(f"no <speaker>/<chapter>/<utt>{suffix} files under {root}; is it a LibriTTS subset?")
    records = Records()
    for transcript in transcripts:
        text = " ".join(_read_lines(transcript)).strip()
        if not text:
            raise ValueError(f"transcript {transcript} is empty")
        utterance = transcript.name[: -len(suffix)]
        speaker = transcript.relative_to(root).parts[0]
        audio = transcript.with_name(f"{utterance}.wav")
        _add_record(records, audio, text, speaker, on_missing, f"transcript {transcript}")
    return records


def write_filelist(records: Iterable[Mapping[str, str]], path: str | os.PathLike) -> None:
    """Write records as a ``path|text|speaker`` filelist, atomically (temp file + ``os.replace``).

    Audio paths under the filelist's folder are written relative to it (so the folder can move);
    others are written absolute.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> (folder / "a.wav").touch()
    >>> write_filelist([{"path": str(folder / "a.wav"), "text": "Hi.", "speaker": "s1"}], folder / "l.txt")
    >>> (folder / "l.txt").read_text()
    'a.wav|Hi.|s1\\n'
    >>> read_filelist(folder / "l.txt")[0]["path"] == str(folder.resolve() / "a.wav")
    True
    """
    filelist = Path(path)
    folder = filelist.resolve().parent
    lines = []
    for index, record in enumerate(records):
        missing = [field for field in FIELDS if field not in record]
        if missing:
            raise ValueError(f"record {index} lacks field(s) {missing}: {dict(record)}")
        values = [str(record[field]).strip() for field in FIELDS]
        if any(not value or "|" in value or "\n" in value or "\r" in value for value in values):
            raise ValueError(
                f"record {index} has an empty field or one containing '|' or a newline: {values}"
            )
        try:
            "".join(values).encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"record {index} has text that UTF-8 cannot encode ({error}): {values}"
            ) from error
        audio = Path(values[0])
        if not audio.is_absolute():
            audio = Path.cwd() / audio
        audio = Path(os.path.normpath(audio))
        if audio.is_relative_to(folder):
            audio = audio.relative_to(folder)
        lines.append("|".join([audio.as_posix(), values[1], values[2]]) + "\n")
    with atomic_open(filelist, "w", encoding="utf-8", newline="\n") as file:
        file.writelines(lines)


def _check_policy(on_missing: str) -> None:
    if on_missing not in ("error", "skip"):
        raise ValueError(f'on_missing must be "error" or "skip", got {on_missing!r}')


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text: {error}") from error
    # Lines end at "\n" (or "\r\n") only: str.splitlines would also break at form feeds and other
    # Unicode separators that may occur inside a transcript.
    return [line.removesuffix("\r") for line in text.split("\n")]


def _add_record(records: Records, audio: Path, text: str, speaker: str, on_missing: str, where: str) -> None:
    audio = Path(os.path.normpath(audio))
    if audio.is_file():
        records.append({"path": str(audio), "text": text, "speaker": speaker})
    elif on_missing == "skip":
        records.skipped.append(str(audio))
    else:
        raise FileNotFoundError(
            f'{where}: audio file {audio} does not exist (pass on_missing="skip" to leave it out)'
        )
