"""Columnar metadata records: millions of training examples without millions of Python dicts.

A list of dict records (``{"label": 7, "caption": "...", "source": 12, ...}``) costs about 400 bytes per example,
so ImageNet-1K's 1.28M records take ~0.5 GB, and every corruption that copies them takes that again. A
:class:`RecordTable` holds one numpy array per field (a few bytes per example) and text fields as integer codes
into a list of distinct strings (class-templated captions repeat, so the list stays short). It reads like a
sequence of dicts (``table[i]`` builds one dict on demand), so code written for lists keeps working, and the
corruptions change it by index: :meth:`RecordTable.replace` copies only the changed column and shares the others.

A table is saved as one ``.npy`` file per column plus ``records.json`` (field kinds and text vocabularies) and is
opened memory-mapped, so a training process pages in only the rows it reads. Files are read with
``allow_pickle=False``: nothing in a table can execute code.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robust_gen.training.run_dir import atomic_write_text

__all__ = ["RECORDS_FILE", "RecordTable", "is_record_table"]

RECORDS_FILE = "records.json"


def is_record_table(records: Any) -> bool:
    """True for a :class:`RecordTable` (the corruptions then work by column instead of dict by dict).

    Examples
    --------
    >>> is_record_table(RecordTable({"label": np.arange(3)})), is_record_table([{"label": 0}])
    (True, False)
    """
    return isinstance(records, RecordTable)


def _random_access(array: np.ndarray) -> None:
    """Tell the kernel a memory-mapped column is read at random (no read-ahead): each record read then maps one
    page, not the ~128 kB around it, so the resident set stays flat as training visits a million records."""
    handle = getattr(array, "_mmap", None)
    if handle is not None and hasattr(handle, "madvise") and hasattr(mmap, "MADV_RANDOM"):
        handle.madvise(mmap.MADV_RANDOM)


class RecordTable(Sequence):
    """One numpy array per field, text fields as codes into a vocabulary; reads like a list of dicts.

    Parameters
    ----------
    columns:
        Field name -> 1-D numpy array, all of one length. For text fields the array holds integer codes.
    vocabularies:
        Text field name -> its distinct strings (``columns[field][i]`` indexes into it).

    Examples
    --------
    >>> table = RecordTable.from_columns(label=[3, 1, 3], caption=["a cat", "a dog", "a cat"])
    >>> len(table), table[1]
    (3, {'label': 1, 'caption': 'a dog'})
    >>> flipped = table.replace("label", [0], [2])
    >>> flipped.column("label").tolist(), table.column("label").tolist()  # the original is unchanged
    ([2, 1, 3], [3, 1, 3])
    >>> table.replace("caption", [2], ["a bird"]).values("caption")
    ['a cat', 'a dog', 'a bird']
    """

    def __init__(self, columns: Mapping[str, np.ndarray], vocabularies: Mapping[str, Sequence[str]] | None = None):
        self.columns = {name: v if isinstance(v, np.ndarray) else np.asarray(v) for name, v in columns.items()}
        self.vocabularies = {name: list(words) for name, words in (vocabularies or {}).items()}
        if not self.columns:
            raise ValueError("a RecordTable needs at least one column")
        lengths = {name: len(values) for name, values in self.columns.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"RecordTable columns must have one length, got {lengths}")
        for name, values in self.columns.items():
            if values.ndim != 1:
                raise ValueError(f"RecordTable column {name!r} must be 1-D, got shape {values.shape}")
        for name in self.vocabularies:
            if name not in self.columns or not np.issubdtype(self.columns[name].dtype, np.integer):
                raise ValueError(f"text field {name!r} needs an integer code column")
        self._length = next(iter(lengths.values()))
        self._lookup: dict[str, dict[str, int]] = {}

    @classmethod
    def from_columns(cls, **fields: Any) -> RecordTable:
        """A table from plain sequences: lists of strings become text fields, everything else numpy arrays."""
        columns, vocabularies = {}, {}
        for name, values in fields.items():
            if isinstance(values, np.ndarray) and values.dtype.kind not in "OU":
                columns[name] = values
                continue
            values = list(values)
            if values and all(isinstance(v, str) for v in values):
                vocabulary = list(dict.fromkeys(values))
                index = {word: code for code, word in enumerate(vocabulary)}
                columns[name] = np.fromiter((index[v] for v in values), dtype=np.int32, count=len(values))
                vocabularies[name] = vocabulary
            else:
                columns[name] = np.asarray(values)
        return cls(columns, vocabularies)

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]]) -> RecordTable:
        """A table from dict records that all have the same fields (a conversion, for tests and small data).

        Examples
        --------
        >>> RecordTable.from_records([{"label": 1, "caption": "x"}])[0]
        {'label': 1, 'caption': 'x'}
        """
        if not records:
            raise ValueError("cannot build a RecordTable from no records")
        names = list(records[0])
        return cls.from_columns(**{name: [record[name] for record in records] for name in names})

    @property
    def fields(self) -> list[str]:
        return list(self.columns)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._length))]
        index = int(index)
        if not -self._length <= index < self._length:
            raise IndexError(f"record {index} is outside a table of {self._length}")
        return {name: self._value(name, index) for name in self.columns}

    def _value(self, name: str, index: int) -> Any:
        value = self.columns[name][index]
        if name in self.vocabularies:
            return self.vocabularies[name][int(value)]
        return value.item()

    def column(self, name: str) -> np.ndarray:
        """The array of field ``name`` (codes for a text field); raises naming the fields when it is missing."""
        if name not in self.columns:
            raise ValueError(f"the records have no field {name!r} (fields: {self.fields}); set the corruption's "
                             "field= to the key that holds this value")
        return self.columns[name]

    def values(self, name: str) -> list[Any]:
        """Field ``name`` as a list of Python values (strings for a text field; shared string objects)."""
        column = self.column(name)
        if name in self.vocabularies:
            vocabulary = self.vocabularies[name]
            return [vocabulary[code] for code in column.tolist()]
        return column.tolist()

    def _code(self, name: str, word: str, vocabulary: list[str]) -> int:
        lookup = self._lookup.setdefault(name, {w: c for c, w in enumerate(self.vocabularies[name])})
        if word not in lookup:
            lookup[word] = len(vocabulary)
            vocabulary.append(word)
        return lookup[word]

    def replace(self, name: str, indices: Iterable[int], values: Iterable[Any]) -> RecordTable:
        """A new table with ``record[name] = value`` at ``indices``; other columns are shared, not copied."""
        column = self.column(name).copy()
        indices = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices, dtype=np.int64)
        vocabularies = dict(self.vocabularies)
        if name in self.vocabularies:
            vocabulary = list(self.vocabularies[name])
            codes = [self._code(name, str(v), vocabulary) for v in values]
            self._lookup.pop(name, None)  # the lookup now names the extended vocabulary, not this table's
            column[indices] = np.asarray(codes, dtype=column.dtype)
            vocabularies[name] = vocabulary
        else:
            column[indices] = np.asarray(list(values) if not isinstance(values, np.ndarray) else values)
        return RecordTable({**self.columns, name: column}, vocabularies)

    def take(self, indices: np.ndarray) -> RecordTable:
        """The rows ``indices`` as a new table (e.g. the first N, or one class)."""
        return RecordTable({name: values[indices] for name, values in self.columns.items()}, self.vocabularies)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write one ``<field>.npy`` per column and ``records.json``; returns the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, values in self.columns.items():
            tmp = folder / f".{name}.{os.getpid()}.npy"
            np.save(tmp, np.ascontiguousarray(values), allow_pickle=False)
            os.replace(tmp, folder / f"{name}.npy")
        meta = {"length": self._length, "fields": self.fields, "vocabularies": self.vocabularies}
        atomic_write_text(folder / RECORDS_FILE, json.dumps(meta))  # written last: marks the table complete
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, *, mmap: bool = True) -> RecordTable:
        """Open a table written by :meth:`save` (memory-mapped unless ``mmap=False``).

        Examples
        --------
        >>> import tempfile
        >>> folder = RecordTable.from_columns(label=[1, 2]).save(tempfile.mkdtemp())
        >>> RecordTable.load(folder)[1]
        {'label': 2}
        """
        folder = Path(folder)
        meta_path = folder / RECORDS_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} is missing: {folder} is not a complete RecordTable (write it with "
                                    "RecordTable.save)")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        columns = {}
        for name in meta["fields"]:
            try:
                columns[name] = np.load(folder / f"{name}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
                if mmap:
                    _random_access(columns[name])
            except (OSError, ValueError) as e:
                raise ValueError(f"record column {folder / (name + '.npy')} is unreadable ({e}); write the table "
                                 "again") from e
        table = cls(columns, meta.get("vocabularies", {}))
        if len(table) != meta["length"]:
            raise ValueError(f"{folder}: columns hold {len(table)} records but records.json says {meta['length']}")
        return table
