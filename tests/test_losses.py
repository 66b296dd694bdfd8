"""Losses: formulas against hand-derived values, limits, gradient bounds, masks, shapes."""

import math

import pytest
import torch

from robust_gen.diffusion.losses import L1Loss, L2Loss, PseudoHuberLoss, l1, l2, masked_mean, pseudo_huber
from robust_gen.diffusion.schedules import ContinuousVP, DiscreteVP


def _pair(a_values):
    a = torch.tensor(a_values, dtype=torch.float64)
    return a, torch.zeros_like(a)


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        # a = 3, c = 4: sqrt(9 + 16) - 4 = 1
        ("huber", 2 * 4 * 1.0),
        ("smooth_l1", 2 * 1.0),
        ("textbook", 4 * 1.0),
    ],
)
def test_forms_match_hand_values(form, expected):
    pred, target = _pair([[3.0]])
    assert pseudo_huber(pred, target, 4.0, form=form).item() == pytest.approx(expected)


def test_vector_form_uses_rms_residual():
    # residuals (3, 4, 0, 0): mean square = 25 / 4, r = 2.5; with c = 6: 2 * 6 * (sqrt(6.25 + 36) - 6)
    pred, target = _pair([[3.0, 4.0, 0.0, 0.0]])
    expected = 12 * (math.sqrt(42.25) - 6)
    assert pseudo_huber(pred, target, 6.0, form="vector").item() == pytest.approx(expected)


def test_huber_large_c_is_mse():
    pred, target = torch.randn(4, 3, 5, 5, dtype=torch.float64), torch.randn(4, 3, 5, 5, dtype=torch.float64)
    assert torch.allclose(pseudo_huber(pred, target, 1e4, form="huber"), l2(pred, target), rtol=1e-6)
    assert torch.allclose(pseudo_huber(pred, target, 1e4, form="vector"), l2(pred, target), rtol=1e-6)
    assert torch.allclose(pseudo_huber(pred, target, 1e4, form="textbook"), l2(pred, target) / 2, rtol=1e-6)


def test_small_c_behaves_like_l1():
    pred, target = torch.randn(3, 50, dtype=torch.float64), torch.randn(3, 50, dtype=torch.float64)
    c = 1e-6
    # huber ~ 2c|a| and smooth_l1 ~ 2|a| once |a| >> c
    assert torch.allclose(pseudo_huber(pred, target, c, form="huber") / (2 * c), l1(pred, target), rtol=1e-4)
    assert torch.allclose(pseudo_huber(pred, target, c, form="smooth_l1") / 2, l1(pred, target), rtol=1e-4)


@pytest.mark.parametrize("form", ["huber", "vector"])
def test_gradient_bounded_by_two_c(form):
    pred = (torch.randn(8, 16, dtype=torch.float64) * 100).requires_grad_()
    c = torch.rand(8, dtype=torch.float64) + 0.05
    # Sum over samples of the per-sample loss times n (undo the mean) gives d/da of each element's term.
    n = pred.shape[1]
    (pseudo_huber(pred, torch.zeros_like(pred), c, form=form).sum() * n).backward()
    bound = 2 * c[:, None] * (1 if form == "huber" else math.sqrt(n))
    assert bool((pred.grad.abs() <= bound + 1e-9).all())
    assert bool((pred.grad.abs() > 0.5 * bound / math.sqrt(n)).any())


def test_small_residual_is_numerically_stable():
    # The direct form sqrt(a^2 + c^2) - c rounds to zero for |a| << c in float32; the loss must not.
    pred = torch.full((1, 4), 1e-4, requires_grad=True)
    loss = pseudo_huber(pred, torch.zeros_like(pred), 1.0, form="huber")
    assert loss.item() == pytest.approx(1e-8, rel=1e-3)
    loss.backward()
    assert pred.grad.abs().min().item() > 0


def test_per_sample_c_is_used_per_sample():
    pred, target = torch.full((2, 3), 3.0), torch.zeros(2, 3)
    per = pseudo_huber(pred, target, torch.tensor([4.0, 1e4]), form="huber")
    assert per[0].item() == pytest.approx(8.0)
    assert per[1].item() == pytest.approx(9.0, rel=1e-4)


def test_mask_excludes_elements():
    pred = torch.tensor([[1.0, 1.0, 100.0], [2.0, 2.0, 2.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert l2(pred, torch.zeros_like(pred), mask=mask).tolist() == [1.0, 4.0]
    assert l1(pred, torch.zeros_like(pred), mask=mask).tolist() == [1.0, 2.0]
    ph = pseudo_huber(pred, torch.zeros_like(pred), 1e4, form="huber", mask=mask)
    assert torch.allclose(ph, torch.tensor([1.0, 4.0]), rtol=1e-4)


def test_mask_broadcasts_over_channels():
    values = torch.arange(24.0).reshape(2, 3, 4)
    mask = torch.tensor([[[1, 1, 0, 0]], [[1, 1, 1, 1]]])
    expected = torch.stack([values[0, :, :2].mean(), values[1].mean()])
    assert torch.allclose(masked_mean(values, mask), expected)


def test_empty_mask_gives_zero_not_nan():
    out = l2(torch.ones(1, 3), torch.zeros(1, 3), mask=torch.zeros(1, 3))
    assert out.tolist() == [0.0]


@pytest.mark.parametrize("shape", [(1, 2), (5, 3, 8, 8), (2, 80, 17)])
def test_every_loss_returns_one_value_per_sample(shape):
    pred, target = torch.randn(shape), torch.randn(shape)
    t = torch.randint(0, 1000, (shape[0],))
    for loss in [L2Loss(), L1Loss()] + [PseudoHuberLoss(form=f) for f in ("huber", "smooth_l1", "textbook", "vector")]:
        assert loss(pred, target, t=t, schedule=DiscreteVP("linear")).shape == (shape[0],)


def test_scheduled_loss_matches_explicit_delta():
    schedule = ContinuousVP()
    t = torch.tensor([0.05, 0.5, 0.95])
    pred, target = torch.randn(3, 80, 10), torch.randn(3, 80, 10)
    loss = PseudoHuberLoss(form="huber", schedule="exponential", c_min=0.2, c_max=2.0)
    c = 2.0 * (0.2 / 2.0) ** t
    assert torch.allclose(loss(pred, target, t=t, schedule=schedule), pseudo_huber(pred, target, c, form="huber"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"form": "cauchy"}, "unknown pseudo-Huber form"),
        ({"schedule": "cosine"}, "unknown pseudo-Huber delta schedule"),
        ({"c_min": 0.0}, "0 < c_min <= c_max"),
        ({"c_min": 2.0, "c_max": 1.0}, "0 < c_min <= c_max"),
        ({"axis": "sigma"}, "unknown delta-schedule axis"),
    ],
)
def test_bad_loss_arguments_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PseudoHuberLoss(**kwargs)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="shapes differ"):
        l2(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="c must be a float or a tensor of shape"):
        pseudo_huber(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3))
    with pytest.raises(ValueError, match="must be > 0"):
        pseudo_huber(torch.zeros(2, 3), torch.zeros(2, 3), -1.0)
