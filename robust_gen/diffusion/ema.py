"""Exponential moving average of model weights, on ``torch.optim.swa_utils.AveragedModel``.

PyTorch already provides the averaging (``get_ema_multi_avg_fn``, a fused multi-tensor update); this module only
adds the habits diffusion training wants: buffers averaged too, the averaged copy kept out of autograd, and a
warm-up so the first steps' random weights do not linger: the decay ramps as ``min(decay, (1 + n) / (h + n))``.

The classic ramp has ``h = 10``; it approaches the target slowly (0.978 after 400 updates, 0.994 after 1500; a
target of 0.998 is reached only after about 4500), so on a short run the configured decay is never used. Passing
``warmup_steps = N`` picks ``h`` so that the ramp reaches the target at update ``N`` (:func:`warmup_horizon`).
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel

__all__ = ["EMA", "averaged_weights", "warmup_horizon"]

#: The classic ramp's ``h`` in ``(1 + n) / (h + n)``.
CLASSIC_HORIZON = 10.0


def warmup_horizon(decay: float, warmup_steps: int | None) -> float:
    """``h`` of the ramp ``(1 + n) / (h + n)`` that reaches ``decay`` at update ``warmup_steps`` (None: the classic
    ``h = 10``). Solving ``(1 + N) / (h + N) = decay`` gives ``h = (1 + N) / decay - N`` (>= 1 for any N >= 0).

    Examples
    --------
    >>> round(warmup_horizon(0.998, 300), 3)
    1.603
    >>> warmup_horizon(0.998, None)
    10.0
    >>> ema = EMA(torch.nn.Linear(1, 1), decay=0.998, warmup_steps=300)
    >>> round(ema.current_decay(300), 6), round(EMA(torch.nn.Linear(1, 1), decay=0.998).current_decay(300), 3)
    (0.998, 0.971)
    """
    if warmup_steps is None:
        return CLASSIC_HORIZON
    if isinstance(warmup_steps, bool) or int(warmup_steps) != warmup_steps or warmup_steps < 0:
        raise ValueError(f"trainer.ema_warmup_steps must be null or an integer >= 0, got {warmup_steps!r}")
    if decay <= 0.0:
        return 1.0
    return (1.0 + warmup_steps) / decay - warmup_steps


class EMA(AveragedModel):
    """EMA copy of ``model``; call :meth:`update` after each optimizer step.

    Parameters
    ----------
    model:
        The model being trained (its weights are copied, not shared).
    decay:
        Target decay, e.g. 0.9999 for long runs, 0.999 for short ones.
    warmup:
        Ramp the decay up as ``(1 + n) / (h + n)`` over the first updates (from ~0.1 with the classic ``h = 10``).
    warmup_steps:
        None: the classic ``h = 10``; an integer N: the ramp reaches ``decay`` at update N (:func:`warmup_horizon`).

    Examples
    --------
    >>> net = torch.nn.Linear(2, 2)
    >>> ema = EMA(net, decay=0.5, warmup=False)
    >>> ema.update(net)  # the first update copies the weights (AveragedModel's convention)
    >>> with torch.no_grad():
    ...     _ = net.weight.add_(1.0)
    >>> ema.update(net)
    >>> bool(torch.allclose(ema.module.weight, net.weight - 0.5))
    True
    """

    def __init__(
        self, model: torch.nn.Module, decay: float = 0.9999, warmup: bool = True, warmup_steps: int | None = None
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup = float(decay), bool(warmup)
        self.horizon = warmup_horizon(self.decay, warmup_steps)
        super().__init__(model, multi_avg_fn=self._average, use_buffers=True)
        self.module.requires_grad_(False)
        self.module.eval()

    def current_decay(self, num_averaged: int) -> float:
        """The decay used for the update after ``num_averaged`` earlier ones."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + num_averaged) / (self.horizon + num_averaged))

    @torch.no_grad()
    def _average(self, ema_params, model_params, num_averaged) -> None:
        decay = self.current_decay(int(num_averaged))
        ema_params = list(ema_params)
        if ema_params and all(p.is_floating_point() for p in ema_params):
            torch._foreach_lerp_(ema_params, list(model_params), 1.0 - decay)
        else:
            for e, m in zip(ema_params, model_params):
                e.copy_(torch.lerp(e, m, 1.0 - decay) if e.is_floating_point() else m)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Fold the current weights of ``model`` into the average."""
        self.update_parameters(model)

    def train(self, mode: bool = True):  # the averaged copy is only ever used for inference
        super().train(mode)
        self.module.eval()
        return self


def averaged_weights(ema_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The averaged module's own state dict from an :class:`EMA` state dict (drops the ``module.`` prefix and
    AveragedModel's ``n_averaged`` counter), ready for ``module.load_state_dict``.

    Examples
    --------
    >>> ema = EMA(torch.nn.Linear(2, 2), decay=0.9)
    >>> sorted(averaged_weights(ema.state_dict()))
    ['bias', 'weight']
    """
    return {k.removeprefix("module."): v for k, v in ema_state.items() if k != "n_averaged"}
