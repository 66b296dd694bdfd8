"""The training set of the image recipe: cached latents, corrupted records, crop/flip augmentation, control metadata.

Each example is a metadata record (label, caption, source image; see :mod:`robust_gen.image.data.sources`) whose
image is looked up in the latent table. The configured corruption is applied to the records through
:func:`robust_gen.training.recipe.apply_corruption` (which writes the manifest into the run directory); a
corruption re-drawn every epoch is re-applied from the original records by :meth:`LatentImageDataset.set_epoch`,
which the trainer calls at the start of every epoch.

Augmentation is a random crop and an optional horizontal flip, a pure function of ``(seed, epoch, index)``, so
resuming and multi-process training see the same crops. The crop happens in latent space on the cached latents
of the whole canvas, at offsets that are whole latent cells (multiples of the autoencoder's downsampling factor
in pixels), and flips select the cached latents of the mirror image, so no image is encoded during training.
The crop offsets (in pixels, in the possibly flipped canvas), the original image size and the flip flag are
returned as control metadata (:data:`CONTROL_NAMES`; SDXL's micro-conditioning, Berrada et al. 2024).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from robust_gen.audit.filters import DataFilter
from robust_gen.corruption.records import is_record_table
from robust_gen.image.data.latents import LatentTable
from robust_gen.training.recipe import apply_corruption
from robust_gen.training.sample_losses import SAMPLE_INDEX_KEY

__all__ = ["CONTROL_NAMES", "Augmentation", "LatentImageDataset"]

log = logging.getLogger(__name__)

#: Control metadata, in the order of the ``control`` vector of every example.
CONTROL_NAMES = ("crop_top", "crop_left", "orig_height", "orig_width", "flip")


@dataclass(frozen=True)
class Augmentation:
    """Random crop of ``resolution`` pixels out of a ``resolution + margin`` canvas, and optional flips.

    Crop offsets are multiples of ``factor`` (pixels per latent cell), drawn from ``(seed, epoch, index)``.

    Examples
    --------
    >>> aug = Augmentation(resolution=32, margin=8, factor=4, flip=True, seed=0)
    >>> aug.draw(epoch=0, index=5) == aug.draw(epoch=0, index=5)
    True
    >>> top, left, flip = aug.draw(epoch=1, index=5)
    >>> top % 4, left % 4, 0 <= top <= 8, flip in (True, False)
    (0, 0, True, True)
    >>> aug.center()
    (4, 4, False)
    """

    resolution: int
    margin: int = 0
    factor: int = 1
    flip: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.margin < 0 or self.margin % self.factor:
            raise ValueError(
                f"data.crop_margin={self.margin} must be a non-negative multiple of the autoencoder's downsampling "
                f"factor {self.factor}, so that crops fall on whole latent cells"
            )
        if self.resolution % self.factor:
            raise ValueError(
                f"data.resolution={self.resolution} must be a multiple of the autoencoder's downsampling factor "
                f"{self.factor}"
            )

    @property
    def positions(self) -> int:
        return self.margin // self.factor + 1

    def draw(self, epoch: int, index: int) -> tuple[int, int, bool]:
        """``(top, left, flip)`` in pixels for example ``index`` in ``epoch``."""
        if self.positions == 1 and not self.flip:
            return 0, 0, False
        rng = np.random.default_rng([self.seed, epoch, index])
        top, left = (int(v) * self.factor for v in rng.integers(0, self.positions, size=2))
        return top, left, bool(self.flip and rng.random() < 0.5)

    def center(self) -> tuple[int, int, bool]:
        """The centred, unflipped crop: what sampling asks for by default."""
        offset = (self.positions - 1) // 2 * self.factor
        return offset, offset, False


class LatentImageDataset(Dataset):
    """Cropped, possibly flipped latents with their label, caption and control metadata.

    Every item carries ``sample_index``, the index of its record in ``records`` (the corruption manifest's
    index), so the trainer can record per-sample losses (``trainer.track_sample_losses``).

    Parameters
    ----------
    records:
        The clean metadata records (never modified).
    latents:
        The latent table (:class:`~robust_gen.image.data.latents.LatentTable`) of the source images.
    augmentation:
        Crop and flip settings.
    corruption:
        A corruption object (``apply(records, epoch=) -> (records, manifest)``) or None.
    run_dir:
        Where the corruption manifests go.
    concept:
        If given, train only on records with this label after corruption (the outlier setting: one concept
        whose set was polluted by other concepts' images).
    apply_kwargs:
        Extra arguments of ``corruption.apply`` (e.g. ``embeddings`` for least-similar outliers).
    write_manifests:
        False on non-main processes, so that only one process writes manifests.
    data_filter:
        A :class:`~robust_gen.audit.filters.DataFilter` (``data.exclude``): samples left out or relabelled after
        the corruption, by record index (an audit's keep-list).

    Examples
    --------
    >>> from robust_gen.image.data.latents import LatentTable
    >>> table = LatentTable(torch.zeros(3, 1, 4, 10, 10), None, 1.0)
    >>> records = [{"label": i, "caption": "x", "source": i, "orig_height": 8, "orig_width": 8} for i in range(3)]
    >>> ds = LatentImageDataset(records, table, Augmentation(resolution=32, margin=8, factor=4))
    >>> item = ds[0]
    >>> item["latent_mean"].shape, item["control"].shape, len(ds)
    (torch.Size([4, 8, 8]), torch.Size([5]), 3)
    """

    def __init__(
        self,
        records: Sequence[dict],
        latents: LatentTable,
        augmentation: Augmentation,
        *,
        corruption: Any = None,
        run_dir: str | Path | None = None,
        concept: int | None = None,
        apply_kwargs: dict | None = None,
        write_manifests: bool = True,
        data_filter: DataFilter | None = None,
    ) -> None:
        # A RecordTable (lazy sources) is immutable and columnar: kept as is, never turned into a million dicts.
        self.original = records if is_record_table(records) else [dict(r) for r in records]
        self.latents, self.augmentation = latents, augmentation
        self.corruption, self.run_dir, self.concept = corruption, run_dir, concept
        self.apply_kwargs, self.write_manifests = dict(apply_kwargs or {}), write_manifests
        self.data_filter = data_filter
        latent_size = augmentation.resolution // augmentation.factor
        canvas_cells = latent_size + augmentation.margin // augmentation.factor
        if tuple(latents.mean.shape[-2:]) != (canvas_cells, canvas_cells):
            raise ValueError(
                f"cached latents are {tuple(latents.mean.shape[-2:])} cells but the canvas needs {canvas_cells}"
            )
        if augmentation.flip and latents.views < 2:
            raise ValueError("flips need latents of the mirror images (encode with flips=True)")
        self.latent_size = latent_size
        self.epoch = 0
        self.records: Any = []
        self.indices: Any = []
        self._corrupt(epoch=0)

    @property
    def is_epoch_dependent(self) -> bool:
        return bool(getattr(self.corruption, "is_epoch_dependent", False))

    def _corrupt(self, epoch: int) -> None:
        records = self.original
        if self.corruption is not None:
            if self.write_manifests and self.run_dir is not None:
                records, _ = apply_corruption(self.corruption, records, self.run_dir, epoch=epoch, **self.apply_kwargs)
            else:
                records, _ = self.corruption.apply(records, epoch=epoch, **self.apply_kwargs)
        kept = np.arange(len(records))
        if self.data_filter is not None:  # (a filter holds its records as dicts: fine up to millions, not free)
            records, kept = self.data_filter.apply(records, where="the image data")
            kept = np.asarray(kept, dtype=np.int64)
        if is_record_table(records):
            labels = records.column("label")
            indices = kept if self.concept is None else kept[labels[kept] == self.concept]
        else:
            indices = [int(i) for i in kept if self.concept is None or records[i]["label"] == self.concept]
        if self.data_filter is not None and not len(self.indices):
            log.info("data.exclude: %d sample(s) left out, %d relabelled; %d training examples",
                     len(self.data_filter.exclude), len(self.data_filter.relabel), len(indices))
        if not len(indices):
            raise ValueError(f"no training record has label {self.concept}; check corruption.concept")
        if len(self.indices) and len(indices) != len(self.indices):
            raise ValueError(f"epoch {epoch}'s corruption changed the dataset size ({len(self.indices)} -> {len(indices)})")
        self.records, self.indices = records, indices

    def set_epoch(self, epoch: int) -> None:
        """Switch augmentation (and an epoch-dependent corruption) to ``epoch``."""
        epoch = int(epoch)
        if self.is_epoch_dependent and epoch != self.epoch:
            self._corrupt(epoch)
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[self.indices[index]]
        top, left, flip = self.augmentation.draw(self.epoch, index)
        f, size = self.augmentation.factor, self.latent_size
        rows, cols = slice(top // f, top // f + size), slice(left // f, left // f + size)
        view = int(flip)
        item = {
            "latent_mean": self.latents.mean[record["source"], view, :, rows, cols],
            "label": torch.tensor(int(record["label"]), dtype=torch.long),
            SAMPLE_INDEX_KEY: torch.tensor(self.indices[index], dtype=torch.long),
            "caption": str(record["caption"]),
            "control": torch.tensor(
                [top, left, record["orig_height"], record["orig_width"], float(flip)], dtype=torch.float32
            ),
        }
        if self.latents.std is not None:
            item["latent_std"] = self.latents.std[record["source"], view, :, rows, cols]
        return item
