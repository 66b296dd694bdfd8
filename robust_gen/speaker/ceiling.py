"""What a similarity can reach, and whether a voice is recognised among others.

A speaker similarity of synthesized speech means little alone: the vocoder (Griffin-Lim by default) changes a
voice even when the mel is perfect. :func:`vocoded_real_ceiling` scores *real* utterances of a speaker
after the same path a sample takes (waveform -> log-mel -> vocoder -> speaker model), against that speaker's
references: the best a perfect acoustic model could score. Report it beside every similarity.

:func:`identify` names, for each embedding, the speaker whose reference centroid is nearest in cosine, and
:func:`identification_accuracy` the share named correctly: "is the sample recognised as its speaker among
the training voices".
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch

from robust_gen.speech.data.audio import load_audio
from robust_gen.speech.data.mel import MelConfig, MelSpectrogram

__all__ = ["centroids", "identification_accuracy", "identify", "vocoded_real_ceiling"]


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

    Returns
    -------
    dict
        ``mean``, ``std`` (ddof 1; 0 for one file), ``min``, ``count`` and the per-file ``values``.
    """
    import torchaudio.functional

    if not references or not real_files:
        raise ValueError("the vocoded-real ceiling needs reference files and real utterances")
    overlap = {os.path.realpath(p) for p in references} & {os.path.realpath(p) for p in real_files}
    if overlap:
        raise ValueError(f"real utterances must not be references too: {sorted(overlap)[:3]}")
    mel_config = mel_config or MelConfig()
    to_mel = MelSpectrogram(mel_config)
    ref_waves = [embedder.load(p) for p in references]
    centroid = centroids({"speaker": embedder.embed_waveforms(ref_waves)})["speaker"]
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
    }
