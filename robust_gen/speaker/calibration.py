"""Calibration of a speaker model: equal error rate on held-out speakers, and its threshold.

The threshold where false accepts equal false rejects (the EER operating point) is stored in the model
directory's ``calibration.json`` and marks "same speaker" in the speaker-similarity summaries
(pseudo-Huber paper, Figures 3-4); hub models use their published threshold instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = [
    "CALIBRATION_NAME",
    "KNOWN_THRESHOLDS",
    "calibrate",
    "equal_error_rate",
    "model_threshold",
    "trial_scores",
    "write_calibration",
]

CALIBRATION_NAME = "calibration.json"
#: Verification thresholds published for hub models (papers.md, "Speaker similarity").
KNOWN_THRESHOLDS = {"speechbrain/spkrec-ecapa-voxceleb": 0.25}


def trial_scores(embeddings: torch.Tensor, speakers: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine scores of all same-speaker and all different-speaker pairs (``i < j``) of utterances.

    Examples
    --------
    >>> same, different = trial_scores(torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]]), ["a", "a", "b"])
    >>> same.shape[0], different.shape[0], round(float(same[0]), 3)
    (1, 2, 0.995)
    """
    if embeddings.shape[0] != len(speakers):
        raise ValueError(f"{embeddings.shape[0]} embeddings but {len(speakers)} speaker labels")
    unit = torch.nn.functional.normalize(embeddings.double(), dim=1)
    cosine = unit @ unit.T
    ids = {s: i for i, s in enumerate(sorted(set(speakers)))}
    labels = torch.tensor([ids[s] for s in speakers])
    upper = torch.triu(torch.ones_like(cosine, dtype=torch.bool), diagonal=1)
    same_speaker = labels[:, None] == labels[None, :]
    return cosine[upper & same_speaker].float(), cosine[upper & ~same_speaker].float()


def equal_error_rate(same: torch.Tensor, different: torch.Tensor) -> tuple[float, float]:
    """Equal error rate and its threshold for verification scores (accept when ``score >= threshold``).

    Candidate thresholds are the midpoints between consecutive distinct scores (plus both ends); the
    one where the false-accept rate (different-speaker pairs accepted) and the false-reject rate
    (same-speaker pairs rejected) are closest is chosen; the EER is their mean there.

    Examples
    --------
    >>> eer, threshold = equal_error_rate(torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0.1, 0.2, 0.3]))
    >>> eer, round(threshold, 3)
    (0.0, 0.5)
    >>> eer, threshold = equal_error_rate(torch.tensor([0.9, 0.8, 0.4, 0.7]), torch.tensor([0.1, 0.5, 0.3, 0.2]))
    >>> eer, round(threshold, 3)
    (0.25, 0.45)
    """
    same, different = same.double().flatten(), different.double().flatten()
    if same.numel() == 0 or different.numel() == 0:
        raise ValueError(
            f"equal error rate needs same- and different-speaker trials, got {same.numel()} and {different.numel()}"
        )
    values = torch.unique(torch.cat([same, different]))  # sorted
    candidates = torch.cat([values[:1] - 1e-6, (values[1:] + values[:-1]) / 2, values[-1:] + 1e-6])
    sorted_same, _ = same.sort()
    sorted_different, _ = different.sort()
    false_reject = torch.searchsorted(sorted_same, candidates, right=False).double() / same.numel()
    false_accept = (
        1 - torch.searchsorted(sorted_different, candidates, right=False).double() / different.numel()
    )
    gap = (false_accept - false_reject).abs()
    best = int(torch.argmin(gap + 1e-9 * (false_accept + false_reject)))
    return float((false_accept[best] + false_reject[best]) / 2), float(candidates[best])


def calibrate(embeddings: torch.Tensor, speakers: Sequence[str]) -> dict:
    """EER, its threshold, and same/different cosine statistics of held-out utterance embeddings.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> centers = torch.eye(3).repeat_interleave(4, dim=0)
    >>> result = calibrate(centers + 0.1 * torch.randn(12, 3, generator=g), list("aaaabbbbcccc"))
    >>> result["eer"], result["same_mean"] > result["different_mean"]
    (0.0, True)
    """
    same, different = trial_scores(embeddings, speakers)
    eer, threshold = equal_error_rate(same, different)

    def std(x: torch.Tensor) -> float:
        return float(x.std()) if x.numel() > 1 else 0.0

    return {
        "eer": eer,
        "threshold": threshold,
        "same_mean": float(same.mean()),
        "same_std": std(same),
        "different_mean": float(different.mean()),
        "different_std": std(different),
        "num_same_pairs": int(same.numel()),
        "num_different_pairs": int(different.numel()),
        "num_utterances": len(speakers),
        "speakers": sorted(set(speakers)),
    }


def write_calibration(model_dir: str | os.PathLike, calibration: dict) -> Path:
    """Write ``calibration.json`` into a model directory atomically; return its path."""
    from robust_gen.training.run_dir import write_json

    path = Path(model_dir) / CALIBRATION_NAME
    write_json(path, calibration)
    return path


def model_threshold(model: str | os.PathLike) -> float | None:
    """The verification threshold known for ``model``: ``calibration.json`` of a directory, or a
    published one for a hub id (0.25 for ``speechbrain/spkrec-ecapa-voxceleb``); None if unknown.

    Examples
    --------
    >>> import tempfile
    >>> model_threshold("speechbrain/spkrec-ecapa-voxceleb")
    0.25
    >>> model_threshold(tempfile.mkdtemp()) is None
    True
    """
    path = Path(os.fspath(model)).expanduser()
    if path.is_dir():
        calibration = path / CALIBRATION_NAME
        if not calibration.is_file():
            return None
        try:
            return float(json.loads(calibration.read_text(encoding="utf-8"))["threshold"])
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"{calibration} is not a valid calibration file ({error}); re-run the recipe"
            ) from error
    return KNOWN_THRESHOLDS.get(os.fspath(model))
