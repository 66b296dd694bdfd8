"""``--help`` of every recipe: what it does, its groups (shared ones included, internal ones hidden), its main
options with defaults, two examples; printed fast, before torch loads (robust_gen.training.recipe_help)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from robust_gen.training.recipe_help import recipe_help

ROOT = Path(__file__).resolve().parents[1]
TRAINING_GROUPS = ("loss", "corruption", "trainer", "data", "model", "autoencoder", "cep", "+experiment")


def _groups(text: str) -> list[str]:
    block = text.split("== Config groups")[1].split("== Main options")[0]
    return [line.split()[0] for line in block.splitlines()[1:] if line.startswith("  ") and line.split()]


def test_image_train_help_runs_fast_and_lists_every_group():
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "recipes/image/train.py", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    seconds = time.perf_counter() - start
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "Train a latent diffusion model" in text
    groups = _groups(text)
    for group in ("loss", "corruption", "trainer", "data", "model", "sampler", "+experiment"):
        assert group in groups, group
    assert "l2 (default) | l1 | pseudo_huber" in text
    assert "_paper_image" not in text and "_common" not in text
    assert "trainer.max_steps=1500" in text and "data.limit=null" in text  # defaults, written as overrides
    assert text.count("python recipes/image/train.py") >= 3  # usage + two examples
    assert seconds < 20, f"--help took {seconds:.1f} s"


def test_help_shows_the_defaults_of_the_given_overrides():
    text = recipe_help("image/train", ["experiment"], ["trainer.max_steps=7", "loss=pseudo_huber"])
    assert "trainer.max_steps=7" in text and "pseudo_huber (default)" in text


@pytest.mark.parametrize("config", ["image/sample", "image/evaluate", "tts/synthesize"])
def test_sampling_and_evaluation_help_lists_no_training_group(config):
    text = recipe_help(config)
    assert not set(_groups(text)) & set(TRAINING_GROUPS)
    assert "run_dir=<run folder>" in text
    if config.startswith("image/"):
        assert "progress=true" in text
    assert text.count(f"python recipes/{config}.py") >= 3


@pytest.mark.parametrize("config,optional", [("tts/train", ["experiment"]), ("speaker/train", [])])
def test_speech_help_describes_the_recipe(config, optional):
    text = recipe_help(config, optional)
    assert "Examples:" in text and "== Main options" in text
    assert "_common" not in text
    if config == "tts/train":
        assert {"loss", "corruption", "trainer", "data", "model", "+experiment"} <= set(_groups(text))


def test_help_exits_before_torch_loads():
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('torch loaded:', 'torch' in sys.modules))\n"
        "sys.argv = ['recipes/tts/train.py', '--help']\n"
        "from robust_gen.launch import start_process\n"
        "start_process(help_for='tts/train', optional_groups=('experiment',))\n"
        "print('not reached')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Train Grad-TTS" in out.stdout and "torch loaded: False" in out.stdout and "not reached" not in out.stdout
