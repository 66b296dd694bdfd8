"""The record of one corruption: what was changed, where, from what, to what, with which seed.

Every run writes its corruption manifest next to its config (architecture.md, "Habits"), so that a corrupted
dataset can be inspected and re-created exactly: ``Manifest.load(path).apply(original)`` returns the same
records the corruption produced.

JSON layout (``format_version`` 1)::

    {"format_version": 1, "kind": "label_flip", "ratio": 0.05, "seed": 0, "epoch": null,
     "num_samples": 1000, "field": "label", "params": {...},
     "changes": [{"index": 17, "before": 3, "after": 8}, ...]}

``field`` says what a change replaces: the value ``record[field]`` of a dict record (or the item itself when
the dataset is a flat list or array of values), or the whole record when ``field`` is null. A change may carry
extra keys (``source``: the index the new value came from, ``partner``: the other half of a caption swap).
Values are stored as JSON, so records must hold JSON-serialisable values (numpy scalars are converted).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robust_gen.corruption.records import RecordTable, is_record_table
from robust_gen.training.run_dir import atomic_write_text

FORMAT_VERSION = 1
_REQUIRED_KEYS = ("kind", "ratio", "seed", "num_samples", "changes")


def _json_default(value: Any) -> Any:
    """Convert numpy scalars and arrays (and paths) to plain JSON values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(
        f"manifest values must be JSON-serialisable, got {type(value).__name__}: {value!r}; "
        "keep records to str/int/float/bool/None/list/dict values"
    )


def to_json_value(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, numpy scalars Python numbers).

    Examples
    --------
    >>> to_json_value({"label": np.int64(3), "crop": (1, 2)})
    {'label': 3, 'crop': [1, 2]}
    """
    return json.loads(json.dumps(value, default=_json_default))


@dataclasses.dataclass
class Manifest:
    """Every change one corruption made, with enough to re-create it.

    Parameters
    ----------
    kind : str
        Which corruption: ``"label_flip"``, ``"caption_swap"``, ``"outliers"``, ``"speaker_contamination"``
        or ``"none"``.
    ratio, seed : float, int
        The corruption's ratio and seed.
    num_samples : int
        Size of the dataset the corruption was applied to (and that :meth:`apply` expects).
    field : str or None
        The record field a change replaces, or None when changes replace whole records.
    epoch : int or None
        The epoch that seeded an on-the-fly corruption; None for a fixed one.
    params : dict
        The corruption's other parameters (mode, prior, classes, ...).
    changes : list of dict
        One entry per changed index: ``{"index": i, "before": old, "after": new, ...}``, sorted by index.

    Examples
    --------
    >>> m = Manifest(kind="label_flip", ratio=0.5, seed=0, num_samples=2,
    ...              changes=[{"index": 1, "before": 0, "after": 1}])
    >>> m.apply([0, 0])
    [0, 1]
    >>> m.changed_indices
    [1]
    """

    kind: str
    ratio: float
    seed: int
    num_samples: int
    field: str | None = None
    epoch: int | None = None
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    changes: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        # Normalise through JSON once, so a manifest equals its own save/load round trip. Changes that are
        # already plain JSON values (what the corruptions build) skip the round trip: at ImageNet size it was
        # most of the cost of a label flip.
        self.params = to_json_value(dict(self.params))
        changes = list(self.changes)
        if not all(_is_plain_change(change) for change in changes):
            changes = to_json_value(changes)
        for position, change in enumerate(changes):
            if not isinstance(change, dict) or not {"index", "before", "after"} <= set(change):
                raise ValueError(f"manifest change {position} must be a dict with index, before and after")
            if type(change["index"]) is not int or not 0 <= change["index"] < self.num_samples:
                raise ValueError(
                    f"manifest change {position} has index {change['index']!r} outside [0, {self.num_samples})"
                )
        indices = [change["index"] for change in changes]
        if any(a > b for a, b in itertools.pairwise(indices)):
            changes = sorted(changes, key=lambda change: change["index"])
            indices = sorted(indices)
        self.changes = changes
        if any(a == b for a, b in itertools.pairwise(indices)):
            raise ValueError("manifest changes must name each index at most once")

    @property
    def changed_indices(self) -> list[int]:
        """The changed indices, ascending."""
        return [change["index"] for change in self.changes]

    def to_dict(self) -> dict[str, Any]:
        """The manifest as a JSON-ready dict (see the module docstring for the layout)."""
        # Shallow: dataclasses.asdict deep-copies every change, which for a 10 % flip of ImageNet doubled 100k
        # dicts just to serialise them. The values are plain JSON already (__post_init__).
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"format_version": FORMAT_VERSION, **fields, "params": dict(self.params),
                "changes": list(self.changes)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        """Inverse of :meth:`to_dict`; raises ValueError on a missing key or an unknown format version."""
        missing = [key for key in _REQUIRED_KEYS if key not in data]
        if missing:
            raise ValueError(f"manifest is missing keys {missing}; is this a robust_gen corruption manifest?")
        version = data.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(
                f"manifest format_version {version!r} is not supported (expected {FORMAT_VERSION})"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the manifest as JSON, atomically (temporary file in the same folder, then ``os.replace``).

        The parent folder is created if needed. Returns the path written.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=1, default=_json_default)
        atomic_write_text(path, text)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Manifest:
        """Read a manifest written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no corruption manifest at {path}; it is written by Manifest.save(path)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"corruption manifest {path} is not valid JSON: {error}") from error
        if not isinstance(data, dict):
            raise ValueError(f"corruption manifest {path} must hold a JSON object")
        return cls.from_dict(data)

    def apply(self, original: Sequence[Any] | np.ndarray) -> list[Any] | np.ndarray:
        """Re-create the corrupted dataset from the ``original`` one; ``original`` is left unchanged.

        Works on a list of dict records, a flat list of values, or a 1-D numpy array (returns an array then).
        Each change's ``before`` is checked against ``original``, so applying a manifest to another dataset
        fails instead of silently producing something else.
        """
        if len(original) != self.num_samples:
            raise ValueError(
                f"manifest was made for {self.num_samples} samples but the dataset has {len(original)}; "
                "apply it to the dataset it was created from"
            )
        if is_record_table(original) and self.field is not None:
            return self._apply_to_table(original)
        if isinstance(original, np.ndarray):
            result: Any = original.copy()
        else:
            result = [dict(item) if isinstance(item, Mapping) else item for item in original]
        for change in self.changes:
            index = change["index"]
            item = result[index]
            replace_field = self.field is not None and isinstance(item, Mapping)
            if replace_field and self.field not in item:
                raise ValueError(f"record {index} has no field {self.field!r} that the manifest changes")
            current = item[self.field] if replace_field else item
            if to_json_value(current) != change["before"]:
                raise ValueError(
                    f"index {index} holds {current!r} but the manifest expects {change['before']!r}; "
                    "apply the manifest to the original (uncorrupted) dataset it was created from"
                )
            if replace_field:
                item[self.field] = change["after"]
            elif isinstance(change["after"], dict):
                result[index] = dict(change["after"])
            else:
                result[index] = change["after"]
        return result

    def _apply_to_table(self, table: RecordTable) -> RecordTable:
        """:meth:`apply` on a :class:`RecordTable`: one vectorised check of the ``before`` values, one new column."""
        indices = np.asarray(self.changed_indices, dtype=np.int64)
        before = [change["before"] for change in self.changes]
        if self.field in table.vocabularies:
            words = table.vocabularies[self.field]
            current = [words[code] for code in table.column(self.field)[indices].tolist()]
        else:
            current = table.column(self.field)[indices].tolist()
        if current != before:
            first = next(i for i, (a, b) in enumerate(zip(current, before)) if a != b)
            raise ValueError(
                f"index {int(indices[first])} holds {current[first]!r} but the manifest expects {before[first]!r}; "
                "apply the manifest to the original (uncorrupted) dataset it was created from"
            )
        return table.replace(self.field, indices, [change["after"] for change in self.changes])


_PLAIN = (int, str, bool, type(None))


def _is_plain_change(change: Any) -> bool:
    """A change dict whose values already read back from JSON unchanged (ints, strings, booleans, None)."""
    return type(change) is dict and all(type(value) in _PLAIN for value in change.values())
