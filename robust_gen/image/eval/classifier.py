"""A small CNN trained on the clean labelled images: the offline feature extractor and class judge.

No Inception, CLIP or LPIPS weights ship in a package (assets.md), so the default FID / KID features and the
resilience similarity come from this classifier's penultimate layer, and "conditional accuracy" (does a sample
of class k look like class k) from its logits. Numbers computed with it compare runs on the same data only;
they are not comparable to published Inception FIDs.

Images enter as uint8: numpy arrays in the sample-file layout ``[N, H, W, C]``, torch tensors in the torch
layout ``[N, C, H, W]``. The classifier converts channels (1 <-> 3) and resizes to its working resolution
itself, so it takes samples of any size and either channel count.

A trained classifier is a directory: ``config.json`` (architecture, training report, data fingerprint) and
``model.safetensors``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = [
    "ClassifierConfig",
    "DomainClassifier",
    "as_image_batch",
    "load_domain_classifier",
    "train_domain_classifier",
]

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_NAME = "robust_gen.domain_classifier"
# ITU-R BT.601 luma weights: how an RGB sample is shown to a classifier trained on grayscale data.
_LUMA = (0.299, 0.587, 0.114)


def as_image_batch(images: Any, *, name: str = "images") -> torch.Tensor:
    """Check a batch of uint8 images and return it as a uint8 tensor ``[N, C, H, W]`` (C = 1 or 3).

    numpy arrays are read as ``[N, H, W, C]`` (the layout of ``images.npz``), tensors as ``[N, C, H, W]``.

    Examples
    --------
    >>> as_image_batch(np.zeros((2, 8, 8, 1), np.uint8)).shape
    torch.Size([2, 1, 8, 8])
    >>> as_image_batch(np.zeros((2, 8, 8, 1), np.float32))
    Traceback (most recent call last):
    ...
    ValueError: images must be uint8 (0..255), got float32; convert with (x * 255).round().astype(np.uint8)
    """
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise ValueError(
                f"{name} must be uint8 (0..255), got {images.dtype}; "
                "convert with (x * 255).round().astype(np.uint8)"
            )
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"{name} must have shape [N, H, W, C] with C = 1 or 3, got {images.shape}")
        # copy read-only arrays (np.load with mmap, PIL buffers): torch tensors must own writable memory
        tensor = torch.from_numpy(np.require(images, requirements=["C", "W"])).permute(0, 3, 1, 2)
    elif isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8:
            raise ValueError(f"{name} must be a uint8 tensor (0..255), got {images.dtype}")
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"{name} must be a tensor [N, C, H, W] with C = 1 or 3, got {tuple(images.shape)}"
            )
        tensor = images
    else:
        raise TypeError(
            f"{name} must be a numpy array [N, H, W, C] or a tensor [N, C, H, W], got {type(images)}"
        )
    if tensor.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 images)")
    return tensor


def _convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1)
    weights = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of :class:`DomainClassifier`.

    Parameters
    ----------
    num_classes : int
        Number of classes of the clean data.
    in_channels : int
        1 (grayscale) or 3 (RGB); inputs with the other count are converted.
    image_size : int
        Working resolution; inputs are resized to ``image_size x image_size`` (32 or 64 are typical).
    width : int
        Channels of the first stage; stages use width, 2 width, 4 width.
    feature_dim : int
        Size of the penultimate layer: the feature vector for FID / KID and similarity.

    Examples
    --------
    >>> ClassifierConfig(num_classes=10).feature_dim
    128
    >>> ClassifierConfig(num_classes=1)
    Traceback (most recent call last):
    ...
    ValueError: num_classes must be >= 2 (a classifier needs two classes), got 1
    """

    num_classes: int
    in_channels: int = 1
    image_size: int = 32
    width: int = 16
    feature_dim: int = 128

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(
                f"num_classes must be >= 2 (a classifier needs two classes), got {self.num_classes}"
            )
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {self.in_channels}")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8 (three 2x poolings), got {self.image_size}")
        if self.width < 1 or self.feature_dim < 1:
            raise ValueError(f"width and feature_dim must be positive, got {self.width}, {self.feature_dim}")


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class DomainClassifier(nn.Module):
    """Conv stages (w, 2w, 4w channels, 2x max-pool between) -> global average -> features -> logits.

    Examples
    --------
    >>> model = DomainClassifier(ClassifierConfig(num_classes=3, width=4, feature_dim=8)).eval()
    >>> images = np.random.default_rng(0).integers(0, 256, (5, 20, 20, 3), dtype=np.uint8)
    >>> model.features(images).shape, model.logits(images).shape
    (torch.Size([5, 8]), torch.Size([5, 3]))
    """

    def __init__(self, config: ClassifierConfig, metadata: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.config = config
        #: free-form facts saved with the weights: training report, data fingerprint
        self.metadata: dict[str, Any] = dict(metadata or {})
        #: the directory this classifier was loaded from or cached in (None for one only in memory)
        self.source_path: Path | None = None
        w = config.width
        self.body = nn.Sequential(
            _conv_block(config.in_channels, w),
            _conv_block(w, w),
            nn.MaxPool2d(2),
            _conv_block(w, 2 * w),
            _conv_block(2 * w, 2 * w),
            nn.MaxPool2d(2),
            _conv_block(2 * w, 4 * w),
            nn.MaxPool2d(2),
            _conv_block(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.embed = nn.Sequential(nn.Linear(4 * w, config.feature_dim), nn.ReLU())
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def prepare(self, images: Any) -> torch.Tensor:
        """uint8 images (see :func:`as_image_batch`) -> float ``[N, in_channels, S, S]`` in [-1, 1]."""
        x = as_image_batch(images).to(self.device, torch.float32) / 255.0
        x = _convert_channels(x, self.config.in_channels)
        size = self.config.image_size
        if x.shape[-2:] != (size, size):
            # antialias when shrinking so that 64x64 samples are not aliased before a 32x32 classifier
            shrink = x.shape[-1] > size or x.shape[-2] > size
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
        return x * 2.0 - 1.0

    def embed_prepared(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features of an already prepared batch (differentiable)."""
        return self.embed(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of an already prepared batch (see :meth:`prepare`)."""
        return self.head(self.dropout(self.embed_prepared(x)))

    @torch.no_grad()
    def _batched(self, images: Any, fn, batch_size: int) -> torch.Tensor:
        batch = as_image_batch(images)
        was_training = self.training
        self.eval()
        try:
            out = [
                fn(self.prepare(batch[i : i + batch_size])).float().cpu()
                for i in range(0, len(batch), batch_size)
            ]
        finally:
            self.train(was_training)
        return torch.cat(out)

    def features(self, images: Any, batch_size: int = 256) -> torch.Tensor:
        """Penultimate-layer features ``[N, feature_dim]`` (float32, CPU) of uint8 images, in eval mode."""
        return self._batched(images, self.embed_prepared, batch_size)

    def logits(self, images: Any, batch_size: int = 256) -> torch.Tensor:
        """Class logits ``[N, num_classes]`` (float32, CPU) of uint8 images, in eval mode."""
        return self._batched(images, self.forward, batch_size)

    def predict(self, images: Any, batch_size: int = 256) -> np.ndarray:
        """Most likely class of each image, int64 ``[N]``."""
        return self.logits(images, batch_size).argmax(dim=1).numpy().astype(np.int64)

    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created) and return it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE))
        payload = {
            "format": FORMAT_NAME,
            "version": 1,
            "config": asdict(self.config),
            "metadata": self.metadata,
        }
        (directory / CONFIG_FILE).write_text(
            json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n"
        )
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> DomainClassifier:
        """Load a classifier saved by :meth:`save` (eval mode)."""
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} not found: a domain classifier directory holds {CONFIG_FILE} and {WEIGHTS_FILE} "
                    "(written by DomainClassifier.save or recipes/image/evaluate.py)"
                )
        payload = json.loads(config_path.read_text())
        if payload.get("format") != FORMAT_NAME:
            raise ValueError(
                f"{config_path} is not a domain classifier config (format {payload.get('format')!r})"
            )
        model = cls(ClassifierConfig(**payload["config"]), payload.get("metadata"))
        try:
            model.load_state_dict(load_file(str(weights_path)))
        except RuntimeError as err:
            raise ValueError(
                f"{weights_path} does not match the architecture in {config_path}: {err}"
            ) from err
        model.source_path = directory
        return model.to(device).eval()


def load_domain_classifier(directory: str | Path, device: str | torch.device = "cpu") -> DomainClassifier:
    """Load a saved :class:`DomainClassifier` from its directory.

    Examples
    --------
    >>> import tempfile
    >>> model = DomainClassifier(ClassifierConfig(num_classes=2, width=2, feature_dim=4))
    >>> path = model.save(tempfile.mkdtemp())
    >>> load_domain_classifier(path).config == model.config
    True
    """
    return DomainClassifier.load(directory, device)


def _random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate every image by its own random integer offset (edge pixels repeat)."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    return torch.stack(
        [padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())]
    )


def _split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = round(n * val_fraction)
    return order[n_val:], order[:n_val]


def _accuracy(model: DomainClassifier, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    model.eval()
    with torch.no_grad():
        hits = sum(
            int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
            for i in range(0, len(x), batch_size)
        )
    return hits / max(len(x), 1)


def train_domain_classifier(
    images: Any,
    labels: Any,
    *,
    num_classes: int | None = None,
    image_size: int = 32,
    width: int = 16,
    feature_dim: int = 128,
    epochs: int = 6,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    val_fraction: float = 0.15,
    max_shift: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> DomainClassifier:
    """Train a :class:`DomainClassifier` on clean labelled uint8 images and report held-out accuracy.

    AdamW with a one-cycle learning rate (15 % warm-up, cosine decay); random translations of up to
    ``max_shift`` pixels (default ``image_size // 16``) as augmentation. ``val_fraction`` of the images (a
    seeded random split) is held out; the report lands in ``model.metadata["training"]`` (held-out and train
    accuracy, sizes, seconds). Initialisation and dropout are seeded without touching the global RNG state.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> dark = rng.integers(0, 60, (40, 8, 8, 1), dtype=np.uint8)
    >>> bright = rng.integers(190, 256, (40, 8, 8, 1), dtype=np.uint8)
    >>> images, labels = np.concatenate([dark, bright]), np.repeat([0, 1], 40)
    >>> settings = dict(image_size=8, width=4, feature_dim=8, epochs=2, batch_size=8)
    >>> model = train_domain_classifier(images, labels, **settings)
    >>> sorted(model.metadata["training"])
    ['epochs', 'held_out_accuracy', 'n_held_out', 'n_train', 'seconds', 'train_accuracy']
    >>> model.predict(images[:3]).shape
    (3,)
    """
    batch = as_image_batch(images)
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(batch):
        raise ValueError(f"labels must have shape [{len(batch)}] (one per image), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise ValueError(
            "labels must be non-negative integers; a classifier needs class-labelled clean images"
        )
    num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if labels.max() >= num_classes:
        raise ValueError(f"label {labels.max()} is out of range for num_classes={num_classes}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    config = ClassifierConfig(num_classes, batch.shape[1], image_size, width, feature_dim)
    train_idx, val_idx = _split_indices(len(batch), val_fraction, seed)
    shift = image_size // 16 if max_shift is None else max_shift
    # seeded initialisation and dropout without disturbing the caller's global random state
    forked = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=forked):
        torch.manual_seed(seed)
        model = DomainClassifier(config).to(device)
        _fit(model, batch, labels, train_idx, epochs, batch_size, lr, weight_decay, shift, seed)
    model.metadata["training"]["n_held_out"] = len(val_idx)
    if len(val_idx):
        x_val, y_val = model.prepare(batch[torch.from_numpy(val_idx)]), torch.as_tensor(labels[val_idx])
        model.metadata["training"]["held_out_accuracy"] = _accuracy(model, x_val, y_val.to(model.device))
    log.info("domain classifier: %s", model.metadata["training"])
    return model.eval()


def _fit(
    model: DomainClassifier,
    batch: torch.Tensor,
    labels: np.ndarray,
    train_idx: np.ndarray,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    shift: int,
    seed: int,
) -> None:
    # resize once; augmentation works on the prepared tensors
    x_train = model.prepare(batch[torch.from_numpy(train_idx)])
    y_train = torch.as_tensor(labels[train_idx], dtype=torch.long, device=model.device)

    steps_per_epoch = math.ceil(len(train_idx) / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train_idx), generator=generator)
        total = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size].to(model.device)
            x = _random_shift(x_train[idx], shift, generator)
            loss = F.cross_entropy(model(x), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(idx)
        log.info("domain classifier epoch %d/%d: loss %.4f", epoch + 1, epochs, total / len(train_idx))
    model.metadata["training"] = {
        "train_accuracy": _accuracy(model, x_train, y_train),
        "held_out_accuracy": None,
        "n_train": len(train_idx),
        "epochs": epochs,
        "seconds": round(time.perf_counter() - start, 2),
    }
