"""Tests of robust_gen.conditioning: CEP statistics and modes, condition dropout, control embedding and gate."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robust_gen.conditioning import (
    CEPWrapper,
    ConditionalEmbeddingPerturbation,
    ConditionDropout,
    ControlEmbedding,
    NoiseLevelGate,
    draw_dropout_masks,
    perturb,
    replace_dropped,
)

CONTROL_NAMES = ["crop_top", "crop_left", "orig_height", "orig_width", "flip"]


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------------- CEP


@pytest.mark.parametrize("shape", [(4096, 64), (64, 77, 48)])
@pytest.mark.parametrize("gamma", [1.0, 2.5])
def test_cep_gaussian_std_is_gamma_over_sqrt_d(shape, gamma):
    embedding = torch.randn(shape, generator=_generator(1))
    delta = perturb(embedding, gamma=gamma, kind="gaussian", generator=_generator(2)) - embedding
    scale = gamma / math.sqrt(shape[-1])
    # relative standard error of a std estimate from n >= 196k values is ~0.0016
    assert delta.std().item() == pytest.approx(scale, rel=0.01)
    assert abs(delta.mean().item()) < 0.01 * scale


@pytest.mark.parametrize("shape", [(4096, 64), (64, 77, 48)])
def test_cep_uniform_half_width_is_gamma_over_sqrt_d(shape):
    gamma = 1.5
    embedding = torch.zeros(shape)
    delta = perturb(embedding, gamma=gamma, kind="uniform", generator=_generator(3))
    scale = gamma / math.sqrt(shape[-1])
    assert delta.abs().max().item() <= scale * (1 + 1e-6)
    assert delta.abs().max().item() > 0.999 * scale
    assert delta.std().item() == pytest.approx(scale / math.sqrt(3.0), rel=0.01)


def test_perturb_keeps_shape_dtype_gradients_and_draws_fresh_noise():
    embedding = torch.randn(8, 16, requires_grad=True)
    first = perturb(embedding, gamma=1.0, kind="gaussian")
    second = perturb(embedding, gamma=1.0, kind="gaussian")
    assert not torch.equal(first, second)
    first.sum().backward()
    assert torch.equal(embedding.grad, torch.ones(8, 16))
    assert perturb(torch.zeros(2, 4, dtype=torch.float16)).dtype == torch.float16
    assert torch.equal(perturb(embedding, gamma=0.0), embedding)
    seeded = [perturb(torch.zeros(3, 5), generator=_generator(9)) for _ in range(2)]
    assert torch.equal(*seeded)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "laplace"}, "kind must be one of"),
        ({"gamma": -1.0}, "gamma must be"),
        ({"gamma": float("nan")}, "gamma must be"),
    ],
)
def test_perturb_rejects_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        perturb(torch.zeros(2, 3), **kwargs)
    with pytest.raises(ValueError, match=message):
        ConditionalEmbeddingPerturbation(**kwargs)


def test_perturb_rejects_integer_embeddings():
    with pytest.raises(ValueError, match="floating-point"):
        perturb(torch.zeros(2, 3, dtype=torch.long))


def test_cep_module_is_active_in_training_only():
    cep = ConditionalEmbeddingPerturbation(gamma=1.0, kind="uniform")
    embedding = torch.randn(16, 32)
    assert cep.training and not torch.equal(cep(embedding), embedding)
    cep.eval()
    assert cep(embedding) is embedding


@pytest.mark.parametrize("shape", [(6, 32), (6, 10, 32)])
def test_cep_leaves_null_rows_untouched_by_default(shape):
    embedding = torch.randn(shape)
    null = torch.tensor([False, True, False, False, True, False])
    out = ConditionalEmbeddingPerturbation(gamma=1.0, kind="gaussian")(embedding, null_mask=null)
    assert torch.equal(out[null], embedding[null])
    assert (out[~null] != embedding[~null]).all()
    everywhere = ConditionalEmbeddingPerturbation(gamma=1.0, kind="gaussian", perturb_null=True)
    assert (everywhere(embedding, null_mask=null) != embedding).all()
    with pytest.raises(ValueError, match="null_mask must be a bool tensor of shape"):
        ConditionalEmbeddingPerturbation()(embedding, null_mask=null[:3])


class _HiddenStatesEncoder(nn.Module):
    """Returns a dict, like a transformers model output."""

    def forward(self, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"last_hidden_state": torch.zeros(labels.shape[0], 3, 8)}


def test_cep_wrapper_perturbs_the_encoder_output_in_training_only():
    torch.manual_seed(0)
    encoder = nn.Embedding(11, 24)
    wrapped = CEPWrapper(encoder, gamma=1.0, kind="gaussian")
    labels = torch.tensor([0, 4, 10, 7])
    clean = encoder(labels)
    noisy = wrapped(labels, null_mask=labels == 10)
    assert torch.equal(noisy[2], clean[2]) and not torch.equal(noisy[0], clean[0])
    noisy.sum().backward()
    assert encoder.weight.grad is not None
    wrapped.eval()
    assert torch.equal(wrapped(labels), clean)
    with pytest.raises(ValueError, match="returns a tensor"):
        CEPWrapper(_HiddenStatesEncoder())(labels)


# ---------------------------------------------------------------------------------------- condition dropout


def test_dropout_rates_and_independence():
    masks = draw_dropout_masks(200_000, 0.3, 0.6, generator=_generator(0))
    semantic_dropped, control_dropped = ~masks.keep_semantic, ~masks.keep_control
    # standard errors are ~0.001
    assert semantic_dropped.float().mean().item() == pytest.approx(0.3, abs=0.006)
    assert control_dropped.float().mean().item() == pytest.approx(0.6, abs=0.006)
    both = (semantic_dropped & control_dropped).float().mean().item()
    assert both == pytest.approx(0.3 * 0.6, abs=0.006)
    correlation = torch.corrcoef(torch.stack([semantic_dropped.float(), control_dropped.float()]))[0, 1]
    assert abs(correlation.item()) < 0.01


def test_dropout_extremes_seeding_and_eval_mode():
    masks = draw_dropout_masks(50, 0.0, 1.0)
    assert masks.keep_semantic.all() and not masks.keep_control.any()
    assert masks.keep_semantic.dtype == torch.bool and masks.keep_semantic.shape == (50,)
    dropout = ConditionDropout(p_semantic=0.5, p_control=0.5)
    first, second = dropout(64, generator=_generator(5)), dropout(64, generator=_generator(5))
    assert torch.equal(first.keep_semantic, second.keep_semantic)
    assert not torch.equal(first.keep_semantic, first.keep_control)
    dropout.eval()
    assert dropout(64).keep_semantic.all() and dropout(64).keep_control.all()
    with pytest.raises(ValueError, match="p_control must be a probability"):
        ConditionDropout(p_control=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        draw_dropout_masks(-1, 0.1, 0.1)


def test_replace_dropped_uses_the_null_embedding_for_dropped_rows():
    embedding = torch.randn(4, 3, 8)
    null = torch.full((3, 8), 7.0)
    keep = torch.tensor([True, False, True, False])
    out = replace_dropped(embedding, keep, null)
    assert torch.equal(out[keep], embedding[keep]) and (out[~keep] == 7.0).all()
    with pytest.raises(ValueError, match="keep must be a bool tensor"):
        replace_dropped(embedding, keep.float(), null)


# ------------------------------------------------------------------------------------- noise-level gate


@pytest.mark.parametrize("kind", ["cosine", "linear"])
@pytest.mark.parametrize("power", [0.5, 1.0, 3.0])
def test_gate_is_monotone_from_one_at_clean_data_to_zero_at_pure_noise(kind, power):
    gate = NoiseLevelGate(kind=kind, power=power)
    u = torch.linspace(0.0, 1.0, 1001)
    values = gate(u)
    assert values[0].item() == 1.0 and values[-1].item() == 0.0
    assert (values[1:] <= values[:-1]).all()
    assert ((values >= 0) & (values <= 1)).all()


def test_gate_shapes_start_end_and_none():
    u = torch.tensor([0.0, 0.2, 0.3, 0.5, 0.7, 0.8, 1.0])
    cosine = NoiseLevelGate("cosine", start=0.3, end=0.7)(u)
    assert cosine.tolist()[:3] == [1.0, 1.0, 1.0] and cosine.tolist()[-3:] == [0.0, 0.0, 0.0]
    assert cosine[3].item() == pytest.approx(0.5)
    assert NoiseLevelGate("linear")(u).tolist() == pytest.approx([1.0, 0.8, 0.7, 0.5, 0.3, 0.2, 0.0])
    assert NoiseLevelGate("cosine")(torch.tensor([0.25])).item() == pytest.approx(
        0.5 * (1 + math.cos(math.pi / 4))
    )
    assert NoiseLevelGate("none")(u).tolist() == [1.0] * 7
    with pytest.raises(ValueError, match=r"u must lie in \[0, 1\]"):
        NoiseLevelGate()(torch.tensor([0.5, 1.2]))
    with pytest.raises(ValueError, match="start < end"):
        NoiseLevelGate(start=0.6, end=0.4)
    with pytest.raises(ValueError, match="gate kind"):
        NoiseLevelGate(kind="sigmoid")


# ------------------------------------------------------------------------------------- control embedding


def _controls(batch: int = 4) -> dict[str, torch.Tensor]:
    generator = _generator(0)
    return {
        "crop_top": torch.randint(0, 64, (batch,), generator=generator).float(),
        "crop_left": torch.randint(0, 64, (batch,), generator=generator).float(),
        "orig_height": torch.randint(128, 1024, (batch,), generator=generator).float(),
        "orig_width": torch.randint(128, 1024, (batch,), generator=generator).float(),
        "flip": torch.randint(0, 2, (batch,), generator=generator).float(),
    }


def test_control_embedding_is_scaled_by_the_gate():
    torch.manual_seed(0)
    embed = ControlEmbedding(CONTROL_NAMES, dim=32, num_frequencies=8)
    controls = _controls()
    full = embed(controls, u=torch.zeros(4))
    assert full.shape == (4, 32) and full.abs().sum() > 0
    u = torch.tensor([0.0, 0.3, 0.8, 1.0])
    gated = embed(controls, u=u)
    torch.testing.assert_close(gated, full * embed.gate(u)[:, None])
    assert gated[3].abs().max().item() == 0.0


def test_control_embedding_zero_and_dropped_controls_give_zero_vectors():
    embed = ControlEmbedding(CONTROL_NAMES, dim=16)
    controls, u = _controls(), torch.zeros(4)
    keep = torch.tensor([True, False, True, False])
    out = embed(controls, u, keep=keep)
    assert (out[~keep] == 0).all() and (out[keep] != 0).any()
    assert (embed(controls, u, zero=True) == 0).all()


def test_control_embedding_embeds_each_value_and_accepts_tensors():
    torch.manual_seed(0)
    embed = ControlEmbedding(CONTROL_NAMES, dim=16, gate=NoiseLevelGate("none"))
    controls = _controls(2)
    stacked = torch.stack([controls[name] for name in CONTROL_NAMES], dim=1)
    torch.testing.assert_close(embed(controls, torch.full((2,), 0.5)), embed(stacked, torch.full((2,), 0.5)))
    base = embed(controls, torch.zeros(2))
    for name in CONTROL_NAMES:
        changed = dict(controls, **{name: controls[name] + 1.0})
        assert not torch.allclose(embed(changed, torch.zeros(2)), base), name
    embed(controls, torch.zeros(2)).sum().backward()
    assert all(p.grad is not None for p in embed.parameters())


def test_control_embedding_rejects_bad_input():
    embed = ControlEmbedding(CONTROL_NAMES, dim=8)
    controls = _controls()
    with pytest.raises(ValueError, match="missing \\['flip'\\]"):
        embed({k: v for k, v in controls.items() if k != "flip"}, torch.zeros(4))
    with pytest.raises(ValueError, match="unknown \\['aspect'\\]"):
        embed({**controls, "aspect": torch.ones(4)}, torch.zeros(4))
    with pytest.raises(ValueError, match="u must have shape \\[4\\]"):
        embed(controls, torch.zeros(3))
    with pytest.raises(ValueError, match="shape \\[B, 5\\]"):
        embed(torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="distinct control names"):
        ControlEmbedding(["flip", "flip"], dim=8)
