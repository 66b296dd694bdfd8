"""Speech training data for Grad-TTS: records -> checked, tokenised utterances with cached mels -> batches.

The pipeline a recipe runs once before training:

1. :func:`load_records` reads ``{"path", "text", "speaker"}`` records from the configured source (the embedded
   espeak-ng corpus, a ``path|text|speaker`` filelist, LJSpeech or LibriTTS).
2. :func:`prepare_utterances` checks every record and computes its log-mel once, caching it in
   :class:`MelCache` (one ``.npz`` per utterance, in a folder keyed by the mel parameters, each file keyed by the
   audio's path, size and modification time), so training never recomputes mels and a second run starts at once.
3. :func:`speaker_map` assigns speaker ids and keeps them in the run folder (``speakers.json``): a resumed or
   synthesizing run uses the ids the model was trained with.
4. :class:`TTSDataset` serves ``{"tokens", "mel", "speaker"}`` items; :func:`collate_tts` pads them.

Bad input: a missing or undecodable audio file, a silent or too-short clip, a text that yields no symbols, a mel
with fewer frames than its text has tokens (monotonic alignment needs ``T_mel >= T_text``) or a speaker the model
does not know. With ``on_bad="error"`` the first one raises :class:`BadUtteranceError` naming the file and the
problem; with ``on_bad="skip"`` it is left out and listed (:func:`write_skipped` puts the list in the run folder).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from robust_gen.audit.filters import read_data_filter
from robust_gen.speech.data.filelists import (
    Records,
    read_filelist,
    read_libritts,
    read_ljspeech,
    write_filelist,
)
from robust_gen.speech.data.mel import MelConfig
from robust_gen.speech.data.mel_cache import MelCache, MelFacts, fill_mel_cache, load_mel
from robust_gen.speech.text import encode_text
from robust_gen.training.run_dir import write_json
from robust_gen.training.sample_losses import SAMPLE_INDEX_KEY

__all__ = [
    "BAD_INPUT_POLICIES",
    "BadUtteranceError",
    "DataChecks",
    "MelCache",
    "SkippedUtterance",
    "TTSDataset",
    "TrainingSet",
    "build_training_set",
    "collate_tts",
    "load_records",
    "prepare_utterances",
    "speaker_map",
    "validate_tts_config",
    "write_skipped",
]

log = logging.getLogger(__name__)

BAD_INPUT_POLICIES = ("error", "skip")
SPEAKERS_FILE = "speakers.json"
SKIPPED_FILE = "skipped_utterances.json"
CLEAN_FILELIST = "clean_filelist.txt"


class BadUtteranceError(ValueError):
    """An utterance that cannot be trained on (the message names its file and the problem)."""


@dataclass(frozen=True)
class DataChecks:
    """What counts as bad input, and what to do about it.

    Attributes
    ----------
    on_bad:
        ``"error"`` (raise on the first bad utterance) or ``"skip"`` (leave it out and list it).
    min_seconds:
        Clips shorter than this are bad.
    silence_db:
        Clips whose peak or RMS level is below this (dB full scale) are silent, hence bad.

    Examples
    --------
    >>> DataChecks(on_bad="skip").on_bad
    'skip'
    >>> DataChecks(on_bad="ignore")
    Traceback (most recent call last):
    ...
    ValueError: on_bad must be one of ('error', 'skip'), got 'ignore'
    """

    on_bad: str = "error"
    min_seconds: float = 0.3
    silence_db: float = -60.0

    def __post_init__(self) -> None:
        if self.on_bad not in BAD_INPUT_POLICIES:
            raise ValueError(f"on_bad must be one of {BAD_INPUT_POLICIES}, got {self.on_bad!r}")
        if self.min_seconds < 0:
            raise ValueError(f"min_seconds must be >= 0, got {self.min_seconds}")


@dataclass(frozen=True)
class SkippedUtterance:
    """One utterance left out, and why."""

    path: str
    text: str
    speaker: str
    reason: str


@dataclass
class PreparedUtterances:
    """Checked utterances (records with ``tokens``, ``mel_file`` and ``num_frames`` added) and the ones skipped."""

    records: list[dict] = field(default_factory=list)
    skipped: list[SkippedUtterance] = field(default_factory=list)


def _reject(
    record: Mapping[str, Any], reason: str, checks: DataChecks, skipped: list[SkippedUtterance]
) -> None:
    if checks.on_bad == "error":
        raise BadUtteranceError(
            f"{record.get('path')} (speaker {record.get('speaker')!r}, text {record.get('text')!r}): {reason}. "
            "Fix or remove it, or set data.on_bad=skip to leave such utterances out"
        )
    skipped.append(
        SkippedUtterance(str(record.get("path")), str(record.get("text")), str(record.get("speaker")), reason)
    )


# --------------------------------------------------------------------------------------- preparation
def prepare_utterances(
    records: Iterable[Mapping[str, Any]],
    *,
    cache: MelCache,
    checks: DataChecks = DataChecks(),
    add_blank: bool = True,
    cleaner: str = "english",
    workers: int = 0,
) -> PreparedUtterances:
    """Check every record, tokenise its text and cache its mel (see the module docstring for what is bad).

    Returns the good records (copies with ``tokens`` as a compact int16 array, ``mel_file`` and ``num_frames``
    added) and the skipped ones (empty unless ``checks.on_bad == "skip"``). With ``workers > 1`` the missing mels
    are computed first by that many processes (:func:`~robust_gen.speech.data.mel_cache.fill_mel_cache`) and
    the checks read only their facts, never the mels: the form for corpora of LibriTTS size.

    Examples
    --------
    >>> import tempfile
    >>> from robust_gen.speech.data.audio import save_audio
    >>> folder = tempfile.mkdtemp()
    >>> save_audio(f"{folder}/ok.wav", 0.3 * torch.randn(22050), 22050)
    >>> save_audio(f"{folder}/quiet.wav", torch.zeros(22050), 22050)
    >>> records = [{"path": f"{folder}/{n}.wav", "text": "Hello there.", "speaker": "a"} for n in ("ok", "quiet")]
    >>> prepared = prepare_utterances(records, cache=MelCache(folder, MelConfig()), checks=DataChecks(on_bad="skip"))
    >>> len(prepared.records), [s.reason for s in prepared.skipped]
    (1, ['silent audio (peak -inf dBFS, RMS -inf dBFS; threshold -60.0 dBFS)'])
    """
    prepared = PreparedUtterances()
    sample_rate = cache.mel_config.sample_rate
    records = list(records)
    facts = fill_mel_cache(cache, [str(r["path"]) for r in records], workers=workers) if workers > 1 else {}
    for record in records:
        try:
            tokens = encode_text(str(record["text"]), add_blank=add_blank, cleaner=cleaner).ids
        except ValueError as error:
            _reject(record, f"text yields no symbols ({error})", checks, prepared.skipped)
            continue
        try:
            # a worker's facts when there are some (no mel read here); else the entry, computed on a miss. A
            # worker's failure is recomputed here, so that bad audio is named exactly as without workers.
            found = facts.get(str(record["path"]))
            entry = found if isinstance(found, MelFacts) else MelFacts.of(cache.load_or_compute(record["path"]))
        except FileNotFoundError:
            _reject(record, "audio file does not exist", checks, prepared.skipped)
            continue
        except ValueError as error:
            _reject(record, f"unreadable audio ({error})", checks, prepared.skipped)
            continue
        seconds = entry.num_samples / sample_rate
        if seconds < checks.min_seconds:
            _reject(
                record,
                f"too short ({seconds:.3f} s < min_seconds={checks.min_seconds})",
                checks,
                prepared.skipped,
            )
            continue
        if entry.peak_db < checks.silence_db or entry.rms_db < checks.silence_db:
            reason = (
                f"silent audio (peak {entry.peak_db:.1f} dBFS, RMS {entry.rms_db:.1f} dBFS; threshold "
                f"{checks.silence_db} dBFS)"
            )
            _reject(record, reason, checks, prepared.skipped)
            continue
        frames = entry.num_frames
        if frames < len(tokens):
            reason = f"mel has {frames} frames but the text has {len(tokens)} tokens (alignment needs T_mel >= T_text)"
            _reject(record, reason, checks, prepared.skipped)
            continue
        prepared.records.append(
            {
                **record,
                # int16 array, not a list: ~300 bytes per utterance instead of ~1.3 kB of list slots, which at
                # LibriTTS size (375k utterances) is the difference between 0.1 and 0.5 GB in every process
                "tokens": np.asarray(tokens, dtype=np.int16),
                "mel_file": str(cache.entry_path(record["path"])),
                "num_frames": frames,
            }
        )
    return prepared


def write_skipped(skipped: Sequence[SkippedUtterance], run_dir: str | os.PathLike) -> Path:
    """Write the skipped utterances (path, text, speaker, reason) to ``run_dir/skipped_utterances.json``.

    Examples
    --------
    >>> import tempfile
    >>> path = write_skipped([SkippedUtterance("a.wav", "Hi.", "s1", "silent audio")], tempfile.mkdtemp())
    >>> json.loads(path.read_text())["count"]
    1
    """
    path = Path(run_dir) / SKIPPED_FILE
    write_json(path, {"count": len(skipped), "utterances": [asdict(s) for s in skipped]})
    return path


# ---------------------------------------------------------------------------------------------- sources
def load_records(source: str, **options: Any) -> tuple[Records, list[SkippedUtterance]]:
    """Records from one data source, and the utterances whose audio is missing (when ``on_missing="skip"``).

    ``source`` and its options (the ``data`` config group):

    * ``"espeak"``: ``voices`` (speaker ids of :data:`robust_gen.speech.data.corpus.DEFAULT_VOICES` /
      ``HELD_OUT_VOICES``; None for the default ten), ``utterances_per_voice``, ``corpus_seed``, ``root``
      (None: the cache folder). The corpus is synthesized on first use.
    * ``"filelist"``: ``path`` (``path|text|speaker`` lines), ``default_speaker``.
    * ``"ljspeech"``: ``root`` (with ``metadata.csv`` and ``wavs/``), ``speaker``.
    * ``"libritts"``: ``root`` (one subset folder).

    Every source takes ``on_missing`` (``"error"`` or ``"skip"``).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> (folder / "a.wav").touch()
    >>> _ = (folder / "list.txt").write_text("a.wav|Hello.|s1\\nb.wav|Gone.|s1\\n")
    >>> records, missing = load_records("filelist", path=folder / "list.txt", on_missing="skip")
    >>> len(records), [m.reason for m in missing]
    (1, ['audio file does not exist'])
    """
    on_missing = options.pop("on_missing", "error")
    if source == "espeak":
        from robust_gen.speech.data.corpus import synthesize_corpus

        voices = _espeak_voices(options.get("voices"))
        filelist = synthesize_corpus(
            options.get("root"),
            voices=voices,
            utterances_per_voice=int(options.get("utterances_per_voice", 40)),
            seed=int(options.get("corpus_seed", 0)),
        )
        records = read_filelist(filelist, on_missing=on_missing)
    elif source == "filelist":
        if not options.get("path"):
            raise ValueError("data.source=filelist needs data.path (a path|text|speaker filelist)")
        records = read_filelist(
            options["path"], on_missing=on_missing, default_speaker=options.get("default_speaker")
        )
    elif source == "ljspeech":
        if not options.get("root"):
            raise ValueError("data.source=ljspeech needs data.root (the LJSpeech-1.1 folder)")
        records = read_ljspeech(
            options["root"], speaker=options.get("speaker") or "LJ", on_missing=on_missing
        )
    elif source == "libritts":
        if not options.get("root"):
            raise ValueError("data.source=libritts needs data.root (a LibriTTS subset folder)")
        records = read_libritts(options["root"], on_missing=on_missing)
    else:
        raise ValueError(f"unknown data source {source!r}; choose espeak, filelist, ljspeech or libritts")
    missing = [SkippedUtterance(path, "", "", "audio file does not exist") for path in records.skipped]
    return records, missing


def _espeak_voices(names: Sequence[str] | None):
    from robust_gen.speech.data.corpus import DEFAULT_VOICES, HELD_OUT_VOICES

    if names is None:
        return DEFAULT_VOICES
    known = {voice.speaker: voice for voice in (*DEFAULT_VOICES, *HELD_OUT_VOICES)}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown espeak voice(s) {unknown}; choose from {sorted(known)}")
    return tuple(known[name] for name in names)


# --------------------------------------------------------------------------------------------- speakers
def speaker_map(names: Iterable[str], run_dir: str | os.PathLike | None = None) -> dict[str, int]:
    """Speaker name -> id (sorted names), kept in ``run_dir/speakers.json``; an existing file wins (resume).

    Examples
    --------
    >>> speaker_map(["b", "a", "b"])
    {'a': 0, 'b': 1}
    """
    path = Path(run_dir) / SPEAKERS_FILE if run_dir is not None else None
    if path is not None and path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        return {str(name): int(index) for name, index in stored.items()}
    mapping = {name: index for index, name in enumerate(sorted(set(map(str, names))))}
    if not mapping:
        raise ValueError("no speakers: the data holds no utterances")
    if path is not None:
        write_json(path, mapping)
    return mapping


# ---------------------------------------------------------------------------------------------- dataset
class TTSDataset(Dataset):
    """Prepared records (:func:`prepare_utterances`) as ``{"tokens", "mel", "speaker"}`` items.

    Records whose speaker is not in ``speakers`` are bad input (``checks.on_bad``); :attr:`skipped` lists them.

    Examples
    --------
    >>> import tempfile
    >>> from robust_gen.speech.data.audio import save_audio
    >>> from robust_gen.speech.data.mel import MelConfig
    >>> folder = tempfile.mkdtemp()
    >>> save_audio(f"{folder}/a.wav", 0.3 * torch.randn(22050), 22050)
    >>> records = [{"path": f"{folder}/a.wav", "text": "Hi.", "speaker": s} for s in ("x", "y")]
    >>> prepared = prepare_utterances(records, cache=MelCache(folder, MelConfig()))
    >>> dataset = TTSDataset(prepared.records, {"x": 0}, DataChecks(on_bad="skip"))
    >>> len(dataset), dataset[0]["mel"].shape, dataset.skipped[0].reason
    (1, torch.Size([80, 86]), "unknown speaker 'y' (the model knows ['x'])")
    """

    def __init__(
        self,
        records: Sequence[Mapping[str, Any]],
        speakers: Mapping[str, int],
        checks: DataChecks = DataChecks(),
    ) -> None:
        self.speakers, self.checks = dict(speakers), checks
        self.skipped: list[SkippedUtterance] = []
        self.records = self._known_speakers(records, self.skipped)
        if not self.records:
            raise ValueError("no usable utterances left; check the data configuration and the skipped list")
        #: For corruption re-drawn every epoch: ``epoch -> records`` (set by :func:`build_training_set`).
        self.records_for_epoch: Callable[[int], list[dict]] | None = None
        self._epoch = 0

    def _known_speakers(self, records, skipped: list[SkippedUtterance]) -> list[dict]:
        kept = []
        for record in records:
            if record["speaker"] not in self.speakers:
                reason = f"unknown speaker {record['speaker']!r} (the model knows {sorted(self.speakers)})"
                _reject(record, reason, self.checks, skipped)
                continue
            kept.append(dict(record))
        return kept

    def set_epoch(self, epoch: int) -> None:
        """Switch to the records of ``epoch`` when the corruption is re-drawn every epoch (else nothing)."""
        if self.records_for_epoch is None or epoch == self._epoch:
            return
        records = self._known_speakers(self.records_for_epoch(epoch), [])
        if len(records) != len(self.records):
            raise ValueError(
                f"epoch {epoch} has {len(records)} utterances, epoch {self._epoch} had {len(self.records)}; "
                "an epoch-dependent corruption must keep the dataset's size"
            )
        self.records, self._epoch = records, epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        record = self.records[index]
        item = {
            "tokens": torch.tensor(record["tokens"], dtype=torch.long),
            "mel": load_mel(record["mel_file"]),
            "speaker": torch.tensor(self.speakers[record["speaker"]], dtype=torch.long),
        }
        if SAMPLE_INDEX_KEY in record:  # set by build_training_set: the manifest's index of the utterance
            item[SAMPLE_INDEX_KEY] = torch.tensor(int(record[SAMPLE_INDEX_KEY]), dtype=torch.long)
        return item


def collate_tts(items: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Pad items into ``tokens [B, T_text]``, ``token_lengths``, ``mels [B, F, T_mel]``, ``mel_lengths``, ``speakers``.

    Examples
    --------
    >>> items = [{"tokens": torch.tensor([1, 2]), "mel": torch.ones(80, 3), "speaker": torch.tensor(0)},
    ...          {"tokens": torch.tensor([3]), "mel": torch.ones(80, 5), "speaker": torch.tensor(1)}]
    >>> batch = collate_tts(items)
    >>> batch["tokens"].tolist(), batch["mels"].shape, batch["mel_lengths"].tolist()
    ([[1, 2], [3, 0]], torch.Size([2, 80, 5]), [3, 5])
    """
    if not items:
        raise ValueError("cannot collate an empty batch")
    token_lengths = torch.tensor([len(item["tokens"]) for item in items], dtype=torch.long)
    mel_lengths = torch.tensor([item["mel"].shape[-1] for item in items], dtype=torch.long)
    tokens = torch.zeros(len(items), int(token_lengths.max()), dtype=torch.long)
    mels = torch.zeros(len(items), items[0]["mel"].shape[0], int(mel_lengths.max()))
    for i, item in enumerate(items):
        tokens[i, : token_lengths[i]] = item["tokens"]
        mels[i, :, : mel_lengths[i]] = item["mel"]
    speakers = torch.stack([torch.as_tensor(item["speaker"], dtype=torch.long) for item in items])
    batch = {
        "tokens": tokens,
        "token_lengths": token_lengths,
        "mels": mels,
        "mel_lengths": mel_lengths,
        "speakers": speakers,
    }
    if all(SAMPLE_INDEX_KEY in item for item in items):
        batch[SAMPLE_INDEX_KEY] = torch.stack([torch.as_tensor(item[SAMPLE_INDEX_KEY]) for item in items])
    return batch


# ------------------------------------------------------------------------------------- the training set
SOURCE_OPTIONS = {
    "espeak": ("voices", "utterances_per_voice", "corpus_seed", "root"),
    "filelist": ("path", "default_speaker"),
    "ljspeech": ("root", "speaker"),
    "libritts": ("root",),
}


@dataclass
class TrainingSet:
    """What :func:`build_training_set` produces: the dataset, the speaker ids, the bad input left out."""

    dataset: TTSDataset
    speakers: dict[str, int]
    skipped: list[SkippedUtterance]
    num_records: int


def build_training_set(
    data: Mapping[str, Any],
    *,
    mel_config: MelConfig,
    corruption: Any,
    run_dir: str | os.PathLike,
    add_blank: bool = True,
    cleaner: str = "english",
) -> TrainingSet:
    """Records -> speaker selection -> checks and mel cache -> corruption (manifest) -> speaker ids -> dataset.

    ``data`` is the recipe's ``data`` config (``source`` and its options, ``speakers``, ``single_speaker``,
    ``target_speaker``, ``contaminant_speaker``, ``on_bad``, ``min_seconds``, ``silence_db``, ``cache_dir``).
    ``corruption`` is a :class:`robust_gen.corruption.Corruption`, applied after the checks (its ratio then
    counts usable utterances only) through :func:`robust_gen.training.recipe.apply_corruption`, which writes the
    manifest into ``run_dir``. A single-speaker set keeps the utterances labelled ``target_speaker`` afterwards.
    Writes ``speakers.json`` and ``skipped_utterances.json`` into ``run_dir``.
    """
    from robust_gen.environment import default_cache_dir
    from robust_gen.training.recipe import apply_corruption

    run_dir = Path(run_dir)
    checks = DataChecks(
        on_bad=str(data.get("on_bad", "error")),
        min_seconds=float(data.get("min_seconds", 0.3)),
        silence_db=float(data.get("silence_db", -60.0)),
    )
    source = str(data["source"])
    if source not in SOURCE_OPTIONS:
        raise ValueError(f"unknown data source {source!r}; choose one of {sorted(SOURCE_OPTIONS)}")
    options = {key: data.get(key) for key in SOURCE_OPTIONS[source] if data.get(key) is not None}
    try:
        records, skipped = load_records(source, on_missing=checks.on_bad, **options)
    except FileNotFoundError as error:
        if "audio file" not in str(error):  # a missing corpus folder or metadata file: no policy skips that
            raise
        raise FileNotFoundError(f"{error}. With data.on_bad=skip missing audio files are left out") from error

    target, contaminant = data.get("target_speaker"), data.get("contaminant_speaker")
    available = sorted({r["speaker"] for r in records})
    if data.get("single_speaker"):
        if target is None:
            raise ValueError("data.single_speaker=true needs data.target_speaker")
        wanted = [target] + (
            [contaminant] if contaminant is not None and hasattr(corruption, "contaminant") else []
        )
    else:
        wanted = list(data.get("speakers") or available)
    absent = [name for name in wanted if name not in available]
    if absent:
        raise ValueError(f"speaker(s) {absent} are not in the {source} data; it has {available}")
    records = [r for r in records if r["speaker"] in set(wanted)]

    cache_root = Path(data.get("cache_dir") or default_cache_dir() / "mels")
    prepared = prepare_utterances(records, cache=MelCache(cache_root, mel_config), checks=checks,
                                  add_blank=add_blank, cleaner=cleaner,
                                  workers=int(data.get("feature_workers") or 0))  # fmt: skip
    skipped += prepared.skipped
    clean = prepared.records
    # The clean, usable utterances as a filelist: the reference set for tools/speaker_sim.py --refs.
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_filelist([{k: r[k] for k in ("path", "text", "speaker")} for r in clean], Path(run_dir) / CLEAN_FILELIST)

    data_filter = read_data_filter(data["exclude"]) if data.get("exclude") else None

    def records_for_epoch(epoch: int) -> list[dict]:
        corrupted, _ = apply_corruption(corruption, clean, run_dir, epoch=epoch)
        # the manifest's index of each utterance, carried to the batch (per-sample losses, the audit)
        corrupted = [{**r, SAMPLE_INDEX_KEY: i} for i, r in enumerate(corrupted)]
        if data_filter is not None:
            corrupted, keep = data_filter.apply(corrupted, where="the speech data (usable utterances)")
            corrupted = [corrupted[i] for i in keep]
        if data.get("single_speaker"):
            corrupted = [r for r in corrupted if r["speaker"] == target]
        return corrupted

    corrupted = records_for_epoch(0)
    if data_filter is not None:
        log.info("data.exclude: %d utterance(s) left out, %d relabelled", len(data_filter.exclude),
                 len(data_filter.relabel))
    speakers = speaker_map([r["speaker"] for r in corrupted], run_dir)
    dataset = TTSDataset(corrupted, speakers, checks)
    if getattr(corruption, "is_epoch_dependent", False):
        dataset.records_for_epoch = records_for_epoch
    skipped += dataset.skipped
    write_skipped(skipped, run_dir)
    if skipped:
        log.warning("skipped %d bad utterance(s); see %s", len(skipped), run_dir / SKIPPED_FILE)
    log.info("training on %d utterances of %d speaker(s)", len(dataset), len(speakers))
    return TrainingSet(dataset=dataset, speakers=speakers, skipped=skipped, num_records=len(records))


def validate_tts_config(cfg: Any) -> None:
    """The speech recipe's own checks of its config, before any work (corpus, mel cache): names and ranges.

    Examples
    --------
    >>> validate_tts_config({"data": {"source": "espeak", "on_bad": "skipp"}})
    Traceback (most recent call last):
    ...
    ValueError: data.on_bad must be one of ['error', 'skip'], got 'skipp'
    """
    from robust_gen.training.settings import Rule, check_choice, check_config

    data = cfg["data"]
    check_choice("data.source", data.get("source"), tuple(SOURCE_OPTIONS))
    check_choice("data.on_bad", data.get("on_bad", "error"), BAD_INPUT_POLICIES)
    check_config(cfg, {
        "data.min_seconds": Rule("float", 0), "data.silence_db": Rule("float"),
        "data.utterances_per_voice": Rule("int", 1), "segment_seconds": Rule("float", 0, open_low=True, nullable=True),
        "samples.n_timesteps": Rule("int", 1), "samples.temperature": Rule("float", 0, open_low=True),
        "samples.length_scale": Rule("float", 0, open_low=True), "mel.sample_rate": Rule("int", 1),
        "mel.n_mels": Rule("int", 1), "mel.hop_length": Rule("int", 1),
    })
    if "samples" in cfg:
        check_choice("samples.sampler", cfg["samples"].get("sampler"), ("euler_ode", "euler_sde"))
