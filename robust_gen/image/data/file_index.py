"""Image folders of ImageNet size, read lazily: an on-disk index of the files and their records, and the images
decoded by index only when they are encoded.

Why this form: ImageNet-1K as distributed (and as torchvision's ``ImageFolder`` and the LDM / DiT training code
read it) is a folder of class folders of JPEGs, and latent-diffusion training reads each image exactly once, to
encode it into the latent cache (:mod:`robust_gen.image.data.latents`); training then reads latents. So the
image side needs random access by index and bounded memory, not a streaming format: WebDataset tar shards
would buy sequential throughput for an access that happens once, and need a conversion step plus a package
this project does not ship. The index makes the folder itself the random-access dataset:

- ``files.npy``: the relative path of every image (fixed-width bytes), with ``sizes.npy`` and ``mtimes.npy`` so
  that a changed file changes the latent cache's key (:meth:`ImageFiles.fingerprint`) without reading pixels;
- ``records/``: the metadata records as a memory-mapped :class:`~robust_gen.corruption.records.RecordTable`
  (label, caption as a code into the class captions, source, original height and width);
- ``index.json``: the class names, the settings it was built with, written last (the completion marker).

A training process opens the index memory-mapped: its resident memory does not grow with the number of images
(``benchmarks/bench_data_scale.py`` measures it). Building the index reads every image's header once (its size
is control metadata); bad files follow ``on_bad`` there. A file that passes the header check but fails to
decode later raises at encode time, naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from robust_gen.corruption.records import RecordTable
from robust_gen.image.data.sources import (
    IMAGE_EXTENSIONS,
    _BadInput,
    _check_channels,
    _open_image,
    _to_array,
    resize_square,
)
from robust_gen.training.run_dir import write_json

__all__ = ["INDEX_FILE", "ImageFiles", "files_digest", "index_folder", "open_folder_index"]

INDEX_FILE = "index.json"
_FORMAT = 1


class ImageFiles:
    """uint8 images ``[N, S, S, C]`` decoded from files when indexed: an array-like for the encode step.

    Supports ``len``, ``shape``, ``dtype``, ``ndim``, an int index (one image ``[S, S, C]``), a slice or an
    integer array (a stacked batch). Each access opens, decodes, resizes and centre-crops the files
    (:func:`~robust_gen.image.data.sources.resize_square`), exactly as the in-memory loaders do.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ("cat", "dog"):
    ...     (root / name).mkdir()
    ...     Image.new("RGB", (12, 10), "red").save(root / name / "a.png")
    >>> files, records, names = open_folder_index(root, Path(tempfile.mkdtemp()), resolution=8)
    >>> files.shape, files[0:2].shape, records[1]["caption"], names
    ((2, 8, 8, 3), (2, 8, 8, 3), 'a photo of a dog', ['cat', 'dog'])
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, root: str | Path, index_dir: str | Path, canvas: int, channels: int, interpolation: str):
        self.root, self.index_dir = Path(root), Path(index_dir)
        self.canvas, self.channels, self.interpolation = int(canvas), int(channels), interpolation
        self.paths = np.load(self.index_dir / "files.npy", mmap_mode="r", allow_pickle=False)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.canvas, self.canvas, self.channels)

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, index: int) -> Path:
        return self.root / bytes(self.paths[index]).decode("utf-8")

    def _decode(self, index: int) -> np.ndarray:
        path = self.path(index)
        try:
            with Image.open(path) as image:
                image.load()
                image = image.copy()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise ValueError(
                f"image {index} ({path}) passed the index's header check but cannot be decoded ({e}); remove or "
                "replace the file and delete the index folder to rebuild it"
            ) from e
        return _to_array(resize_square(image, self.canvas, self.interpolation), self.channels)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self._decode(int(key))
        if isinstance(key, slice):
            indices: Any = range(*key.indices(len(self)))
        else:
            indices = np.asarray(key, dtype=np.int64).tolist()
        return np.stack([self._decode(i) for i in indices]) if len(indices) else np.zeros((0, *self.shape[1:]),
                                                                                           np.uint8)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError(
            f"{len(self)} lazily read images would be decoded into memory at once; index them in batches "
            "(images[start:stop]) instead"
        )

    def fingerprint(self) -> str:
        """SHA-256 of the file list, sizes, modification times (:func:`files_digest`, stored in the index when it
        was built, so a training process does not page the list in) and the decode settings (not the pixels)."""
        meta_path = self.index_dir / INDEX_FILE
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        digest = meta.get("files_sha256") or files_digest(self.index_dir)
        return hashlib.sha256(json.dumps({"canvas": self.canvas, "channels": self.channels, "files": digest,
                                          "interpolation": self.interpolation, "n": len(self)}).encode()).hexdigest()


def files_digest(index_dir: str | Path) -> str:
    """SHA-256 of an index's ``files.npy``, ``sizes.npy`` and ``mtimes.npy``, read a million entries at a time."""
    h = hashlib.sha256()
    for name in ("files.npy", "sizes.npy", "mtimes.npy"):
        array = np.load(Path(index_dir) / name, mmap_mode="r", allow_pickle=False)
        for start in range(0, len(array), 1 << 20):
            h.update(np.ascontiguousarray(array[start : start + (1 << 20)]).tobytes())
    return h.hexdigest()


def _class_files(root: Path) -> Iterator[tuple[int, str, list[str]]]:
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"image folder {root} has no class sub-folders; expected {root}/<class name>/<images>")
    for label, class_dir in enumerate(class_dirs):
        # one class folder listed at a time: memory bounded by the largest class, not the dataset
        files = sorted(e.name for e in os.scandir(class_dir) if Path(e.name).suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ValueError(
                f"class folder {class_dir} has no images (extensions {IMAGE_EXTENSIONS}); add images or remove it"
            )
        yield label, class_dir.name, files


def index_folder(
    root: str | Path,
    index_dir: str | Path,
    *,
    caption_template: str = "a photo of a {name}",
    limit: int | None = None,
    on_bad: str = "error",
) -> Path:
    """Write the index of ``root/<class>/<image>`` into ``index_dir`` (see the module docstring); returns it.

    Each image's header is opened once for its original size; bad files raise (``on_bad="error"``) or are left
    out and listed in ``index_dir/skipped_images.json`` (``on_bad="skip"``).
    """
    root, index_dir = Path(root), Path(index_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist (set data.root to a folder of class folders)")
    bad = _BadInput(on_bad)
    index_dir.mkdir(parents=True, exist_ok=True)
    names, paths, sizes, mtimes = [], [], [], []
    labels, heights, widths = [], [], []
    for label, class_name, files in _class_files(root):
        names.append(class_name.replace("_", " "))
        for file_name in files:
            if limit is not None and len(paths) >= limit:
                break
            path = root / class_name / file_name
            size = _header_size(path)
            if size is None:  # the loaders' check names the fault, then raises or lists it under on_bad
                _open_image(path, f"class {class_name!r}", bad)
                continue
            stat = path.stat()
            paths.append(f"{class_name}/{file_name}".encode())
            sizes.append(stat.st_size)
            mtimes.append(stat.st_mtime_ns)
            labels.append(label)
            widths.append(size[0])
            heights.append(size[1])
    bad.check_some_left(len(paths), f"folder {root}")
    np.save(index_dir / "files.npy", np.array(paths, dtype=f"S{max(len(p) for p in paths)}"), allow_pickle=False)
    np.save(index_dir / "sizes.npy", np.asarray(sizes, dtype=np.int64), allow_pickle=False)
    np.save(index_dir / "mtimes.npy", np.asarray(mtimes, dtype=np.int64), allow_pickle=False)
    label_array = np.asarray(labels, dtype=np.int32)
    records = RecordTable(
        {
            "label": label_array,
            "caption": label_array.copy(),  # the class caption: codes into the vocabulary below
            "source": np.arange(len(paths), dtype=np.int64),
            "orig_height": np.asarray(heights, dtype=np.int32),
            "orig_width": np.asarray(widths, dtype=np.int32),
        },
        {"caption": [caption_template.format(name=n) for n in names]},
    )
    records.save(index_dir / "records")
    write_json(index_dir / "skipped_images.json", {"count": len(bad.skipped), "images": bad.skipped})
    write_json(index_dir / INDEX_FILE, {"format": _FORMAT, "root": str(root.resolve()), "class_names": names,
                                        "caption_template": caption_template, "limit": limit, "count": len(paths),
                                        "files_sha256": files_digest(index_dir)})
    return index_dir


def _header_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from the image header, or None when the file is missing, empty or not an image."""
    try:
        if path.stat().st_size == 0:
            return None
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None


def open_folder_index(
    root: str | Path,
    index_dir: str | Path,
    *,
    resolution: int = 32,
    crop_margin: int = 0,
    channels: int = 3,
    interpolation: str = "bicubic",
    caption_template: str = "a photo of a {name}",
    limit: int | None = None,
    on_bad: str = "error",
) -> tuple[ImageFiles, RecordTable, list[str]]:
    """The lazily read images, the records and the class names of ``root``, indexing it first if needed.

    An index built for another folder, caption template or limit is rebuilt; an index that is missing its
    completion marker (a killed build) is rebuilt too.
    """
    _check_channels(channels)
    index_dir = Path(index_dir)
    meta_path = index_dir / INDEX_FILE
    wanted = {"root": str(Path(root).resolve()), "caption_template": caption_template, "limit": limit}
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    if meta is None or meta.get("format") != _FORMAT or any(meta.get(k) != v for k, v in wanted.items()):
        index_folder(root, index_dir, caption_template=caption_template, limit=limit, on_bad=on_bad)
        meta = json.loads(meta_path.read_text())
    files = ImageFiles(root, index_dir, int(resolution) + int(crop_margin), channels, interpolation)
    return files, RecordTable.load(index_dir / "records"), list(meta["class_names"])
