"""Variance-preserving noise schedules, discrete and continuous, behind one interface.

Every schedule answers the same questions for a tensor of per-sample times ``t``:

* ``abar(t)``: the signal fraction alpha-bar, so that ``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps``;
* ``sigma(t) = sqrt((1 - abar) / abar)``: the noise-to-signal ratio (the "sigma" of EDM / k-diffusion);
* ``snr(t) = abar / (1 - abar) = 1 / sigma**2``;
* ``noise_fraction(t)`` in [0, 1]: the time normalised to the schedule's range (``t / T`` for discrete
  schedules, ``t`` for continuous ones), used by schedules that the reference code writes on time.

Discrete schedules take integer steps ``0 .. num_steps - 1``; continuous ones take floats in [0, 1]. Code that
needs a noise *level* (the pseudo-Huber delta, the control gate) asks the schedule, so the same code serves a
1000-step DDPM and Grad-TTS's continuous VP SDE.

The resolution / length shift of SD3 (Esser et al. 2024), ``u' = s u / (1 + (s - 1) u)``, multiplies the
noise-to-signal ratio of a rectified flow by ``s``; :class:`ShiftedSchedule` applies the same change to any VP
schedule by dividing its SNR by ``s**2`` (see :func:`shift_abar`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

__all__ = [
    "ContinuousVP",
    "DiscreteVP",
    "NoiseSchedule",
    "ShiftedSchedule",
    "shift_abar",
    "shift_for_size",
    "shift_time",
]


class NoiseSchedule(ABC):
    """A variance-preserving noise schedule queried per sample.

    Subclasses implement :meth:`abar`, :meth:`noise_fraction`, :meth:`sample_t` and :meth:`sampling_times`;
    everything else derives from them.
    """

    #: True when ``t`` is an integer step index, False when it is a float time in [0, 1].
    discrete: bool

    @abstractmethod
    def abar(self, t: torch.Tensor) -> torch.Tensor:
        """Signal fraction alpha-bar(t), same shape as ``t``, float."""

    @abstractmethod
    def noise_fraction(self, t: torch.Tensor) -> torch.Tensor:
        """Time normalised to [0, 1]: 0 at the data end, 1 at the pure-noise end."""

    @abstractmethod
    def sample_t(
        self, batch_size: int, *, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """Draw one training time per sample (shape ``[batch_size]``)."""

    @abstractmethod
    def sampling_times(self, num_steps: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Decreasing times for a sampler with ``num_steps`` steps (``num_steps + 1`` points, ending at data)."""

    @abstractmethod
    def time_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first and last training time: ``(data end, noise end)``."""

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Noise-to-signal ratio ``sqrt((1 - abar) / abar)``."""
        abar = self.abar(t)
        return torch.sqrt((1.0 - abar) / abar)

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio ``abar / (1 - abar)``."""
        abar = self.abar(t)
        return abar / (1.0 - abar)

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """Natural log of the SNR, computed stably from ``abar``."""
        abar = self.abar(t)
        return torch.log(abar) - torch.log1p(-abar)

    def add_noise(
        self,
        x0: torch.Tensor,
        noise: torch.Tensor,
        t: torch.Tensor,
        mu: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Forward-noise ``x0`` to time ``t`` (one ``t`` per sample).

        ``x_t = sqrt(abar) x0 + (1 - sqrt(abar)) mu + sqrt(1 - abar) eps``. With ``mu`` given this is Grad-TTS's
        mean-shifted VP SDE (Popov et al. 2021, eq. 10: the terminal distribution is N(mu, I)); without it, mu = 0
        and this is the usual DDPM forward process.

        Examples
        --------
        >>> s = ContinuousVP()
        >>> x0, mu = torch.zeros(2, 3), torch.ones(2, 3)
        >>> xt = s.add_noise(x0, torch.zeros(2, 3), torch.tensor([0.0, 1.0]), mu=mu)
        >>> [round(v, 4) for v in xt[:, 0].tolist()]  # t=0 keeps x0, t=1 is (almost) mu
        [0.0, 0.9933]
        """
        alpha, std = self.alpha_and_std(t, like=x0)
        xt = alpha * x0 + std * noise
        if mu is not None:
            xt = xt + (1.0 - alpha) * mu
        return xt

    def alpha_and_std(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``sqrt(abar)`` and ``sqrt(1 - abar)`` shaped ``[B, 1, ..., 1]`` to broadcast against ``like``."""
        abar = self.abar(t).to(device=like.device, dtype=like.dtype if like.is_floating_point() else None)
        shape = (-1,) + (1,) * (like.dim() - 1)
        return abar.sqrt().reshape(shape), (1.0 - abar).sqrt().reshape(shape)


class DiscreteVP(NoiseSchedule):
    """DDPM-style schedule over integer steps ``0 .. num_steps - 1``.

    Parameters
    ----------
    kind:
        ``"linear"`` (Ho et al. 2020: betas linear from ``beta_start`` to ``beta_end``), ``"scaled_linear"``
        (Stable Diffusion / LDM: sqrt(beta) linear, then squared) or ``"cosine"`` (Nichol & Dhariwal 2021,
        ``abar(t) = cos^2(((t/T + s) / (1 + s)) pi/2)`` with s = 0.008, betas clipped at 0.999).
    num_steps:
        Number of training steps T.
    beta_start, beta_end:
        End points of the linear kinds (ignored by ``"cosine"``).

    Examples
    --------
    >>> s = DiscreteVP("scaled_linear", 1000, 0.00085, 0.012)
    >>> round(s.abar(torch.tensor([0])).item(), 5)
    0.99915
    >>> s.sigma(torch.tensor([0, 999])).shape
    torch.Size([2])
    """

    discrete = True
    KINDS = ("linear", "scaled_linear", "cosine")

    def __init__(
        self,
        kind: str = "linear",
        num_steps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
    ) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"unknown discrete schedule kind {kind!r}; choose one of {self.KINDS}")
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if kind != "cosine" and not 0.0 < beta_start <= beta_end < 1.0:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        self.kind, self.num_steps = kind, int(num_steps)
        self.beta_start, self.beta_end = float(beta_start), float(beta_end)
        # float64 tables: the cumulative product over 1000 steps loses digits in float32.
        self.betas = _betas(kind, self.num_steps, self.beta_start, self.beta_end)
        self.abars = torch.cumprod(1.0 - self.betas, dim=0)

    def __repr__(self) -> str:
        return (
            f"DiscreteVP({self.kind!r}, num_steps={self.num_steps}, "
            f"beta_start={self.beta_start}, beta_end={self.beta_end})"
        )

    def _index(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t)
        if t.is_floating_point():
            if not torch.equal(t, t.round()):
                raise ValueError("DiscreteVP takes integer step indices; got fractional times")
            t = t.long()
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_steps):
            raise ValueError(f"step index out of range [0, {self.num_steps}): min {int(t.min())}, max {int(t.max())}")
        return t

    def abar(self, t: torch.Tensor) -> torch.Tensor:
        idx = self._index(t)
        return self.abars.to(idx.device)[idx].float()

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        idx = self._index(t)
        return self.betas.to(idx.device)[idx].float()

    def noise_fraction(self, t: torch.Tensor) -> torch.Tensor:
        return self._index(t).float() / self.num_steps

    def time_range(self):
        return torch.tensor(0), torch.tensor(self.num_steps - 1)

    def sample_t(self, batch_size, *, generator=None, device="cpu"):
        return torch.randint(0, self.num_steps, (batch_size,), generator=generator, device=device)

    def sampling_times(self, num_steps: int, device="cpu") -> torch.Tensor:
        """Evenly spaced ("trailing") steps from T-1 down to 0, then -1 standing for the clean data.

        Examples
        --------
        >>> DiscreteVP("linear", 1000).sampling_times(4).tolist()
        [999, 749, 499, 249, -1]
        """
        if not 1 <= num_steps <= self.num_steps:
            raise ValueError(f"num_steps must be in [1, {self.num_steps}], got {num_steps}")
        steps = torch.arange(self.num_steps, 0, -self.num_steps / num_steps).round().long() - 1
        return torch.cat([steps, torch.tensor([-1])]).to(device)


class ContinuousVP(NoiseSchedule):
    """Continuous VP SDE with linear beta(t) = beta_min + (beta_max - beta_min) t, t in [0, 1].

    ``abar(t) = exp(-B(t))`` with ``B(t) = beta_min t + (beta_max - beta_min) t^2 / 2``. The defaults are
    Grad-TTS's (beta 0.05 .. 20, so ``B(t) = 0.05 t + 9.975 t^2``).

    Parameters
    ----------
    beta_min, beta_max:
        End points of the linear noise rate.
    t_eps:
        Training times are drawn from U(t_eps, 1 - t_eps) (Grad-TTS uses 1e-5), avoiding abar = 1 exactly.

    Examples
    --------
    >>> s = ContinuousVP()
    >>> round(s.abar(torch.tensor([1.0])).item(), 8)  # exp(-10.025)
    4.428e-05
    """

    discrete = False

    def __init__(self, beta_min: float = 0.05, beta_max: float = 20.0, t_eps: float = 1e-5) -> None:
        if not 0.0 <= beta_min <= beta_max:
            raise ValueError(f"need 0 <= beta_min <= beta_max, got {beta_min}, {beta_max}")
        if not 0.0 <= t_eps < 0.5:
            raise ValueError(f"t_eps must be in [0, 0.5), got {t_eps}")
        self.beta_min, self.beta_max, self.t_eps = float(beta_min), float(beta_max), float(t_eps)

    def __repr__(self) -> str:
        return f"ContinuousVP(beta_min={self.beta_min}, beta_max={self.beta_max})"

    def _check(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32) if not torch.is_tensor(t) else t.float()
        if t.numel() and (float(t.min()) < 0.0 or float(t.max()) > 1.0):
            raise ValueError(f"ContinuousVP times must lie in [0, 1], got [{float(t.min())}, {float(t.max())}]")
        return t

    def integral_beta(self, t: torch.Tensor) -> torch.Tensor:
        """``B(t) = int_0^t beta(s) ds``."""
        t = self._check(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        t = self._check(t)
        return self.beta_min + (self.beta_max - self.beta_min) * t

    def abar(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self.integral_beta(t))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        # expm1 keeps sigma accurate near t = 0, where 1 - abar cancels.
        return torch.sqrt(torch.expm1(self.integral_beta(t)))

    def noise_fraction(self, t: torch.Tensor) -> torch.Tensor:
        return self._check(t)

    def time_range(self):
        return torch.tensor(self.t_eps), torch.tensor(1.0 - self.t_eps)

    def sample_t(self, batch_size, *, generator=None, device="cpu"):
        u = torch.rand(batch_size, generator=generator, device=device)
        return self.t_eps + (1.0 - 2.0 * self.t_eps) * u

    def sampling_times(self, num_steps: int, device="cpu") -> torch.Tensor:
        """Uniform grid from 1 down to 0 with ``num_steps`` intervals.

        Examples
        --------
        >>> ContinuousVP().sampling_times(4).tolist()
        [1.0, 0.75, 0.5, 0.25, 0.0]
        """
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        return torch.linspace(1.0, 0.0, num_steps + 1, device=device)


def shift_time(u: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's resolution shift of a noise fraction: ``u' = s u / (1 + (s - 1) u)``.

    Examples
    --------
    >>> shift_time(torch.tensor([0.0, 0.5, 1.0]), 3.0).tolist()
    [0.0, 0.75, 1.0]
    """
    return shift * u / (1.0 + (shift - 1.0) * u)


def shift_abar(abar: torch.Tensor, shift: float) -> torch.Tensor:
    """Divide the SNR carried by ``abar`` by ``shift**2``: ``abar' = abar / (abar + s^2 (1 - abar))``.

    For a rectified flow (noise fraction u, SNR ((1 - u) / u)^2) this is exactly :func:`shift_time`; written on
    SNR it applies unchanged to any VP schedule. ``shift > 1`` adds noise (larger images / longer signals).

    Examples
    --------
    >>> round(shift_abar(torch.tensor(0.5), 2.0).item(), 3)  # SNR 1 -> 1/4
    0.2
    """
    return abar / (abar + shift**2 * (1.0 - abar))


def shift_for_size(base_numel: int, new_numel: int) -> float:
    """The shift that keeps per-image noise comparable when the element count changes (SD3: sqrt(m / n)).

    For images pass pixel (or latent) counts, so doubling the side length gives a shift of 2; for speech pass
    frame counts.

    Examples
    --------
    >>> shift_for_size(32 * 32, 64 * 64)
    2.0
    """
    if base_numel <= 0 or new_numel <= 0:
        raise ValueError(f"element counts must be positive, got {base_numel}, {new_numel}")
    return math.sqrt(new_numel / base_numel)


class ShiftedSchedule(NoiseSchedule):
    """A schedule whose noise level is shifted by ``shift`` at every time (see :func:`shift_abar`).

    Times, sampling grids and ``noise_fraction`` are the base schedule's; only the noise level moves.

    Examples
    --------
    >>> base = DiscreteVP("linear", 1000)
    >>> shifted = ShiftedSchedule(base, shift=2.0)
    >>> bool(shifted.snr(torch.tensor([500])) < base.snr(torch.tensor([500])))
    True
    """

    def __init__(self, base: NoiseSchedule, shift: float) -> None:
        if shift <= 0:
            raise ValueError(f"shift must be positive, got {shift}")
        self.base, self.shift = base, float(shift)
        self.discrete = base.discrete

    def __repr__(self) -> str:
        return f"ShiftedSchedule({self.base!r}, shift={self.shift})"

    def abar(self, t):
        return shift_abar(self.base.abar(t), self.shift)

    def noise_fraction(self, t):
        return self.base.noise_fraction(t)

    def time_range(self):
        return self.base.time_range()

    def sample_t(self, batch_size, *, generator=None, device="cpu"):
        return self.base.sample_t(batch_size, generator=generator, device=device)

    def sampling_times(self, num_steps, device="cpu"):
        return self.base.sampling_times(num_steps, device)


def _betas(kind: str, num_steps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2
    # cosine: betas from the ratio of consecutive abar values of the squared-cosine curve.
    s = 0.008
    steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return torch.clamp(1.0 - f[1:] / f[:-1], max=0.999)
