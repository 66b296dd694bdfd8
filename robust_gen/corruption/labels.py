"""Class-label flips (Chen et al. 2024, "slight corruption in pre-training data", papers.md §2).

Exactly ``round(ratio * N)`` samples get a label different from their true one. The new label is drawn from
the other classes by the class prior ("empirical": the class frequencies of the given labels) or uniformly.
The asymmetric variant flips only within a subset of classes: only samples whose label is in the subset are
eligible, and they flip to another class of the subset. The whole flip table is drawn at once from a numpy
generator seeded from ``seed`` (and ``epoch`` for the on-the-fly "random corruption"), so it does not depend on
batch order or worker count.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from robust_gen.corruption.base import (
    Corruption,
    check_ratio,
    check_seed,
    corrupted_count,
    field_values,
    make_generator,
    with_changes,
)
from robust_gen.corruption.manifest import Manifest

MODES = ("symmetric", "asymmetric")
PRIORS = ("empirical", "uniform")


def _check_options(mode: str, classes: Sequence[int] | None, prior: str) -> tuple[int, ...] | None:
    """Validate mode / classes / prior; return the class subset as a tuple (None in symmetric mode)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if prior not in PRIORS:
        raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
    if mode == "symmetric":
        if classes is not None:
            raise ValueError("classes is only used with mode='asymmetric'; drop it or set mode='asymmetric'")
        return None
    if classes is None:
        raise ValueError(
            "mode='asymmetric' needs classes=[...], the subset of classes that flip among themselves"
        )
    subset = tuple(classes)
    if any(isinstance(c, bool) or not isinstance(c, numbers.Integral) for c in subset):
        raise ValueError(f"classes must be integer class ids, got {list(subset)!r}")
    subset = tuple(int(c) for c in subset)
    if len(set(subset)) != len(subset):
        raise ValueError(f"classes must not repeat a class, got {list(subset)}")
    if len(subset) < 2:
        raise ValueError(f"an asymmetric flip needs a subset of at least two classes, got {list(subset)}")
    return subset


def _check_labels(labels: Any, num_classes: int) -> np.ndarray:
    """Labels as a 1-D int64 array, each in [0, num_classes)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be a 1-D sequence of class ids, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"labels must be integer class ids, got dtype {array.dtype}")
    array = array.astype(np.int64)
    outside = np.flatnonzero((array < 0) | (array >= num_classes))
    if outside.size:
        first = int(outside[0])
        raise ValueError(
            f"{outside.size} labels lie outside [0, {num_classes}), e.g. labels[{first}] = {array[first]}; "
            "check num_classes or the label mapping"
        )
    return array


def flip_labels(
    labels: Sequence[int] | np.ndarray,
    ratio: float,
    num_classes: int,
    *,
    seed: int,
    mode: str = "symmetric",
    classes: Sequence[int] | None = None,
    prior: str = "empirical",
    epoch: int | None = None,
) -> tuple[np.ndarray, Manifest]:
    """Flip exactly ``round(ratio * len(labels))`` labels to another class.

    Parameters
    ----------
    labels : sequence of int
        True class ids in ``[0, num_classes)``; not modified.
    ratio : float
        Fraction of the whole dataset to flip, in [0, 1] (also in asymmetric mode).
    num_classes : int
        Number of classes (>= 2).
    seed : int
        Seed of the flip table.
    mode : {"symmetric", "asymmetric"}
        Symmetric: any sample may flip to any other class. Asymmetric: only samples whose label is in
        ``classes`` flip, and only to another class of ``classes``.
    classes : sequence of int, optional
        The class subset of the asymmetric mode (at least two distinct classes).
    prior : {"empirical", "uniform"}
        How the new label is drawn among the other eligible classes: proportional to the class frequencies of
        ``labels`` ("empirical", Chen et al.'s "by the class prior") or uniformly.
    epoch : int, optional
        For on-the-fly corruption: the table is then seeded from ``(seed, epoch)``.

    Returns
    -------
    new_labels : numpy.ndarray of int64
    manifest : Manifest
        ``kind="label_flip"``, one change per flipped index.

    Examples
    --------
    >>> new, manifest = flip_labels([0, 1, 2, 0, 1, 2, 0, 1], 0.25, 3, seed=0)
    >>> int((new != np.array([0, 1, 2, 0, 1, 2, 0, 1])).sum())
    2
    >>> manifest.apply([0, 1, 2, 0, 1, 2, 0, 1]) == new.tolist()
    True
    """
    ratio = check_ratio(ratio)
    seed = check_seed(seed)
    subset = _check_options(mode, classes, prior)
    original = _check_labels(labels, num_classes)
    if subset is not None and not all(0 <= c < num_classes for c in subset):
        raise ValueError(f"classes {list(subset)} must lie in [0, {num_classes})")
    candidates = np.arange(num_classes) if subset is None else np.array(sorted(subset), dtype=np.int64)

    # symmetric: every sample is eligible (labels were checked to lie in [0, num_classes)); np.isin on 1.28M
    # labels is a tenth of a second for nothing
    eligible = np.arange(original.size) if subset is None else np.flatnonzero(np.isin(original, candidates))
    count = corrupted_count(ratio, original.size)
    if count > eligible.size:
        where = "" if subset is None else f" with a label in classes {list(subset)}"
        raise ValueError(
            f"ratio {ratio} asks for {count} flips of {original.size} samples, but only {eligible.size} "
            f"samples{where} can flip; lower the ratio or widen the class subset"
        )
    if prior == "empirical":
        weights = np.bincount(original, minlength=num_classes)[candidates].astype(np.float64)
    else:
        weights = np.ones(candidates.size)

    rng = make_generator(seed, epoch)
    flipped = np.sort(rng.choice(eligible, size=count, replace=False))
    new_labels = original.copy()
    # One draw per true class, classes in ascending order, so the table is a pure function of (seed, epoch).
    # The flipped rows are grouped by class with one stable sort (rows stay ascending within a class), not one
    # full comparison per class: 1000 classes x 64k flips was most of a 1.28M-label flip.
    true_labels = original[flipped]
    order = np.argsort(true_labels, kind="stable")
    classes_present, starts = np.unique(true_labels[order], return_index=True)
    bounds = [*starts.tolist(), order.size]
    for position, true_class in enumerate(classes_present):
        rows = flipped[order[bounds[position] : bounds[position + 1]]]
        others = weights.copy()
        others[candidates == true_class] = 0.0
        if others.sum() <= 0.0:
            raise ValueError(
                f"the empirical prior gives no weight to any class other than {int(true_class)} (no other "
                "eligible class occurs in labels); use prior='uniform'"
            )
        new_labels[rows] = rng.choice(candidates, size=rows.size, p=others / others.sum())

    changes = [
        {"index": i, "before": before, "after": after}
        for i, before, after in zip(flipped.tolist(), original[flipped].tolist(), new_labels[flipped].tolist())
    ]
    manifest = Manifest(
        kind="label_flip",
        ratio=ratio,
        seed=seed,
        num_samples=int(original.size),
        epoch=epoch,
        params={"num_classes": int(num_classes), "mode": mode, "classes": subset, "prior": prior},
        changes=changes,
    )
    return new_labels, manifest


class LabelFlip(Corruption):
    """Config-facing label flip on dict records (see :func:`flip_labels` for the parameters).

    ``num_classes`` is required, here or at :meth:`apply` (it is never inferred from the records: a class
    absent from the data would silently shrink the label space). With ``on_the_fly=True`` the flips are
    re-drawn from ``(seed, epoch)`` every epoch, always starting from the original records.

    Examples
    --------
    >>> records = [{"label": i % 4, "caption": f"image {i}"} for i in range(20)]
    >>> flip = LabelFlip(ratio=0.1, seed=1, num_classes=4)
    >>> new, manifest = flip.apply(records)
    >>> sum(a["label"] != b["label"] for a, b in zip(records, new)), flip.is_epoch_dependent
    (2, False)
    """

    kind: ClassVar[str] = "label_flip"

    def __init__(
        self,
        ratio: float,
        seed: int,
        num_classes: int | None = None,
        mode: str = "symmetric",
        classes: Sequence[int] | None = None,
        prior: str = "empirical",
        on_the_fly: bool = False,
        field: str = "label",
    ) -> None:
        super().__init__(ratio, seed, on_the_fly=on_the_fly)
        subset = _check_options(mode, classes, prior)
        self.num_classes = num_classes
        self.mode = mode
        self.classes = None if subset is None else list(subset)
        self.prior = prior
        self.field = field

    def apply(
        self, records: Sequence[Mapping[str, Any]], *, epoch: int = 0, num_classes: int | None = None
    ) -> tuple[list[dict], Manifest]:
        """Flip ``record[field]`` of ``round(ratio * len(records))`` records; returns new records."""
        if num_classes is None:
            num_classes = self.num_classes
        elif self.num_classes is not None and num_classes != self.num_classes:
            raise ValueError(
                f"num_classes={num_classes} at apply() contradicts num_classes={self.num_classes}"
            )
        if num_classes is None:
            raise ValueError(
                "LabelFlip needs num_classes: set corruption.num_classes in the config or pass num_classes= "
                "to apply()"
            )
        labels = field_values(records, self.field)
        _, manifest = flip_labels(
            labels,
            self.ratio,
            num_classes,
            seed=self.seed,
            mode=self.mode,
            classes=self.classes,
            prior=self.prior,
            epoch=self._epoch_for_seed(epoch),
        )
        manifest.field = self.field
        manifest.params["on_the_fly"] = self.on_the_fly
        return with_changes(records, self.field, manifest), manifest
