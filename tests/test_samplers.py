"""Samplers: determinism, agreement with closed forms, guidance, EMA."""

import pytest
import torch

from robust_gen.diffusion.ema import EMA
from robust_gen.diffusion.samplers import EpsModel, Guided, ddim, ddpm, euler_ode, euler_sde, get_sampler
from robust_gen.diffusion.schedules import ContinuousVP, DiscreteVP
from robust_gen.training.trainer import TrainerConfig


def gaussian_eps_model(schedule, m, s):
    """The exact noise predictor for data ~ N(m, s^2) under a VP schedule."""

    def model(x_t, t, **_):
        abar = schedule.abar(t).reshape(-1, *([1] * (x_t.dim() - 1)))
        var = abar * s**2 + (1 - abar)
        # E[eps | x_t] = sqrt(1 - abar) (x_t - sqrt(abar) m) / var
        return (1 - abar).sqrt() * (x_t - abar.sqrt() * m) / var

    return model


@pytest.mark.parametrize(
    ("sampler", "schedule", "steps"),
    [
        (ddim, DiscreteVP("linear", 1000), 50),
        (ddpm, DiscreteVP("linear", 1000), 200),
        (ddim, ContinuousVP(), 50),
        (euler_ode, ContinuousVP(), 200),
        (euler_sde, ContinuousVP(), 400),
    ],
)
def test_samplers_recover_a_known_gaussian(sampler, schedule, steps):
    m, s = 1.5, 0.5
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 1, generator=g, dtype=torch.float64)
    out = sampler(gaussian_eps_model(schedule, m, s), x, schedule.sampling_times(steps), schedule=schedule, generator=g)
    assert float(out.mean()) == pytest.approx(m, abs=0.05)
    assert float(out.std()) == pytest.approx(s, abs=0.05)


@pytest.mark.parametrize("name", ["ddim", "ddpm", "euler_sde"])
def test_samplers_deterministic_under_seed(name):
    schedule = ContinuousVP() if name.startswith("euler") else DiscreteVP("linear", 100)
    model = gaussian_eps_model(schedule, 0.0, 1.0)
    runs = []
    for _ in range(2):
        g = torch.Generator().manual_seed(123)
        x = torch.randn(3, 4, generator=g)
        runs.append(get_sampler(name)(model, x, schedule.sampling_times(10), schedule=schedule, generator=g))
    assert torch.equal(runs[0], runs[1])
    g = torch.Generator().manual_seed(124)
    other = get_sampler(name)(model, torch.randn(3, 4, generator=g), schedule.sampling_times(10), schedule=schedule, generator=g)
    assert not torch.equal(runs[0], other)


def test_mean_shifted_sampling_ends_near_the_data_around_mu():
    # data x0 ~ N(mu + 0.5, 0.2^2) around a per-element mean; the sampler must land there.
    schedule = ContinuousVP()
    mu = torch.linspace(-2, 2, 8, dtype=torch.float64).expand(2000, 8)
    inner = gaussian_eps_model(schedule, 0.5, 0.2)

    def model(x_t, t, mu):
        return inner(x_t - mu, t)

    g = torch.Generator().manual_seed(0)
    start = mu + torch.randn(mu.shape, generator=g, dtype=torch.float64)
    out = euler_ode(model, start, schedule.sampling_times(100), schedule=schedule, mean=mu, extra_args={"mu": mu})
    assert torch.allclose((out - mu).mean(0), torch.full((8,), 0.5, dtype=torch.float64), atol=0.05)


def test_callback_sees_every_step():
    schedule = DiscreteVP("linear", 100)
    seen = []
    ddim(gaussian_eps_model(schedule, 0, 1), torch.randn(2, 2), schedule.sampling_times(7), schedule=schedule,
         callback=lambda d: seen.append(d["i"]))
    assert seen == list(range(7))


def test_eps_model_converts_x0_predictions():
    schedule = DiscreteVP("linear", 1000)
    model = gaussian_eps_model(schedule, 0.3, 0.7)
    t = torch.tensor([10, 500, 990])
    x_t = torch.randn(3, 4, dtype=torch.float64)
    abar = schedule.abar(t)[:, None].double()
    x0_model = lambda x, t: (x - (1 - abar).sqrt() * model(x, t)) / abar.sqrt()  # noqa: E731
    assert torch.allclose(EpsModel(x0_model, schedule, "x0")(x_t, t), model(x_t, t), atol=1e-6)


def test_guidance_formula_batched_and_unbatched_agree():
    def model(x, t, y, scale_hint=None):
        return x + y.float()[:, None]

    conditions = [{"y": torch.tensor([0, 0])}, {"y": torch.tensor([1, 2])}, {"y": torch.tensor([3, 3])}]
    guided = Guided(model, conditions, scales=[2.0, 0.5])
    x, t = torch.zeros(2, 3), torch.tensor([1, 1])
    # eps0 = 0, eps1 = (1, 2), eps2 = 3: 0 + 2 * (eps1 - 0) + 0.5 * (3 - eps1) = 1.5 eps1 + 1.5
    expected = torch.tensor([[3.0] * 3, [4.5] * 3])
    assert torch.allclose(guided(x, t), expected)
    unbatched = Guided(model, [{**c, "scale_hint": "x"} for c in conditions], scales=[2.0, 0.5])
    assert torch.allclose(unbatched(x, t), expected)
    with pytest.raises(ValueError, match="same keys"):
        Guided(model, [{"y": 1}, {}], scales=[1.0])


def test_guidance_scale_one_is_the_conditional_model():
    model = lambda x, t, y: x * y[:, None]  # noqa: E731
    guided = Guided(model, [{"y": torch.zeros(2)}, {"y": torch.full((2,), 2.0)}], scales=[1.0])
    x = torch.randn(2, 3)
    assert torch.allclose(guided(x, torch.tensor([3, 3])), model(x, None, torch.full((2,), 2.0)))


def test_euler_rejects_discrete_schedules():
    schedule = DiscreteVP("linear", 10)
    with pytest.raises(ValueError, match="continuous VP"):
        euler_ode(lambda x, t: x, torch.zeros(1, 1), schedule.sampling_times(2), schedule=schedule)
    with pytest.raises(ValueError, match="unknown sampler"):
        get_sampler("heun")


def test_ema_tracks_weights_with_warmup():
    net = torch.nn.Linear(3, 3)
    assert EMA(net, decay=0.9).current_decay(0) == pytest.approx(0.1)
    assert EMA(net, decay=0.9).current_decay(10**6) == 0.9
    ema = EMA(net, decay=0.9, warmup=False)
    for _ in range(100):
        with torch.no_grad():
            net.weight.add_(0.1)
        ema.update(net)
    lag = (net.weight - ema.module.weight).mean().item()
    # steady-state lag of an EMA of a ramp with step 0.1 and decay 0.9 is 0.1 * 0.9 / 0.1 = 0.9
    assert lag == pytest.approx(0.9, abs=0.05)
    assert not any(p.requires_grad for p in ema.module.parameters())
    state = ema.state_dict()
    copy = EMA(torch.nn.Linear(3, 3), decay=0.9)
    copy.load_state_dict(state)
    assert torch.equal(copy.module.weight, ema.module.weight)


def test_ema_warmup_steps_reach_the_configured_decay_on_time():
    net = torch.nn.Linear(3, 3)
    classic = EMA(net, decay=0.998)  # the (1 + n) / (10 + n) ramp: far below the target on short runs
    assert classic.current_decay(400) == pytest.approx(401 / 410)
    assert classic.current_decay(1500) < 0.995
    timed = EMA(net, decay=0.998, warmup_steps=300)
    assert timed.current_decay(299) < 0.998 and timed.current_decay(300) == pytest.approx(0.998)
    assert timed.current_decay(0) < 0.7  # still a ramp: the first random weights fade out
    with pytest.raises(ValueError, match="ema_warmup_steps"):
        EMA(net, decay=0.998, warmup_steps=-1)
    with pytest.raises(ValueError, match="ema_warmup_steps"):
        TrainerConfig(ema_warmup_steps=2.5)
