"""Samplers with one signature, and classifier-free guidance.

Every sampler is a pure function under ``torch.no_grad``::

    sampler(model, x, times, *, schedule, extra_args=None, callback=None, generator=None, mean=None, ...)

* ``model(x_t, t, **extra_args)`` returns the network's prediction; wrap it with :class:`EpsModel` if it predicts
  ``v`` or ``x0``, and with :class:`Guided` for classifier-free guidance. Conditions (class ids, text states,
  Grad-TTS's ``mu`` and speaker) travel in ``extra_args`` untouched, as in k-diffusion.
* ``x`` is the starting noise, already scaled (for Grad-TTS: ``mu + z / temperature``).
* ``times`` is a decreasing grid from ``schedule.sampling_times(num_steps)``; discrete grids end at -1, which
  stands for the clean data (abar = 1).
* ``mean`` is the terminal mean of a mean-shifted process (Grad-TTS's ``mu``); ``None`` means 0.
* ``callback(dict)`` is called after every step with ``i``, ``t``, ``x`` and ``denoised`` (the x0 estimate).

DDPM and DDIM work on any schedule (they need only ``abar``); the Euler ODE and SDE samplers integrate the
continuous VP SDE and need ``schedule.beta(t)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from robust_gen.diffusion.objective import convert_prediction
from robust_gen.diffusion.schedules import NoiseSchedule

__all__ = ["SAMPLERS", "EpsModel", "Guided", "ddim", "ddpm", "euler_ode", "euler_sde", "get_sampler"]


class EpsModel:
    """Wrap a network that predicts ``v`` or ``x0`` so that it returns the noise ``eps``.

    Examples
    --------
    >>> from robust_gen.diffusion.schedules import DiscreteVP
    >>> net = lambda x, t: torch.zeros_like(x)  # predicts x0 = 0
    >>> m = EpsModel(net, DiscreteVP("linear"), prediction="x0")
    >>> m(torch.ones(1, 2), torch.tensor([999])).shape
    torch.Size([1, 2])
    """

    def __init__(
        self,
        model: Callable[..., torch.Tensor],
        schedule: NoiseSchedule,
        prediction: str = "eps",
        mean: torch.Tensor | None = None,
    ):
        self.model, self.schedule, self.prediction, self.mean = model, schedule, prediction, mean

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, **extra_args) -> torch.Tensor:
        out = self.model(x_t, t, **extra_args)
        return convert_prediction(out, x_t, t, self.schedule, source=self.prediction, target="eps", mu=self.mean)


class Guided:
    """Classifier-free guidance over a chain of ever richer conditions.

    ``eps = eps_0 + sum_k scale_k (eps_k - eps_{k-1})`` where ``eps_k = model(x, t, **conditions[k])``.
    Two conditions ``[null, cond]`` with one scale ``s`` is standard CFG: ``eps_null + s (eps_cond - eps_null)``.
    Three, ``[null, semantic, semantic + control]`` with scales ``[s_sem, s_ctrl]``, guides semantics and control
    metadata separately (Berrada et al. 2024). All conditions are evaluated in one batched call when every value is
    a tensor with the batch as first dimension, else one call each.

    Examples
    --------
    >>> model = lambda x, t, y: x * 0 + y.float()[:, None]
    >>> g = Guided(model, [{"y": torch.tensor([0])}, {"y": torch.tensor([1])}], scales=[3.0])
    >>> g(torch.zeros(1, 2), torch.tensor([5])).tolist()
    [[3.0, 3.0]]
    """

    def __init__(self, model: Callable[..., torch.Tensor], conditions: Sequence[dict], scales: Sequence[float]):
        if len(conditions) < 2 or len(scales) != len(conditions) - 1:
            raise ValueError(
                f"need at least two conditions and one scale fewer than conditions, got {len(conditions)} "
                f"conditions and {len(scales)} scales"
            )
        keys = set(conditions[0])
        if any(set(c) != keys for c in conditions):
            raise ValueError("every guidance condition must have the same keys (use a null value, not a missing key)")
        self.model, self.conditions, self.scales = model, list(conditions), [float(s) for s in scales]

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, **extra_args) -> torch.Tensor:
        preds = self._evaluate(x_t, t, extra_args)
        eps = preds[0]
        for k, scale in enumerate(self.scales, start=1):
            eps = eps + scale * (preds[k] - preds[k - 1])
        return eps

    def _evaluate(self, x_t, t, extra_args) -> list[torch.Tensor]:
        n, batch = len(self.conditions), x_t.shape[0]
        merged = [{**extra_args, **c} for c in self.conditions]
        if all(_batchable(m, batch) for m in merged):
            cat = {k: _cat([m[k] for m in merged]) for k in merged[0]}
            out = self.model(x_t.repeat(n, *([1] * (x_t.dim() - 1))), t.repeat(n), **cat)
            return list(out.chunk(n))
        return [self.model(x_t, t, **m) for m in merged]


def _batchable(args: dict, batch: int) -> bool:
    return all(v is None or (torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == batch) for v in args.values())


def _cat(values: list) -> torch.Tensor | None:
    if all(v is None for v in values):
        return None
    if any(v is None for v in values):
        raise ValueError("a guidance condition is None in some branches but not others")
    return torch.cat(values)


def _abar(schedule: NoiseSchedule, t: torch.Tensor) -> torch.Tensor:
    """abar at ``t``, with discrete step -1 standing for the clean data (abar = 1)."""
    if schedule.discrete and int(t.reshape(-1)[0]) < 0:
        return torch.ones(t.shape, device=t.device)
    return schedule.abar(t)


def _broadcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(like.dtype).reshape((-1,) + (1,) * (like.dim() - 1))


def _step_times(times: torch.Tensor, i: int, batch: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    return times[i].expand(batch).to(device), times[i + 1].expand(batch).to(device)


@torch.no_grad()
def ddim(
    model, x, times, *, schedule, extra_args=None, callback=None, generator=None, mean=None, eta: float = 0.0
) -> torch.Tensor:
    """DDIM (Song et al. 2021); ``eta = 0`` is deterministic, ``eta = 1`` matches DDPM's variance.

    Examples
    --------
    >>> from robust_gen.diffusion.schedules import DiscreteVP
    >>> s = DiscreteVP("linear", 100)
    >>> x = ddim(lambda x, t: torch.zeros_like(x), torch.randn(2, 3), s.sampling_times(10), schedule=s)
    >>> x.shape
    torch.Size([2, 3])
    """
    extra_args = extra_args or {}
    y = x if mean is None else x - mean
    for i in range(len(times) - 1):
        t, t_next = _step_times(times, i, x.shape[0], x.device)
        abar, abar_next = _broadcast(_abar(schedule, t), y), _broadcast(_abar(schedule, t_next), y)
        eps = model(y if mean is None else y + mean, t, **extra_args)
        y0 = (y - (1 - abar).sqrt() * eps) / abar.sqrt()
        sigma = eta * ((1 - abar_next) / (1 - abar) * (1 - abar / abar_next)).clamp(min=0).sqrt()
        y = abar_next.sqrt() * y0 + (1 - abar_next - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0 and i < len(times) - 2:
            y = y + sigma * torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        _report(callback, i, t, y, y0, mean)
    return y if mean is None else y + mean


@torch.no_grad()
def ddpm(model, x, times, *, schedule, extra_args=None, callback=None, generator=None, mean=None) -> torch.Tensor:
    """Ancestral DDPM sampling (Ho et al. 2020) on any grid of times (strided grids use the skipped-step beta).

    Examples
    --------
    >>> from robust_gen.diffusion.schedules import DiscreteVP
    >>> s = DiscreteVP("linear", 50)
    >>> g = torch.Generator().manual_seed(0)
    >>> ddpm(lambda x, t: torch.zeros_like(x), torch.randn(1, 4), s.sampling_times(50), schedule=s, generator=g).shape
    torch.Size([1, 4])
    """
    extra_args = extra_args or {}
    y = x if mean is None else x - mean
    for i in range(len(times) - 1):
        t, t_next = _step_times(times, i, x.shape[0], x.device)
        abar, abar_next = _broadcast(_abar(schedule, t), y), _broadcast(_abar(schedule, t_next), y)
        eps = model(y if mean is None else y + mean, t, **extra_args)
        y0 = (y - (1 - abar).sqrt() * eps) / abar.sqrt()
        alpha_step = abar / abar_next  # 1 - beta of the (possibly skipped) step
        beta_step = 1 - alpha_step
        # Posterior q(y_next | y, y0) of the Gaussian forward process (Ho et al. 2020, eq. 7).
        coef0 = abar_next.sqrt() * beta_step / (1 - abar)
        coef_t = alpha_step.sqrt() * (1 - abar_next) / (1 - abar)
        y = coef0 * y0 + coef_t * y
        if i < len(times) - 2:
            var = beta_step * (1 - abar_next) / (1 - abar)
            y = y + var.sqrt() * torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        _report(callback, i, t, y, y0, mean)
    return y if mean is None else y + mean


def _euler(model, x, times, schedule, extra_args, callback, generator, mean, stochastic: bool) -> torch.Tensor:
    if not hasattr(schedule, "beta") or schedule.discrete:
        raise ValueError(f"Euler samplers integrate a continuous VP SDE; {schedule!r} is not one")
    extra_args = extra_args or {}
    mu = torch.zeros_like(x) if mean is None else mean
    for i in range(len(times) - 1):
        t, t_next = _step_times(times, i, x.shape[0], x.device)
        h = _broadcast(t - t_next, x)
        # Grad-TTS evaluates each Euler step at the midpoint of its interval.
        t_mid = (t + t_next) / 2
        beta = _broadcast(schedule.beta(t_mid), x)
        std = _broadcast((1 - schedule.abar(t_mid)).sqrt(), x)
        eps = model(x, t_mid, **extra_args)
        score = -eps / std
        # Forward SDE: dx = 0.5 beta (mu - x) dt + sqrt(beta) dW (Popov et al. 2021, eq. 9); reverse in time.
        if stochastic:
            drift = (0.5 * (mu - x) - score) * beta
            x = x - drift * h
            x = x + (beta * h).sqrt() * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        else:  # probability-flow ODE
            x = x - 0.5 * (mu - x - score) * beta * h
        _report(callback, i, t, x, None, None)
    return x


@torch.no_grad()
def euler_ode(model, x, times, *, schedule, extra_args=None, callback=None, generator=None, mean=None):
    """Euler steps of the probability-flow ODE of the continuous VP SDE (Grad-TTS's default sampler).

    Examples
    --------
    >>> from robust_gen.diffusion.schedules import ContinuousVP
    >>> s = ContinuousVP()
    >>> mu = torch.full((1, 3), 2.0)
    >>> x = euler_ode(lambda x, t: torch.zeros_like(x), mu.clone(), s.sampling_times(10), schedule=s, mean=mu)
    >>> torch.allclose(x, mu)  # starting at the mean with zero noise predicted, x stays at the mean
    True
    """
    return _euler(model, x, times, schedule, extra_args, callback, generator, mean, stochastic=False)


@torch.no_grad()
def euler_sde(model, x, times, *, schedule, extra_args=None, callback=None, generator=None, mean=None):
    """Euler-Maruyama steps of the reverse-time VP SDE."""
    return _euler(model, x, times, schedule, extra_args, callback, generator, mean, stochastic=True)


def _report(callback, i, t, y, y0, mean) -> None:
    if callback is None:
        return
    shift = 0 if mean is None else mean
    callback({"i": i, "t": t, "x": y + shift, "denoised": None if y0 is None else y0 + shift})


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddim": ddim,
    "ddpm": ddpm,
    "euler_ode": euler_ode,
    "euler_sde": euler_sde,
}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """Look a sampler up by name.

    Examples
    --------
    >>> get_sampler("ddim").__name__
    'ddim'
    """
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}") from None
