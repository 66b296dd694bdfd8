"""Speaker similarity of synthesized speech to reference recordings (pseudo-Huber paper, Figures 3-4).

A SpeechBrain ``EncoderClassifier`` (the hub ECAPA model, or the offline one of
:mod:`robust_gen.speech.speaker_model`) embeds every file, batched (zero padding plus relative lengths
``wav_lens``) at the model's sample rate. Each synthesized file is compared with its speaker's references:

* ``centroid_similarity``: cosine to the mean of the speaker's unit-length reference embeddings
  (the metric of the summary and the threshold counts);
* ``mean_pairwise_similarity``: mean cosine to each reference.

Inputs. Synthesized speech: audio files, folders, globs, a ``samples.jsonl`` folder, or a run directory
of the speech recipe (``<run>/samples/step_XXXXXXX/samples.jsonl``, lines ``{"path", "text", "speaker"}``
with paths relative to that folder). Without a speaker field the speaker is the file name before its last
``_`` (``us_m1_3.wav`` -> ``us_m1``). References: audio files or globs (speaker from the name), a folder
with one sub-folder per speaker, or a ``path|text|speaker`` filelist.

Bad input never stops a long evaluation silently: unreadable, empty, too short or silent files, and
samples whose speaker has no usable reference, are skipped and listed (``{"file", "reason"}``) in the
JSON summary, or raise with ``strict=True``. Reference embeddings are cached per model in a safetensors
file keyed by (path, mtime, size).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import logging
import math
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from robust_gen.speech.audio import is_silent, load_audio
from robust_gen.speech.speaker_model import encoder_sample_rate, load_speaker_encoder
from robust_gen.training.run_dir import atomic_write_text, write_json

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "AudioItem",
    "EmbeddingCache",
    "SampleScore",
    "SimilarityResult",
    "SpeakerEmbedder",
    "collect_references",
    "collect_synthesized",
    "evaluate_speaker_similarity",
    "score_samples",
    "similarity_stats",
    "speaker_from_filename",
]

DEFAULT_THRESHOLDS = (0.25, 0.5, 0.75)
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".au", ".mp3"})
SAMPLES_JSONL = "samples.jsonl"
CSV_NAME, JSON_NAME = "speaker_similarity.csv", "speaker_similarity.json"
STEPS_CSV, RESILIENCE_CSV, PLOT_NAME = "per_step.csv", "resilience.csv", "similarity_over_steps.png"


# ---------------------------------------------------------------------------------------------------
# Inputs.


@dataclass(frozen=True)
class AudioItem:
    """One synthesized file to score, with its speaker and (for run directories) run label and step."""

    path: Path
    speaker: str
    run: str = ""
    step: int | None = None


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


def _skip(skipped: list[dict], file, reason: str, role: str) -> None:
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


def _named_items(files: Iterable[Path], skipped: list[dict], run: str, step: int | None) -> list[AudioItem]:
    items = []
    for file in files:
        speaker = speaker_from_filename(file)
        if speaker is None:
            _skip(
                skipped,
                file,
                "cannot tell the speaker from the file name (expected <speaker>_<i>.wav)",
                "synthesized",
            )
        else:
            items.append(AudioItem(file, speaker, run, step))
    return items


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
            _skip(skipped, file, "listed in samples.jsonl but missing", "synthesized")
        elif not speaker:
            _skip(skipped, file, "no speaker in samples.jsonl and none in the file name", "synthesized")
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
    from robust_gen.speech.filelists import read_filelist

    references: dict[str, list[Path]] = defaultdict(list)
    skipped: list[dict] = []

    def add_named(files: Iterable[Path]) -> None:
        for file in files:
            speaker = speaker_from_filename(file)
            if speaker is None:
                _skip(
                    skipped,
                    file,
                    "cannot tell the speaker from the file name (expected <speaker>_<i>.wav)",
                    "reference",
                )
            else:
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
                _skip(skipped, missing, f"listed in filelist {target} but missing", "reference")
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
                    _skip(skipped, folder, "reference speaker folder has no audio files", "reference")
    return dict(references), skipped


# ---------------------------------------------------------------------------------------------------
# Embedding, batched, with a per-model cache.


class EmbeddingCache:
    """Embeddings of one model stored in a safetensors file, keyed by (resolved path, mtime, size).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> audio = folder / "a_0.wav"; _ = audio.write_bytes(b"x")
    >>> cache = EmbeddingCache(folder / "model.safetensors")
    >>> cache.put(audio, torch.ones(3)); cache.save()
    >>> EmbeddingCache(folder / "model.safetensors").get(audio).tolist()
    [1.0, 1.0, 1.0]
    >>> _ = audio.write_bytes(b"changed")
    >>> EmbeddingCache(folder / "model.safetensors").get(audio) is None
    True
    """

    def __init__(self, path: str | os.PathLike) -> None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        self.path = Path(path)
        self._entries: dict[str, torch.Tensor] = {}
        self._dirty = False
        if self.path.is_file():
            try:
                self._entries = load_file(str(self.path))
            except (SafetensorError, OSError, ValueError) as error:
                log.warning(
                    "ignoring unreadable embedding cache %s (%s); it will be rewritten", self.path, error
                )

    @staticmethod
    def key(file: str | os.PathLike) -> str:
        """Cache key of a file: changes whenever the file is replaced or edited."""
        file = Path(file).resolve()
        stat = file.stat()
        return hashlib.sha1(f"{file}|{stat.st_mtime_ns}|{stat.st_size}".encode()).hexdigest()

    def get(self, file: str | os.PathLike) -> torch.Tensor | None:
        """The cached embedding of ``file``, or None."""
        return self._entries.get(self.key(file))

    def put(self, file: str | os.PathLike, embedding: torch.Tensor) -> None:
        """Remember ``embedding`` for ``file`` (written by :meth:`save`)."""
        self._entries[self.key(file)] = embedding.detach().float().cpu().contiguous()
        self._dirty = True

    def save(self) -> None:
        """Write the cache atomically if anything was added."""
        from safetensors.torch import save

        if self._dirty:
            from robust_gen.training.run_dir import atomic_write_bytes

            atomic_write_bytes(self.path, save(self._entries))
            self._dirty = False


def _chunks(sequence: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(sequence), size):
        yield sequence[start : start + size]


class SpeakerEmbedder:
    """Batched speaker embeddings of audio files with a SpeechBrain ``EncoderClassifier``.

    Files are read with :func:`robust_gen.speech.audio.load_audio` (channels averaged to
    mono, resampled to the model's rate), grouped by length to limit padding, zero-padded and embedded with
    relative lengths, so padding does not enter the statistics pooling.

    Parameters
    ----------
    encoder : speechbrain.inference.classifiers.EncoderClassifier
        A loaded model (see :func:`robust_gen.speech.speaker_model.load_speaker_encoder`).
    batch_size : int
        Files per forward pass.
    min_seconds : float
        Shorter files are skipped (the convolutions need context).
    silence_db : float
        Files whose peak or RMS level is below this (dBFS) are skipped as silent.
    progress : bool, optional
        Show a tqdm bar; default: for lists of 32 files or more.
    """

    def __init__(
        self,
        encoder,
        *,
        batch_size: int = 16,
        min_seconds: float = 0.2,
        silence_db: float = -60.0,
        progress: bool | None = None,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.encoder = encoder
        self.sample_rate = encoder_sample_rate(encoder)
        self.batch_size = batch_size
        self.min_seconds = min_seconds
        self.silence_db = silence_db
        self.progress = progress

    @classmethod
    def from_model(cls, model: str | os.PathLike, *, device: str = "cpu", **kwargs) -> SpeakerEmbedder:
        """Load ``model`` (directory or hub id) with :func:`load_speaker_encoder` and wrap it."""
        return cls(load_speaker_encoder(model, device=device), **kwargs)

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the model's weights, buffers and scalar settings: the key of its embedding cache."""
        digest = hashlib.sha256(f"rate={self.sample_rate}".encode())
        for name, module in sorted(self.encoder.mods.named_modules()):
            settings = {
                k: v for k, v in vars(module).items() if isinstance(v, (bool, int, float, str, tuple))
            }
            digest.update(f"{name}:{type(module).__qualname__}:{sorted(settings.items())}".encode())
        for name, tensor in sorted(self.encoder.mods.state_dict().items()):
            data = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
            digest.update(data.view(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def load(self, path: str | os.PathLike) -> torch.Tensor:
        """Read one file at the model's rate; ValueError for empty, too short or silent audio."""
        wav = load_audio(path, self.sample_rate)
        if wav.numel() < self.min_seconds * self.sample_rate:
            raise ValueError(f"too short: {wav.numel() / self.sample_rate:.3f} s < {self.min_seconds} s")
        if is_silent(wav, self.silence_db):
            raise ValueError(f"silent (peak or RMS level below {self.silence_db:g} dBFS)")
        return wav

    @torch.no_grad()
    def embed_waveforms(self, waves: Sequence[torch.Tensor]) -> torch.Tensor:
        """Embeddings ``[N, D]`` (float32, CPU) of mono waveforms at :attr:`sample_rate`, in one batch.

        Examples
        --------
        >>> from speechbrain.inference.speaker import EncoderClassifier
        >>> from robust_gen.speech.speaker_model import SpeakerModelSpec, build_speaker_modules, hyperparams_yaml
        >>> hparams = build_speaker_modules(hyperparams_yaml(SpeakerModelSpec.tiny(), 2, "unsaved"))
        >>> embedder = SpeakerEmbedder(EncoderClassifier(modules=hparams["modules"], hparams=hparams))
        >>> embedder.embed_waveforms([torch.randn(8000), torch.randn(16000)]).shape
        torch.Size([2, 16])
        """
        if not waves:
            raise ValueError("no waveforms to embed")
        lengths = torch.tensor([w.numel() for w in waves], dtype=torch.float64)
        batch = torch.zeros(len(waves), int(lengths.max()))
        for row, wav in enumerate(waves):
            batch[row, : wav.numel()] = wav
        relative = (lengths / lengths.max()).float()
        embeddings = self.encoder.encode_batch(batch, relative, normalize=False)
        return embeddings.reshape(len(waves), -1).float().cpu()

    def embed_files(
        self,
        paths: Sequence[str | os.PathLike],
        *,
        cache: EmbeddingCache | None = None,
        desc: str = "embedding",
        role: str = "synthesized",
    ) -> tuple[dict[Path, torch.Tensor], list[dict]]:
        """Embed files in batches; return ``{path: embedding [D]}`` and the skipped ``{"file", "reason"}``.

        Cached embeddings are reused and new ones added to ``cache`` (saved at the end).

        Examples
        --------
        >>> import tempfile
        >>> from speechbrain.inference.speaker import EncoderClassifier
        >>> from robust_gen.speech.audio import save_audio
        >>> from robust_gen.speech.speaker_model import SpeakerModelSpec, build_speaker_modules, hyperparams_yaml
        >>> hparams = build_speaker_modules(hyperparams_yaml(SpeakerModelSpec.tiny(), 2, "unsaved"))
        >>> embedder = SpeakerEmbedder(EncoderClassifier(modules=hparams["modules"], hparams=hparams))
        >>> folder = tempfile.mkdtemp()
        >>> save_audio(f"{folder}/s_0.wav", 0.3 * torch.randn(22050), 22050)
        >>> save_audio(f"{folder}/s_1.wav", torch.zeros(22050), 22050)
        >>> embeddings, skipped = embedder.embed_files([f"{folder}/s_0.wav", f"{folder}/s_1.wav"])
        >>> [tuple(e.shape) for e in embeddings.values()], skipped[0]["reason"]
        ([(16,)], 'silent (peak or RMS level below -60 dBFS)')
        """
        from tqdm.auto import tqdm

        unique = list(dict.fromkeys(Path(p) for p in paths))
        results: dict[Path, torch.Tensor] = {}
        skipped: list[dict] = []
        todo = []
        for path in unique:
            cached = cache.get(path) if cache is not None and path.is_file() else None
            if cached is not None:
                results[path] = cached
            else:
                todo.append(path)
        show = self.progress if self.progress is not None else len(todo) >= 32
        with tqdm(total=len(todo), desc=desc, unit="file", disable=not show) as bar:
            # Load a few batches at a time and sort them by length: little padding, bounded memory.
            for chunk in _chunks(todo, self.batch_size * 8):
                loaded = []
                for path in chunk:
                    try:
                        loaded.append((path, self.load(path)))
                    except (ValueError, FileNotFoundError) as error:
                        _skip(skipped, path, str(error), role)
                loaded.sort(key=lambda pair: pair[1].numel())
                for batch in _chunks(loaded, self.batch_size):
                    for (path, _), embedding in zip(batch, self.embed_waveforms([w for _, w in batch])):
                        results[path] = embedding
                        if cache is not None:
                            cache.put(path, embedding)
                bar.update(len(chunk))
        if cache is not None:
            cache.save()
        return results, skipped


# ---------------------------------------------------------------------------------------------------
# Scores and summaries.


@dataclass(frozen=True)
class SampleScore:
    """Similarity of one synthesized file to its speaker's references."""

    file: str
    speaker: str
    run: str
    step: int | None
    centroid_similarity: float
    mean_pairwise_similarity: float


def score_samples(
    items: Sequence[AudioItem],
    sample_embeddings: dict[Path, torch.Tensor],
    reference_embeddings: dict[str, torch.Tensor],
) -> tuple[list[SampleScore], list[dict]]:
    """Cosine of each sample to its speaker's reference centroid and mean cosine to each reference.

    Items without an embedding (skipped while embedding) are left out; items whose speaker has no
    reference embedding are skipped with a reason.

    Examples
    --------
    >>> items = [AudioItem(Path("a_0.wav"), "a"), AudioItem(Path("z_0.wav"), "z")]
    >>> embeddings = {Path("a_0.wav"): torch.tensor([1.0, 0.0]), Path("z_0.wav"): torch.tensor([0.0, 1.0])}
    >>> scores, skipped = score_samples(items, embeddings, {"a": torch.tensor([[1.0, 0.0], [0.0, 1.0]])})
    >>> round(scores[0].centroid_similarity, 4), scores[0].mean_pairwise_similarity, skipped[0]["reason"]
    (0.7071, 0.5, "no usable reference audio for speaker 'z' (reference speakers: a)")
    """
    unit_refs = {
        s: torch.nn.functional.normalize(e.double(), dim=1) for s, e in reference_embeddings.items() if len(e)
    }
    centroids = {s: torch.nn.functional.normalize(e.mean(dim=0), dim=0) for s, e in unit_refs.items()}
    known = ", ".join(sorted(unit_refs)) or "none"
    scores, skipped = [], []
    for item in items:
        embedding = sample_embeddings.get(item.path)
        if embedding is None:
            continue
        if item.speaker not in unit_refs:
            _skip(
                skipped,
                item.path,
                f"no usable reference audio for speaker {item.speaker!r} (reference speakers: {known})",
                "synthesized",
            )
            continue
        unit = torch.nn.functional.normalize(embedding.double(), dim=0)
        scores.append(
            SampleScore(
                file=str(item.path),
                speaker=item.speaker,
                run=item.run,
                step=item.step,
                centroid_similarity=float(unit @ centroids[item.speaker]),
                mean_pairwise_similarity=float((unit_refs[item.speaker] @ unit).mean()),
            )
        )
    return scores, skipped


def threshold_key(threshold: float) -> str:
    """JSON key of a threshold (``0.25`` -> ``"0.25"``)."""
    return f"{threshold:.4g}"


def similarity_stats(scores: Sequence[SampleScore], thresholds: Sequence[float]) -> dict:
    """Count, mean, sample std (ddof 1), min, max of the centroid similarity, the pairwise mean, and the
    number of samples strictly below each threshold (the pseudo-Huber paper's Figure 4).

    Examples
    --------
    >>> s = [SampleScore("f", "a", "", None, v, v) for v in (0.2, 0.6, 0.8)]
    >>> stats = similarity_stats(s, [0.25, 0.7])
    >>> stats["count"], round(stats["mean"], 4), stats["below"]
    (3, 0.5333, {'0.25': 1, '0.7': 2})
    """
    values = torch.tensor([s.centroid_similarity for s in scores], dtype=torch.float64)
    pairwise = torch.tensor([s.mean_pairwise_similarity for s in scores], dtype=torch.float64)
    count = len(scores)
    return {
        "count": count,
        "mean": float(values.mean()) if count else math.nan,
        "std": float(values.std()) if count > 1 else 0.0,
        "min": float(values.min()) if count else math.nan,
        "max": float(values.max()) if count else math.nan,
        "pairwise_mean": float(pairwise.mean()) if count else math.nan,
        "pairwise_std": float(pairwise.std()) if count > 1 else 0.0,
        "below": {threshold_key(t): int((values < t).sum()) for t in thresholds},
    }


def per_step_table(scores: Sequence[SampleScore], thresholds: Sequence[float]) -> list[dict]:
    """One row per (run, step): the statistics of :func:`similarity_stats`, sorted by run then step."""
    groups: dict[tuple[str, int | None], list[SampleScore]] = defaultdict(list)
    for score in scores:
        groups[(score.run, score.step)].append(score)
    order = sorted(groups, key=lambda key: (key[0], -1 if key[1] is None else key[1]))
    return [
        {"run": run, "step": step, **similarity_stats(groups[(run, step)], thresholds)} for run, step in order
    ]


def resilience_table(per_step: Sequence[dict], clean_run: str) -> list[dict]:
    """Resilience per run and step: mean similarity of the run minus that of the clean run at the same step.

    Examples
    --------
    >>> rows = [{"run": "clean", "step": 10, "mean": 0.8}, {"run": "l2", "step": 10, "mean": 0.6},
    ...         {"run": "l2", "step": 20, "mean": 0.5}]
    >>> [(r["run"], r["step"], round(r["resilience"], 3)) for r in resilience_table(rows, "clean")]
    [('l2', 10, -0.2)]
    """
    clean = {row["step"]: row["mean"] for row in per_step if row["run"] == clean_run}
    if not clean:
        raise ValueError(f"the clean run {clean_run!r} has no scored samples")
    rows = [
        {"run": row["run"], "step": row["step"], "mean": row["mean"], "clean_mean": clean[row["step"]],
         "resilience": row["mean"] - clean[row["step"]]}
        for row in per_step
        if row["run"] != clean_run and row["step"] in clean
    ]  # fmt: skip
    if not rows:
        others = sorted({(r["run"], r["step"]) for r in per_step if r["run"] != clean_run}, key=str)
        raise ValueError(
            f"no step in common with the clean run {clean_run!r} (clean steps {sorted(clean, key=str)}, "
            f"others {others}); synthesize at the same checkpoints"
        )
    return rows


# ---------------------------------------------------------------------------------------------------
# The whole evaluation and its files.


@dataclass
class SimilarityResult:
    """Everything :func:`evaluate_speaker_similarity` computed, and the files it wrote."""

    scores: list[SampleScore]
    skipped: list[dict]
    summary: dict
    per_step: list[dict]
    resilience: list[dict] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)


def _unique_labels(runs: Sequence[str | os.PathLike]) -> list[str]:
    paths = [Path(r).resolve() for r in runs]
    labels = [p.name for p in paths]
    for index, label in enumerate(labels):
        if labels.count(label) > 1:
            labels[index] = f"{paths[index].parent.name}/{label}"
    if len(set(labels)) != len(labels):
        raise ValueError(f"runs must be distinct directories, got {[str(p) for p in paths]}")
    return labels


def _collect_all(
    synthesized: Sequence[str | os.PathLike], runs: Sequence[str | os.PathLike], clean_run
) -> tuple[list[AudioItem], list[dict], str | None]:
    """Items of the plain inputs and of every run (the clean one last); the clean run's label."""
    if not synthesized and not runs:
        raise ValueError("nothing to score: give synthesized files (--synth) or run directories (--runs)")
    items, skipped = collect_synthesized(synthesized) if synthesized else ([], [])
    all_runs = [*runs, *([clean_run] if clean_run is not None else [])]
    labels = _unique_labels(all_runs)
    for run, label in zip(all_runs, labels):
        if not is_run_dir(Path(run)):
            raise ValueError(
                f"{run} is not a run directory of the speech recipe (no samples/*/{SAMPLES_JSONL})"
            )
        found, lost = collect_synthesized([run], run=label)
        items += found
        skipped += lost
    if not items:
        raise ValueError(f"no synthesized audio found in {[*map(str, synthesized), *map(str, all_runs)]}")
    return items, skipped, labels[-1] if clean_run is not None else None


def _reference_embeddings(
    embedder: SpeakerEmbedder, references: Sequence, speakers: set[str], cache: EmbeddingCache | None
) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """``{speaker: [R, D]}`` for the speakers that were synthesized (references of others are not embedded)."""
    files, skipped = collect_references(references)
    if not any(files.get(s) for s in speakers):
        raise ValueError(
            f"no reference audio for any synthesized speaker {sorted(speakers)}; reference speakers: "
            f"{sorted(files)}. Do the file names or filelist speakers match?"
        )
    wanted = [f for s in sorted(speakers) for f in files.get(s, [])]
    embeddings, lost = embedder.embed_files(wanted, cache=cache, desc="references", role="reference")
    by_speaker = {}
    for speaker in speakers:
        usable = [embeddings[f] for f in files.get(speaker, []) if f in embeddings]
        if usable:
            by_speaker[speaker] = torch.stack(usable)
    return by_speaker, skipped + lost


def evaluate_speaker_similarity(
    embedder: SpeakerEmbedder,
    references: Sequence[str | os.PathLike],
    synthesized: Sequence[str | os.PathLike] = (),
    *,
    runs: Sequence[str | os.PathLike] = (),
    clean_run: str | os.PathLike | None = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    calibrated_threshold: float | None = None,
    out_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    strict: bool = False,
    model_name: str = "",
) -> SimilarityResult:
    """Score synthesized speech against references and write the CSV, JSON, step table, plot.

    Parameters
    ----------
    embedder : SpeakerEmbedder
        The speaker model.
    references : sequence
        Reference inputs (see :func:`collect_references`).
    synthesized : sequence
        Synthesized inputs (see :func:`collect_synthesized`).
    runs : sequence
        Run directories of the speech recipe, one curve each (labelled by folder name).
    clean_run : str or PathLike, optional
        Run trained on clean data: its samples are scored too, and each other run's mean similarity minus
        the clean run's at the same step is its resilience. Clean samples stay out of ``overall`` and
        ``per_speaker``.
    thresholds : sequence of float
        Similarity thresholds for the below-threshold counts; ``calibrated_threshold`` is added.
    out_dir : str or PathLike, optional
        Where to write the files (nothing written when None).
    cache_dir : str or PathLike, optional
        Folder of the reference-embedding caches (one safetensors file per model); None: no cache.
    strict : bool
        Raise ValueError listing the unusable files instead of skipping them.
    model_name : str
        Recorded in the summary.
    """
    extra = {float(calibrated_threshold)} if calibrated_threshold is not None else set()
    thresholds = sorted({float(t) for t in thresholds} | extra)
    items, skipped, clean_label = _collect_all(synthesized, runs, clean_run)
    cache = None
    if cache_dir is not None:
        cache = EmbeddingCache(Path(cache_dir) / f"{embedder.fingerprint[:24]}.safetensors")
    by_speaker, lost = _reference_embeddings(embedder, references, {i.speaker for i in items}, cache)
    skipped += lost
    embeddings, lost = embedder.embed_files([i.path for i in items], desc="synthesized", role="synthesized")
    skipped += lost
    scores, lost = score_samples(items, embeddings, by_speaker)
    skipped += lost
    listing = "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:5])
    if strict and skipped:
        raise ValueError(f"{len(skipped)} file(s) could not be used (strict mode): {listing}")
    if not scores:
        raise ValueError(f"no synthesized file could be scored; {len(skipped)} skipped, e.g. {listing}")
    main = [s for s in scores if s.run != clean_label]
    per_step = per_step_table(scores, thresholds)
    resilience = resilience_table(per_step, clean_label) if clean_label is not None else []
    per_speaker = defaultdict(list)
    for score in main:
        per_speaker[score.speaker].append(score)
    summary = {
        "model": model_name,
        "model_fingerprint": embedder.fingerprint[:24],
        "sample_rate": embedder.sample_rate,
        "metric": "centroid_similarity",
        "thresholds": thresholds,
        "calibrated_threshold": calibrated_threshold,
        "num_scored": len(scores),
        "num_skipped": len(skipped),
        "skipped": skipped,
        "reference_counts": {s: len(e) for s, e in sorted(by_speaker.items())},
        "overall": similarity_stats(main, thresholds) if main else None,
        "per_speaker": {s: similarity_stats(v, thresholds) for s, v in sorted(per_speaker.items())},
        "per_step": per_step,
        "clean_run": clean_label,
        "resilience": resilience,
    }
    result = SimilarityResult(scores, skipped, summary, per_step, resilience)
    if out_dir is not None:
        result.files = write_reports(result, out_dir)
    return result


def _csv_text(rows: Sequence[dict], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return buffer.getvalue()


def write_reports(result: SimilarityResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the per-file CSV, the JSON summary and, for several steps or runs, the step table and plot."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / CSV_NAME, "json": out / JSON_NAME}
    columns = ["file", "speaker", "run", "step", "centroid_similarity", "mean_pairwise_similarity"]
    atomic_write_text(files["csv"], _csv_text([asdict(s) for s in result.scores], columns))
    thresholds = result.summary["thresholds"]
    if len(result.per_step) > 1 or any(row["step"] is not None for row in result.per_step):
        flat = [{**{k: v for k, v in row.items() if k != "below"},
                 **{f"below_{k}": v for k, v in row["below"].items()}} for row in result.per_step]  # fmt: skip
        step_columns = ["run", "step", "count", "mean", "std", "pairwise_mean", "min", "max"]
        step_columns += [f"below_{threshold_key(t)}" for t in thresholds]
        files["per_step"] = out / STEPS_CSV
        atomic_write_text(files["per_step"], _csv_text(flat, step_columns))
        if plot_similarity_over_steps(result, out / PLOT_NAME):
            files["plot"] = out / PLOT_NAME
    if result.resilience:
        files["resilience"] = out / RESILIENCE_CSV
        columns = ["run", "step", "mean", "clean_mean", "resilience"]
        atomic_write_text(files["resilience"], _csv_text(result.resilience, columns))
    result.summary["files"] = {k: p.name for k, p in files.items()}
    write_json(files["json"], _json_safe(result.summary))
    return files


def _json_safe(value):
    """NaN -> None, so the summary is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def plot_similarity_over_steps(result: SimilarityResult, path: str | os.PathLike) -> bool:
    """Mean similarity (± std) against training step, one line per run, the clean run dashed, and the
    resilience below when there is a clean run (the pseudo-Huber paper's Figure 3). False if no step."""
    from matplotlib.figure import Figure

    rows = [row for row in result.per_step if row["step"] is not None]
    if not rows:
        return False
    clean = result.summary.get("clean_run")
    figure = Figure(figsize=(7, 6.5 if result.resilience else 4), layout="constrained")
    axes = figure.subplots(2 if result.resilience else 1, 1, squeeze=False)[:, 0]
    colors = {}
    for run in sorted({row["run"] for row in rows}):
        series = sorted((row for row in rows if row["run"] == run), key=lambda row: row["step"])
        steps = [row["step"] for row in series]
        mean = torch.tensor([row["mean"] for row in series])
        std = torch.tensor([row["std"] for row in series])
        label = run or "samples"
        if run == clean and "clean" not in run.lower():
            label += " (clean)"
        (line,) = axes[0].plot(steps, mean, marker="o", linestyle="--" if run == clean else "-", label=label)
        axes[0].fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.15)
        colors[run] = line.get_color()
    calibrated = result.summary.get("calibrated_threshold")
    if calibrated is not None:
        axes[0].axhline(calibrated, color="gray", linewidth=0.8, linestyle=":", label="calibrated threshold")
    axes[0].set(
        xlabel="training step", ylabel="speaker similarity (cosine)", title="Speaker similarity over training"
    )
    axes[0].legend(fontsize="small")
    if result.resilience:
        for run in sorted({row["run"] for row in result.resilience}):
            series = [r for r in result.resilience if r["run"] == run and r["step"] is not None]
            series.sort(key=lambda r: r["step"])
            axes[1].plot(
                [r["step"] for r in series], [r["resilience"] for r in series], marker="o", label=run,
                color=colors.get(run),
            )  # fmt: skip
        axes[1].axhline(0.0, color="gray", linewidth=0.8)
        axes[1].set(xlabel="training step", ylabel="resilience (run - clean)")
        axes[1].legend(fontsize="small")
    figure.savefig(path, dpi=120)
    return True
