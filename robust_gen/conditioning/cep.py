"""Conditional Embedding Perturbation, CEP (Chen et al. 2024, arXiv 2405.20494, papers.md §2).

During training only, noise is added to the OUTPUT of the condition network (a class embedding ``[B, d]`` or
text-encoder hidden states ``[B, L, d]``), fresh at every step:

- CEP-U: ``delta ~ U(-gamma / sqrt(d), gamma / sqrt(d))``: the scale is the HALF-WIDTH of the interval.
- CEP-G: ``delta ~ N(0, (gamma / sqrt(d))^2)``: the scale is the STANDARD DEVIATION. The paper writes
  ``gamma / sqrt(d)`` where a variance would go; we follow the common reading as a standard deviation.

``d`` is the last dimension of the embedding; the paper uses ``gamma = 1``. Whether the null (classifier-free
guidance, dropped) embedding is perturbed is not stated in the paper: here it is the ``perturb_null`` option,
default False (null rows are left exactly as they are, so the unconditional branch stays one fixed vector).
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

KINDS = ("uniform", "gaussian")


def cep_scale(gamma: float, dim: int) -> float:
    """``gamma / sqrt(dim)``: half-width (uniform) or standard deviation (Gaussian) of the CEP noise.

    Examples
    --------
    >>> cep_scale(1.0, 256)
    0.0625
    """
    if (
        isinstance(gamma, bool)
        or not isinstance(gamma, numbers.Real)
        or not math.isfinite(gamma)
        or gamma < 0
    ):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
    if dim < 1:
        raise ValueError(f"the embedding's last dimension must be >= 1, got {dim}")
    return float(gamma) / math.sqrt(dim)


def perturb(
    embedding: torch.Tensor,
    *,
    gamma: float = 1.0,
    kind: str = "uniform",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Return ``embedding + delta`` with CEP noise of scale ``gamma / sqrt(d)``, ``d = embedding.shape[-1]``.

    Parameters
    ----------
    embedding : Tensor
        Condition-network output, ``[B, d]`` or ``[B, L, d]`` (any shape; the last dimension is ``d``).
    gamma : float
        Perturbation strength (>= 0; 0 returns the embedding unchanged).
    kind : {"uniform", "gaussian"}
        CEP-U: uniform noise on ``[-s, s]`` with half-width ``s = gamma / sqrt(d)``; CEP-G: Gaussian noise with
        standard deviation ``s = gamma / sqrt(d)``.
    generator : torch.Generator, optional
        Source of the noise (on the embedding's device); the global generator otherwise.

    Returns
    -------
    Tensor
        Same shape, dtype and device; gradients flow to ``embedding`` unchanged.

    Examples
    --------
    >>> e = torch.zeros(4, 16)
    >>> noisy = perturb(e, gamma=1.0, kind="uniform", generator=torch.Generator().manual_seed(0))
    >>> bool(noisy.abs().max() <= 0.25), noisy.shape
    (True, torch.Size([4, 16]))
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(embedding, torch.Tensor) or not embedding.is_floating_point():
        raise ValueError("embedding must be a floating-point tensor (the condition network's output)")
    if embedding.ndim == 0:
        raise ValueError("embedding must have at least one dimension (its last dimension is d)")
    scale = cep_scale(gamma, embedding.shape[-1])
    if scale == 0.0:
        return embedding
    options = {"generator": generator, "device": embedding.device, "dtype": embedding.dtype}
    if kind == "uniform":
        delta = (torch.rand(embedding.shape, **options) * 2.0 - 1.0) * scale
    else:
        delta = torch.randn(embedding.shape, **options) * scale
    return embedding + delta


class ConditionalEmbeddingPerturbation(nn.Module):
    """CEP as a module: perturbs in training mode, returns its input untouched in eval mode.

    Parameters
    ----------
    gamma : float
        Strength; the noise scale is ``gamma / sqrt(d)`` (see :func:`perturb`).
    kind : {"uniform", "gaussian"}
        CEP-U (scale = half-width) or CEP-G (scale = standard deviation).
    perturb_null : bool
        Whether rows flagged as null (dropped for classifier-free guidance) are perturbed too. Default False;
        the paper does not say. Only rows named by ``null_mask`` are protected.

    Examples
    --------
    >>> cep = ConditionalEmbeddingPerturbation(gamma=1.0, kind="gaussian")
    >>> e = torch.ones(3, 8)
    >>> out = cep(e, null_mask=torch.tensor([False, True, False]))
    >>> bool(torch.equal(out[1], e[1])), bool(torch.equal(out[0], e[0]))
    (True, False)
    >>> bool(torch.equal(cep.eval()(e), e))
    True
    """

    def __init__(self, gamma: float = 1.0, kind: str = "uniform", perturb_null: bool = False) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        cep_scale(gamma, 1)  # validates gamma
        self.gamma = float(gamma)
        self.kind = kind
        self.perturb_null = bool(perturb_null)

    def forward(
        self,
        embedding: torch.Tensor,
        null_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Perturb ``embedding`` ([B, d] or [B, L, d]); ``null_mask`` ([B] bool) flags null rows."""
        if not self.training:
            return embedding
        noisy = perturb(embedding, gamma=self.gamma, kind=self.kind, generator=generator)
        if null_mask is None or self.perturb_null:
            return noisy
        if null_mask.dtype != torch.bool or null_mask.shape != embedding.shape[:1]:
            raise ValueError(
                f"null_mask must be a bool tensor of shape [{embedding.shape[0]}] (one flag per row), got "
                f"{null_mask.dtype} {tuple(null_mask.shape)}"
            )
        rows = null_mask.to(embedding.device).view(-1, *([1] * (embedding.ndim - 1)))
        return torch.where(rows, embedding, noisy)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, kind={self.kind!r}, perturb_null={self.perturb_null}"


CEP = ConditionalEmbeddingPerturbation


class CEPWrapper(nn.Module):
    """A condition network followed by CEP: ``CEPWrapper(encoder)(x) = CEP(encoder(x))`` in training mode.

    The encoder must return a tensor (``[B, d]`` or ``[B, L, d]``). ``null_mask`` and ``generator`` are taken
    by the wrapper; every other argument goes to the encoder. ``.eval()`` switches the perturbation off.

    Examples
    --------
    >>> wrapped = CEPWrapper(nn.Embedding(11, 32), gamma=1.0, kind="uniform")
    >>> labels = torch.tensor([3, 10])
    >>> out = wrapped(labels, null_mask=labels == 10)   # class 10 is the null class
    >>> bool(torch.equal(out[1], wrapped.encoder(labels)[1]))
    True
    """

    def __init__(
        self, encoder: nn.Module, gamma: float = 1.0, kind: str = "uniform", perturb_null: bool = False
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.perturbation = ConditionalEmbeddingPerturbation(
            gamma=gamma, kind=kind, perturb_null=perturb_null
        )

    def forward(self, *args, null_mask: torch.Tensor | None = None, generator=None, **kwargs) -> torch.Tensor:
        embedding = self.encoder(*args, **kwargs)
        if not isinstance(embedding, torch.Tensor):
            raise ValueError(
                f"CEPWrapper needs an encoder that returns a tensor, got {type(embedding).__name__}; wrap the "
                "encoder so it returns its hidden states (e.g. last_hidden_state)"
            )
        return self.perturbation(embedding, null_mask=null_mask, generator=generator)
