"""The keep-list / relabel-list an audit writes and the recipes read back (``data.exclude=<file>``).

JSON layout (``format_version`` 1; written by ``tools/audit.py RUN_DIR --write-filter``)::

    {"format_version": 1, "num_samples": 1797, "field": "label",
     "exclude": [17, 203, ...], "relabel": {"45": 3, ...}, "source": {"run": "...", "score": "..."}}

Indices are those of the data as loaded, before corruption: the indices of the corruption manifest and of the
audit's ranked table. ``exclude``d samples are left out of training; ``relabel`` sets ``record[field]`` of a
sample to a new value (the audit's suggested label) instead. The dataset checks ``num_samples`` against its own
size, so a filter written for other data fails with the reason instead of silently dropping the wrong samples.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robust_gen.training.run_dir import write_json

__all__ = ["FORMAT_VERSION", "DataFilter", "read_data_filter"]

FORMAT_VERSION = 1


@dataclass
class DataFilter:
    """Samples to leave out and samples to relabel, by index into ``num_samples`` records.

    Examples
    --------
    >>> f = DataFilter(num_samples=4, exclude=[1], relabel={2: 7}, field="label")
    >>> records, keep = f.apply([{"label": 0} for _ in range(4)], where="the test data")
    >>> keep, [r["label"] for r in records]
    ([0, 2, 3], [0, 0, 7, 0])
    """

    num_samples: int
    exclude: list[int] = dataclasses.field(default_factory=list)
    relabel: dict[int, Any] = dataclasses.field(default_factory=dict)
    field: str | None = None
    source: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.exclude = sorted({int(i) for i in self.exclude})
        self.relabel = {int(k): v for k, v in self.relabel.items()}
        bad = [i for i in (*self.exclude, *self.relabel) if not 0 <= i < self.num_samples]
        if bad:
            raise ValueError(f"data filter indices {bad[:5]} are outside [0, {self.num_samples})")
        if self.relabel and not self.field:
            raise ValueError("a data filter with relabel entries needs the record field they replace ('field')")
        both = set(self.exclude) & set(self.relabel)
        if both:
            raise ValueError(f"indices {sorted(both)[:5]} are both excluded and relabelled; choose one")

    def apply(self, records: Sequence[Mapping], where: str = "the data") -> tuple[list[dict], list[int]]:
        """Relabelled copies of ``records`` and the indices to keep; checks that the sizes match."""
        if len(records) != self.num_samples:
            raise ValueError(
                f"the data filter {self.source.get('path', '')!s} was written for {self.num_samples} samples but "
                f"{where} has {len(records)}: use a filter written by an audit of a run on the same data"
            )
        records = [dict(r) for r in records]
        for index, value in self.relabel.items():
            records[index][self.field] = value
        excluded = set(self.exclude)
        return records, [i for i in range(len(records)) if i not in excluded]

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "num_samples": self.num_samples, "field": self.field,
                "exclude": self.exclude, "relabel": {str(k): v for k, v in self.relabel.items()},
                "source": self.source}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the filter as JSON (atomically)."""
        write_json(path, self.to_dict())
        return Path(path)


def read_data_filter(path: str | os.PathLike) -> DataFilter:
    """Read a filter written by :meth:`DataFilter.save`, with one clear error per problem.

    Examples
    --------
    >>> import tempfile
    >>> path = DataFilter(num_samples=3, exclude=[2]).save(Path(tempfile.mkdtemp()) / "keep.json")
    >>> read_data_filter(path).exclude
    [2]
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data.exclude={path}: no such file (write one with tools/audit.py RUN --write-filter)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"data.exclude={path} is not valid JSON ({error})") from error
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION or "num_samples" not in data:
        raise ValueError(f"data.exclude={path} is not a data filter (format_version {FORMAT_VERSION} with "
                         "num_samples, exclude, relabel); write one with tools/audit.py RUN --write-filter")
    try:
        return DataFilter(num_samples=int(data["num_samples"]), exclude=list(data.get("exclude") or []),
                          relabel=dict(data.get("relabel") or {}), field=data.get("field"),
                          source={**(data.get("source") or {}), "path": str(path)})
    except (TypeError, ValueError) as error:
        raise ValueError(f"data.exclude={path}: {error}") from error
