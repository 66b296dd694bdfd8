"""Pixel conventions shared by the image modules: uint8 ``[N, H, W, C]`` arrays on disk and in ``images.npz``,
float ``[N, C, H, W]`` tensors in [-1, 1] inside the models, and PNG grids for looking at them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from robust_gen.training.run_dir import atomic_write_bytes

__all__ = ["image_grid", "save_grid", "shorten", "to_model_range", "to_uint8"]


def to_model_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, H, W, C]`` -> float32 ``[N, C, H, W]`` in [-1, 1].

    Examples
    --------
    >>> to_model_range(np.array([[[[0], [255]]]], dtype=np.uint8)).flatten().tolist()
    [-1.0, 1.0]
    """
    tensor = torch.as_tensor(np.asarray(images)) if not torch.is_tensor(images) else images
    if tensor.dtype != torch.uint8 or tensor.dim() != 4:
        raise ValueError(f"expected uint8 images [N, H, W, C], got {tensor.dtype} {list(tensor.shape)}")
    return tensor.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float ``[N, C, H, W]`` in [-1, 1] (clipped) -> uint8 ``[N, H, W, C]``.

    Examples
    --------
    >>> to_uint8(torch.tensor([[[[-1.0, 0.0, 2.0]]]])).reshape(-1).tolist()
    [0, 128, 255]
    """
    if images.dim() != 4:
        raise ValueError(f"expected images [N, C, H, W], got {list(images.shape)}")
    scaled = ((images.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def image_grid(images: np.ndarray, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile uint8 ``[N, H, W, C]`` images into one ``[rows*(H+p)+p, nrow*(W+p)+p, C]`` image (rows of ``nrow``).

    Examples
    --------
    >>> image_grid(np.zeros((5, 4, 4, 1), dtype=np.uint8), nrow=3, padding=1).shape
    (11, 16, 1)
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) == 0:
        raise ValueError(f"expected a non-empty uint8 array [N, H, W, C], got {images.dtype} {images.shape}")
    n, h, w, c = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top : top + h, left : left + w] = images[i]
    return grid


def save_grid(
    images: np.ndarray,
    path: str | Path,
    nrow: int | None = None,
    upscale: int = 1,
    *,
    title: str | None = None,
    column_labels: Sequence[str] | None = None,
) -> Path:
    """Write :func:`image_grid` of ``images`` as a PNG (nearest-neighbour ``upscale`` for tiny images), with an
    optional ``title`` line and a label over each column (shortened to the column's width) above the tiles.

    Examples
    --------
    >>> import tempfile
    >>> p = save_grid(np.zeros((4, 8, 8, 3), dtype=np.uint8), Path(tempfile.mkdtemp()) / "g.png", upscale=2)
    >>> Image.open(p).size  # 2 x 2 tiles of 8 pixels with 2-pixel padding, doubled
    (44, 44)
    >>> q = save_grid(np.zeros((4, 8, 8, 1), dtype=np.uint8), Path(tempfile.mkdtemp()) / "g.png", nrow=2, upscale=4,
    ...               title="guidance 3", column_labels=["zero", "a very long prompt about a one"])
    >>> Image.open(q).size[0] == 88 and Image.open(q).size[1] > 88  # a header band above the same tiles
    True
    """
    grid = image_grid(images, nrow)
    picture = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if upscale > 1:
        picture = picture.resize((picture.width * upscale, picture.height * upscale), Image.Resampling.NEAREST)
    if title or column_labels:
        tile = (images.shape[2] + 2) * upscale  # image_grid's default padding of 2
        picture = _with_header(picture, title, list(column_labels or []), tile, 2 * upscale)
    path = Path(path)
    buffer = BytesIO()
    picture.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def shorten(text: str, width: float, measure) -> str:
    """``text`` cut to fit ``width`` pixels by ``measure(text)``, ending in ".." when cut.

    Examples
    --------
    >>> shorten("a handwritten seven", 8, len), shorten("seven", 8, len)
    ('a hand..', 'seven')
    """
    if measure(text) <= width:
        return text
    while text and measure(text + "..") > width:
        text = text[:-1]
    return text.rstrip() + ".."


def _with_header(picture: Image.Image, title: str | None, labels: list[str], tile: int, pad: int) -> Image.Image:
    """``picture`` below a white band holding the title (centred) and one label centred over each column."""
    font = ImageFont.load_default(size=11)
    line = 14
    height = line * (bool(title) + bool(labels)) + 4
    width = picture.width
    canvas = Image.new(picture.mode, (width, picture.height + height), "white")
    canvas.paste(picture, (0, height))
    draw = ImageDraw.Draw(canvas)
    measure = lambda text: draw.textlength(text, font=font)  # noqa: E731
    top = 2
    if title:
        text = shorten(title, width - 4, measure)
        draw.text(((width - measure(text)) / 2, top), text, fill="black", font=font)
        top += line
    for column, label in enumerate(labels):
        text = shorten(str(label), tile - 2, measure)
        left = pad + column * tile + (tile - pad - measure(text)) / 2
        draw.text((left, top), text, fill="black", font=font)
    return canvas
