"""Shared pieces of every corruption: ratio and seed checks, seeded generators, the config-facing base class.

Every corruption in this package follows the same rules (architecture.md, "Habits"):

- It is a dataset transform, computed for the whole dataset at once from a numpy ``Generator`` seeded from
  ``seed`` (and ``epoch`` for on-the-fly corruption), never from global RNG state. The result therefore does
  not depend on batch order, worker count or what ran before.
- It never mutates its input; records are shallow-copied.
- It returns a :class:`~robust_gen.corruption.manifest.Manifest` of every change.
"""

from __future__ import annotations

import abc
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from robust_gen.corruption.manifest import Manifest
from robust_gen.corruption.records import RecordTable, is_record_table


def check_ratio(ratio: float, *, name: str = "ratio") -> float:
    """Return ``ratio`` as a float after checking that it lies in [0, 1].

    Examples
    --------
    >>> check_ratio(0.025)
    0.025
    >>> check_ratio(1.5)
    Traceback (most recent call last):
    ...
    ValueError: ratio must be a number in [0, 1] (a fraction of the dataset), got 1.5
    """
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0.0 <= float(ratio) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1] (a fraction of the dataset), got {ratio!r}")
    return float(ratio)


def check_seed(seed: int) -> int:
    """Return ``seed`` as an int after checking that it is a non-negative integer.

    Examples
    --------
    >>> check_seed(7)
    7
    >>> check_seed(-1)
    Traceback (most recent call last):
    ...
    ValueError: seed must be a non-negative integer, got -1
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def corrupted_count(ratio: float, num_samples: int) -> int:
    """Number of samples a corruption of ``ratio`` changes: ``round(ratio * num_samples)``.

    This is Python's :func:`round` (ties go to the even integer, so ``round(2.5) == 2``), as in the
    issue's contract "exactly round(eta * N) samples".

    Examples
    --------
    >>> corrupted_count(0.025, 1000)
    25
    >>> corrupted_count(0.25, 10)
    2
    """
    return round(check_ratio(ratio) * int(num_samples))


def make_generator(seed: int, epoch: int | None = None) -> np.random.Generator:
    """A numpy ``Generator`` seeded from ``seed`` alone (fixed corruption) or from ``(seed, epoch)``.

    The pair is fed to ``numpy.random.SeedSequence``, so epochs give independent, reproducible streams.

    Examples
    --------
    >>> a = make_generator(3, epoch=1).integers(0, 1000, 4)
    >>> b = make_generator(3, epoch=1).integers(0, 1000, 4)
    >>> bool((a == b).all())
    True
    """
    entropy = check_seed(seed) if epoch is None else [check_seed(seed), check_epoch(epoch)]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def check_epoch(epoch: int) -> int:
    """Return ``epoch`` as an int after checking that it is a non-negative integer."""
    if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or int(epoch) < 0:
        raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
    return int(epoch)


def copy_records(records: Sequence[Any]) -> list[Any]:
    """Shallow copies of ``records`` (dicts are copied, other items kept), so callers can edit the result."""
    if isinstance(records, (str, bytes)) or not isinstance(records, Sequence):
        raise ValueError(f"records must be a list of dict records, got {type(records).__name__}")
    return [dict(record) if isinstance(record, Mapping) else record for record in records]


def record_field(records: Sequence[Any], index: int, field: str) -> Any:
    """``records[index][field]``, with an error that names the record and the missing field."""
    record = records[index]
    if not isinstance(record, Mapping):
        raise ValueError(f"record {index} must be a dict with a {field!r} field, got {type(record).__name__}")
    if field not in record:
        raise ValueError(
            f"record {index} has no field {field!r} (fields: {sorted(record)}); set the corruption's field= to "
            "the key that holds this value"
        )
    return record[field]


def field_values(records: Sequence[Any] | RecordTable, field: str) -> Any:
    """``record[field]`` of every record: the column itself for a :class:`RecordTable` (no per-record dicts),
    a list for dict records.

    Examples
    --------
    >>> field_values([{"label": 2}, {"label": 0}], "label")
    [2, 0]
    >>> field_values(RecordTable.from_columns(label=[2, 0]), "label").tolist()
    [2, 0]
    """
    if is_record_table(records):
        return records.values(field) if field in records.vocabularies else records.column(field)
    return [record_field(records, i, field) for i in range(len(records))]


def with_changes(records: Sequence[Any] | RecordTable, field: str, manifest: Manifest) -> Any:
    """New records with ``record[field] = change["after"]`` for every change of ``manifest``.

    A :class:`RecordTable` gets one new column (the others are shared); dict records are shallow-copied.
    """
    if is_record_table(records):
        changes = manifest.changes
        return records.replace(field, [c["index"] for c in changes], [c["after"] for c in changes])
    new_records = copy_records(records)
    for change in manifest.changes:
        new_records[change["index"]][field] = change["after"]
    return new_records


class Corruption(abc.ABC):
    """Base of the config-facing corruptions (built by Hydra from ``configs/corruption/*.yaml``).

    Parameters
    ----------
    ratio : float
        Fraction in [0, 1]; what it is a fraction of is documented by each subclass.
    seed : int
        Non-negative seed of the corruption's own numpy generator.
    on_the_fly : bool
        If True, the corruption is re-drawn each epoch from ``(seed, epoch)`` (Chen et al. 2024's "random"
        corruption); a recipe then calls ``apply(original_records, epoch=e)`` every epoch, always on the
        original records. If False, ``epoch`` is ignored and the dataset is changed once.
    """

    kind: ClassVar[str] = "corruption"

    def __init__(self, ratio: float, seed: int, *, on_the_fly: bool = False) -> None:
        self.ratio = check_ratio(ratio)
        self.seed = check_seed(seed)
        self.on_the_fly = bool(on_the_fly)

    @property
    def is_epoch_dependent(self) -> bool:
        """True when the recipe must call :meth:`apply` again every epoch."""
        return self.on_the_fly

    def _epoch_for_seed(self, epoch: int) -> int | None:
        """The epoch that seeds the generator: the given one on the fly, None for a fixed corruption."""
        check_epoch(epoch)
        return int(epoch) if self.on_the_fly else None

    @abc.abstractmethod
    def apply(self, records: Sequence[Mapping[str, Any]], *, epoch: int = 0) -> tuple[list[dict], Manifest]:
        """Return ``(new_records, manifest)``; ``records`` is left unchanged."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{key}={value!r}" for key, value in vars(self).items())
        return f"{type(self).__name__}({fields})"


class NoCorruption(Corruption):
    """The clean baseline: returns copies of the records and an empty manifest.

    ``ratio`` must be 0, so that an override such as ``corruption.ratio=0.1`` on the ``none`` config fails
    loudly instead of silently training on clean data.

    Examples
    --------
    >>> records, manifest = NoCorruption().apply([{"label": 1}, {"label": 2}])
    >>> records, manifest.changes
    ([{'label': 1}, {'label': 2}], [])
    """

    kind: ClassVar[str] = "none"

    def __init__(self, ratio: float = 0.0, seed: int = 0) -> None:
        super().__init__(ratio, seed)
        if self.ratio != 0.0:
            raise ValueError(
                f"NoCorruption takes ratio=0, got {ratio!r}; pick a corruption config (label_flip, caption_swap, "
                "outliers, speaker_mix) to corrupt data"
            )

    def apply(self, records: Sequence[Mapping[str, Any]], *, epoch: int = 0) -> tuple[list[dict], Manifest]:
        check_epoch(epoch)
        # a RecordTable is immutable: returned as it is, not turned into a million dicts
        new_records = records if is_record_table(records) else copy_records(records)
        manifest = Manifest(kind=self.kind, ratio=0.0, seed=self.seed, num_samples=len(new_records))
        return new_records, manifest
