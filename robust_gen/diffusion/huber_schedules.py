"""Schedules of the pseudo-Huber delta ``c`` over the diffusion process (Khrapov et al. 2024).

The idea that works in the paper: a small ``c`` (robust, L1-like) where the input is mostly noise, where an
outlier's target is least predictable and would pull hardest, and a large ``c`` (L2-like) near the data, where fine
detail is restored. All schedules go from ``c_max`` at the data end to ``c_min`` at the noise end, except the
``exponential_backwards`` ablation, which runs the other way (and fails in the paper).

Each schedule takes per-sample times and the noise schedule they belong to, so one definition serves a
1000-step DDPM and a continuous VP SDE (Grad-TTS):

* ``constant``: ``c = c_min`` everywhere (the reference scripts' ``huber_c``).
* ``exponential``: ``c = c_max (c_min / c_max) ** u``; with ``c_max = 1`` this is the reference ``c_min ** (t/T)``.
* ``exponential_backwards``: the same with ``u -> 1 - u``.
* ``snr``: ``c = (c_max - c_min) / (1 + sigma)^2 + c_min`` with ``sigma = sqrt((1 - abar) / abar)``: written on
  the noise level itself, so it transfers between schedules as is.

``u`` in the exponential schedules is chosen by ``axis`` (an open choice of the paper, so an explicit option):

* ``"time"`` (default): ``u = schedule.noise_fraction(t)``, i.e. ``t / T`` or the continuous time; reproduces
  the reference scripts' numbers exactly.
* ``"log_snr"``: ``u`` is the log-SNR normalised over the schedule's training range, so two schedules that
  reach the same noise level get the same delta there.
"""

from __future__ import annotations

import torch

from robust_gen.diffusion.schedules import NoiseSchedule

__all__ = ["HUBER_SCHEDULES", "check_huber_schedule", "huber_delta"]

HUBER_SCHEDULES = ("constant", "exponential", "exponential_backwards", "snr")
AXES = ("time", "log_snr")


def check_huber_schedule(kind: str, c_min: float, c_max: float, axis: str = "time") -> None:
    """Raise ``ValueError`` for an unknown schedule or axis, or deltas outside ``0 < c_min <= c_max``.

    Examples
    --------
    >>> check_huber_schedule("snr", 0.1, 1.0)
    >>> check_huber_schedule("snr", 0.5, 0.1)
    Traceback (most recent call last):
    ...
    ValueError: need 0 < c_min <= c_max for the pseudo-Huber delta, got c_min=0.5, c_max=0.1
    """
    if kind not in HUBER_SCHEDULES:
        raise ValueError(f"unknown pseudo-Huber delta schedule {kind!r}; choose one of {HUBER_SCHEDULES}")
    if axis not in AXES:
        raise ValueError(f"unknown delta-schedule axis {axis!r}; choose one of {AXES}")
    if not 0.0 < c_min <= c_max:
        raise ValueError(f"need 0 < c_min <= c_max for the pseudo-Huber delta, got c_min={c_min}, c_max={c_max}")


def huber_delta(
    kind: str,
    t: torch.Tensor,
    schedule: NoiseSchedule,
    *,
    c_min: float = 0.1,
    c_max: float = 1.0,
    axis: str = "time",
) -> torch.Tensor:
    """The pseudo-Huber delta for each sample's time ``t`` (float tensor shaped like ``t``).

    Parameters
    ----------
    kind:
        ``"constant"``, ``"exponential"``, ``"exponential_backwards"`` or ``"snr"`` (module docstring).
    t:
        Per-sample times of ``schedule`` (integer steps or floats in [0, 1]).
    schedule:
        The noise schedule the times belong to.
    c_min, c_max:
        Delta at the pure-noise and the data end.
    axis:
        ``"time"`` or ``"log_snr"``: what the exponential schedules run along.

    Examples
    --------
    The reference numbers for Stable Diffusion 1.5's schedule with ``c_min = 0.1``:

    >>> from robust_gen.diffusion.schedules import DiscreteVP
    >>> sd = DiscreteVP("scaled_linear", 1000, 0.00085, 0.012)
    >>> t = torch.tensor([0, 100, 300, 500, 700, 999])
    >>> [round(c, 3) for c in huber_delta("snr", t, sd).tolist()]
    [0.95, 0.598, 0.368, 0.231, 0.148, 0.104]
    >>> [round(c, 3) for c in huber_delta("exponential", t, sd).tolist()]
    [1.0, 0.794, 0.501, 0.316, 0.2, 0.1]
    """
    check_huber_schedule(kind, c_min, c_max, axis)
    t = torch.as_tensor(t)
    if kind == "constant":
        return torch.full(t.shape, c_min, dtype=torch.float32, device=t.device)
    if kind == "snr":
        sigma = schedule.sigma(t).float()
        return (c_max - c_min) / (1.0 + sigma) ** 2 + c_min
    u = _progress(t, schedule, axis)
    if kind == "exponential_backwards":
        u = 1.0 - u
    return c_max * (c_min / c_max) ** u


def _progress(t: torch.Tensor, schedule: NoiseSchedule, axis: str) -> torch.Tensor:
    """How far ``t`` is from the data end towards the noise end, in [0, 1]."""
    if axis == "time":
        u = schedule.noise_fraction(t).float()
        # Discrete steps stop at (T-1)/T; the reference scripts use t/T as is, and so do we.
        return u.clamp(0.0, 1.0)
    t_data, t_noise = schedule.time_range()
    lam = schedule.log_snr(t).float()
    lam_data = schedule.log_snr(t_data.reshape(1).to(t.device)).float()
    lam_noise = schedule.log_snr(t_noise.reshape(1).to(t.device)).float()
    return ((lam_data - lam) / (lam_data - lam_noise)).clamp(0.0, 1.0)
