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

Everything is loaded into memory at once: meant for datasets that fit (the digits, folders of thousands of
images, slices of ImageNet via ``limit``), not for streaming 1.28M images.
"""

from __future__ import annotations

import csv
import importlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "DIGIT_TEMPLATES",
    "DIGIT_WORDS",
    "IMAGE_EXTENSIONS",
    "ImageSource",
    "digit_captions",
    "load_digits_source",
    "load_folder_source",
    "load_hf_source",
    "load_table_source",
    "resize_square",
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


@dataclass
class ImageSource:
    """Images and their metadata records.

    Attributes
    ----------
    images:
        uint8 ``[N, S, S, C]`` at the canvas size ``S``.
    records:
        One dict per training example (``label``, ``caption``, ``source``, ``orig_height``, ``orig_width``).
    class_names:
        Name of each class (empty for unlabelled data).
    class_prompts:
        For each class, captions to sample it with (text conditioning).
    captions:
        Distinct captions to sample with when there are no classes.
    name:
        A short description of where the data came from.
    """

    images: np.ndarray
    records: list[dict]
    class_names: list[str] = field(default_factory=list)
    class_prompts: list[list[str]] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    name: str = ""

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8 or self.images.shape[1] != self.images.shape[2]:
            raise ValueError(f"images must be uint8 [N, S, S, C], got {self.images.dtype} {self.images.shape}")
        if not self.records:
            raise ValueError(f"the data source {self.name!r} has no images; check the data configuration")

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


def _open_image(path: Path, where: str) -> Image.Image:
    """Open and fully decode an image, naming the file (and the row) when that fails."""
    if not path.is_file():
        raise FileNotFoundError(f"{where}: image file {path} does not exist")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"{where}: cannot read image {path} ({e}); remove or replace the file") from e


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
) -> ImageSource:
    """An image folder with one sub-folder per class (``root/<class name>/*.png``); classes sorted by name.

    Captions come from ``caption_template`` with the class name (underscores read as spaces).

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
    _check_channels(channels)
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
            image = _open_image(path, f"class {class_dir.name!r}")
            images.append(_to_array(resize_square(image, canvas, interpolation), channels))
            records.append(_record(label, caption_template.format(name=name), len(records), image))
    prompts = [[caption_template.format(name=n)] for n in names]
    return ImageSource(np.stack(images), records, names, prompts, name=f"folder {root}")


def _record(label: int, caption: str, source: int, image: Image.Image) -> dict:
    return {
        "label": int(label),
        "caption": caption,
        "source": source,
        "orig_height": image.size[1],
        "orig_width": image.size[0],
    }


def _read_table(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"caption table {path} does not exist (set data.table)")
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    raise ValueError(f"{path} line {number} is not valid JSON: {e}") from e
        return rows
    if path.suffix.lower() in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
    raise ValueError(f"caption table {path} must be .csv, .tsv or .jsonl")


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
) -> ImageSource:
    """An image + caption table (CSV/TSV with a header, or JSON lines), CC3M-style.

    Image paths are relative to ``image_root`` (default: the table's folder). ``label_column`` (optional) holds
    class names or ids; classes are then their sorted distinct values.

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
    path = Path(table)
    rows = _read_table(path)
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
    label_values = sorted({str(r[label_column]) for r in rows}) if label_column else []
    label_index = {v: i for i, v in enumerate(label_values)}
    canvas = int(resolution) + int(crop_margin)
    images, records = [], []
    for number, row in enumerate(rows, start=1):
        where = f"{path} row {number}"
        caption = row.get(caption_column)
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"{where}: empty caption in column {caption_column!r}; fill it or drop the row")
        image = _open_image(root / str(row[image_column]), where)
        images.append(_to_array(resize_square(image, canvas, interpolation), channels))
        label = label_index[str(row[label_column])] if label_column else -1
        records.append(_record(label, caption.strip(), len(records), image))
    prompts = [[r["caption"] for r in records if r["label"] == i][:8] for i in range(len(label_values))]
    captions = list(dict.fromkeys(r["caption"] for r in records))
    return ImageSource(np.stack(images), records, label_values, prompts, captions, name=f"table {path}")


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
) -> ImageSource:
    """A Hugging Face ``datasets`` image dataset (ImageNet-1K: ``imagenet-1k``; CC3M-style caption sets).

    Classes come from the label column's ``ClassLabel`` names (ImageNet's synset names; the first comma-separated
    name is used in captions); captions from ``caption_column`` or, without one, from ``caption_template``.
    ``split`` accepts slicing (``"train[:5000]"``); ``data_dir`` points a builder such as ``imagefolder`` at local
    files. Needs the optional ``datasets`` package and, for gated sets such as ImageNet, a logged-in hub account.
    """
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
    for i, row in enumerate(dataset):
        image = row[image_column]
        if not isinstance(image, Image.Image):
            raise ValueError(f"dataset {name!r} row {i}: column {image_column!r} holds no image")
        label = int(row[label_column]) if label_column is not None else -1
        if caption_column is not None:
            caption = row[caption_column]
            if not isinstance(caption, str) or not caption.strip():
                raise ValueError(f"dataset {name!r} row {i}: empty caption in column {caption_column!r}")
        else:
            caption = caption_template.format(name=names[label] if names else label)
        images.append(_to_array(resize_square(image, canvas, interpolation), channels))
        records.append(_record(label, caption.strip(), i, image))
    if not names and label_column is not None:
        names = [str(v) for v in range(max(r["label"] for r in records) + 1)]
    prompts = [[caption_template.format(name=n)] for n in names] if caption_column is None else [
        [r["caption"] for r in records if r["label"] == k][:8] for k in range(len(names))
    ]
    captions = list(dict.fromkeys(r["caption"] for r in records))[:1000]
    return ImageSource(np.stack(images), records, names, prompts, captions, name=f"hf {name}:{split}")

