"""GPU-path training options on CPU: gradient checkpointing, channels-last weights, torch.compile in the trainer.

None of these options may change what is trained: the gradients with and without checkpointing and with and
without channels-last weights agree; a compiled run writes the same checkpoints (plain parameter names) and
resumes like an uncompiled one.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import Dataset

from robust_gen.diffusion.losses import L2Loss
from robust_gen.diffusion.objective import DiffusionObjective
from robust_gen.diffusion.randomness import BatchGenerator
from robust_gen.diffusion.schedules import DiscreteVP
from robust_gen.image.model.conditioners import ClassConditioner
from robust_gen.image.model.denoiser import build_backbone, build_denoiser
from robust_gen.image.task import ImageDiffusionTask
from robust_gen.speech.gradtts.model import GradTTS
from robust_gen.speech.task import GradTTSTask
from robust_gen.training.checkpoint import load_latest_checkpoint
from robust_gen.training.metrics import read_metrics
from robust_gen.training.recipe import CONFIG_ROOT
from robust_gen.training.trainer import LossTerm, Trainer, TrainerConfig

SCHEDULE = DiscreteVP("linear", 1000, 0.0015, 0.0195)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def model_config(recipe: str, name: str, **changes) -> dict:
    """A model config file of the repository as a plain dict, with ``changes`` applied."""
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIG_ROOT / recipe / "model" / f"{name}.yaml"))
    return {**cfg, **changes}


def image_task(model: str, seed: int = 0, **changes) -> ImageDiffusionTask:
    cfg = model_config("image", model, **changes)
    torch.manual_seed(seed)
    denoiser = build_denoiser(cfg, routing="none", control_cfg={}, schedule=SCHEDULE, in_channels=4, sample_size=8,
                              context_dim=cfg["cross_attention_dim"], control_names=[])
    return ImageDiffusionTask(denoiser, ClassConditioner(10, cfg["cross_attention_dim"]),
                              DiffusionObjective(SCHEDULE, L2Loss(), "eps"), scaling_factor=1.0)


def image_batch(size: int = 3, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"latent_mean": torch.randn(size, 4, 8, 8, generator=g), "latent_std": 0.1 * torch.ones(size, 4, 8, 8),
            "label": torch.randint(0, 10, (size,), generator=g)}


def speech_task(seed: int = 0, **changes) -> GradTTSTask:
    cfg = model_config("tts", "gradtts_micro", **changes)
    cfg.pop("_target_")
    torch.manual_seed(seed)
    return GradTTSTask(GradTTS(**cfg, n_speakers=2), L2Loss(), segment_frames=16)


def speech_batch() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"tokens": torch.randint(0, 149, (2, 7), generator=g), "token_lengths": torch.tensor([7, 5]),
            "mels": torch.randn(2, 80, 24, generator=g), "mel_lengths": torch.tensor([24, 18]),
            "speakers": torch.tensor([0, 1])}


def loss_and_grads(task: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    task.train()
    terms = task(batch, BatchGenerator(0, step=3))
    loss = sum(term.values.mean() for term in terms.values())
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in task.named_parameters() if p.grad is not None}


def assert_same_gradients(reference, other, rtol=1e-4, atol=1e-6):
    (loss_a, grads_a), (loss_b, grads_b) = reference, other
    assert torch.allclose(loss_a, loss_b, rtol=rtol, atol=atol)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for name, grad in grads_a.items():
        assert torch.allclose(grad, grads_b[name], rtol=rtol, atol=atol), name


def count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    # A pre-hook: non-reentrant checkpointing stops recomputing once it has what the backward needs, which can
    # be before the module returns, so a forward hook would miss the recomputation.
    module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


# ------------------------------------------------------------------------------------- gradient checkpointing
@pytest.mark.parametrize("model", ["unet_tiny", "dit_tiny"])
def test_image_gradient_checkpointing_keeps_the_gradients(model):
    plain, checkpointed = image_task(model), image_task(model, gradient_checkpointing=True)
    assert not plain.denoiser.backbone.is_gradient_checkpointing
    assert checkpointed.denoiser.backbone.is_gradient_checkpointing
    backbone = checkpointed.denoiser.backbone
    block = backbone.down_blocks[0].resnets[0] if model == "unet_tiny" else backbone.transformer_blocks[0]
    calls = count_calls(block)
    assert_same_gradients(loss_and_grads(plain, image_batch()), loss_and_grads(checkpointed, image_batch()))
    assert calls[0] == 2  # forward, then recomputed in the backward pass: checkpointing did run


def test_speech_gradient_checkpointing_keeps_the_gradients_and_only_acts_in_training():
    plain, checkpointed = speech_task(), speech_task(gradient_checkpointing=True)
    assert checkpointed.model.decoder.gradient_checkpointing and not plain.model.decoder.gradient_checkpointing
    calls = count_calls(checkpointed.model.decoder.downs[0][0])
    assert_same_gradients(loss_and_grads(plain, speech_batch()), loss_and_grads(checkpointed, speech_batch()))
    assert calls[0] == 2
    checkpointed.eval()  # evaluation and sampling: no recomputation, the same output
    x, mu, mask = torch.randn(2, 80, 16), torch.randn(2, 80, 16), torch.ones(2, 1, 16)
    speaker = checkpointed.model.speaker_vectors(torch.tensor([0, 1]), 2)
    with torch.no_grad():
        reference = plain.model.eval().noise_estimate(x, torch.rand(2), mu=mu, mask=mask, speaker=speaker)
    calls[0] = 0
    out = checkpointed.model.noise_estimate(x, torch.full((2,), 0.5), mu=mu, mask=mask, speaker=speaker)
    out.sum().backward()
    assert calls[0] == 1 and reference.shape == out.shape


def test_gradient_checkpointing_is_a_model_key_not_a_constructor_argument():
    cfg = model_config("image", "unet_tiny")
    assert cfg["gradient_checkpointing"] is False  # every model config carries the key (default off)
    for name in ("unet_small", "ldm4", "dit_tiny", "dit_xl2"):
        assert model_config("image", name)["gradient_checkpointing"] is False
    for name in ("gradtts_micro", "gradtts_tiny", "gradtts_paper"):
        assert model_config("tts", name)["gradient_checkpointing"] is False
    misplaced = {**cfg, "backbone": {**cfg["backbone"], "gradient_checkpointing": True}}
    with pytest.raises(ValueError, match=r"model\.gradient_checkpointing instead"):
        build_backbone(misplaced, in_channels=4, sample_size=8, context_dim=64)
    with pytest.raises(ValueError, match="true or false"):
        build_backbone({**cfg, "gradient_checkpointing": "yes"}, in_channels=4, sample_size=8, context_dim=64)


# ----------------------------------------------------------------------------------------- trainer options
class ImageSet(Dataset):
    """Random 8x8x4 latents with class labels, shaped like the image recipe's latent dataset."""

    def __init__(self, size: int = 24) -> None:
        self.items = [{k: v[0] for k, v in image_batch(1, seed=i).items()} for i in range(size)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


class ConvTask(torch.nn.Module):
    """A two-convolution denoiser on the same latents, trained with the diffusion objective (fast to compile)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(5, 16, 3, padding=1), torch.nn.GroupNorm(4, 16),
                                       torch.nn.SiLU(), torch.nn.Conv2d(16, 4, 3, padding=1))
        self.objective = DiffusionObjective(SCHEDULE, L2Loss(), "eps")

    def denoise(self, x, t):
        level = (t.float() / 1000)[:, None, None, None].expand(-1, 1, *x.shape[2:])
        return self.net(torch.cat([x, level], dim=1))

    def forward(self, batch, rng):
        return {"diffusion": LossTerm(self.objective(self.denoise, batch["latent_mean"], generator=rng).loss)}


def train(run_dir, max_steps: int, task=None, **options) -> Trainer:
    cfg = TrainerConfig(max_steps=max_steps, batch_size=4, lr=1e-3, checkpoint_every=2, log_every=1,
                        progress=False, tensorboard=False, **options)
    trainer = Trainer(task if task is not None else image_task("unet_tiny"), ImageSet(), cfg, run_dir)
    trainer.fit()
    return trainer


def conv_weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters() if p.dim() == 4]


def test_channels_last_keeps_the_loss_and_gradients_and_stores_nhwc_weights(tmp_path):
    reference = loss_and_grads(image_task("unet_tiny"), image_batch())
    nhwc = image_task("unet_tiny").to(memory_format=torch.channels_last)  # what trainer.channels_last does
    assert_same_gradients(reference, loss_and_grads(nhwc, image_batch()))

    trainer = train(tmp_path / "nhwc", 2, channels_last=True)
    trained, initial = trainer.accelerator.unwrap_model(trainer.model), image_task("unet_tiny").state_dict()
    conv = "denoiser.backbone.conv_in.weight"
    assert not torch.allclose(trained.state_dict()[conv], initial[conv])  # the optimizer stepped these tensors
    for module in (trained, trainer.ema.module):
        weights = conv_weights(module)
        assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
        assert not all(w.is_contiguous() for w in weights)
    plain = train(tmp_path / "plain", 2)
    assert all(w.is_contiguous() for w in conv_weights(plain.accelerator.unwrap_model(plain.model)))
    first = [read_metrics(run / "metrics.jsonl")[0]["loss"] for run in (tmp_path / "nhwc", tmp_path / "plain")]
    assert first[0] == pytest.approx(first[1], rel=1e-5)
    saved = load_latest_checkpoint(tmp_path / "nhwc" / "checkpoints").tensors["model"]
    assert saved.keys() == plain.accelerator.unwrap_model(plain.model).state_dict().keys()


_GRAPHS: list = []
_BACKEND = "robust_gen_counting_aot_eager"


@pytest.fixture
def counting_backend():
    """A registered torch.compile backend that records every graph it is given, then compiles it with aot_eager
    (AOTAutograd's joint forward/backward graph, as inductor uses, run with eager kernels: fast on a CPU)."""
    from torch._dynamo import list_backends, register_backend
    from torch._dynamo.backends.registry import lookup_backend

    if _BACKEND not in list_backends(exclude_tags=()):

        @register_backend(name=_BACKEND)
        def counting(gm, example_inputs):
            _GRAPHS.append(gm)
            return lookup_backend("aot_eager")(gm, example_inputs)

    _GRAPHS.clear()
    return _BACKEND, _GRAPHS


def test_compiled_training_saves_plain_names_and_resumes_like_an_uncompiled_run(tmp_path, counting_backend):
    backend, graphs = counting_backend
    straight = train(tmp_path / "straight", 4, ConvTask())
    train(tmp_path / "compiled", 3, ConvTask(), compile=True, compile_backend=backend)
    assert graphs, "torch.compile captured no graph: the task was not compiled"
    resumed = train(tmp_path / "compiled", 4, ConvTask(), compile=True, compile_backend=backend)
    assert resumed.step == 4
    checkpoint = load_latest_checkpoint(tmp_path / "compiled" / "checkpoints")
    expected = straight.accelerator.unwrap_model(straight.model).state_dict()
    assert checkpoint.tensors["model"].keys() == expected.keys()
    assert not any("_orig_mod" in k for part in ("model", "ema") for k in checkpoint.tensors[part])
    reference = load_latest_checkpoint(tmp_path / "straight" / "checkpoints")
    for part in ("model", "ema"):
        for key, value in reference.tensors[part].items():
            assert torch.allclose(value, checkpoint.tensors[part][key], rtol=1e-5, atol=1e-7), (part, key)


def test_bad_gpu_settings_are_named():
    with pytest.raises(ValueError, match="compile_mode must be null or one of"):
        TrainerConfig(compile_mode="fastest")
    with pytest.raises(ValueError, match=r"not a torch\.compile backend"):
        TrainerConfig(compile=True, compile_backend="no_such_backend")
    with pytest.raises(ValueError, match="inductor setting"):
        TrainerConfig(compile=True, compile_backend="eager", compile_mode="max-autotune")
    with pytest.raises(ValueError, match="compile_backend must name"):
        TrainerConfig(compile_backend="")
    assert TrainerConfig(compile_mode="reduce-overhead").compile is False  # valid, and compile stays off
