"""Where training images come from: the handwritten digits (the embedded default), an image folder, an image +
caption table, or a Hugging Face dataset.

Every loader returns an :class:`ImageSource`: the images as one uint8 array ``[N, S, S, C]`` at the *canvas* size
``S`` (the training resolution plus the random-crop margin), and one metadata record per image::

    {"label": 7, "caption": "a handwritten seven", "source": 1234, "orig_height": 8, "orig_width": 8}

The records are what the corruption library changes (``apply(records)``: labels flipped, captions swapped,
records replaced by outliers); ``source`` points into the image array, so an outlier record brings its image.
``label`` is -1 for unlabelled data. Images are resized so that their shorter side is ``S`` and centre-cropped
to a square, the usual "resize, then crop" of LDM / SDXL data pipelines; the original size is kept in the record
as control metadata (Berrada et al. 2024, papers.md §3).

Bad files (missing, empty, unreadable, truncated, not an image, non-finite pixels) and table rows without a
caption or image follow ``on_bad``: ``"error"`` (the default) raises on the first one, naming the file or row;
``"skip"`` leaves them out and lists them in :attr:`ImageSource.skipped` (``{"file" or "row", "reason"}``), which
:func:`report_skipped` counts in the log and writes to ``<run_dir>/skipped_images.json``. A whole class folder
without images, or a table without the named column, is an error either way: that is a configuration fault,
not a bad sample.

By default everything is loaded into memory at once: meant for datasets that fit (the digits, folders of
thousands of images, slices of ImageNet via ``limit``). For ImageNet-sized folders, ``load_folder_source(...,
lazy=True, index_dir=...)`` indexes the folder on disk instead (:mod:`robust_gen.image.data.file_index`): the
images are an array-like decoded by index when the latent cache is written, and the records a memory-mapped
:class:`~robust_gen.corruption.records.RecordTable`, so memory does not grow with the dataset.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "BAD_INPUT_POLICIES",
    "DIGIT_TEMPLATES",
    "DIGIT_WORDS",
    "IMAGE_EXTENSIONS",
    "SKIPPED_IMAGES_FILE",
    "ImageSource",
    "digit_captions",
    "load_digits_source",
    "load_folder_source",
    "load_hf_source",
    "load_table_source",
    "read_caption_table",
    "report_skipped",
    "resize_square",
    "validate_image_config",
]

log = logging.getLogger(__name__)

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: Caption templates for the digits, so that caption swapping has real, varied text to swap.
DIGIT_TEMPLATES = (
    "a handwritten {word}",
    "the digit {digit} written by hand",
    "a scanned handwritten {word}",
    "the number {word}, drawn with a pen",
    "a small picture of a handwritten {digit}",
)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
_MODES = {1: "L", 3: "RGB"}
BAD_INPUT_POLICIES = ("error", "skip")
SKIPPED_IMAGES_FILE = "skipped_images.json"
_SKIP_HINT = "; or set data.on_bad=skip to leave such images out"


@dataclass
class ImageSource:
    """Images and their metadata records.

    Attributes
    ----------
    images:
        uint8 ``[N, S, S, C]`` at the canvas size ``S``: an array, or for a lazy source an
        :class:`~robust_gen.image.data.file_index.ImageFiles` that decodes files when indexed.
    records:
        One dict per training example (``label``, ``caption``, ``source``, ``orig_height``, ``orig_width``), or
        a :class:`~robust_gen.corruption.records.RecordTable` of the same fields for a lazy source.
    class_names:
        Name of each class (empty for unlabelled data).
    class_prompts:
        For each class, captions to sample it with (text conditioning).
    captions:
        Distinct captions to sample with when there are no classes.
    name:
        A short description of where the data came from.
    skipped:
        Bad images / rows left out under ``on_bad="skip"``: ``{"file": ..., "reason": ...}`` for folder images,
        ``{"row": ..., "file": ..., "reason": ...}`` for table / dataset rows.
    """

    images: Any
    records: Any
    class_names: list[str] = field(default_factory=list)
    class_prompts: list[list[str]] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    name: str = ""
    skipped: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8 or self.images.shape[1] != self.images.shape[2]:
            raise ValueError(f"images must be uint8 [N, S, S, C], got {self.images.dtype} {self.images.shape}")
        if not len(self.records):
            raise ValueError(f"the data source {self.name!r} has no images; check the data configuration")

    @property
    def is_lazy(self) -> bool:
        """True when the images are read from files on demand (not one in-memory array)."""
        return not isinstance(self.images, np.ndarray)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.images.shape[-1])

    @property
    def canvas(self) -> int:
        return int(self.images.shape[1])


def resize_square(image: Image.Image, size: int, interpolation: str = "bicubic") -> Image.Image:
    """Resize so the shorter side is ``size``, then centre-crop to ``size x size``.

    Examples
    --------
    >>> resize_square(Image.new("L", (16, 8)), 4).size
    (4, 4)
    """
    if interpolation not in _FILTERS:
        raise ValueError(f"unknown interpolation {interpolation!r}; choose one of {sorted(_FILTERS)}")
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), _FILTERS[interpolation])
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def _to_array(image: Image.Image, channels: int) -> np.ndarray:
    array = np.asarray(image.convert(_MODES[channels]), dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


def _check_channels(channels: int) -> None:
    if channels not in _MODES:
        raise ValueError(f"data.channels must be 1 (grayscale) or 3 (RGB), got {channels}")


class _BadInput:
    """The ``on_bad`` policy at work: raise the error, or list the fault and go on."""

    def __init__(self, on_bad: str, min_size: int = 8) -> None:
        if on_bad not in BAD_INPUT_POLICIES:
            raise ValueError(f"data.on_bad must be one of {BAD_INPUT_POLICIES}, got {on_bad!r}")
        self.on_bad, self.min_size = on_bad, int(min_size)
        self.skipped: list[dict] = []
        self.tiny: list[str] = []  # images smaller than min_size: kept, but blown up to flat squares

    def reject(self, error: Exception, reason: str, **where: Any) -> None:
        if self.on_bad == "error":
            raise error
        self.skipped.append({**where, "reason": reason})

    def check_size(self, image: Image.Image, path: Path) -> None:
        if min(image.size) < self.min_size:
            self.tiny.append(f"{path} ({image.size[0]}x{image.size[1]})")

    def check_some_left(self, kept: int, name: str) -> None:
        if self.tiny:
            log.warning("%d image(s) of %s are smaller than data.min_size=%d px on a side and are blown up to the "
                        "training size, e.g. %s; check the data (or lower data.min_size)", len(self.tiny), name,
                        self.min_size, self.tiny[0])
        if not kept and self.skipped:
            first = self.skipped[0]
            raise ValueError(
                f"every image of {name} is bad ({len(self.skipped)} skipped, e.g. {first}); fix the data or point "
                "the data configuration at another source"
            )


def _read_image(path: Path) -> tuple[Image.Image | None, str]:
    """Open and fully decode an image: ``(image, "")``, or ``(None, reason)`` when the file is bad."""
    if not path.is_file():
        return None, "image file does not exist"
    if path.stat().st_size == 0:
        return None, "empty (0-byte) file"
    try:
        with Image.open(path) as image:
            image.load()
            image = image.copy()
    except Image.DecompressionBombError as e:  # not an OSError: it escaped both on_bad policies unnamed
        return None, (f"too many pixels, refused as a possible decompression bomb ({e}); raise PIL.Image."
                      "MAX_IMAGE_PIXELS if the image is genuine")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        # UnidentifiedImageError: not an image (e.g. text renamed .png); OSError: truncated or corrupt data
        return None, f"unreadable image ({type(e).__name__}: {e})"
    if image.mode in ("F", "I") and not np.isfinite(np.asarray(image, dtype=np.float64)).all():
        # Float TIFFs can hold NaN/inf; converting them to 8 bits gives arbitrary pixels, not an error.
        return None, "non-finite pixel values (NaN or inf)"
    return _to_8bit(image), ""


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit grayscale (PNG ``I;16`` / ``I``) scaled to 8 bits: PIL's own conversion clips everything above 255.

    Examples
    --------
    >>> deep = Image.fromarray(np.array([[0, 32896, 65535]], np.uint16))
    >>> np.asarray(_to_8bit(deep)).tolist()
    [[0, 128, 255]]
    """
    if not image.mode.startswith("I") or (image.mode == "I" and np.asarray(image).max(initial=0) <= 255):
        return image  # 8-bit data stored in a wide mode needs no scaling
    values = np.asarray(image).astype(np.float64)
    top = 65535.0 if values.max(initial=0) <= 65535 else float(values.max())
    return Image.fromarray(np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8), "L")


def _open_image(path: Path, where: str, bad: _BadInput, **entry: Any) -> Image.Image | None:
    """The decoded image, or None when it is bad and ``bad`` skips (the error names ``where`` and the file)."""
    image, reason = _read_image(path)
    if image is not None:
        bad.check_size(image, path)
        return image
    if reason == "image file does not exist":
        error: Exception = FileNotFoundError(f"{where}: image file {path} does not exist; fix the path{_SKIP_HINT}")
    else:
        error = ValueError(f"{where}: cannot read image {path}: {reason}; remove or replace the file{_SKIP_HINT}")
    bad.reject(error, reason, **entry, file=str(path))
    return None


def digit_captions(label: int, seed: int, index: int) -> str:
    """The caption of digit example ``index``: one of :data:`DIGIT_TEMPLATES`, chosen from ``(seed, index)``.

    Examples
    --------
    >>> digit_captions(7, 0, 3) in [t.format(word="seven", digit=7) for t in DIGIT_TEMPLATES]
    True
    """
    choice = int(np.random.default_rng([seed, index]).integers(len(DIGIT_TEMPLATES)))
    return DIGIT_TEMPLATES[choice].format(word=DIGIT_WORDS[label], digit=label)


def load_digits_source(
    resolution: int = 32,
    crop_margin: int = 0,
    interpolation: str = "bilinear",
    limit: int | None = None,
    caption_seed: int = 0,
) -> ImageSource:
    """scikit-learn's 1797 handwritten digits (8x8, 10 classes), upscaled to ``resolution + crop_margin``.

    Ink is white on black (the 0..16 intensities scaled to 0..255). Each image gets one caption drawn from a few
    templates per class (:func:`digit_captions`).

    Examples
    --------
    >>> src = load_digits_source(resolution=16, limit=20)
    >>> src.images.shape, src.num_classes, src.records[0]["label"]
    ((20, 16, 16, 1), 10, 0)
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    raw = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    if limit is not None:
        raw, labels = raw[:limit], labels[:limit]
    canvas = int(resolution) + int(crop_margin)
    images = np.stack([_to_array(resize_square(Image.fromarray(x, "L"), canvas, interpolation), 1) for x in raw])
    records = [
        {
            "label": int(label),
            "caption": digit_captions(int(label), caption_seed, i),
            "source": i,
            "orig_height": 8,
            "orig_width": 8,
        }
        for i, label in enumerate(labels)
    ]
    prompts = [[t.format(word=w, digit=d) for t in DIGIT_TEMPLATES] for d, w in enumerate(DIGIT_WORDS)]
    return ImageSource(images, records, list(DIGIT_WORDS), prompts, name="sklearn digits")


def load_folder_source(
    root: str | Path,
    resolution: int = 32,
    crop_margin: int = 0,
    channels: int = 3,
    interpolation: str = "bicubic",
    caption_template: str = "a photo of a {name}",
    limit: int | None = None,
    on_bad: str = "error",
    min_size: int = 8,
    lazy: bool = False,
    index_dir: str | Path | None = None,
) -> ImageSource:
    """An image folder with one sub-folder per class (``root/<class name>/*.png``); classes sorted by name.

    Captions come from ``caption_template`` with the class name (underscores read as spaces). Bad image files
    raise (``on_bad="error"``) or are skipped and listed (``on_bad="skip"``); a class folder without any image
    file raises either way. ``limit`` counts the images kept. Images under ``min_size`` pixels on a side are
    kept with a warning. ``lazy=True`` indexes the folder into ``index_dir`` (reused when it is there) and reads
    images only when indexed (:func:`~robust_gen.image.data.file_index.open_folder_index`): the form for
    ImageNet-sized folders.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ("cat", "dog"):
    ...     (root / name).mkdir()
    ...     Image.new("RGB", (12, 10), "red").save(root / name / "a.png")
    >>> src = load_folder_source(root, resolution=8)
    >>> src.class_names, src.records[1]["caption"], src.images.shape
    (['cat', 'dog'], 'a photo of a dog', (2, 8, 8, 3))
    """
    if lazy:
        return _lazy_folder_source(root, index_dir, resolution=resolution, crop_margin=crop_margin,
                                   channels=channels, interpolation=interpolation, caption_template=caption_template,
                                   limit=limit, on_bad=on_bad)
    _check_channels(channels)
    bad = _BadInput(on_bad, min_size)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist (set data.root to a folder of class folders)")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"image folder {root} has no class sub-folders; expected {root}/<class name>/<images>")
    canvas = int(resolution) + int(crop_margin)
    images, records, names = [], [], []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ValueError(
                f"class folder {class_dir} has no images (extensions {IMAGE_EXTENSIONS}); add images or remove it"
            )
        name = class_dir.name.replace("_", " ")
        names.append(name)
        for path in files:
            if limit is not None and len(records) >= limit:
                break
            image = _open_image(path, f"class {class_dir.name!r}", bad)
            if image is None:
                continue
            images.append(_to_array(resize_square(image, canvas, interpolation), channels))
            records.append(_record(label, caption_template.format(name=name), len(records), image))
    bad.check_some_left(len(records), f"folder {root}")
    prompts = [[caption_template.format(name=n)] for n in names]
    return ImageSource(np.stack(images), records, names, prompts, name=f"folder {root}", skipped=bad.skipped)


def _lazy_folder_source(root: str | Path, index_dir: str | Path | None, **settings: Any) -> ImageSource:
    from robust_gen.image.data.file_index import open_folder_index  # it builds on this module's helpers

    if index_dir is None:
        raise ValueError("a lazy folder source needs index_dir (set data.index_dir, or let the recipe put it in "
                         "the run directory)")
    files, records, names = open_folder_index(root, index_dir, **settings)
    skipped_path = Path(index_dir) / SKIPPED_IMAGES_FILE
    skipped = json.loads(skipped_path.read_text())["images"] if skipped_path.is_file() else []
    prompts = [[caption] for caption in records.vocabularies["caption"]]
    return ImageSource(files, records, names, prompts, name=f"folder {root} (lazy)", skipped=skipped)


def _record(label: int, caption: str, source: int, image: Image.Image) -> dict:
    return {
        "label": int(label),
        "caption": caption,
        "source": source,
        "orig_height": image.size[1],
        "orig_width": image.size[0],
    }


def read_caption_table(path: str | Path) -> list[dict]:
    """The rows of a caption table: CSV / TSV with a header row, or JSON lines (one object per line).

    Values are returned exactly as written (CSV values are strings; quoted CSV fields may hold commas, quotes and
    newlines). A UTF-8 byte-order mark is ignored; blank JSON lines are skipped.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        Another suffix than .csv / .tsv / .jsonl / .json, text that is not UTF-8, a JSON line that is not a JSON
        object, a CSV row with more or fewer fields than the header, or CSV the parser rejects. The message names
        the file and the line or row.

    Examples
    --------
    >>> import tempfile
    >>> table = Path(tempfile.mkdtemp()) / "t.csv"
    >>> _ = table.write_text('image,caption\\na.png,"red, say ""hi"" twice"\\n', encoding="utf-8")
    >>> read_caption_table(table)
    [{'image': 'a.png', 'caption': 'red, say "hi" twice'}]
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption table {path} does not exist (set data.table)")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv", ".tsv"):
        raise ValueError(f"caption table {path} must be .csv, .tsv or .jsonl")
    try:
        # newline="": no newline translation, so a "\r" inside a quoted CSV field survives; -sig: spreadsheet
        # exports often start with a byte-order mark.
        with open(path, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"caption table {path} is not UTF-8 text ({e}); re-save it as UTF-8") from e
    if suffix in (".jsonl", ".json"):
        return _parse_json_lines(text, path)
    return _parse_csv(text, path, delimiter="\t" if suffix == ".tsv" else ",")


def _parse_json_lines(text: str, path: Path) -> list[dict]:
    rows = []
    # Split on "\n" only: str.splitlines() also breaks at U+2028, U+0085 etc., which JSON strings may hold raw.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{path} line {number} is not valid JSON: {e}") from e
        if not isinstance(row, dict):
            raise ValueError(f"{path} line {number} is not a JSON object but {type(row).__name__}: {line[:80]!r}")
        rows.append(row)
    return rows


def _parse_csv(text: str, path: Path, delimiter: str) -> list[dict]:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = []
    try:
        for row in reader:
            if None in row:  # DictReader's key for fields beyond the header
                raise ValueError(f"{path} line {reader.line_num}: more fields than the header {reader.fieldnames}")
            if any(value is None for value in row.values()):  # DictReader's value for missing trailing fields
                raise ValueError(f"{path} line {reader.line_num}: fewer fields than the header {reader.fieldnames}")
            rows.append(row)
    except csv.Error as e:
        raise ValueError(f"{path} line {reader.line_num} is not valid CSV: {e}") from e
    return rows


def load_table_source(
    table: str | Path,
    image_column: str = "image",
    caption_column: str = "caption",
    label_column: str | None = None,
    image_root: str | Path | None = None,
    resolution: int = 32,
    crop_margin: int = 0,
    channels: int = 3,
    interpolation: str = "bicubic",
    limit: int | None = None,
    on_bad: str = "error",
    min_size: int = 8,
) -> ImageSource:
    """An image + caption table (CSV/TSV with a header, or JSON lines: :func:`read_caption_table`), CC3M-style.

    Image paths are relative to ``image_root`` (default: the table's folder). ``label_column`` (optional) holds
    class names or ids; classes are then the sorted distinct values of the rows kept. Rows with an empty caption,
    no image path, or a bad image file raise (``on_bad="error"``, naming the row) or are skipped and listed
    (``on_bad="skip"``); a table without the named columns raises either way. ``limit`` counts rows read.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> Image.new("RGB", (8, 8), "blue").save(root / "a.png")
    >>> _ = (root / "t.csv").write_text("file,text\\na.png,a blue square\\n")
    >>> src = load_table_source(root / "t.csv", image_column="file", caption_column="text", resolution=8)
    >>> src.records[0]["caption"], src.records[0]["label"], src.captions
    ('a blue square', -1, ['a blue square'])
    """
    _check_channels(channels)
    bad = _BadInput(on_bad, min_size)
    path = Path(table)
    rows = read_caption_table(path)
    if not rows:
        raise ValueError(f"caption table {path} has no rows")
    wanted = [c for c in (image_column, caption_column, label_column) if c is not None]
    for column in wanted:
        if column not in rows[0]:
            raise ValueError(
                f"caption table {path} has no column {column!r} (columns: {sorted(rows[0])}); "
                "set data.image_column / data.caption_column / data.label_column"
            )
    root = Path(image_root) if image_root is not None else path.parent
    rows = rows[:limit] if limit is not None else rows
    canvas = int(resolution) + int(crop_margin)
    images, records, labels = [], [], []
    for number, row in enumerate(rows, start=1):
        where = f"{path} row {number}"
        caption, image_name = row.get(caption_column), row.get(image_column)
        if not isinstance(caption, str) or not caption.strip():
            error = ValueError(f"{where}: empty caption in column {caption_column!r}; fill it or drop the row"
                               f"{_SKIP_HINT}")
            bad.reject(error, f"empty caption in column {caption_column!r}", row=number)
            continue
        if image_name is None or not str(image_name).strip():
            error = ValueError(f"{where}: no image path in column {image_column!r}; fill it or drop the row"
                               f"{_SKIP_HINT}")
            bad.reject(error, f"no image path in column {image_column!r}", row=number)
            continue
        image = _open_image(root / str(image_name), where, bad, row=number)
        if image is None:
            continue
        images.append(_to_array(resize_square(image, canvas, interpolation), channels))
        labels.append(str(row.get(label_column)) if label_column else None)
        records.append(_record(-1, caption.strip(), len(records), image))
    bad.check_some_left(len(records), f"table {path}")
    label_values = sorted(set(labels)) if label_column else []
    label_index = {v: i for i, v in enumerate(label_values)}
    for record, value in zip(records, labels):
        record["label"] = label_index[value] if label_column else -1
    prompts = [[r["caption"] for r in records if r["label"] == i][:8] for i in range(len(label_values))]
    captions = list(dict.fromkeys(r["caption"] for r in records))
    return ImageSource(np.stack(images), records, label_values, prompts, captions, name=f"table {path}",
                       skipped=bad.skipped)


def load_hf_source(
    name: str,
    split: str = "train",
    image_column: str = "image",
    label_column: str | None = "label",
    caption_column: str | None = None,
    caption_template: str = "a photo of a {name}",
    config_name: str | None = None,
    revision: str | None = None,
    data_dir: str | None = None,
    resolution: int = 32,
    crop_margin: int = 0,
    channels: int = 3,
    interpolation: str = "bicubic",
    limit: int | None = None,
    on_bad: str = "error",
    min_size: int = 8,
) -> ImageSource:
    """A Hugging Face ``datasets`` image dataset (ImageNet-1K: ``imagenet-1k``; CC3M-style caption sets).

    Classes come from the label column's ``ClassLabel`` names (ImageNet's synset names; the first comma-separated
    name is used in captions); captions from ``caption_column`` or, without one, from ``caption_template``.
    ``split`` accepts slicing (``"train[:5000]"``); ``data_dir`` points a builder such as ``imagefolder`` at local
    files. Needs the optional ``datasets`` package and, for gated sets such as ImageNet, a logged-in hub account.
    Rows whose image cannot be decoded, holds no image or non-finite pixels, or whose caption is empty raise
    (``on_bad="error"``) or are skipped and listed (``on_bad="skip"``).
    """
    bad = _BadInput(on_bad, min_size)
    try:
        datasets = importlib.import_module("datasets")
    except ImportError as e:
        raise ImportError(
            "data=hf needs the Hugging Face `datasets` package (pip install datasets); offline, use data=folder "
            "or data=table on local files, or the embedded data=digits"
        ) from e
    _check_channels(channels)
    try:
        extra = {"data_dir": data_dir} if data_dir else {}
        dataset = datasets.load_dataset(name, config_name, split=split, revision=revision, **extra)
    except Exception as e:  # network, auth and missing-dataset errors all land here
        raise OSError(
            f"could not load Hugging Face dataset {name!r} (split {split!r}): {e}. Offline or without access, "
            "use data=folder / data=table on local files, or data=digits"
        ) from e
    for column in (image_column, label_column, caption_column):
        if column is not None and column not in dataset.column_names:
            raise ValueError(
                f"dataset {name!r} has no column {column!r} (columns: {dataset.column_names}); set "
                "data.image_column / data.label_column / data.caption_column"
            )
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    names: list[str] = []
    if label_column is not None:
        feature = dataset.features[label_column]
        names = [n.split(",")[0].strip() for n in getattr(feature, "names", [])]
    canvas = int(resolution) + int(crop_margin)
    images, records = [], []
    for i in range(len(dataset)):
        where = f"dataset {name!r} row {i}"
        try:
            row = dataset[i]  # decodes the image: a corrupt file fails here
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            reason = f"unreadable image ({type(e).__name__}: {e})"
            bad.reject(ValueError(f"{where}: {reason}{_SKIP_HINT}"), reason, row=i)
            continue
        image = row[image_column]
        if not isinstance(image, Image.Image):
            reason = f"column {image_column!r} holds no image"
            bad.reject(ValueError(f"{where}: {reason}{_SKIP_HINT}"), reason, row=i)
            continue
        if image.mode in ("F", "I") and not np.isfinite(np.asarray(image, dtype=np.float64)).all():
            reason = "non-finite pixel values (NaN or inf)"
            bad.reject(ValueError(f"{where}: {reason}{_SKIP_HINT}"), reason, row=i)
            continue
        label = int(row[label_column]) if label_column is not None else -1
        if caption_column is not None:
            caption = row[caption_column]
            if not isinstance(caption, str) or not caption.strip():
                reason = f"empty caption in column {caption_column!r}"
                bad.reject(ValueError(f"{where}: {reason}{_SKIP_HINT}"), reason, row=i)
                continue
        else:
            caption = caption_template.format(name=names[label] if names else label)
        images.append(_to_array(resize_square(image, canvas, interpolation), channels))
        records.append(_record(label, caption.strip(), len(records), image))
    bad.check_some_left(len(records), f"dataset {name!r}")
    if not names and label_column is not None:
        names = [str(v) for v in range(max(r["label"] for r in records) + 1)]
    prompts = [[caption_template.format(name=n)] for n in names] if caption_column is None else [
        [r["caption"] for r in records if r["label"] == k][:8] for k in range(len(names))
    ]
    captions = list(dict.fromkeys(r["caption"] for r in records))[:1000]
    return ImageSource(np.stack(images), records, names, prompts, captions, name=f"hf {name}:{split}",
                       skipped=bad.skipped)



def report_skipped(source: ImageSource, run_dir: str | os.PathLike | None = None) -> Path | None:
    """Count the skipped images of ``source`` in the log (one warning) and list them in ``run_dir``.

    Writes ``{"count": n, "images": [...]}`` atomically to ``<run_dir>/skipped_images.json`` (also when nothing
    was skipped, so a run folder always says how many were left out) and returns its path; without ``run_dir``
    only the warning is given.

    Examples
    --------
    >>> import tempfile
    >>> bad = [{"file": "a.png", "reason": "empty (0-byte) file"}]
    >>> src = ImageSource(np.zeros((1, 4, 4, 1), np.uint8), [{"label": -1}], skipped=bad)
    >>> report_skipped(src, tempfile.mkdtemp()).name
    'skipped_images.json'
    """
    from robust_gen.training.run_dir import write_json

    path = Path(run_dir) / SKIPPED_IMAGES_FILE if run_dir is not None else None
    if path is not None:
        write_json(path, {"count": len(source.skipped), "images": source.skipped})
    if source.skipped:
        log.warning("skipped %d bad image(s) of %s (data.on_bad=skip); see %s", len(source.skipped), source.name,
                    path if path is not None else "ImageSource.skipped")
    return path


def validate_image_config(cfg: Any) -> None:
    """The image recipe's own checks of its config, before any work: the ``data`` group's names and ranges.

    Examples
    --------
    >>> validate_image_config({"data": {"source": "folder", "resolution": 0}})
    Traceback (most recent call last):
    ...
    ValueError: data.resolution must be an integer >= 1, got 0
    """
    from robust_gen.training.settings import Rule, check_choice, check_config

    data = cfg["data"]
    check_choice("data.source", data.get("source"), ("digits", "folder", "table", "hf"))
    if "on_bad" in data:
        check_choice("data.on_bad", data["on_bad"], BAD_INPUT_POLICIES)
    check_config(cfg, {
        "data.resolution": Rule("int", 1), "data.crop_margin": Rule("int", 0), "data.limit": Rule("int", 1, nullable=True),
        "data.min_size": Rule("int", 1), "data.channels": Rule("int", 1, 3), "data.flip": Rule("bool"),
        "latents.encode_batch_size": Rule("int", 1), "samples.num_per_class": Rule("int", 1),
        "samples.num": Rule("int", 1), "samples.batch_size": Rule("int", 1), "samples.guidance_scale": Rule("float"),
    })

