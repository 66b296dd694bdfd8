"""Sample and reference image sets: loading, validating and resizing uint8 images for evaluation.

Sample files
------------
``<run_dir>/samples/<tag>/images.npz`` with ``images`` (uint8 ``[N, H, W, C]``, C = 1 or 3), ``labels`` (int64
``[N]``, -1 where a sample has no class) and ``captions`` (str array, may be empty); optionally a scalar
``guidance_scale``. References are scikit-learn's digits, an image folder (class sub-folders optional) or an
``.npz`` in the same format (:func:`load_references`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "IMAGE_SUFFIXES",
    "SAMPLES_FILE",
    "SampleSet",
    "digits_references",
    "load_references",
    "load_samples",
    "resize_images",
]

SAMPLES_FILE = "images.npz"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class SampleSet:
    """uint8 images ``[N, H, W, C]`` with int64 labels ``[N]`` (-1: no class) and optional captions."""

    images: np.ndarray
    labels: np.ndarray
    captions: list[str] = field(default_factory=list)
    source: str = "<memory>"

    def __post_init__(self) -> None:
        _check_arrays(self.images, self.labels, self.captions, self.source)
        self.labels = self.labels.astype(np.int64)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def has_labels(self) -> bool:
        return bool((self.labels >= 0).any())


def _check_arrays(images: Any, labels: Any, captions: Sequence[str], source: str) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        dtype = getattr(images, "dtype", type(images).__name__)
        raise ValueError(f"{source}: 'images' must be a uint8 array (0..255), got {dtype}")
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or min(images.shape[1:3], default=0) < 1:
        raise ValueError(
            f"{source}: 'images' must have shape [N, H, W, C] with C = 1 or 3, got {images.shape}"
        )
    if not isinstance(labels, np.ndarray) or labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{source}: 'labels' must be a 1-D integer array (-1 for no class), got "
            f"{getattr(labels, 'dtype', type(labels).__name__)} {getattr(labels, 'shape', '')}"
        )
    if len(labels) != len(images):
        raise ValueError(
            f"{source}: {len(images)} images but {len(labels)} labels; write one label per image"
        )
    if labels.size and labels.min() < -1:
        raise ValueError(f"{source}: labels must be >= -1 (-1 means no class), found {labels.min()}")
    if len(captions) not in (0, len(images)):
        raise ValueError(
            f"{source}: {len(captions)} captions for {len(images)} images; write none or one each"
        )


def load_samples(path: str | Path) -> SampleSet:
    """Read a sample file (``images.npz``) written by the sampling recipe, checking shapes and dtypes.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "images.npz"
    >>> np.savez(path, images=np.zeros((3, 8, 8, 1), np.uint8), labels=np.array([0, 1, -1]))
    >>> s = load_samples(path); len(s), s.has_labels
    (3, True)
    >>> np.savez(path, images=np.zeros((3, 8, 8), np.uint8), labels=np.array([0, 1, -1]))
    >>> load_samples(path)
    Traceback (most recent call last):
    ...
    ValueError: .../images.npz: 'images' must have shape [N, H, W, C] with C = 1 or 3, got (3, 8, 8)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: sample files are written by recipes/image/sample.py "
            f"(<run_dir>/samples/<tag>/{SAMPLES_FILE})"
        )
    with np.load(path, allow_pickle=False) as data:
        if "images" not in data.files:
            raise ValueError(
                f"{path}: no 'images' array (found {data.files}); expected images, labels, captions"
            )
        images = data["images"]
        labels = data["labels"] if "labels" in data.files else np.full(len(images), -1, np.int64)
    captions = _read_captions(path)
    return SampleSet(images, labels, captions, source=str(path))


def _read_captions(path: Path) -> list[str]:
    # Captions are a string array. Files of older versions held an object array, which only pickle can read, and
    # a sample folder may come from anyone: such a file is refused, never unpickled.
    with np.load(path, allow_pickle=False) as data:
        if "captions" not in data.files:
            return []
        try:
            return [str(c) for c in data["captions"].tolist()]
        except ValueError as e:
            raise ValueError(
                f"{path}: 'captions' is an object array, which only pickle can read, and files from a sample folder "
                "are never unpickled; write the samples again with recipes/image/sample.py (it stores captions as "
                "a string array)"
            ) from e


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 images ``[N, H, W, C]`` to ``size x size`` (bilinear, align_corners=False, antialiased
    when shrinking).

    Examples
    --------
    >>> resize_images(np.full((2, 8, 8, 1), 200, np.uint8), 32)[0, :2, :2, 0].tolist()
    [[200, 200], [200, 200]]
    """
    if images.shape[1:3] == (size, size):
        return images
    x = torch.tensor(images).permute(0, 3, 1, 2).float() / 255.0
    shrink = max(images.shape[1:3]) > size
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    return (x * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def digits_references(image_size: int = 32) -> SampleSet:
    """scikit-learn's 1797 handwritten digits (8x8, values 0..16, 10 classes) as uint8 ``[N, S, S, 1]``.

    Built by the image recipe's own loader (:func:`robust_gen.image.data.sources.load_digits_source` with the recipe's
    default bilinear resize), so references and training data are the same pixels.

    Examples
    --------
    >>> refs = digits_references(32)
    >>> refs.images.shape, refs.images.dtype, int(refs.labels.max())
    ((1797, 32, 32, 1), dtype('uint8'), 9)
    """
    from robust_gen.image.data.sources import load_digits_source

    source = load_digits_source(resolution=image_size, interpolation="bilinear")
    labels = np.array([r["label"] for r in source.records], dtype=np.int64)
    return SampleSet(source.images, labels, source="sklearn:load_digits")


def _load_image_folder(root: Path, image_size: int) -> SampleSet:
    """Images under ``root``; class sub-folders (sorted names -> 0, 1, ...) give labels, loose files -1."""
    from PIL import Image

    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    classes = sorted({p.parent.name for p in files if p.parent != root})
    loose = [p for p in files if p.parent == root]
    if classes and loose:
        raise ValueError(
            f"{root} mixes class sub-folders with loose images ({loose[0].name}); use one layout"
        )
    opened = [Image.open(p) for p in files]
    mode = "L" if all(im.mode in ("1", "L", "I;16", "I") for im in opened) else "RGB"
    arrays = []
    for im in opened:
        im = im.convert(mode)
        side = min(im.size)  # centre square crop keeps the aspect ratio before resizing
        left, top = (im.width - side) // 2, (im.height - side) // 2
        im = im.crop((left, top, left + side, top + side))
        arr = np.array(im, dtype=np.uint8)
        arrays.append(resize_images((arr[..., None] if arr.ndim == 2 else arr)[None], image_size)[0])
    index = {name: k for k, name in enumerate(classes)}
    labels = np.array([index[p.parent.name] if classes else -1 for p in files], np.int64)
    return SampleSet(np.stack(arrays), labels, source=str(root))


def load_references(
    source: str | Path = "digits",
    image_size: int = 32,
    max_images: int | None = None,
    seed: int = 0,
    crop_margin: int = 0,
) -> SampleSet:
    """Clean reference images: ``"digits"``, a folder of images (class sub-folders optional) or an ``.npz``.

    Images are resized to ``image_size``; ``max_images`` keeps a seeded random subset. ``crop_margin``: resized
    to ``image_size + crop_margin`` and centre-cropped to ``image_size`` instead, the geometry of a run trained
    with ``data.crop_margin`` and sampled with its centred crop (its digits are that much larger than a plain
    resize makes them).

    Examples
    --------
    >>> len(load_references("digits", image_size=16, max_images=100))
    100
    >>> load_references("digits", image_size=16, max_images=10, crop_margin=4).images.shape
    (10, 16, 16, 1)
    >>> load_references("no/such/place")
    Traceback (most recent call last):
    ...
    FileNotFoundError: reference source no/such/place not found: use 'digits', an image folder or a .npz
    """
    if crop_margin < 0:
        raise ValueError(f"references.crop_margin must be >= 0, got {crop_margin}")
    canvas = image_size + crop_margin
    if str(source) == "digits":
        refs = digits_references(canvas)
    else:
        path = Path(source)
        if path.is_dir():
            refs = _load_image_folder(path, canvas)
        elif path.is_file() and path.suffix == ".npz":
            refs = load_samples(path)
            refs = SampleSet(resize_images(refs.images, canvas), refs.labels, source=str(path))
        else:
            raise FileNotFoundError(
                f"reference source {source} not found: use 'digits', an image folder or a .npz"
            )
    if crop_margin:
        top = crop_margin // 2  # the training data's centred crop (robust_gen.image.data.dataset.Augmentation)
        crop = refs.images[:, top : top + image_size, top : top + image_size]
        refs = SampleSet(np.ascontiguousarray(crop), refs.labels, source=f"{refs.source} (centre crop of {canvas})")
    if max_images is not None and max_images < len(refs):
        keep = np.sort(np.random.default_rng(seed).choice(len(refs), max_images, replace=False))
        refs = SampleSet(refs.images[keep], refs.labels[keep], source=refs.source)
    return refs
