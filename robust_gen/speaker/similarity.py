"""Speaker similarity of synthesized speech to reference recordings (pseudo-Huber paper, Figures 3-4).

A SpeechBrain ``EncoderClassifier`` (the hub ECAPA model, or the offline one of
:mod:`robust_gen.speaker.model`) embeds every file at the model's sample rate, unpadded (only files of equal
length share a batch, so no file's embedding depends on its neighbours). Each synthesized file is compared
with its speaker's references:

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

import hashlib
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from functools import cached_property
from pathlib import Path

import torch

from robust_gen.speaker.activity import (
    ACTIVITY_MODES,
    DEFAULT_ACTIVITY_CHECK,
    ActivityCheck,
    SpeechActivity,
    activity_problem,
    speech_activity,
)
from robust_gen.speaker.ceiling import CeilingSpec, centroids, speaker_ceilings
from robust_gen.speaker.ceiling import identify as nearest_speakers
from robust_gen.speaker.inputs import (
    SAMPLES_JSONL,
    AudioItem,
    collect_references,
    collect_synthesized,
    file_fingerprint,
    is_run_dir,
    record_skip,
)
from robust_gen.speaker.loading import encoder_sample_rate, load_speaker_encoder
from robust_gen.speaker.reports import (
    DEFAULT_THRESHOLDS,
    SampleScore,
    SimilarityResult,
    last_steps,
    per_step_table,
    resilience_table,
    similarity_stats,
    write_reports,
)
from robust_gen.speech.data.audio import is_silent, load_audio

log = logging.getLogger(__name__)

__all__ = [
    "EmbeddingCache",
    "SpeakerEmbedder",
    "evaluate_speaker_similarity",
    "measure_activity",
    "score_samples",
]


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
        """Cache key of a file: changes whenever the file is replaced or edited (:func:`file_fingerprint`)."""
        return file_fingerprint(file)

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

    Files are read with :func:`robust_gen.speech.data.audio.load_audio` (channels averaged to
    mono, resampled to the model's rate) and embedded without any padding: only waveforms of exactly the
    same length share a forward pass. Relative lengths keep padding out of the sentence mean and the
    statistics pooling, but not out of the ECAPA convolutions: the frames next to the end of a padded file
    see zeros where alone they see reflected frames, which moved single embeddings by up to ~1e-2 in cosine
    depending on which longer files shared the batch. A file's embedding is therefore a function of the
    file alone (to float rounding, ~1e-6).

    Parameters
    ----------
    encoder : speechbrain.inference.classifiers.EncoderClassifier
        A loaded model (see :func:`robust_gen.speaker.model.load_speaker_encoder`).
    batch_size : int
        Most files per forward pass (only files of equal length are batched together).
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
        # "unpadded": embeddings cached before files stopped sharing padded batches are not reused
        digest = hashlib.sha256(f"rate={self.sample_rate}|unpadded".encode())
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
        """Embeddings ``[N, D]`` (float32, CPU) of mono waveforms at :attr:`sample_rate`; equal lengths batched.

        Examples
        --------
        >>> from speechbrain.inference.speaker import EncoderClassifier
        >>> from robust_gen.speaker.model import SpeakerModelSpec, build_speaker_modules, hyperparams_yaml
        >>> hparams = build_speaker_modules(hyperparams_yaml(SpeakerModelSpec.tiny(), 2, "unsaved"))
        >>> embedder = SpeakerEmbedder(EncoderClassifier(modules=hparams["modules"], hparams=hparams))
        >>> embedder.embed_waveforms([torch.randn(8000), torch.randn(16000)]).shape
        torch.Size([2, 16])
        """
        if not waves:
            raise ValueError("no waveforms to embed")
        by_length: dict[int, list[int]] = defaultdict(list)
        for index, wav in enumerate(waves):
            by_length[wav.numel()].append(index)
        rows: list[torch.Tensor | None] = [None] * len(waves)
        # One forward per distinct length, never padded: padding changes the convolutions' edge frames.
        for indices in by_length.values():
            for group in _chunks(indices, self.batch_size):
                batch = torch.stack([waves[i].reshape(-1).float() for i in group])
                embeddings = self.encoder.encode_batch(batch, torch.ones(len(group)), normalize=False)
                for i, embedding in zip(group, embeddings.reshape(len(group), -1)):
                    rows[i] = embedding.float().cpu()
        return torch.stack(rows)

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
        >>> from robust_gen.speech.data.audio import save_audio
        >>> from robust_gen.speaker.model import SpeakerModelSpec, build_speaker_modules, hyperparams_yaml
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
            # A few batches loaded at a time bound the memory; embed_waveforms batches equal lengths only.
            for chunk in _chunks(todo, self.batch_size * 8):
                loaded = []
                for path in chunk:
                    try:
                        loaded.append((path, self.load(path)))
                    except (ValueError, FileNotFoundError) as error:
                        record_skip(skipped, path, str(error), role)
                if loaded:
                    embeddings = self.embed_waveforms([w for _, w in loaded])
                    for (path, _), embedding in zip(loaded, embeddings):
                        results[path] = embedding
                        if cache is not None:
                            cache.put(path, embedding)
                bar.update(len(chunk))
        if cache is not None:
            cache.save()
        return results, skipped


# ---------------------------------------------------------------------------------------------------
# Scores (summaries and report files: robust_gen.speaker.reports).


def score_samples(
    items: Sequence[AudioItem],
    sample_embeddings: dict[Path, torch.Tensor],
    reference_embeddings: dict[str, torch.Tensor],
    activities: dict[Path, tuple[SpeechActivity, bool]] | None = None,
    *,
    compare_to: Sequence[str] = (),
    identify_speaker: bool = False,
) -> tuple[list[SampleScore], list[dict]]:
    """Cosine of each sample to its speaker's reference centroid and mean cosine to each reference.

    Items without an embedding (skipped while embedding) are left out; items whose speaker has no
    reference embedding are skipped with a reason. ``activities`` (``{path: (activity, passed)}``, see
    :func:`measure_activity`) adds each file's level and speech activity to its score. ``compare_to``: speakers
    (with reference embeddings) whose centroid similarity is added as ``similarity_to``; ``identify_speaker``:
    name the nearest centroid among every speaker of ``reference_embeddings`` (``identified_as``).

    Examples
    --------
    >>> items = [AudioItem(Path("a_0.wav"), "a"), AudioItem(Path("z_0.wav"), "z")]
    >>> embeddings = {Path("a_0.wav"): torch.tensor([1.0, 0.0]), Path("z_0.wav"): torch.tensor([0.0, 1.0])}
    >>> scores, skipped = score_samples(items, embeddings, {"a": torch.tensor([[1.0, 0.0], [0.0, 1.0]])})
    >>> round(scores[0].centroid_similarity, 4), scores[0].mean_pairwise_similarity, skipped[0]["reason"]
    (0.7071, 0.5, "no usable reference audio for speaker 'z' (reference speakers: a)")
    >>> refs = {"a": torch.tensor([[1.0, 0.0]]), "b": torch.tensor([[0.6, 0.8]])}
    >>> scores, _ = score_samples(items[:1], {Path("a_0.wav"): torch.tensor([0.5, 0.9])}, refs,
    ...                           compare_to=["b"], identify_speaker=True)
    >>> round(scores[0].similarity_to["b"], 3), scores[0].identified_as
    (0.991, 'b')
    """
    unit_refs = {
        s: torch.nn.functional.normalize(e.double(), dim=1) for s, e in reference_embeddings.items() if len(e)
    }
    speaker_centroids = centroids(unit_refs)
    missing = [s for s in compare_to if s not in speaker_centroids]
    if missing:
        raise ValueError(f"no reference embeddings of compare_to speaker(s) {missing}")
    known = ", ".join(sorted(unit_refs)) or "none"
    scores, skipped = [], []
    for item in items:
        embedding = sample_embeddings.get(item.path)
        if embedding is None:
            continue
        if item.speaker not in unit_refs:
            record_skip(
                skipped,
                item.path,
                f"no usable reference audio for speaker {item.speaker!r} (reference speakers: {known})",
                "synthesized",
            )
            continue
        unit = torch.nn.functional.normalize(embedding.double(), dim=0)
        measured = (activities or {}).get(item.path)
        extra: dict = {}
        if measured is not None:
            found, passed = measured
            extra = {"rms_dbfs": found.rms_dbfs, "active_share": found.active_share,
                     "voiced_share": found.voiced_share, "speech_ok": passed}  # fmt: skip
        if compare_to:
            extra["similarity_to"] = {s: float(unit @ speaker_centroids[s]) for s in compare_to}
        if identify_speaker:
            extra["identified_as"] = nearest_speakers(unit[None], speaker_centroids)[0]
        scores.append(
            SampleScore(
                file=str(item.path),
                speaker=item.speaker,
                run=item.run,
                step=item.step,
                centroid_similarity=float(unit @ speaker_centroids[item.speaker]),
                mean_pairwise_similarity=float((unit_refs[item.speaker] @ unit).mean()),
                **extra,
            )
        )
    return scores, skipped


def measure_activity(
    embedder: SpeakerEmbedder, paths: Sequence[Path], check: ActivityCheck = DEFAULT_ACTIVITY_CHECK
) -> dict[Path, tuple[SpeechActivity, bool]]:
    """Level and speech activity of each readable file at the embedder's rate: ``{path: (activity, passed)}``
    (unreadable, too short or silent files are left out: the embedding step skips them with the reason).

    Examples
    --------
    >>> import tempfile, types
    >>> from robust_gen.speech.data.audio import save_audio
    >>> folder = Path(tempfile.mkdtemp())
    >>> t = torch.arange(16000) / 16000
    >>> save_audio(folder / "a_0.wav", 0.3 * torch.sin(2 * torch.pi * 150 * t), 16000)
    >>> quiet = 3e-4 * torch.sin(2 * torch.pi * 150 * t); quiet[8000] = 1.0
    >>> save_audio(folder / "a_1.wav", quiet, 16000)
    >>> embedder = SpeakerEmbedder(types.SimpleNamespace(audio_normalizer=types.SimpleNamespace(sample_rate=16000)))
    >>> found = measure_activity(embedder, [folder / "a_0.wav", folder / "a_1.wav"])
    >>> [passed for _, passed in found.values()]
    [True, False]
    """
    found = {}
    for path in paths:
        try:
            wav = embedder.load(path)
        except (ValueError, FileNotFoundError):
            continue  # embed_files records the reason
        activity = speech_activity(wav, embedder.sample_rate, level_db=check.level_db)
        found[path] = (activity, activity_problem(activity, check) is None)
    return found


# ---------------------------------------------------------------------------------------------------
# The whole evaluation and its files.


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
    embedder: SpeakerEmbedder,
    files: dict[str, list[Path]],
    synthesized: set[str],
    also: Sequence[str],
    cache: EmbeddingCache | None,
) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """``{speaker: [R, D]}`` for the synthesized speakers and ``also`` (references of others are not embedded)."""
    if not any(files.get(s) for s in synthesized):
        raise ValueError(
            f"no reference audio for any synthesized speaker {sorted(synthesized)}; reference speakers: "
            f"{sorted(files)}. Do the file names or filelist speakers match?"
        )
    speakers = sorted(synthesized | set(also))
    wanted = [f for s in speakers for f in files.get(s, [])]
    embeddings, lost = embedder.embed_files(wanted, cache=cache, desc="references", role="reference")
    by_speaker = {}
    for speaker in speakers:
        usable = [embeddings[f] for f in files.get(speaker, []) if f in embeddings]
        if usable:
            by_speaker[speaker] = torch.stack(usable)
    return by_speaker, lost


def _check_compared(compare_to: Sequence[str], files: dict[str, list[Path]], by_speaker: dict) -> None:
    """One clear error for a ``compare_to`` speaker without (usable) reference audio."""
    for speaker in compare_to:
        if speaker not in by_speaker:
            why = "no usable reference audio (all skipped)" if files.get(speaker) else "no reference audio"
            raise ValueError(
                f"compare_to speaker {speaker!r} has {why}; reference speakers found: "
                f"{sorted(s for s, f in files.items() if f)}. Give references that include it (--refs)"
            )


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
    activity: str = "exclude",
    activity_check: ActivityCheck = DEFAULT_ACTIVITY_CHECK,
    compare_to: Sequence[str] = (),
    identify: bool = False,
    ceiling: CeilingSpec | None = None,
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
    activity : {"exclude", "flag", "off"}
        Speech-activity check of the synthesized files (:mod:`robust_gen.speaker.activity`): files without
        usable speech (mostly silence or clicks) are skipped with the reason (``exclude``), or scored and
        marked ``speech_ok=False`` (``flag``); each score carries the file's level and activity unless
        ``off``. The summary counts them (``no_speech``).
    activity_check : ActivityCheck
        The check's level and least active / voiced shares.
    compare_to : sequence of str
        Speakers whose centroid similarity is also computed for every synthesized file (``similarity_to``;
        e.g. the contaminant of a speaker-contamination study). Their references must be among ``references``.
    identify : bool
        Embed the references of every reference speaker and name each file's nearest centroid
        (``identified_as``; per step, ``identified``: the share named as their own speaker).
    ceiling : CeilingSpec, optional
        Measure the vocoded-real ceiling of each synthesized speaker (:func:`speaker_ceilings`; held-out
        references through ``ceiling.vocoder``) into the summary's ``ceiling``; cached under ``cache_dir``.
    """
    if activity not in ACTIVITY_MODES:
        raise ValueError(f"activity must be one of {ACTIVITY_MODES}, got {activity!r}")
    extra = {float(calibrated_threshold)} if calibrated_threshold is not None else set()
    thresholds = sorted({float(t) for t in thresholds} | extra)
    items, skipped, clean_label = _collect_all(synthesized, runs, clean_run)
    cache = None
    if cache_dir is not None:
        cache = EmbeddingCache(Path(cache_dir) / f"{embedder.fingerprint[:24]}.safetensors")
    compare_to = list(dict.fromkeys(compare_to))
    files, lost = collect_references(references)
    skipped += lost
    synthesized_speakers = {i.speaker for i in items}
    _check_compared(compare_to, files, {s for s, f in files.items() if f})  # before embedding: a typo fails fast
    also = sorted(s for s, f in files.items() if f) if identify else compare_to
    by_speaker, lost = _reference_embeddings(embedder, files, synthesized_speakers, also, cache)
    skipped += lost
    _check_compared(compare_to, files, by_speaker)
    if identify and len(by_speaker) < 2:
        raise ValueError(
            f"identification needs references of at least two speakers, got {sorted(by_speaker)}: pass the "
            "folder with every voice (one sub-folder per speaker) as references"
        )
    ceilings = None
    if ceiling is not None:
        scored = sorted(s for s in synthesized_speakers if s in by_speaker)
        ceilings = speaker_ceilings(embedder, files, scored, ceiling, cache_dir=cache_dir, reference_cache=cache)
    activities: dict[Path, tuple[SpeechActivity, bool]] = {}
    if activity != "off":
        activities = measure_activity(embedder, [i.path for i in items], activity_check)
    failed = [path for path, (_, passed) in activities.items() if not passed]
    to_embed = [i.path for i in items]
    if activity == "exclude":
        for path in failed:
            record_skip(skipped, path, activity_problem(activities[path][0], activity_check), "synthesized")
        excluded = set(failed)
        to_embed = [p for p in to_embed if p not in excluded]
    embeddings, lost = embedder.embed_files(to_embed, desc="synthesized", role="synthesized")
    skipped += lost
    scores, lost = score_samples(
        items, embeddings, by_speaker, activities, compare_to=compare_to, identify_speaker=identify
    )
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
        "activity": {"mode": activity, **asdict(activity_check), "no_speech": len(failed)},
        "skipped": skipped,
        "reference_counts": {s: len(e) for s, e in sorted(by_speaker.items())},
        "compare_to": compare_to,
        # identification among every reference speaker with usable audio
        "identify_among": sorted(by_speaker) if identify else None,
        # the vocoded-real ceiling of each synthesized speaker (None: not measured)
        "ceiling": ceilings,
        "overall": similarity_stats(main, thresholds) if main else None,
        "per_speaker": {s: similarity_stats(v, thresholds) for s, v in sorted(per_speaker.items())},
        "per_step": per_step,
        # the trained model's figure: each run at its last scored step (the pooled "overall" mixes in early steps)
        "last_step": last_steps(per_step),
        "clean_run": clean_label,
        "resilience": resilience,
    }
    result = SimilarityResult(scores, skipped, summary, per_step, resilience)
    if out_dir is not None:
        result.files = write_reports(result, out_dir)
    return result
