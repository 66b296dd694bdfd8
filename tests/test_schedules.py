"""Noise schedules and pseudo-Huber delta schedules."""

import math

import pytest
import torch

from robust_gen.diffusion.huber_schedules import huber_delta
from robust_gen.diffusion.schedules import (
    ContinuousVP,
    DiscreteVP,
    ShiftedSchedule,
    shift_abar,
    shift_for_size,
    shift_time,
)

SD15 = DiscreteVP("scaled_linear", 1000, 0.00085, 0.012)
T_REF = torch.tensor([0, 100, 300, 500, 700, 999])


def test_reference_snr_delta_values():
    values = huber_delta("snr", T_REF, SD15, c_min=0.1, c_max=1.0)
    assert [round(v, 3) for v in values.tolist()] == [0.950, 0.598, 0.368, 0.231, 0.148, 0.104]


def test_reference_exponential_delta_values():
    values = huber_delta("exponential", T_REF, SD15, c_min=0.1, c_max=1.0)
    assert [round(v, 3) for v in values.tolist()] == [1.000, 0.794, 0.501, 0.316, 0.200, 0.100]


def test_backwards_runs_the_other_way_and_constant_is_flat():
    fwd = huber_delta("exponential", T_REF, SD15)
    bwd = huber_delta("exponential_backwards", T_REF, SD15)
    assert bool((bwd[1:] >= bwd[:-1]).all()) and bool((fwd[1:] <= fwd[:-1]).all())
    assert huber_delta("constant", T_REF, SD15, c_min=0.3).tolist() == pytest.approx([0.3] * 6)


@pytest.mark.parametrize("schedule", [SD15, DiscreteVP("linear"), DiscreteVP("cosine", 250), ContinuousVP()])
@pytest.mark.parametrize("kind", ["snr", "exponential"])
@pytest.mark.parametrize("axis", ["time", "log_snr"])
def test_delta_schedules_decrease_from_c_max_towards_c_min(schedule, kind, axis):
    lo, hi = schedule.time_range()
    t = torch.linspace(float(lo), float(hi), 50)
    t = t.round().long() if schedule.discrete else t
    c = huber_delta(kind, t, schedule, c_min=0.2, c_max=3.0, axis=axis)
    assert bool((c[1:] <= c[:-1] + 1e-6).all())
    assert float(c.min()) >= 0.2 - 1e-6 and float(c.max()) <= 3.0 + 1e-6
    assert float(c[-1]) == pytest.approx(0.2, abs=0.02)


def test_log_snr_axis_transfers_between_schedules():
    # Two different schedules at times where they have the same noise level get the same delta.
    a, b = DiscreteVP("linear"), ContinuousVP()
    ta = torch.tensor([200])
    lam = a.log_snr(ta)
    # find the continuous t with the same log-SNR by bisection
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(b.log_snr(torch.tensor([mid]))) > float(lam) else (lo, mid)
    tb = torch.tensor([lo])
    snr_a, snr_b = huber_delta("snr", ta, a), huber_delta("snr", tb, b)
    assert float(snr_a) == pytest.approx(float(snr_b), rel=1e-3)


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "cosine"])
@pytest.mark.parametrize("steps", [10, 1000])
def test_discrete_abar_monotone_and_in_range(kind, steps):
    s = DiscreteVP(kind, steps)
    abar = s.abar(torch.arange(steps))
    assert bool((abar[1:] < abar[:-1]).all())
    assert 0 < float(abar[-1]) and float(abar[0]) < 1
    sigma, snr = s.sigma(torch.arange(steps)), s.snr(torch.arange(steps))
    assert torch.allclose(snr, 1 / sigma**2, rtol=1e-4)


def test_linear_betas_match_ddpm_formula():
    s = DiscreteVP("linear", 1000, 1e-4, 0.02)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    expected = torch.cumprod(1 - betas, 0)[[0, 499, 999]]
    assert torch.allclose(s.abar(torch.tensor([0, 499, 999])).double(), expected, rtol=1e-6)


def test_continuous_vp_matches_grad_tts_closed_form():
    s = ContinuousVP(0.05, 20.0)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    big_b = 0.05 * t + 9.975 * t**2
    assert torch.allclose(s.abar(t), torch.exp(-big_b))
    assert torch.allclose(s.beta(t), 0.05 + 19.95 * t)
    assert torch.allclose(s.sigma(t[1:]), torch.sqrt(torch.exp(big_b[1:]) - 1))
    lam = s.log_snr(t[1:])
    assert bool((lam[1:] < lam[:-1]).all())


def test_continuous_sample_t_per_sample_and_in_range():
    s = ContinuousVP(t_eps=1e-5)
    t = s.sample_t(10000, generator=torch.Generator().manual_seed(0))
    assert t.shape == (10000,) and float(t.min()) >= 1e-5 and float(t.max()) <= 1 - 1e-5
    assert t.unique().numel() > 9000


def test_discrete_rejects_bad_times():
    with pytest.raises(ValueError, match="out of range"):
        SD15.abar(torch.tensor([1000]))
    with pytest.raises(ValueError, match="integer step"):
        SD15.abar(torch.tensor([0.5]))
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        ContinuousVP().abar(torch.tensor([1.5]))
    with pytest.raises(ValueError, match="unknown discrete schedule kind"):
        DiscreteVP("sigmoid")


def test_shift_matches_sd3_time_shift_on_rectified_flow_snr():
    u = torch.linspace(0.01, 0.99, 20, dtype=torch.float64)
    s = 3.0
    # rectified flow: x = (1 - u) x0 + u eps, so the VP-equivalent abar is (1-u)^2 / ((1-u)^2 + u^2)
    abar = (1 - u) ** 2 / ((1 - u) ** 2 + u**2)
    u_shift = shift_time(u, s)
    abar_shift = (1 - u_shift) ** 2 / ((1 - u_shift) ** 2 + u_shift**2)
    assert torch.allclose(shift_abar(abar, s), abar_shift)


def test_shifted_schedule_adds_noise_and_keeps_times():
    base = ContinuousVP()
    shifted = ShiftedSchedule(base, shift_for_size(64, 256))
    t = torch.tensor([0.1, 0.5, 0.9])
    assert bool((shifted.snr(t) < base.snr(t)).all())
    assert torch.allclose(shifted.snr(t), base.snr(t) / 4)
    assert torch.equal(shifted.sampling_times(5), base.sampling_times(5))
    assert shift_for_size(100, 400) == 2.0
    assert ShiftedSchedule(base, 1.0).abar(t).tolist() == pytest.approx(base.abar(t).tolist())
    assert math.isclose(float(shift_time(torch.tensor(0.5), 1.0)), 0.5)
