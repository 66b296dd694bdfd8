"""Interop, offline end to end: fine-tune a tiny pretrained StableDiffusionPipeline-layout folder (full and LoRA,
scheduled pseudo-Huber), resume, export the run to diffusers and sample from it with diffusers' own classes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from robust_gen.training.recipe import compose_config, register_resolvers

ROOT = Path(__file__).resolve().parents[1]
register_resolvers()
LORA_TARGETS = "model.lora.target_modules=[to_q,to_k,to_v,to_out.0]"


def _recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"interop_{name}", ROOT / "recipes" / "image" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TRAIN = _recipe("train")
SMALL = [
    "data.limit=12", "data.resolution=16", "trainer.batch_size=4", "trainer.progress=false",
    "trainer.tensorboard=false", "trainer.log_every=1", "trainer.warmup_steps=0", "samples.num=2",
    "sampler.num_steps=2", "loss=pseudo_huber", "loss.schedule=snr",
]


@pytest.fixture(scope="module")
def pipeline_dir(tiny_pipeline_dir) -> Path:
    return tiny_pipeline_dir  # conftest.py: tests/helpers/tiny_pipeline.py, saved once per session


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _train(run_dir: Path, pipeline: Path, *overrides: str) -> dict:
    cfg = compose_config("image", "train", [*SMALL, "model=pretrained", f"model.path={pipeline}", *overrides])
    return TRAIN.train(cfg, run_dir)


def _generate(pipe, prompt: str = "a handwritten seven"):
    generator = torch.Generator().manual_seed(0)
    return pipe(prompt, num_inference_steps=2, guidance_scale=3.0, height=16, width=16, generator=generator,
                output_type="np").images


def test_lora_fine_tune_resume_export_reload(pipeline_dir, tmp_path):
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    from robust_gen.image.export import export_run

    run = tmp_path / "lora"
    _train(run, pipeline_dir, "trainer.max_steps=2", "trainer.checkpoint_every=2", LORA_TARGETS)
    _train(run, pipeline_dir, "trainer.max_steps=3", "trainer.checkpoint_every=1", LORA_TARGETS)  # resumes
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000003"
    stored = load_file(str(run / "checkpoints" / "step_00000003" / "model.safetensors"))
    assert stored and all("lora_" in k for k in stored if k != "scaling_factor")  # adapters only, no base weights
    out = export_run(run, tmp_path / "export")
    pipe = DiffusionPipeline.from_pretrained(out)
    assert type(pipe) is StableDiffusionPipeline
    images = _generate(pipe)
    assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all()
    # the LoRA file on top of the original pipeline gives the fused export's U-Net
    base = StableDiffusionPipeline.from_pretrained(pipeline_dir)
    base.load_lora_weights(out / "lora")
    x, t, context = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 5, 32)
    with torch.no_grad():
        fused, adapted = pipe.unet(x, t, context).sample, base.unet(x, t, context).sample
        original = StableDiffusionPipeline.from_pretrained(pipeline_dir).unet(x, t, context).sample
    assert torch.allclose(fused, adapted, atol=1e-5)
    assert not torch.allclose(fused, original, atol=1e-6)  # the fine-tuning changed something


@pytest.fixture(scope="module")
def v_pipeline_dir(tmp_path_factory, tiny_pipeline_builder) -> Path:
    return tiny_pipeline_builder(tmp_path_factory.mktemp("sdv") / "tiny_sd_v", prediction_type="v_prediction")


def test_full_fine_tune_reads_v_prediction_resumes_exactly_and_exports(v_pipeline_dir, tmp_path):
    from diffusers import StableDiffusionPipeline
    from omegaconf import OmegaConf

    full = ["model.lora.rank=0", "trainer.checkpoint_every=1", "cep=uniform"]
    _train(tmp_path / "a", v_pipeline_dir, *full, "trainer.max_steps=2")
    _train(tmp_path / "a", v_pipeline_dir, *full, "trainer.max_steps=3")
    _train(tmp_path / "b", v_pipeline_dir, *full, "trainer.max_steps=3")
    cfg = OmegaConf.load(tmp_path / "a" / "config.yaml")
    assert cfg.prediction == "v" and cfg.schedule.kind == "scaled_linear" and cfg.schedule.beta_end == 0.012
    for name in ("model", "ema"):
        resumed = load_file(str(tmp_path / "a" / "checkpoints" / "step_00000003" / f"{name}.safetensors"))
        straight = load_file(str(tmp_path / "b" / "checkpoints" / "step_00000003" / f"{name}.safetensors"))
        assert resumed.keys() == straight.keys() and any("conv_in" in k for k in resumed)  # full weights
        assert all(torch.equal(resumed[k], straight[k]) for k in resumed), name
    from robust_gen.image.export import export_run

    out = export_run(tmp_path / "a", tmp_path / "export", weights="model")
    pipe = StableDiffusionPipeline.from_pretrained(out)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert _generate(pipe).shape == (1, 16, 16, 3)
    with pytest.raises(FileExistsError, match="not empty"):
        export_run(tmp_path / "a", out)


@pytest.mark.parametrize("override, message", [
    ("prediction=x0", r"prediction=x0 was set explicitly .* predicts v"),
    ("schedule.kind=cosine", r"schedule=.* was set explicitly .*scaled_linear"),
    ("control=disentangled", r"control.mode must be 'none'"),
])
def test_pipeline_settings_that_contradict_it_are_errors(v_pipeline_dir, tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        _train(tmp_path / "bad", v_pipeline_dir, "trainer.max_steps=1", override)


@pytest.mark.parametrize("model", ["unet_tiny", "dit_tiny"])
def test_class_conditional_run_exports_as_a_pipeline_diffusers_loads(tmp_path, model):
    from diffusers import DiffusionPipeline

    from robust_gen.image.build import load_run
    from robust_gen.image.export import export_run
    from robust_gen.image.pipeline import ClassConditionalPipeline

    overrides = ["data.limit=12", "data.resolution=8", "trainer.batch_size=4", "trainer.progress=false",
                 "trainer.tensorboard=false", "trainer.warmup_steps=0", "samples.num_per_class=1",
                 "sampler.num_steps=2", "trainer.max_steps=2", "autoencoder=none", f"model={model}", "prediction=v"]
    if model == "unet_tiny":
        overrides += ["model.backbone.block_out_channels=[16,32]", "model.backbone.attention_head_dim=2"]
    TRAIN.train(compose_config("image", "train", overrides), tmp_path / "run")
    if model == "unet_tiny":  # the command line
        spec = importlib.util.spec_from_file_location("export_tool", ROOT / "tools" / "export.py")
        tool = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tool)
        tool.main([str(tmp_path / "run"), str(tmp_path / "export"), "--checkpoint", "2"])
        out = tmp_path / "export"
        assert json.loads((out / "robust_gen_export.json").read_text())["step"] == 2
    else:
        out = export_run(tmp_path / "run", tmp_path / "export")
    pipe = DiffusionPipeline.from_pretrained(out)
    assert type(pipe) is ClassConditionalPipeline and pipe.vae is None
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    # the exported networks compute what the run's do
    task = load_run(tmp_path / "run")[0]
    x, t, labels = torch.randn(2, 1, 8, 8), torch.tensor([3, 700]), torch.tensor([1, 10])
    with torch.no_grad():
        expected = task.denoiser(x, t, context=task.conditioner(labels=labels).tokens)
        got = pipe._predict(x, t, pipe.class_embedding(labels))
    assert torch.allclose(expected, got, atol=1e-6)
    images = pipe([0, 9], num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (2, 8, 8, 1) and ((images >= 0) & (images <= 1)).all()


def test_concept_folder_with_outliers_on_a_pipeline(pipeline_dir, tmp_path):
    from PIL import Image

    root = tmp_path / "concepts"
    for name, colour in (("sks_dog", "red"), ("cat", "blue"), ("car", "green")):
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (20, 18), colour).save(root / name / f"{i}.png")
    run = tmp_path / "concept"
    _train(run, pipeline_dir, "data=concept", f"data.root={root}", "data.concept=sks_dog", "data.resolution=16",
           "data.prompt=a photo of sks dog", "corruption=outliers", "corruption.ratio=0.5", "trainer.max_steps=1",
           LORA_TARGETS)
    manifest = json.loads((run / "corruption_manifest.json").read_text())
    meta = json.loads((run / "image_meta.json").read_text())
    assert len(manifest["changes"]) == 2 and meta["sample_classes"] == [2]  # folders sorted: car, cat, sks_dog
    assert all(c["after"]["source"] < 8 for c in manifest["changes"])  # a car or cat image under the concept
    assert {c["after"]["caption"] for c in manifest["changes"]} == {"a photo of sks dog"}  # outliers get the prompt


def test_class_conditional_lora_fine_tune_of_a_pipeline_exports_fused(pipeline_dir, tmp_path):
    from diffusers import DiffusionPipeline

    from robust_gen.image.export import export_run

    _train(tmp_path / "run", pipeline_dir, "condition=class", "trainer.max_steps=1", "samples.num_per_class=1",
           LORA_TARGETS)
    pipe = DiffusionPipeline.from_pretrained(export_run(tmp_path / "run", tmp_path / "export"))
    assert not any("lora" in k for k in pipe.denoiser.state_dict())  # fused into plain weights
    images = pipe([3], num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (1, 16, 16, 1)
