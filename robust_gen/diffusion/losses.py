"""Per-sample regression losses for diffusion training: l2, l1 and the pseudo-Huber family.

Every function returns ONE value per sample (shape ``[B]``): the mean of the per-element loss over the sample's
elements, or over the elements its mask keeps. The batch is averaged once, later, by
:func:`robust_gen.diffusion.objective.batch_mean`.

The pseudo-Huber forms (Khrapov et al. 2024, arXiv 2403.16728; ``a = pred - target``, ``c = delta > 0``):

============  ==============================  ====================  =====================
form          per-element value               small ``|a|``         large ``|a|``
============  ==============================  ====================  =====================
textbook      ``c (sqrt(a^2 + c^2) - c)``     ``a^2 / 2``           ``c |a|``
huber         ``2c (sqrt(a^2 + c^2) - c)``    ``a^2`` (= MSE)       ``2c |a|``
smooth_l1     ``2 (sqrt(a^2 + c^2) - c)``     ``a^2 / c``           ``2 |a|``
vector        ``huber`` on the sample's RMS residual (see :func:`pseudo_huber`)
============  ==============================  ====================  =====================

``huber`` and ``smooth_l1`` are the forms of the reference training scripts; the gradient of ``huber`` in ``a``
is ``2c a / sqrt(a^2 + c^2)``, bounded by ``2c``, which is what limits an outlier's pull.

The loss objects at the bottom (:class:`L2Loss`, :class:`L1Loss`, :class:`PseudoHuberLoss`) are what configs
build (``_target_``); they share the call ``loss(pred, target, t=..., schedule=..., mask=...) -> [B]``, so a
trainer never branches on the loss kind.
"""

from __future__ import annotations

import torch

from robust_gen.diffusion.huber_schedules import check_huber_schedule, huber_delta
from robust_gen.diffusion.schedules import NoiseSchedule

__all__ = [
    "PSEUDO_HUBER_FORMS",
    "L1Loss",
    "L2Loss",
    "PseudoHuberLoss",
    "l1",
    "l2",
    "masked_mean",
    "pseudo_huber",
]

PSEUDO_HUBER_FORMS = ("huber", "smooth_l1", "textbook", "vector")


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``values`` over every dimension but the first, counting only elements where ``mask`` is set.

    ``mask`` broadcasts against ``values`` (e.g. ``[B, 1, T]`` for mel frames of ``[B, 80, T]``). A sample whose
    mask is empty gets 0 rather than NaN.

    Examples
    --------
    >>> v = torch.tensor([[1.0, 3.0], [2.0, 100.0]])
    >>> masked_mean(v, torch.tensor([[1, 1], [1, 0]])).tolist()
    [2.0, 2.0]
    """
    if values.dim() < 1:
        raise ValueError("values must have a batch dimension")
    dims = tuple(range(1, values.dim()))
    if mask is None:
        return values.mean(dim=dims) if dims else values
    mask = torch.broadcast_to(mask.to(values.dtype), values.shape)
    return (values * mask).sum(dim=dims) / mask.sum(dim=dims).clamp(min=1.0)


def l2(pred: torch.Tensor, target: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error per sample, shape ``[B]``.

    Examples
    --------
    >>> l2(torch.ones(2, 3), torch.zeros(2, 3)).tolist()
    [1.0, 1.0]
    """
    _check_pair(pred, target)
    return masked_mean((pred - target) ** 2, mask)


def l1(pred: torch.Tensor, target: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error per sample, shape ``[B]``.

    Examples
    --------
    >>> l1(torch.full((2, 3), -2.0), torch.zeros(2, 3)).tolist()
    [2.0, 2.0]
    """
    _check_pair(pred, target)
    return masked_mean((pred - target).abs(), mask)


def pseudo_huber(
    pred: torch.Tensor,
    target: torch.Tensor,
    c: float | torch.Tensor,
    *,
    form: str = "huber",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pseudo-Huber loss per sample, shape ``[B]``, with ``c`` a float or one value per sample.

    Parameters
    ----------
    pred, target:
        Tensors of the same shape ``[B, ...]``.
    c:
        The pseudo-Huber parameter delta: a positive float, or a tensor of shape ``[B]`` (a per-sample delta
        from a schedule, see :func:`robust_gen.diffusion.huber_schedules.huber_delta`).
    form:
        ``"huber"``, ``"smooth_l1"``, ``"textbook"`` (table in the module docstring) or ``"vector"``.
        ``"vector"`` is the paper's suggestion of applying the loss to each sample's whole residual instead of
        element by element. Its normalisation is not public; ours: ``r = ||a|| / sqrt(n)``, the RMS residual
        over the sample's ``n`` (masked) elements, then ``2c (sqrt(r^2 + c^2) - c)``. Dividing by ``sqrt(n)``
        makes ``c`` mean the same for any image size or utterance length, and the factor 2 makes the
        small-residual limit exactly the per-sample MSE, like ``huber``.
    mask:
        Optional mask broadcastable to ``pred``; only its elements count.

    Examples
    --------
    >>> a = torch.tensor([[0.0, 3.0]])
    >>> pseudo_huber(a, torch.zeros_like(a), 4.0, form="textbook").tolist()  # (0 + 4 * (5 - 4)) / 2
    [2.0]
    >>> pseudo_huber(a, torch.zeros_like(a), torch.tensor([4.0]), form="huber").tolist()
    [4.0]
    """
    _check_pair(pred, target)
    if form not in PSEUDO_HUBER_FORMS:
        raise ValueError(f"unknown pseudo-Huber form {form!r}; choose one of {PSEUDO_HUBER_FORMS}")
    c = _per_sample(c, pred)
    if bool((c <= 0).any()):
        raise ValueError(f"pseudo-Huber delta c must be > 0, got min {float(c.min())}")
    diff = pred - target
    if form == "vector":
        mean_sq = masked_mean(diff**2, mask)
        c_flat = c.reshape(-1)
        return 2.0 * c_flat * _sqrt_excess(mean_sq, c_flat)
    sq = diff**2
    if form == "huber":
        per_element = 2.0 * c * _sqrt_excess(sq, c)
    elif form == "smooth_l1":
        per_element = 2.0 * _sqrt_excess(sq, c)
    else:  # textbook
        per_element = c * _sqrt_excess(sq, c)
    return masked_mean(per_element, mask)


def _sqrt_excess(sq: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    # sqrt(a^2 + c^2) - c rewritten as a^2 / (sqrt(a^2 + c^2) + c): the same value without the cancellation
    # that makes the direct form lose all digits (and the gradient) when |a| << c.
    return sq / (torch.sqrt(sq + c**2) + c)


def _per_sample(c: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``c`` as a tensor shaped ``[B, 1, ..., 1]`` on ``like``'s device and dtype."""
    c = torch.as_tensor(c, dtype=like.dtype, device=like.device)
    if c.dim() == 0:
        c = c.expand(like.shape[0])
    if c.dim() != 1 or c.shape[0] != like.shape[0]:
        raise ValueError(f"c must be a float or a tensor of shape [B]={[like.shape[0]]}, got {list(c.shape)}")
    return c.reshape((-1,) + (1,) * (like.dim() - 1))


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {list(pred.shape)} vs {list(target.shape)}")
    if pred.dim() < 1:
        raise ValueError("pred must have a batch dimension")


class L2Loss:
    """Config-buildable l2 with the shared loss-object call.

    Examples
    --------
    >>> L2Loss()(torch.ones(2, 4), torch.zeros(2, 4), t=None, schedule=None).tolist()
    [1.0, 1.0]
    """

    name = "l2"

    def __call__(self, pred, target, *, t=None, schedule=None, mask=None) -> torch.Tensor:
        return l2(pred, target, mask=mask)

    def __repr__(self) -> str:
        return "L2Loss()"


class L1Loss:
    """Config-buildable l1 with the shared loss-object call."""

    name = "l1"

    def __call__(self, pred, target, *, t=None, schedule=None, mask=None) -> torch.Tensor:
        return l1(pred, target, mask=mask)

    def __repr__(self) -> str:
        return "L1Loss()"


class PseudoHuberLoss:
    """Pseudo-Huber loss whose delta follows a schedule of the noise level, one delta per sample.

    Parameters
    ----------
    form:
        One of :data:`PSEUDO_HUBER_FORMS`.
    schedule:
        The delta schedule: ``"constant"``, ``"exponential"``, ``"exponential_backwards"`` or ``"snr"``
        (see :func:`robust_gen.diffusion.huber_schedules.huber_delta`).
    c_min, c_max:
        Delta at the pure-noise and the data end (``c_max = 1`` reproduces the reference scripts).
    axis:
        What ``exponential`` schedules run along: ``"time"`` (the reference scripts) or ``"log_snr"``.

    Examples
    --------
    >>> from robust_gen.diffusion.schedules import DiscreteVP
    >>> loss = PseudoHuberLoss(form="huber", schedule="snr")
    >>> pred, target = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    >>> loss(pred, target, t=torch.tensor([0, 10, 500, 999]), schedule=DiscreteVP("linear")).shape
    torch.Size([4])
    """

    name = "pseudo_huber"

    def __init__(
        self,
        form: str = "huber",
        schedule: str = "snr",
        c_min: float = 0.1,
        c_max: float = 1.0,
        axis: str = "time",
    ) -> None:
        if form not in PSEUDO_HUBER_FORMS:
            raise ValueError(f"unknown pseudo-Huber form {form!r}; choose one of {PSEUDO_HUBER_FORMS}")
        self.form, self.schedule, self.axis = form, schedule, axis
        self.c_min, self.c_max = float(c_min), float(c_max)
        # Validate the schedule arguments now, not at the first training step.
        check_huber_schedule(schedule, self.c_min, self.c_max, axis)

    def delta(self, t: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
        """Per-sample delta at times ``t``."""
        return huber_delta(self.schedule, t, schedule, c_min=self.c_min, c_max=self.c_max, axis=self.axis)

    def __call__(self, pred, target, *, t, schedule, mask=None) -> torch.Tensor:
        if self.schedule == "constant":
            c = self.c_min
        else:
            c = self.delta(t, schedule).to(device=pred.device, dtype=pred.dtype)
        return pseudo_huber(pred, target, c, form=self.form, mask=mask)

    def __repr__(self) -> str:
        return (
            f"PseudoHuberLoss(form={self.form!r}, schedule={self.schedule!r}, c_min={self.c_min}, "
            f"c_max={self.c_max}, axis={self.axis!r})"
        )
