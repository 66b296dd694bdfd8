"""The denoising objective: noising, targets, masks, per-sample reduction, batch mean."""

import pytest
import torch

from robust_gen.diffusion.losses import L2Loss, PseudoHuberLoss
from robust_gen.diffusion.objective import DiffusionObjective, batch_mean, convert_prediction
from robust_gen.diffusion.schedules import ContinuousVP, DiscreteVP


class Recorder:
    """A 'network' that returns a fixed output and remembers what it was called with."""

    def __init__(self, output_fn):
        self.output_fn, self.calls = output_fn, []

    def __call__(self, x_t, t, **kwargs):
        self.calls.append((x_t.clone(), t.clone(), kwargs))
        return self.output_fn(x_t, t)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_perfect_prediction_has_zero_loss(prediction):
    schedule = DiscreteVP("cosine", 100)
    x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0, 50, 99])
    objective = DiffusionObjective(schedule, L2Loss(), prediction=prediction)
    target = objective.target(x0, noise, t)
    out = objective(lambda x_t, t: target, x0, t=t, noise=noise)
    assert torch.allclose(out.loss, torch.zeros(3), atol=1e-10)


def test_forward_noising_and_per_sample_times_reach_the_model():
    schedule = DiscreteVP("linear", 1000)
    model = Recorder(lambda x, t: torch.zeros_like(x))
    x0, noise = torch.randn(4, 3), torch.randn(4, 3)
    g = torch.Generator().manual_seed(0)
    out = DiffusionObjective(schedule, L2Loss())(model, x0, noise=noise, generator=g, model_kwargs={"y": 7})
    x_t, t, kwargs = model.calls[0]
    assert t.shape == (4,) and torch.equal(t, out.t) and t.unique().numel() > 1
    abar = schedule.abar(t)[:, None]
    assert torch.allclose(x_t, abar.sqrt() * x0 + (1 - abar).sqrt() * noise)
    assert kwargs == {"y": 7}
    assert torch.allclose(out.loss, (noise**2).mean(dim=1))


def test_mean_shifted_noising_is_grad_tts_form():
    schedule = ContinuousVP()
    x0, mu, z = torch.randn(2, 80, 8), torch.randn(2, 80, 8), torch.randn(2, 80, 8)
    t = torch.tensor([0.3, 0.8])
    big_b = (0.05 * t + 9.975 * t**2)[:, None, None]
    expected = x0 * torch.exp(-big_b / 2) + mu * (1 - torch.exp(-big_b / 2)) + torch.sqrt(1 - torch.exp(-big_b)) * z
    assert torch.allclose(schedule.add_noise(x0, z, t, mu=mu), expected, atol=1e-6)


def test_mask_zeroes_padding_and_weights_count_elements():
    schedule = ContinuousVP()
    mask = torch.zeros(2, 1, 6)
    mask[0, :, :4] = 1
    mask[1, :, :6] = 1
    model = Recorder(lambda x, t: torch.full_like(x, 5.0))
    x0 = torch.randn(2, 3, 6)
    out = DiffusionObjective(schedule, L2Loss())(model, x0, mask=mask, generator=torch.Generator().manual_seed(1))
    assert bool((model.calls[0][0][0, :, 4:] == 0).all())
    assert out.weight.tolist() == [12.0, 18.0]
    # the padded frames do not enter the loss
    other = x0.clone()
    other[0, :, 4:] = 1e6
    out2 = DiffusionObjective(schedule, L2Loss())(
        model, other, mask=mask, generator=torch.Generator().manual_seed(1)
    )
    assert torch.allclose(out.loss, out2.loss)


def test_robust_loss_plugs_in_with_per_sample_delta():
    schedule = DiscreteVP("linear", 1000)
    t = torch.tensor([0, 999])
    noise = torch.randn(2, 16)
    objective = DiffusionObjective(schedule, PseudoHuberLoss(form="huber", schedule="snr"))
    out = objective(lambda x, t: torch.zeros_like(x), torch.zeros(2, 16), t=t, noise=noise)
    # same residual magnitude, smaller delta at high noise -> smaller loss there
    out_same = objective(lambda x, t: torch.zeros_like(x), torch.zeros(2, 16), t=t, noise=noise[[0, 0]])
    assert out_same.loss[1] < out_same.loss[0]
    assert out.loss.shape == (2,)


def test_batch_mean_is_plain_or_element_weighted():
    per = torch.tensor([2.0, 4.0])
    assert batch_mean(per).item() == 3.0
    assert batch_mean(per, torch.tensor([1.0, 3.0])).item() == pytest.approx(3.5)
    with pytest.raises(ValueError, match="one loss per sample"):
        batch_mean(torch.zeros(2, 2))


@pytest.mark.parametrize("source", ["eps", "v", "x0"])
@pytest.mark.parametrize("target", ["eps", "v", "x0"])
@pytest.mark.parametrize("with_mu", [False, True])
def test_prediction_conversions_are_consistent(source, target, with_mu):
    schedule = ContinuousVP()
    x0, z, t = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64), torch.tensor([0.1, 0.5, 0.9])
    mu = torch.randn(3, 5, dtype=torch.float64) if with_mu else None
    objective = DiffusionObjective(schedule, L2Loss(), prediction=source)
    x_t = schedule.add_noise(x0, z, t, mu=mu)
    src = objective.target(x0, z, t, mu)
    tgt = DiffusionObjective(schedule, L2Loss(), prediction=target).target(x0, z, t, mu)
    got = convert_prediction(src, x_t, t, schedule, source=source, target=target, mu=mu)
    assert torch.allclose(got, tgt, atol=1e-6)


def test_objective_errors_are_clear():
    objective = DiffusionObjective(DiscreteVP("linear"), L2Loss())
    with pytest.raises(ValueError, match="shaped like its input"):
        objective(lambda x, t: x[:, :1], torch.zeros(2, 3))
    with pytest.raises(ValueError, match="one time per sample"):
        objective(lambda x, t: x, torch.zeros(2, 3), t=torch.tensor([1]))
    with pytest.raises(ValueError, match="unknown prediction type"):
        DiffusionObjective(DiscreteVP("linear"), L2Loss(), prediction="score")


def test_sharded_randomness_reproduces_the_single_process_batch():
    from robust_gen.diffusion.randomness import BatchGenerator

    schedule = DiscreteVP("linear", 1000)
    objective = DiffusionObjective(schedule, L2Loss())
    x0 = torch.randn(6, 3)
    model = lambda x, t: x * 0.5  # noqa: E731
    whole = objective(model, x0, generator=BatchGenerator(7, step=3))
    parts = [
        objective(model, x0[k * 3 : (k + 1) * 3], generator=BatchGenerator(7, step=3, shard_index=k, num_shards=2))
        for k in range(2)
    ]
    assert torch.equal(torch.cat([p.t for p in parts]), whole.t)
    assert torch.allclose(torch.cat([p.loss for p in parts]), whole.loss)
    assert not torch.equal(objective(model, x0, generator=BatchGenerator(7, step=4)).t, whole.t)
