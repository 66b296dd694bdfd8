"""Columnar records (robust_gen.corruption.records) and the corruptions applied to them by index."""

from __future__ import annotations

import numpy as np
import pytest

from robust_gen.corruption import CaptionSwap, LabelFlip, Manifest, RecordTable


def _records(n=200):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, n)
    return [{"label": int(k), "caption": f"a photo of class {k}", "source": i} for i, k in enumerate(labels)]


@pytest.mark.parametrize("corruption", [LabelFlip(0.1, 3, num_classes=5), CaptionSwap(0.1, 3),
                                        LabelFlip(0.2, 1, num_classes=5, on_the_fly=True)])
def test_a_table_is_corrupted_exactly_like_dict_records(corruption):
    records = _records()
    table = RecordTable.from_records(records)
    new_dicts, manifest = corruption.apply(records, epoch=2)
    new_table, table_manifest = corruption.apply(table, epoch=2)
    assert isinstance(new_table, RecordTable)
    assert [new_table[i] for i in range(len(new_table))] == new_dicts
    assert table_manifest.to_dict() == manifest.to_dict()
    assert [table[i] for i in range(len(table))] == records  # the input table is unchanged


def test_a_manifest_recreates_the_corrupted_table_and_rejects_another(tmp_path):
    table = RecordTable.from_records(_records())
    corrupted, manifest = LabelFlip(0.1, 0, num_classes=5).apply(table)
    manifest = Manifest.load(manifest.save(tmp_path / "m.json"))
    assert np.array_equal(manifest.apply(table).column("label"), corrupted.column("label"))
    with pytest.raises(ValueError, match="apply the manifest to the original"):
        manifest.apply(corrupted)


def test_a_saved_table_opens_memory_mapped_and_reads_the_same(tmp_path):
    table = RecordTable.from_records(_records(50))
    folder = table.save(tmp_path / "records")
    loaded = RecordTable.load(folder)
    assert isinstance(loaded.column("label"), np.memmap)
    assert [loaded[i] for i in range(50)] == [table[i] for i in range(50)]
    (folder / "records.json").unlink()
    with pytest.raises(FileNotFoundError, match="not a complete RecordTable"):
        RecordTable.load(folder)


def test_missing_fields_and_ragged_columns_are_clear_errors():
    table = RecordTable.from_columns(label=[0, 1, 0, 1])
    with pytest.raises(ValueError, match="no field 'caption'"):
        CaptionSwap(0.5, 0).apply(table)
    with pytest.raises(ValueError, match="one length"):
        RecordTable({"a": np.zeros(2), "b": np.zeros(3)})


def test_a_label_flip_of_imagenet_size_is_fast_and_compact():
    import time

    labels = np.random.default_rng(0).integers(0, 1000, 1_281_167).astype(np.int32)
    table = RecordTable.from_columns(label=labels, source=np.arange(labels.size, dtype=np.int32))
    start = time.perf_counter()
    corrupted, manifest = LabelFlip(0.05, 0, num_classes=1000).apply(table)
    seconds = time.perf_counter() - start
    assert len(manifest.changes) == round(0.05 * labels.size)
    assert corrupted.column("source") is table.column("source")  # unchanged columns are shared, not copied
    assert seconds < 5.0  # 0.4 s on a loaded 2-core machine; the dict path took 2 s before any records existed


def test_no_corruption_returns_the_table_itself():
    from robust_gen.corruption import NoCorruption

    table = RecordTable.from_columns(label=np.arange(5))
    records, manifest = NoCorruption().apply(table)
    assert records is table and manifest.changes == []
