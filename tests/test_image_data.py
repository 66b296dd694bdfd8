"""Image data: sources (digits, folder, table, hf), bad input, augmentation, latent cache, training set."""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from robust_gen.corruption import CaptionSwap, LabelFlip
from robust_gen.image.build import build_source
from robust_gen.image.data.dataset import CONTROL_NAMES, Augmentation, LatentImageDataset
from robust_gen.image.data.latents import LatentTable, cache_key, load_or_encode
from robust_gen.image.data.sources import (
    DIGIT_WORDS,
    SKIPPED_IMAGES_FILE,
    load_folder_source,
    load_hf_source,
    load_table_source,
    read_caption_table,
)
from robust_gen.image.model.autoencoder import ImageAutoencoder


def test_digits_source_is_real_labelled_and_captioned():
    src = build_source({"source": "digits", "resolution": 32, "crop_margin": 8, "limit": 200})
    assert src.images.shape == (200, 40, 40, 1) and src.images.dtype == np.uint8
    assert src.num_classes == 10 and src.class_names[7] == "seven"
    labels = [r["label"] for r in src.records]
    assert sorted(set(labels)) == list(range(10))
    # the first sklearn digit is a zero: bright ink in the middle ring, dark corners
    assert src.images[0, 0, 0, 0] == 0 and src.images[0].max() > 200
    captions = {r["caption"] for r in src.records if r["label"] == 7}
    assert len(captions) >= 3 and all("seven" in c or "7" in c for c in captions)
    assert all(r["orig_height"] == 8 and r["source"] == i for i, r in enumerate(src.records))
    assert all(len(p) >= 3 for p in src.class_prompts) and DIGIT_WORDS[3] in src.class_prompts[3][0]


def _write_folder(root, classes=("cat", "dog"), per_class=2):
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (20 + i, 12), (40 * i, 100, 200)).save(root / name / f"{i}.png")


def test_folder_source_and_its_errors(tmp_path):
    _write_folder(tmp_path / "ok")
    src = load_folder_source(tmp_path / "ok", resolution=8, channels=3)
    assert src.images.shape == (4, 8, 8, 3) and src.class_names == ["cat", "dog"]
    assert [r["label"] for r in src.records] == [0, 0, 1, 1] and src.records[1]["orig_width"] == 21
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_folder_source(tmp_path / "missing")
    _write_folder(tmp_path / "empty_class")
    (tmp_path / "empty_class" / "bird").mkdir()
    with pytest.raises(ValueError, match="bird has no images"):
        load_folder_source(tmp_path / "empty_class")
    _write_folder(tmp_path / "broken")
    (tmp_path / "broken" / "dog" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"bad\.png"):
        load_folder_source(tmp_path / "broken")


def test_table_source_csv_jsonl_and_its_errors(tmp_path):
    Image.new("L", (10, 10), 128).save(tmp_path / "a.png")
    Image.new("L", (10, 10), 255).save(tmp_path / "b.png")
    (tmp_path / "t.csv").write_text("path,text,kind\na.png,a grey square,x\nb.png,a white square,y\n")
    src = load_table_source(tmp_path / "t.csv", image_column="path", caption_column="text", label_column="kind",
                            resolution=8, channels=1)
    assert [r["caption"] for r in src.records] == ["a grey square", "a white square"]
    assert src.class_names == ["x", "y"] and src.images.shape == (2, 8, 8, 1)
    (tmp_path / "t.jsonl").write_text('{"image": "a.png", "caption": "grey"}\n{"image": "b.png", "caption": "white"}\n')
    assert load_table_source(tmp_path / "t.jsonl", resolution=8).captions == ["grey", "white"]
    with pytest.raises(ValueError, match=r"t\.csv has no column 'caption'.*columns: \['kind', 'path', 'text'\]"):
        load_table_source(tmp_path / "t.csv", image_column="path")
    (tmp_path / "empty.csv").write_text("image,caption\na.png,ok\nb.png,  \n")
    with pytest.raises(ValueError, match=r"empty\.csv row 2: empty caption"):
        load_table_source(tmp_path / "empty.csv", resolution=8)
    (tmp_path / "missing.csv").write_text("image,caption\nnope.png,a caption\n")
    with pytest.raises(FileNotFoundError, match=r"missing\.csv row 1: image file .*nope\.png does not exist"):
        load_table_source(tmp_path / "missing.csv", resolution=8)


def _truncated_png(path):
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)  # noise: a long data stream
    Image.fromarray(noise).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # as a copy interrupted half-way


def _nan_tiff(path):
    pixels = np.full((8, 8), 0.5, dtype=np.float32)
    pixels[2, 3] = np.nan
    Image.fromarray(pixels, mode="F").save(path)


def _bomb_png(path):
    """A tiny PNG whose header claims 40000 x 40000 pixels (a decompression bomb): PIL refuses it at open."""
    import struct
    import zlib

    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", 40000, 40000)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    path.write_bytes(bytes(data))


#: One writer per kind of bad image file, and the reason the skipped list must give.
BAD_FILES = {
    "decompression_bomb": ("bad.png", _bomb_png, "too many pixels"),
    "truncated": ("bad.png", _truncated_png, "unreadable image"),
    "empty": ("bad.png", lambda path: path.write_bytes(b""), "empty (0-byte) file"),
    "text_as_png": ("bad.png", lambda path: path.write_text("just some notes, not pixels\n"), "unreadable image"),
    "nan_tiff": ("bad.tif", _nan_tiff, "non-finite pixel values"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_folder_bad_image_is_skipped_counted_and_listed_or_named(tmp_path, kind, caplog):
    name, write, reason = BAD_FILES[kind]
    _write_folder(tmp_path / "data")
    bad_file = tmp_path / "data" / "dog" / name
    write(bad_file)
    cfg = {"source": "folder", "root": str(tmp_path / "data"), "resolution": 8}
    with pytest.raises(ValueError, match=rf"cannot read image .*{re.escape(name)}: {re.escape(reason)}.*data\.on_bad=skip"):
        build_source({**cfg, "on_bad": "error"})
    with caplog.at_level(logging.WARNING, logger="robust_gen.image.data.sources"):
        src = build_source({**cfg, "on_bad": "skip"}, run_dir=tmp_path / "run")
    # the rest loads, with the image array and the records still aligned
    assert src.images.shape == (4, 8, 8, 3) and [r["label"] for r in src.records] == [0, 0, 1, 1]
    assert [r["source"] for r in src.records] == [0, 1, 2, 3]
    listed = json.loads((tmp_path / "run" / SKIPPED_IMAGES_FILE).read_text())
    assert listed["count"] == 1 and listed["images"][0]["file"] == str(bad_file)
    assert listed["images"][0]["reason"].startswith(reason)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 1 bad image(s)" in warnings[0] and SKIPPED_IMAGES_FILE in warnings[0]


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    _write_folder(tmp_path / "data")
    ramp = np.tile(np.linspace(0, 65535, 16).round().astype(np.uint16), (16, 1))
    Image.fromarray(ramp).save(tmp_path / "data" / "dog" / "deep.png")  # a 16-bit grayscale PNG
    src = build_source({"source": "folder", "root": str(tmp_path / "data"), "resolution": 16,
                        "interpolation": "nearest", "channels": 1})
    row = src.images[-1][0, :, 0]
    assert row[0] == 0 and row[-1] == 255 and len(set(row.tolist())) == 16  # a ramp, not 0 / 255 only


def test_tiny_images_are_kept_with_a_warning_below_min_size(tmp_path, caplog):
    _write_folder(tmp_path / "data")
    Image.new("RGB", (1, 1), "red").save(tmp_path / "data" / "dog" / "dot.png")
    cfg = {"source": "folder", "root": str(tmp_path / "data"), "resolution": 8}
    with caplog.at_level(logging.WARNING, logger="robust_gen.image.data.sources"):
        src = build_source(cfg)
    assert len(src.records) == 5
    assert any("smaller than data.min_size=8" in r.getMessage() and "dot.png (1x1)" in r.getMessage()
               for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="robust_gen.image.data.sources"):
        build_source({**cfg, "min_size": 1})
    assert not any("min_size" in r.getMessage() for r in caplog.records)


def test_folder_skip_keeps_configuration_faults_as_errors(tmp_path):
    _write_folder(tmp_path / "empty_class")
    (tmp_path / "empty_class" / "bird").mkdir()  # a whole class missing is not a per-sample fault
    with pytest.raises(ValueError, match="bird has no images"):
        load_folder_source(tmp_path / "empty_class", on_bad="skip")
    (tmp_path / "all_bad" / "cat").mkdir(parents=True)
    for i in range(3):
        (tmp_path / "all_bad" / "cat" / f"{i}.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"every image of folder .*all_bad is bad \(3 skipped"):
        load_folder_source(tmp_path / "all_bad", on_bad="skip")
    with pytest.raises(ValueError, match=r"on_bad must be one of \('error', 'skip'\), got 'ignore'"):
        load_folder_source(tmp_path / "all_bad", on_bad="ignore")


def _bad_table(root, suffix, keep=None):
    """A table whose rows 2..5 are bad in four ways (or only the rows ``keep``, by index)."""
    Image.new("L", (10, 10), 128).save(root / "good.png")
    Image.new("L", (10, 10), 255).save(root / "white.png")
    _truncated_png(root / "cut.png")
    rows = [
        {"image": "good.png", "caption": "a grey square", "kind": "x"},
        {"image": "nope.png", "caption": "a file that is not there", "kind": "y"},  # row 2: missing image
        {"image": "white.png", "caption": "   ", "kind": "z"},  # row 3: empty caption
        {"image": "cut.png", "caption": "a truncated file", "kind": "y"},  # row 4: truncated image
        {"image": "", "caption": "no image path", "kind": "y"},  # row 5: no image path
        {"image": "white.png", "caption": "a white square", "kind": "x"},
    ]
    rows = rows if keep is None else [rows[i] for i in keep]
    path = root / f"t.{suffix}"
    if suffix == "csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["image", "caption", "kind"])
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_table_bad_rows_are_skipped_counted_and_listed(tmp_path, suffix, caplog):
    table = _bad_table(tmp_path, suffix)
    cfg = {"source": "table", "table": str(table), "label_column": "kind", "resolution": 8, "channels": 1}
    with caplog.at_level(logging.WARNING, logger="robust_gen.image.data.sources"):
        src = build_source({**cfg, "on_bad": "skip"}, run_dir=tmp_path / "run")
    assert [r["caption"] for r in src.records] == ["a grey square", "a white square"]
    assert src.images.shape == (2, 8, 8, 1) and src.images[1].min() == 255  # images follow their rows
    assert src.class_names == ["x"] and [r["label"] for r in src.records] == [0, 0]  # classes of the rows kept
    listed = json.loads((tmp_path / "run" / SKIPPED_IMAGES_FILE).read_text())
    assert listed["count"] == 4
    by_row = {entry["row"]: entry for entry in listed["images"]}
    assert sorted(by_row) == [2, 3, 4, 5]
    assert by_row[2]["reason"] == "image file does not exist" and by_row[2]["file"].endswith("nope.png")
    assert by_row[3]["reason"] == "empty caption in column 'caption'"
    assert by_row[4]["reason"].startswith("unreadable image") and by_row[4]["file"].endswith("cut.png")
    assert by_row[5]["reason"] == "no image path in column 'image'"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 4 bad image(s)" in warnings[0]


@pytest.mark.parametrize(
    ("keep_rows", "error", "message"),
    [
        ([0, 1], FileNotFoundError, r"t\.{suffix} row 2: image file .*nope\.png does not exist"),
        ([0, 2], ValueError, r"t\.{suffix} row 2: empty caption in column 'caption'"),
        ([0, 3], ValueError, r"t\.{suffix} row 2: cannot read image .*cut\.png: unreadable image"),
        ([0, 4], ValueError, r"t\.{suffix} row 2: no image path in column 'image'"),
    ],
)
@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_table_bad_row_under_error_names_the_row(tmp_path, suffix, keep_rows, error, message):
    table = _bad_table(tmp_path, suffix, keep=keep_rows)
    with pytest.raises(error, match=message.format(suffix=suffix)):
        load_table_source(table, resolution=8)


def test_table_skip_keeps_configuration_faults_as_errors(tmp_path):
    table = _bad_table(tmp_path, "csv")
    with pytest.raises(ValueError, match="has no column 'text'"):
        load_table_source(table, caption_column="text", on_bad="skip")
    (tmp_path / "all_bad.csv").write_text("image,caption\nnope.png,a\ngood.png,\n")
    with pytest.raises(ValueError, match=r"every image of table .*all_bad\.csv is bad \(2 skipped"):
        load_table_source(tmp_path / "all_bad.csv", on_bad="skip")


# Caption text as scraped captions come: any Unicode (no lone surrogates: they cannot be written as UTF-8),
# with commas, quotes, tabs, CR/LF and U+2028 line separators mixed in.
_caption_text = st.text(
    alphabet=st.one_of(st.characters(codec="utf-8"), st.sampled_from([",", '"', "'", "\n", "\r", "\t", "\u2028", "\ufeff"])),
    max_size=40,
)
_rows = st.lists(st.fixed_dictionaries({"image": _caption_text, "caption": _caption_text}), max_size=6)


@settings(max_examples=60, deadline=None)
@given(rows=_rows)
def test_caption_table_csv_round_trips_arbitrary_text(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("csv") / "t.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    assert read_caption_table(path) == rows


@settings(max_examples=60, deadline=None)
@given(rows=_rows, ascii_only=st.booleans())
def test_caption_table_jsonl_round_trips_arbitrary_text(tmp_path_factory, rows, ascii_only):
    path = tmp_path_factory.mktemp("jsonl") / "t.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=ascii_only) + "\n" for r in rows), encoding="utf-8")
    assert read_caption_table(path) == rows


@settings(max_examples=80, deadline=None)
@given(content=st.one_of(st.text(max_size=80), st.binary(max_size=80)), suffix=st.sampled_from([".csv", ".jsonl"]))
def test_caption_table_on_arbitrary_content_gives_rows_or_the_documented_error(tmp_path_factory, content, suffix):
    path = tmp_path_factory.mktemp("any") / f"t{suffix}"
    path.write_bytes(content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content)
    try:
        rows = read_caption_table(path)
    except ValueError as e:
        assert str(path) in str(e)  # the documented error names the file
        return
    assert all(isinstance(r, dict) for r in rows)
    if suffix == ".csv":
        assert all(None not in r and None not in r.values() for r in rows)


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="datasets is installed")
def test_hf_source_without_datasets_names_the_alternatives():
    with pytest.raises(ImportError, match=r"pip install datasets.*data=digits"):
        load_hf_source("imagenet-1k")


def test_augmentation_is_a_function_of_seed_epoch_index():
    aug = Augmentation(resolution=32, margin=8, factor=4, flip=True, seed=3)
    draws = [aug.draw(0, i) for i in range(200)]
    assert draws == [aug.draw(0, i) for i in range(200)]
    assert draws != [aug.draw(1, i) for i in range(200)]
    assert {d[0] for d in draws} == {0, 4, 8} and {d[2] for d in draws} == {False, True}
    with pytest.raises(ValueError, match="multiple of the autoencoder's downsampling factor 4"):
        Augmentation(resolution=32, margin=6, factor=4)


def test_latent_cache_hits_and_keys(tmp_path):
    ae = ImageAutoencoder(None, "none", 1)
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    first = load_or_encode(ae, images, tmp_path, flips=True)
    files = list(tmp_path.glob("latents-*.safetensors"))
    assert len(files) == 1 and first.mean.shape == (5, 2, 1, 8, 8)
    assert torch.equal(first.mean[:, 1], first.mean[:, 0].flip(-1))  # the mirror images
    stamp = files[0].stat().st_mtime_ns
    again = load_or_encode(ae, images, tmp_path, flips=True)
    assert torch.equal(again.mean, first.mean) and files[0].stat().st_mtime_ns == stamp
    assert cache_key(ae, images, flips=False) != cache_key(ae, images, flips=True)
    files[0].write_bytes(b"truncated")  # a cache cut short by a kill is rebuilt, not trusted
    assert torch.equal(load_or_encode(ae, images, tmp_path, flips=True).mean, first.mean)


def _records(n):
    return [{"label": i % 4, "caption": f"caption {i % 4} {i}", "source": i, "orig_height": 8, "orig_width": 8}
            for i in range(n)]


def test_dataset_crops_latents_and_reports_control():
    n = 6
    mean = torch.arange(n * 2 * 10 * 10, dtype=torch.float32).reshape(n, 2, 1, 10, 10)
    table = LatentTable(mean, torch.ones_like(mean), 1.0)
    ds = LatentImageDataset(_records(n), table, Augmentation(resolution=32, margin=8, factor=4, flip=True, seed=0))
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        for i in range(n):
            item = ds[i]
            top, left, flip = (int(v) for v in item["control"][[0, 1, 4]])
            expected = mean[i, flip, :, top // 4 : top // 4 + 8, left // 4 : left // 4 + 8]
            assert torch.equal(item["latent_mean"], expected) and "latent_std" in item
    assert len(CONTROL_NAMES) == item["control"].shape[0]


def test_dataset_corruption_manifest_and_epoch_redraw(tmp_path):
    table = LatentTable(torch.zeros(40, 1, 1, 4, 4), None, 1.0)
    flip = LabelFlip(ratio=0.25, seed=0, num_classes=4, on_the_fly=True)
    ds = LatentImageDataset(_records(40), table, Augmentation(resolution=4), corruption=flip, run_dir=tmp_path)
    labels0 = [int(ds[i]["label"]) for i in range(40)]
    assert sum(a != r["label"] for a, r in zip(labels0, _records(40))) == 10
    assert (tmp_path / "corruption_manifest.json").is_file()
    ds.set_epoch(1)
    labels1 = [int(ds[i]["label"]) for i in range(40)]
    assert labels1 != labels0 and (tmp_path / "corruption_manifest_epoch0001.json").is_file()
    ds.set_epoch(0)
    assert [int(ds[i]["label"]) for i in range(40)] == labels0
    swapped = LatentImageDataset(_records(40), table, Augmentation(resolution=4), corruption=CaptionSwap(0.1, seed=1),
                                 run_dir=tmp_path / "swap")
    assert sum(swapped[i]["caption"] != r["caption"] for i, r in enumerate(_records(40))) == 4


def test_hf_source_reads_a_local_imagefolder(tmp_path, monkeypatch):
    pytest.importorskip("datasets")  # optional dependency: runs where `datasets` is installed, offline
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    for name in ("cat", "dog"):
        (tmp_path / "train" / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (20, 16), (60 * i, 100, 200)).save(tmp_path / "train" / name / f"{i}.png")
    src = load_hf_source("imagefolder", split="train", data_dir=str(tmp_path), resolution=8)
    assert src.images.shape == (4, 8, 8, 3) and src.class_names == ["cat", "dog"]
    assert [r["caption"] for r in src.records] == ["a photo of a cat"] * 2 + ["a photo of a dog"] * 2
    assert src.records[0]["orig_width"] == 20
