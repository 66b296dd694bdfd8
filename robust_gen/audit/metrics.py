"""How well a per-sample score finds the corrupted samples that a corruption manifest lists.

A score is "higher = more likely corrupted". Against the manifest's changed indices it gets three numbers:

* ``roc_auc``: the chance that a random corrupted sample scores above a random clean one (0.5 = chance);
* ``average_precision``: the area under the precision-recall curve (chance = the corrupted fraction);
* ``precision_at_k``: the fraction of corrupted samples among the ``k`` top-scored, ``k`` = the true number of
  corrupted samples (equal to the recall at that ``k``; 1.0 = a perfect split).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

__all__ = ["corrupted_mask", "precision_at_k", "random_baseline", "roc_points", "score_metrics"]


def corrupted_mask(changed_indices: Sequence[int], ids: Sequence[int]) -> np.ndarray:
    """Which of the audited samples ``ids`` the manifest changed (``changed_indices``: ``Manifest.changed_indices``).

    Examples
    --------
    >>> corrupted_mask([2, 5], [0, 2, 4, 5]).tolist()
    [False, True, False, True]
    """
    return np.isin(np.asarray(ids, dtype=np.int64), np.asarray(list(changed_indices), dtype=np.int64))


def _checked(scores: Sequence[float], corrupted: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    corrupted = np.asarray(corrupted, dtype=bool)
    if scores.shape != corrupted.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and corruption flags {corrupted.shape} must be 1-D and equal length")
    if not np.isfinite(scores).all():
        raise ValueError(f"{int((~np.isfinite(scores)).sum())} scores are NaN or infinite; every sample needs a score")
    return scores, corrupted


def precision_at_k(scores: Sequence[float], corrupted: Sequence[bool], k: int | None = None) -> float:
    """Fraction of corrupted samples among the ``k`` highest scores (``k``: the number of corrupted ones).

    Ties at the cut are broken by a stable sort on the negated score (the earlier sample first).

    Examples
    --------
    >>> precision_at_k([0.9, 0.1, 0.8, 0.2], [True, False, False, True])
    0.5
    """
    scores, corrupted = _checked(scores, corrupted)
    k = int(corrupted.sum()) if k is None else int(k)
    if k <= 0:
        return float("nan")
    top = np.argsort(-scores, kind="stable")[:k]
    return float(corrupted[top].mean())


def score_metrics(scores: Sequence[float], corrupted: Sequence[bool]) -> dict[str, float]:
    """ROC AUC, average precision and precision at the true corruption count of ``scores``.

    With no corrupted (or no clean) sample the ranking metrics are undefined: NaN, and ``num_corrupted`` says why.

    Examples
    --------
    >>> m = score_metrics([0.9, 0.1, 0.8, 0.2], [True, False, True, False])
    >>> m["roc_auc"], m["average_precision"], m["precision_at_k"], m["num_corrupted"], m["chance_ap"]
    (1.0, 1.0, 1.0, 2, 0.5)
    >>> score_metrics([0.3, 0.2, 0.1], [False, True, False])["roc_auc"]
    0.5
    """
    scores, corrupted = _checked(scores, corrupted)
    positives = int(corrupted.sum())
    result = {"num_samples": len(scores), "num_corrupted": positives,
              "chance_ap": float(positives / len(scores)) if len(scores) else float("nan")}
    if 0 < positives < len(scores):
        result.update(
            roc_auc=float(roc_auc_score(corrupted, scores)),
            average_precision=float(average_precision_score(corrupted, scores)),
            precision_at_k=precision_at_k(scores, corrupted),
        )
    else:
        result.update(roc_auc=float("nan"), average_precision=float("nan"), precision_at_k=float("nan"))
    return result


def random_baseline(corrupted: Sequence[bool], seed: int = 0) -> dict[str, float]:
    """:func:`score_metrics` of uniformly random scores (seeded): the floor any audit must beat.

    Examples
    --------
    >>> 0.0 <= random_baseline([True, False, False, True])["roc_auc"] <= 1.0
    True
    """
    corrupted = np.asarray(corrupted, dtype=bool)
    return score_metrics(np.random.default_rng(seed).random(len(corrupted)), corrupted)


def roc_points(scores: Sequence[float], corrupted: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates of the ROC curve.

    Examples
    --------
    >>> fpr, tpr = roc_points([0.9, 0.1], [True, False])
    >>> float(fpr[-1]), float(tpr[-1])
    (1.0, 1.0)
    """
    scores, corrupted = _checked(scores, corrupted)
    fpr, tpr, _ = roc_curve(corrupted, scores)
    return fpr, tpr
