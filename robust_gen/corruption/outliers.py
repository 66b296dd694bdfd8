"""Outlier injection, the image setting of the scheduled pseudo-Huber paper (Khrapov et al. 2024, papers.md §1).

A fraction of a concept's samples is replaced by samples from an off-topic pool (images of other concepts),
keeping the dataset size. The off-topic samples are chosen uniformly at random, or as the least similar to
the concept under a given embedding: lowest cosine similarity to the mean embedding of the concept's samples
(the paper uses CLIP image embeddings; here any ``[N, D]`` array, so the core never loads a model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from robust_gen.corruption.base import (
    Corruption,
    check_ratio,
    check_seed,
    copy_records,
    corrupted_count,
    make_generator,
    record_field,
)
from robust_gen.corruption.manifest import Manifest

SELECTIONS = ("random", "least_similar")


def _matrix(array: Any, name: str) -> np.ndarray:
    matrix = np.asarray(array, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must have shape [N, D] (one embedding per sample), got {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return matrix


def _as_embeddings(array: Any, rows: int, name: str) -> np.ndarray:
    matrix = _matrix(array, name)
    if matrix.shape[0] != rows:
        raise ValueError(f"{name} must have one row per sample ({rows}), got shape {matrix.shape}")
    return matrix


def least_similar_order(concept_embeddings: Any, pool_embeddings: Any) -> np.ndarray:
    """Pool indices sorted by ascending cosine similarity to the mean of the concept's embeddings.

    Ties keep the pool order (stable sort), so the order is deterministic.

    Examples
    --------
    >>> least_similar_order([[1.0, 0.0], [1.0, 0.2]], [[1.0, 0.1], [-1.0, 0.0], [0.0, 1.0]]).tolist()
    [1, 2, 0]
    """
    concept = _matrix(concept_embeddings, "concept embeddings")
    pool = _matrix(pool_embeddings, "pool embeddings")
    if pool.shape[1] != concept.shape[1]:
        raise ValueError(
            f"pool embeddings have dimension {pool.shape[1]}, concept embeddings {concept.shape[1]}"
        )
    mean = concept.mean(axis=0)
    mean_norm = np.linalg.norm(mean)
    pool_norms = np.linalg.norm(pool, axis=1)
    if concept.shape[0] == 0 or mean_norm == 0.0:
        raise ValueError(
            "the concept's mean embedding is zero (or the concept is empty): cosine is undefined"
        )
    if (pool_norms == 0.0).any():
        raise ValueError(
            f"pool embedding {int(np.flatnonzero(pool_norms == 0.0)[0])} is zero: cosine is undefined"
        )
    similarity = pool @ mean / (pool_norms * mean_norm)
    return np.argsort(similarity, kind="stable")


def _plan(
    num_concept: int,
    num_pool: int,
    ratio: float,
    rng: np.random.Generator,
    selection: str,
    embeddings: Any,
    pool_embeddings: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Concept positions to replace (ascending) and the pool index that replaces each."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    count = corrupted_count(ratio, num_concept)
    if count > num_pool:
        raise ValueError(
            f"ratio {ratio} asks for {count} outliers but the off-topic pool has only {num_pool} samples; "
            "lower the ratio or enlarge the pool"
        )
    positions = np.sort(rng.choice(num_concept, size=count, replace=False))
    if selection == "random":
        sources = rng.choice(num_pool, size=count, replace=False)
    else:
        if embeddings is None or pool_embeddings is None:
            raise ValueError("selection='least_similar' needs embeddings of the concept and of the pool")
        concept = _as_embeddings(embeddings, num_concept, "embeddings")
        pool = _as_embeddings(pool_embeddings, num_pool, "pool_embeddings")
        # The `count` least similar pool samples, spread over the replaced positions in random order.
        sources = rng.permutation(least_similar_order(concept, pool)[:count])
    return positions, sources.astype(np.int64)


def _outlier_record(
    pool_item: Any, replaced: Sequence[Any], position: int, keep_fields: Sequence[str]
) -> Any:
    """The pool item, carrying the replaced record's ``keep_fields`` (e.g. its label or prompt)."""
    if not keep_fields:
        return dict(pool_item) if isinstance(pool_item, Mapping) else pool_item
    if not isinstance(pool_item, Mapping):
        raise ValueError(f"keep_fields needs dict records in the pool, got {type(pool_item).__name__}")
    new = dict(pool_item)
    for name in keep_fields:
        new[name] = record_field(replaced, position, name)
    return new


def inject_outliers(
    records: Sequence[Any],
    pool: Sequence[Any],
    ratio: float,
    *,
    seed: int,
    selection: str = "random",
    embeddings: Any = None,
    pool_embeddings: Any = None,
    keep_fields: Sequence[str] = (),
    epoch: int | None = None,
) -> tuple[list[Any], Manifest]:
    """Replace ``round(ratio * len(records))`` of a concept's records by off-topic ``pool`` records.

    Parameters
    ----------
    records : sequence
        The concept's samples (dict records or plain items such as paths); not modified.
    pool : sequence
        Off-topic samples; each is used at most once.
    ratio : float
        Fraction of the concept's samples to replace, in [0, 1].
    seed : int
        Seed of the choice of positions (and pool samples when ``selection="random"``).
    selection : {"random", "least_similar"}
        Pool samples drawn uniformly, or the least similar to the concept (lowest cosine similarity of
        ``pool_embeddings`` to the mean of ``embeddings``).
    embeddings, pool_embeddings : array-like of shape [N, D] and [M, D], optional
        Required for ``selection="least_similar"``.
    keep_fields : sequence of str
        Fields copied from the replaced record onto the outlier, so it is still labelled as the concept.
    epoch : int, optional
        For on-the-fly corruption: seeded from ``(seed, epoch)``.

    Returns
    -------
    new_records : list
        Same length as ``records``.
    manifest : Manifest
        ``kind="outliers"``, whole-record changes with the pool index as ``source``.

    Examples
    --------
    >>> concept = [{"path": f"dog{i}.png", "label": 0} for i in range(10)]
    >>> pool = [{"path": f"car{i}.png", "label": 1} for i in range(5)]
    >>> new, manifest = inject_outliers(concept, pool, 0.3, seed=0, keep_fields=["label"])
    >>> sum(r["path"].startswith("car") for r in new), {r["label"] for r in new}
    (3, {0})
    """
    ratio = check_ratio(ratio)
    seed = check_seed(seed)
    positions, sources = _plan(
        len(records), len(pool), ratio, make_generator(seed, epoch), selection, embeddings, pool_embeddings
    )
    new_records = copy_records(records)
    changes = []
    for position, source in zip(positions.tolist(), sources.tolist()):
        new_records[position] = _outlier_record(pool[source], records, position, keep_fields)
        changes.append(
            {"index": position, "before": records[position], "after": new_records[position], "source": source}
        )
    manifest = Manifest(
        kind="outliers",
        ratio=ratio,
        seed=seed,
        num_samples=len(records),
        epoch=epoch,
        params={"selection": selection, "keep_fields": list(keep_fields), "pool_size": len(pool)},
        changes=changes,
    )
    return new_records, manifest


class OutlierInjection(Corruption):
    """Config-facing outlier injection within one list of records holding several concepts.

    The concept set is the records with ``record[field] == concept``; the off-topic pool is every other
    record. ``ratio`` is a fraction of the concept set (not of the whole list). Replaced records take a
    pool record's content with the concept's ``keep_fields`` (default: ``[field]``, so the outliers are
    still labelled as the concept); the list keeps its length, and the recipe then trains on the records
    whose ``field`` equals ``concept``. Manifest indices and ``source`` refer to the whole list.

    Examples
    --------
    >>> records = [{"label": i % 3, "source": i} for i in range(30)]
    >>> new, manifest = OutlierInjection(ratio=0.3, seed=0, concept=2).apply(records)
    >>> concept = [r for r in new if r["label"] == 2]
    >>> len(concept), sum(r["source"] % 3 != 2 for r in concept)
    (10, 3)
    """

    kind: ClassVar[str] = "outliers"

    def __init__(
        self,
        ratio: float,
        seed: int,
        concept: Any = None,
        field: str = "label",
        selection: str = "random",
        keep_fields: Sequence[str] | None = None,
        on_the_fly: bool = False,
    ) -> None:
        super().__init__(ratio, seed, on_the_fly=on_the_fly)
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        keep = [field] if keep_fields is None else list(keep_fields)
        if field not in keep:
            raise ValueError(
                f"keep_fields {keep} must include field {field!r}, or the outliers would leave the concept set"
            )
        self.concept = concept
        self.field = field
        self.selection = selection
        self.keep_fields = keep

    def apply(
        self, records: Sequence[Mapping[str, Any]], *, epoch: int = 0, embeddings: Any = None
    ) -> tuple[list[dict], Manifest]:
        """Inject outliers into the concept's records; ``embeddings`` ([len(records), D]) for least_similar."""
        if self.concept is None:
            raise ValueError("OutlierInjection needs concept: set corruption.concept to the concept's label")
        values = [record_field(records, i, self.field) for i in range(len(records))]
        concept_index = [i for i, value in enumerate(values) if value == self.concept]
        pool_index = [i for i, value in enumerate(values) if value != self.concept]
        if not concept_index:
            raise ValueError(f"no record has {self.field} == {self.concept!r}; check corruption.concept")
        if embeddings is not None:
            embeddings = _as_embeddings(embeddings, len(records), "embeddings")
        local_records, local = inject_outliers(
            [records[i] for i in concept_index],
            [records[i] for i in pool_index],
            self.ratio,
            seed=self.seed,
            selection=self.selection,
            embeddings=None if embeddings is None else embeddings[concept_index],
            pool_embeddings=None if embeddings is None else embeddings[pool_index],
            keep_fields=self.keep_fields,
            epoch=self._epoch_for_seed(epoch),
        )
        new_records = copy_records(records)
        changes = []
        for change in local.changes:
            index = concept_index[change["index"]]
            new_records[index] = local_records[change["index"]]
            changes.append({**change, "index": index, "source": pool_index[change["source"]]})
        params = {**local.params, "concept": self.concept, "field": self.field, "on_the_fly": self.on_the_fly}
        manifest = Manifest(
            kind=self.kind,
            ratio=self.ratio,
            seed=self.seed,
            num_samples=len(records),
            epoch=local.epoch,
            params=params,
            changes=changes,
        )
        return new_records, manifest
