"""What a similarity can reach, and whether a voice is recognised among others.

A speaker similarity of synthesized speech means little alone: the vocoder (Griffin-Lim by default) changes a
voice even when the mel is perfect. :func:`vocoded_real_ceiling` scores *real* utterances of a speaker
after the same path a sample takes (waveform -> log-mel -> vocoder -> speaker model), against that speaker's
references: the best a perfect acoustic model could score. Report it beside every similarity.

:func:`identify` names, for each embedding, the speaker whose reference centroid is nearest in cosine, and
:func:`identification_accuracy` the share named correctly: "is the sample recognised as its speaker among
the training voices".

:func:`speaker_ceilings` measures the ceiling of each synthesized speaker from the references alone: the last
files of the speaker (sorted, :func:`hold_out`) are the real utterances, the others the references, and the
result is cached per speaker model in a JSON file (the studies score many runs against the same references).
The vocoder is the caller's (:class:`CeilingSpec`): this package does not import the speech models.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from robust_gen.speaker.inputs import file_fingerprint
from robust_gen.speech.data.audio import load_audio
from robust_gen.speech.data.mel import MelConfig, MelSpectrogram

log = logging.getLogger(__name__)

__all__ = [
    "CeilingSpec",
    "centroids",
    "hold_out",
    "identification_accuracy",
    "identify",
    "speaker_ceilings",
    "vocoded_real_ceiling",
]


def centroids(reference_embeddings: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Unit-length mean of each speaker's unit-length reference embeddings ``[R, D]`` (the similarity's
    centroid).

    Examples
    --------
    >>> c = centroids({"a": torch.tensor([[2.0, 0.0], [0.0, 1.0]])})
    >>> [round(v, 4) for v in c["a"].tolist()]
    [0.7071, 0.7071]
    """
    result = {}
    for speaker, embeddings in reference_embeddings.items():
        if len(embeddings) == 0:
            raise ValueError(f"speaker {speaker!r} has no reference embeddings")
        unit = torch.nn.functional.normalize(embeddings.double(), dim=1)
        result[speaker] = torch.nn.functional.normalize(unit.mean(dim=0), dim=0)
    return result


def identify(embeddings: torch.Tensor, speaker_centroids: Mapping[str, torch.Tensor]) -> list[str]:
    """The speaker of the nearest centroid (cosine) for each embedding ``[N, D]``.

    Examples
    --------
    >>> c = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0, 1.0])}
    >>> identify(torch.tensor([[0.9, 0.1], [0.2, 0.7]]), c)
    ['a', 'b']
    """
    if not speaker_centroids:
        raise ValueError("no speakers to identify among")
    names = list(speaker_centroids)
    matrix = torch.stack([speaker_centroids[n].double() for n in names])  # [S, D]
    cosines = torch.nn.functional.normalize(embeddings.double(), dim=1) @ matrix.T
    return [names[i] for i in cosines.argmax(dim=1).tolist()]


def identification_accuracy(
    embeddings: torch.Tensor, speakers: Sequence[str], speaker_centroids: Mapping[str, torch.Tensor]
) -> float:
    """Share of embeddings whose nearest centroid is their own speaker's.

    Examples
    --------
    >>> c = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0, 1.0])}
    >>> identification_accuracy(torch.tensor([[0.9, 0.1], [0.8, 0.3]]), ["a", "b"], c)
    0.5
    """
    if len(speakers) != len(embeddings) or not speakers:
        raise ValueError(f"need one speaker per embedding, got {len(speakers)} for {len(embeddings)}")
    named = identify(embeddings, speaker_centroids)
    return sum(n == s for n, s in zip(named, speakers)) / len(speakers)


def vocoded_real_ceiling(
    embedder,
    references: Sequence[str | os.PathLike],
    real_files: Sequence[str | os.PathLike],
    vocoder,
    mel_config: MelConfig | None = None,
    *,
    reference_cache=None,
) -> dict:
    """Similarity of real utterances, passed through log-mel and ``vocoder``, to the references' centroid.

    Parameters
    ----------
    embedder : robust_gen.speaker.SpeakerEmbedder
        The speaker model used for the synthesized samples.
    references : sequence of paths
        The speaker's reference recordings (as given to the similarity of the samples).
    real_files : sequence of paths
        Other real utterances of the same speaker (not among the references).
    vocoder : callable
        ``vocoder(log_mel [1, F, T]) -> wav [1, samples]`` at ``mel_config.sample_rate``, as for the samples.
    mel_config : MelConfig, optional
        The features the acoustic model produces (default: :class:`MelConfig`).
    reference_cache : robust_gen.speaker.similarity.EmbeddingCache, optional
        Reference embeddings already computed for the samples' similarity are reused from it.

    Returns
    -------
    dict
        ``mean``, ``std`` (ddof 1; 0 for one file), ``min``, ``count``, the per-file ``values`` and the number
        of usable ``references`` (unusable ones, e.g. silent, are left out as in the samples' similarity).
    """
    import torchaudio.functional

    if not references or not real_files:
        raise ValueError("the vocoded-real ceiling needs reference files and real utterances")
    overlap = {os.path.realpath(p) for p in references} & {os.path.realpath(p) for p in real_files}
    if overlap:
        raise ValueError(f"real utterances must not be references too: {sorted(overlap)[:3]}")
    mel_config = mel_config or MelConfig()
    to_mel = MelSpectrogram(mel_config)
    embedded, skipped = embedder.embed_files(
        references, cache=reference_cache, desc="ceiling references", role="reference"
    )
    if not embedded:
        raise ValueError(f"no usable reference for the ceiling: {skipped[:3]}")
    centroid = centroids({"speaker": torch.stack(list(embedded.values()))})["speaker"]
    vocoded = []
    for path in real_files:
        wav = vocoder(to_mel(load_audio(path, mel_config.sample_rate))[None])[0]
        vocoded.append(torchaudio.functional.resample(wav, mel_config.sample_rate, embedder.sample_rate))
    unit = torch.nn.functional.normalize(embedder.embed_waveforms(vocoded).double(), dim=1)
    values = unit @ centroid
    return {
        "mean": float(values.mean()),
        "std": float(values.std()) if len(values) > 1 else 0.0,
        "min": float(values.min()),
        "count": len(values),
        "values": [round(float(v), 4) for v in values],
        "references": len(embedded),
    }


@dataclass(frozen=True)
class CeilingSpec:
    """How :func:`speaker_ceilings` measures the vocoded-real ceiling.

    ``vocoder``: ``vocoder(log_mel [1, F, T]) -> wav [1, samples]`` at ``mel_config.sample_rate``, the one the
    samples went through; ``settings``: a JSON-able description of it (part of the cache key: other settings,
    another ceiling); ``held_out``: real utterances per speaker, taken from the end of its sorted references;
    ``mel_config``: the acoustic model's features (default :class:`MelConfig`).
    """

    vocoder: Callable[[torch.Tensor], torch.Tensor]
    settings: Mapping[str, Any] = field(default_factory=dict)
    held_out: int = 10
    mel_config: MelConfig = field(default_factory=MelConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.held_out, int) or self.held_out < 1:
            raise ValueError(f"the ceiling needs at least one held-out file per speaker, got {self.held_out!r}")


def hold_out(files: Sequence[str | os.PathLike], count: int, speaker: str = "") -> tuple[list[Path], list[Path]]:
    """Split a speaker's reference files (sorted by path) into references and the last ``count`` held out.

    Examples
    --------
    >>> refs, held = hold_out(["s_3.wav", "s_1.wav", "s_2.wav"], 1)
    >>> [p.name for p in refs], [p.name for p in held]
    (['s_1.wav', 's_2.wav'], ['s_3.wav'])
    >>> hold_out(["s_1.wav"], 1, "s")
    Traceback (most recent call last):
    ...
    ValueError: the ceiling holds out 1 reference file(s) of speaker 's' but it has 1: at least one must stay a reference; lower the number held out (--ceiling-files)
    """
    ordered = sorted(Path(f) for f in files)
    if len(ordered) <= count:
        raise ValueError(
            f"the ceiling holds out {count} reference file(s) of speaker {speaker!r} but it has {len(ordered)}: at "
            "least one must stay a reference; lower the number held out (--ceiling-files)"
        )
    return ordered[:-count], ordered[-count:]


def _ceiling_key(fingerprint: str, references: Sequence[Path], real: Sequence[Path], spec: CeilingSpec) -> str:
    """Everything the ceiling depends on: the speaker model, each file's identity, the vocoder and features."""
    description = {
        "model": fingerprint,
        "references": [file_fingerprint(p) for p in references],
        "real": [file_fingerprint(p) for p in real],
        "vocoder": dict(spec.settings),
        "mel": asdict(spec.mel_config),
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()


def speaker_ceilings(
    embedder,
    reference_files: Mapping[str, Sequence[str | os.PathLike]],
    speakers: Sequence[str],
    spec: CeilingSpec,
    *,
    cache_dir: str | os.PathLike | None = None,
    reference_cache=None,
) -> dict[str, dict]:
    """The vocoded-real ceiling of each of ``speakers``: ``{speaker: vocoded_real_ceiling(...)}``.

    Each speaker's last ``spec.held_out`` reference files (sorted, :func:`hold_out`) are vocoded and scored
    against the centroid of its other references. Results are cached in ``<cache_dir>/ceiling_<model>.json``,
    keyed by the model, every file's (path, mtime, size), the vocoder settings and the mel features.

    Examples
    --------
    >>> import tempfile, types
    >>> from robust_gen.speech.data.audio import save_audio
    >>> folder = Path(tempfile.mkdtemp())
    >>> for i in range(3):
    ...     save_audio(folder / f"a_{i}.wav", 0.3 * torch.randn(22050), 22050)
    >>> class Constant:  # a speaker model that gives every file the same embedding
    ...     sample_rate, fingerprint = 16000, "constant"
    ...     def embed_waveforms(self, waves): return torch.ones(len(waves), 4)
    ...     def embed_files(self, paths, **kwargs): return {Path(p): torch.ones(4) for p in paths}, []
    >>> vocoder = lambda mel: torch.zeros(1, mel.shape[-1] * 256)
    >>> spec = CeilingSpec(vocoder, {"kind": "silence"}, held_out=1)
    >>> found = speaker_ceilings(Constant(), {"a": sorted(folder.glob("*.wav"))}, ["a"], spec, cache_dir=folder)
    >>> found["a"]["mean"], found["a"]["count"], found["a"]["references"], found["a"]["held_out"]
    (1.0, 1, 2, ['a_2.wav'])
    >>> speaker_ceilings(Constant(), {"a": sorted(folder.glob("*.wav"))}, ["a"], spec, cache_dir=folder)["a"]["cached"]
    True
    """
    from robust_gen.training.run_dir import write_json

    cache_path = Path(cache_dir) / f"ceiling_{embedder.fingerprint[:24]}.json" if cache_dir is not None else None
    cached: dict[str, dict] = {}
    if cache_path is not None and cache_path.is_file():
        try:
            cached = json.loads(cache_path.read_text())
        except (OSError, ValueError) as error:
            log.warning("ignoring unreadable ceiling cache %s (%s); it will be rewritten", cache_path, error)
    results, added = {}, False
    for speaker in speakers:
        references, real = hold_out(reference_files.get(speaker, ()), spec.held_out, speaker)
        key = _ceiling_key(embedder.fingerprint, references, real, spec)
        if isinstance(cached.get(key), dict):
            results[speaker] = {**cached[key], "cached": True}
            continue
        found = vocoded_real_ceiling(
            embedder, references, real, spec.vocoder, spec.mel_config, reference_cache=reference_cache
        )
        found["held_out"] = [p.name for p in real]
        cached[key], added = found, True
        results[speaker] = {**found, "cached": False}
    if added and cache_path is not None:
        write_json(cache_path, cached)
    return results
