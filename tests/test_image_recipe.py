"""Smoke runs of recipes/image/train.py and sample.py (tiny data, 2-5 steps, CPU), exact resume, the command line."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image
from safetensors.torch import load_file

from robust_gen.training.metrics import read_metrics
from robust_gen.training.recipe import compose_config, register_resolvers

ROOT = Path(__file__).resolve().parents[1]
register_resolvers()


def _recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"image_{name}_recipe", ROOT / "recipes" / "image" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TRAIN, SAMPLE = _recipe("train"), _recipe("sample")
SMALL = [
    "data.limit=24", "data.resolution=16", "trainer.max_steps=2", "trainer.batch_size=4", "trainer.progress=false",
    "trainer.tensorboard=false", "trainer.log_every=1", "trainer.warmup_steps=0", "samples.num_per_class=1",
    "sampler.num_steps=2",
]
SMALL_AUTOENCODER = ["autoencoder.train.steps=2", "autoencoder.train.batch_size=4"]


def _compose(name: str, overrides: list[str]):
    return compose_config("image", name, overrides)


SMALL_UNET = ["model.backbone.block_out_channels=[16,32]", "model.backbone.attention_head_dim=2"]


def _train(run_dir: Path, *overrides: str) -> dict:
    trained_autoencoder = not any(o.startswith("autoencoder=") for o in overrides)
    unet = not any(o.startswith("model=") for o in overrides)
    extra = [*(SMALL_AUTOENCODER if trained_autoencoder else []), *(SMALL_UNET if unet else [])]
    cfg = _compose("train", [*SMALL, *extra, *overrides])
    return TRAIN.train(cfg, run_dir)


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()  # the recipe sets cpu_threads; keep other test modules' setting
    yield
    torch.set_num_threads(threads)


def _check_run(run_dir: Path, steps: int = 2) -> None:
    for name in ("config.yaml", "image_meta.json", "corruption_manifest.json", "metrics.jsonl", "summary.json"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{steps:08d}"
    samples = run_dir / "samples" / f"step_{steps:07d}"
    data = np.load(samples / "images.npz", allow_pickle=False)
    assert data["images"].dtype == np.uint8 and data["images"].ndim == 4 and len(data["labels"]) == len(data["images"])
    assert Image.open(samples / "grid.png").size[0] > 0
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, steps + 1))
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)


@pytest.fixture(scope="module")
def class_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("class") / "run"
    _train(run_dir, "cep=gaussian", "corruption=label_flip", "corruption.ratio=0.1")
    return run_dir


def test_class_conditional_smoke_with_cep_and_label_flips(class_run):
    _check_run(class_run)
    manifest = json.loads((class_run / "corruption_manifest.json").read_text())
    assert manifest["kind"] == "label_flip" and len(manifest["changes"]) == 2
    assert "num_classes: 10" in (class_run / "config.yaml").read_text()  # filled from the data
    assert (class_run / "autoencoder" / "config.json").is_file()
    assert json.loads((class_run / "autoencoder" / "config.json").read_text())["scaling_factor"] > 0
    images = np.load(class_run / "samples" / "step_0000002" / "images.npz", allow_pickle=False)
    assert images["images"].shape == (10, 16, 16, 1) and images["labels"].tolist() == list(range(10))


def test_sample_script_writes_one_npz_per_guidance_scale(class_run, capfd):
    cfg = _compose("sample", [f"run_dir={class_run}", "num_images=12", "batch_size=5", "sampler.num_steps=2",
                              "guidance_scales=[1.0,2.5]"])
    folders = SAMPLE.sample(cfg)
    assert "sampling g=2.5" in capfd.readouterr().err  # a progress bar per guidance scale (progress=true)
    # labelled grid: a header band (title, one label per class column) above 2 rows of 10 tiles of 16 px, x4
    width, height = Image.open(Path(folders[1]) / "grid.png").size
    assert width == (10 * 18 + 2) * 4 and height > (2 * 18 + 2) * 4
    SAMPLE.sample(_compose("sample", [f"run_dir={class_run}", "num_images=2", "sampler.num_steps=2",
                                      "guidance_scales=[1.0]", "progress=false"]))
    assert "sampling" not in capfd.readouterr().err
    assert [Path(f).name for f in folders] == ["dpm_solver2_g1", "dpm_solver2_g2.5"]
    data = np.load(Path(folders[1]) / "images.npz", allow_pickle=False)
    assert data["images"].shape == (12, 16, 16, 1) and data["labels"].dtype == np.int64
    assert np.bincount(data["labels"], minlength=10).tolist() == [2, 2] + [1] * 8
    assert data["captions"].dtype.kind == "U" and "seven" in data["captions"][7]  # a string array: no pickle
    assert json.loads((Path(folders[0]) / "info.json").read_text())["guidance_scale"] == 1.0


def test_text_caption_swap_pseudo_huber_the_issue_command(tmp_path):
    run_dir = tmp_path / "text"
    _train(run_dir, "condition=text", "corruption=caption_swap", "corruption.ratio=0.05", "loss=pseudo_huber",
           "loss.schedule=snr", "data.limit=80", "cep=uniform")  # CEP on the text encoder's hidden states
    _check_run(run_dir)
    manifest = json.loads((run_dir / "corruption_manifest.json").read_text())
    changes = manifest["changes"]
    assert len(changes) == 4 and all(c["before"] != c["after"] for c in changes)  # floor(0.05 * 80 / 2) pairs
    # the effective corruption beside the nominal one: swaps that name another digit
    assert manifest["params"]["effective_changes"] == sum(not c["same_concept"] for c in changes)
    captions = np.load(run_dir / "samples" / "step_0000002" / "images.npz", allow_pickle=False)["captions"]
    assert len(set(captions)) == 10 and "handwritten" in " ".join(captions)


@pytest.mark.parametrize(
    "overrides",
    [
        ["autoencoder=none", "cep=uniform"],
        ["control=disentangled", "data.crop_margin=8", "data.flip=true"],
        ["control=entangled", "data.crop_margin=8", "data.flip=true", "condition=text"],
        ["model=dit_tiny", "control=disentangled", "data.crop_margin=4", "prediction=v", "autoencoder.model.block_out_channels=[8,8]"],
        ["corruption=outliers", "corruption.ratio=0.5", "corruption.on_the_fly=true", "autoencoder.kind=vq"],
    ],
    ids=["pixel-space-cep", "disentangled", "entangled-text", "dit-v", "outliers-vq"],
)
def test_smoke_variants(tmp_path, overrides):
    run_dir = tmp_path / "run"
    _train(run_dir, *overrides)
    _check_run(run_dir)


def test_pretrained_autoencoder_from_a_local_directory(tmp_path):
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=[8, 8], latent_channels=4, norm_num_groups=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
    vae.save_pretrained(tmp_path / "vae")  # an RGB autoencoder: the grayscale digits go through as 3 channels
    run_dir = tmp_path / "run"
    _train(run_dir, "autoencoder=pretrained", f"autoencoder.path={tmp_path / 'vae'}")
    _check_run(run_dir)
    assert json.loads((run_dir / "image_meta.json").read_text())["latent_shape"] == [4, 8, 8]
    with pytest.raises(OSError, match=r"autoencoder=trained.*autoencoder=none"):
        _train(tmp_path / "offline", "autoencoder=pretrained", "autoencoder.path=/nonexistent/sd-vae")


def test_resume_equals_an_uninterrupted_run(tmp_path):
    # autoencoder.cache=false: both stages in the run folder (the shared cache has tests/test_autoencoder_cache.py)
    common = ["trainer.checkpoint_every=2", "cep=uniform", "condition_dropout.semantic=0.3", "autoencoder.cache=false"]
    _train(tmp_path / "a", *common, "trainer.max_steps=3")
    reused = [tmp_path / "a" / "autoencoder" / "diffusion_pytorch_model.safetensors",
              next((tmp_path / "a" / "latents").glob("latents-*.safetensors"))]
    stamps = [p.stat().st_mtime_ns for p in reused]
    _train(tmp_path / "a", *common, "trainer.max_steps=5")
    _train(tmp_path / "b", *common, "trainer.max_steps=5")
    assert [p.stat().st_mtime_ns for p in reused] == stamps  # autoencoder stage and latents reused, not redone
    for name in ("model", "ema"):
        resumed = load_file(str(tmp_path / "a" / "checkpoints" / "step_00000005" / f"{name}.safetensors"))
        straight = load_file(str(tmp_path / "b" / "checkpoints" / "step_00000005" / f"{name}.safetensors"))
        assert resumed.keys() == straight.keys()
        for key in resumed:
            assert torch.equal(resumed[key], straight[key]), (name, key)


def test_the_command_line(tmp_path):
    run_dir = tmp_path / "cli"
    command = [sys.executable, str(ROOT / "recipes" / "image" / "train.py"), *SMALL, *SMALL_AUTOENCODER, *SMALL_UNET,
               "trainer.tensorboard=true", f"hydra.run.dir={run_dir}"]
    subprocess.run(command, check=True, cwd=tmp_path, env={**os.environ, "PYTHONWARNINGS": "ignore"},
                   capture_output=True, text=True)
    _check_run(run_dir)
    assert (run_dir / ".hydra" / "config.yaml").is_file() and any((run_dir / "tensorboard").iterdir())
