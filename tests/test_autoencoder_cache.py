"""The shared autoencoder cache: runs that differ only in what comes after the first stage reuse one trained
autoencoder (and its latents); a changed autoencoder setting trains a new one; racing processes train it once."""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from robust_gen.image.model.autoencoder_cache import autoencoder_fingerprint, fetch_or_train
from robust_gen.training.recipe import compose_config

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "data.limit=24", "data.resolution=16", "trainer.max_steps=1", "trainer.batch_size=4", "trainer.progress=false",
    "trainer.tensorboard=false", "trainer.warmup_steps=0", "samples.num_per_class=1", "sampler.num_steps=2",
    "autoencoder.train.steps=2", "autoencoder.train.batch_size=4",
    "model.backbone.block_out_channels=[16,32]", "model.backbone.attention_head_dim=2",
]


def _train(run_dir: Path, cache: Path, *overrides: str) -> dict:
    spec = importlib.util.spec_from_file_location("image_train_recipe_cache", ROOT / "recipes/image/train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        return module.train(compose_config("image", "train", [*TINY, f"autoencoder.cache_dir={cache}", *overrides]),
                            run_dir)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """One tiny l2 run that trains the autoencoder into a fresh cache; returns (tmp folder, cache, log text)."""
    tmp = tmp_path_factory.mktemp("ae_cache")
    handler = logging.Handler()
    records: list[str] = []
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("robust_gen")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        _train(tmp / "l2", tmp / "cache")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return tmp, tmp / "cache", "\n".join(records)


def test_a_second_run_with_another_loss_reuses_the_autoencoder(first_run, caplog):
    tmp_path, cache, first_log = first_run
    assert "training the autoencoder" in first_log
    entries = [p for p in cache.iterdir() if p.is_dir()]
    assert len(entries) == 1 and list((entries[0] / "latents").glob("latents-*.safetensors"))
    fingerprint = entries[0].name
    with caplog.at_level(logging.INFO):
        _train(tmp_path / "huber", cache, "loss=pseudo_huber", "loss.schedule=snr")
    assert f"reusing cached autoencoder {fingerprint}" in caplog.text
    assert "training the autoencoder" not in caplog.text and "encoding" not in caplog.text  # latents reused too
    for run in ("l2", "huber"):  # each run keeps its own copy: sampling reads the run folder only
        assert (tmp_path / run / "autoencoder" / "config.json").is_file()
    first = (tmp_path / "l2" / "autoencoder" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert first == (tmp_path / "huber" / "autoencoder" / "diffusion_pytorch_model.safetensors").read_bytes()


def test_a_changed_autoencoder_setting_trains_a_new_one(first_run, caplog):
    tmp_path, cache, _ = first_run
    before = {p.name for p in cache.iterdir() if p.is_dir()}
    with caplog.at_level(logging.INFO):
        _train(tmp_path / "longer_ae", cache, "autoencoder.train.steps=3")
    assert "training the autoencoder" in caplog.text and "reusing cached" not in caplog.text
    assert len({p.name for p in cache.iterdir() if p.is_dir()} - before) == 1


def test_cache_false_trains_in_the_run_folder(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        _train(tmp_path / "run", tmp_path / "cache", "autoencoder.cache=false")
    assert "training the autoencoder" in caplog.text
    assert not (tmp_path / "cache").exists() and list((tmp_path / "run" / "latents").glob("*.safetensors"))


def test_fingerprint_follows_images_seed_and_training_settings():
    images = np.zeros((3, 8, 8, 1), np.uint8)
    cfg = {"kind": "kl", "model": {"latent_channels": 4}, "train": {"steps": 2}, "cache_dir": "/a"}
    key = autoencoder_fingerprint(cfg, images, 0)
    assert key == autoencoder_fingerprint({**cfg, "cache_dir": "/b", "scaling_factor": 0.2}, images, 0)
    assert key != autoencoder_fingerprint(cfg, images, 1)
    assert key != autoencoder_fingerprint(cfg, images + 1, 0)
    assert key != autoencoder_fingerprint({**cfg, "model": {"latent_channels": 3}}, images, 0)


def test_racing_runs_train_one_entry_once(tmp_path):
    calls, results = [], []

    def slow_train(folder: Path) -> None:
        calls.append(folder)
        time.sleep(0.3)  # the other thread arrives while this one trains
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(b"x")

    threads = [threading.Thread(target=lambda: results.append(fetch_or_train(tmp_path, "abc", slow_train)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and results == [tmp_path / "abc"] * 2
    assert sorted(p.name for p in (tmp_path / "abc").iterdir()) == ["autoencoder"]  # no temporary left


@pytest.mark.parametrize("broken", ["config.json"])
def test_an_incomplete_entry_is_trained_again(tmp_path, broken):
    (tmp_path / "abc" / "autoencoder").mkdir(parents=True)
    (tmp_path / "abc" / "autoencoder" / broken).write_text("{}")  # weights missing: a killed copy

    def train(folder: Path) -> None:
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(b"x")

    fetch_or_train(tmp_path, "abc", train)
    assert (tmp_path / "abc" / "autoencoder" / "model.safetensors").is_file()


def test_an_unusable_cache_folder_falls_back_to_the_run_folder(tmp_path, caplog):
    from robust_gen.image.model.autoencoder import build_autoencoder

    (tmp_path / "not_a_folder").write_text("")  # the cache root cannot be created
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
    cfg = {"mode": "trained", "kind": "kl", "cache_dir": str(tmp_path / "not_a_folder" / "cache"),
           "model": {"block_out_channels": [8, 8], "norm_num_groups": 4, "latent_channels": 2},
           "train": {"steps": 1, "batch_size": 2}}
    with caplog.at_level(logging.WARNING):
        autoencoder = build_autoencoder(cfg, run_dir=tmp_path / "run", images=images, progress=False)
    assert "not usable" in caplog.text and "autoencoder.cache=false" in caplog.text
    assert autoencoder.cache_folder is None and (tmp_path / "run" / "autoencoder" / "config.json").is_file()
