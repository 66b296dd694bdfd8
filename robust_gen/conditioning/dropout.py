"""Condition dropout for classifier-free guidance, with separate semantic and control conditions.

Berrada et al. (2024, papers.md §3) drop the semantic condition (class or text) and the control metadata
(crop, size, flip) independently during training, so that each can be guided separately at sampling time.
This is a per-step, model-side choice (architecture.md, "Habits"), unrelated to data corruption.

Each sample gets two independent Bernoulli draws: the semantic condition is dropped with probability
``p_semantic`` and the control condition with probability ``p_control``; both are dropped together with
probability ``p_semantic * p_control``.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import torch
from torch import nn


class DropoutMasks(NamedTuple):
    """Per-sample keep masks (bool ``[B]``; True = keep the condition, False = replace it by the null one)."""

    keep_semantic: torch.Tensor
    keep_control: torch.Tensor


def _check_probability(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def draw_dropout_masks(
    batch_size: int,
    p_semantic: float,
    p_control: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> DropoutMasks:
    """Independent keep masks for the semantic and the control condition.

    Parameters
    ----------
    batch_size : int
        Number of samples ``B``.
    p_semantic, p_control : float
        Drop probabilities in [0, 1].
    generator : torch.Generator, optional
        Seeded source of the draws (on ``device``); the global generator otherwise.
    device : torch.device or str, optional
        Where the masks live.

    Returns
    -------
    DropoutMasks
        ``keep_semantic`` and ``keep_control``, bool ``[B]``.

    Examples
    --------
    >>> masks = draw_dropout_masks(4, 0.0, 1.0)
    >>> masks.keep_semantic.tolist(), masks.keep_control.tolist()
    ([True, True, True, True], [False, False, False, False])
    """
    p_semantic = _check_probability(p_semantic, "p_semantic")
    p_control = _check_probability(p_control, "p_control")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 0:
        raise ValueError(f"batch_size must be a non-negative integer, got {batch_size!r}")
    # One uniform per (condition, sample): rows are independent, and u in [0, 1) keeps with p = 0, drops with p = 1.
    uniform = torch.rand((2, int(batch_size)), generator=generator, device=device)
    return DropoutMasks(keep_semantic=uniform[0] >= p_semantic, keep_control=uniform[1] >= p_control)


def replace_dropped(
    embedding: torch.Tensor, keep: torch.Tensor, null_embedding: torch.Tensor
) -> torch.Tensor:
    """Rows of ``embedding`` where ``keep`` is False are replaced by ``null_embedding`` (broadcast).

    Examples
    --------
    >>> e = torch.ones(3, 2)
    >>> replace_dropped(e, torch.tensor([True, False, True]), torch.zeros(2)).tolist()
    [[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]
    """
    if keep.dtype != torch.bool or keep.shape != embedding.shape[:1]:
        raise ValueError(
            f"keep must be a bool tensor of shape [{embedding.shape[0]}], got {tuple(keep.shape)}"
        )
    rows = keep.to(embedding.device).view(-1, *([1] * (embedding.ndim - 1)))
    return torch.where(rows, embedding, null_embedding.to(embedding))


class ConditionDropout(nn.Module):
    """Training-time condition dropout: draws :class:`DropoutMasks`; keeps everything in eval mode.

    Parameters
    ----------
    p_semantic : float
        Probability of dropping the semantic condition (class / text) of a sample.
    p_control : float
        Probability of dropping its control metadata, independently.

    Examples
    --------
    >>> dropout = ConditionDropout(p_semantic=0.1, p_control=0.5)
    >>> masks = dropout(1000, generator=torch.Generator().manual_seed(0))
    >>> 0.4 < masks.keep_control.float().mean().item() < 0.6
    True
    >>> bool(dropout.eval()(8).keep_control.all())
    True
    """

    def __init__(self, p_semantic: float = 0.1, p_control: float = 0.1) -> None:
        super().__init__()
        self.p_semantic = _check_probability(p_semantic, "p_semantic")
        self.p_control = _check_probability(p_control, "p_control")

    def forward(
        self,
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> DropoutMasks:
        """Keep masks for ``batch_size`` samples (all True outside training)."""
        if not self.training:
            keep = torch.ones(int(batch_size), dtype=torch.bool, device=device)
            return DropoutMasks(keep_semantic=keep, keep_control=keep.clone())
        return draw_dropout_masks(
            batch_size, self.p_semantic, self.p_control, generator=generator, device=device
        )

    def extra_repr(self) -> str:
        return f"p_semantic={self.p_semantic}, p_control={self.p_control}"
