"""The image recipe on data read from disk: lazy folder index, sharded latent cache, parallel encode step."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robust_gen.corruption.records import RecordTable
from robust_gen.image.data.latents import encode_shards, finish_shards, load_or_encode, open_shards
from robust_gen.image.data.sources import load_folder_source
from robust_gen.image.model.autoencoder import ImageAutoencoder
from robust_gen.training.recipe import compose_config, register_resolvers

ROOT = Path(__file__).resolve().parents[1]
register_resolvers()


def _recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"image_{name}_recipe_streaming", ROOT / "recipes" / "image" /
                                                  f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _folder(root: Path, classes: int = 3, per_class: int = 5) -> Path:
    rng = np.random.default_rng(0)
    for k in range(classes):
        (root / f"class_{k}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class_{k}" / f"{i:03d}.png")
    return root


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_a_lazy_folder_reads_the_same_images_and_records_as_the_in_memory_loader(tmp_path):
    root = _folder(tmp_path / "data")
    eager = load_folder_source(root, resolution=8)
    lazy = load_folder_source(root, resolution=8, lazy=True, index_dir=tmp_path / "index")
    assert lazy.is_lazy and isinstance(lazy.records, RecordTable)
    assert np.array_equal(lazy.images[0 : len(lazy.images)], eager.images)
    assert [lazy.records[i] for i in range(len(lazy.records))] == eager.records
    assert lazy.class_names == eager.class_names
    with pytest.raises(TypeError, match="in batches"):
        np.asarray(lazy.images)
    # the index is reused: a second open does not re-read the folder
    (root / "class_0" / "000.png").unlink()
    again = load_folder_source(root, resolution=8, lazy=True, index_dir=tmp_path / "index")
    with pytest.raises(ValueError, match="cannot be decoded"):
        again.images[0]


def test_shards_written_by_two_processes_equal_the_one_file_cache(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (7, 8, 8, 1), dtype=np.uint8)
    torch.manual_seed(0)
    from robust_gen.image.model.autoencoder import _build_small

    autoencoder = ImageAutoencoder(_build_small("kl", {}, 1, 8), "kl", 1)
    reference = load_or_encode(autoencoder, images, tmp_path / "one", flips=True)
    folder = tmp_path / "shards"
    second = encode_shards(autoencoder, images, folder, flips=True, shard_size=3, process_index=1, num_processes=2)
    with pytest.raises(FileNotFoundError, match="not written yet"):
        finish_shards(autoencoder, folder, "k", len(images), shard_size=3)
    first = encode_shards(autoencoder, images, folder, flips=True, shard_size=3, process_index=0, num_processes=2)
    assert (first, second) == ([0, 2], [1])
    assert encode_shards(autoencoder, images, folder, flips=True, shard_size=3) == []  # resumed: nothing left
    table = finish_shards(autoencoder, folder, "k", len(images), shard_size=3)
    for i in range(len(images)):
        assert torch.allclose(table.mean[i], reference.mean[i], atol=1e-6)
        assert torch.allclose(table.std[i], reference.std[i], atol=1e-6)
    assert table.scaling_factor == pytest.approx(reference.scaling_factor, rel=1e-5)
    assert open_shards(folder, "another key") is None


SMALL = ["data.resolution=8", "trainer.max_steps=2", "trainer.batch_size=4", "trainer.progress=false",
         "trainer.tensorboard=false", "trainer.log_every=1", "trainer.warmup_steps=0", "samples.num_per_class=1",
         "sampler.num_steps=2", "model.backbone.block_out_channels=[16,32]", "model.backbone.attention_head_dim=2",
         "autoencoder=none", "latents.format=sharded", "latents.shard_size=4"]


def test_encode_step_then_training_on_the_lazy_folder_with_label_flips(tmp_path):
    root = _folder(tmp_path / "data")
    overrides = [*SMALL, "data=folder", f"data.root={root}", "data.lazy=true", f"data.index_dir={tmp_path / 'index'}",
                 f"latents.cache_dir={tmp_path / 'latents'}", "corruption=label_flip", "corruption.ratio=0.2"]
    cfg = compose_config("image", "train", overrides)
    report = _recipe("encode").encode_dataset(cfg, tmp_path / "encode_run")
    assert report["images"] == 15 and report["shards"] == [0, 1, 2, 3]
    cache = Path(report["cache"])
    assert (cache / "meta.json").is_file()
    summary = _recipe("train").train(compose_config("image", "train", overrides), tmp_path / "run")
    assert summary["step"] == 2
    manifest = json.loads((tmp_path / "run" / "corruption_manifest.json").read_text())
    assert manifest["num_samples"] == 15 and len(manifest["changes"]) == 3
    # training opened the cache the encode step wrote: no second cache folder
    assert [p.name for p in (tmp_path / "latents").iterdir()] == [cache.name]


def test_the_paper_overlay_runs_on_the_streaming_path_at_tiny_scale(tmp_path):
    root = _folder(tmp_path / "data", classes=2, per_class=4)
    tiny = [*SMALL, "model=unet_tiny", "trainer.mixed_precision=no", "trainer.num_workers=0", "cpu_threads=1",
            f"data.root={root}", f"data.index_dir={tmp_path / 'index'}",
            f"latents.cache_dir={tmp_path / 'latents'}", "samples.batch_size=4"]
    cfg = compose_config("image", "train", ["+experiment=slight_label_paper", *tiny])
    assert cfg.data.lazy and cfg.latents.format == "sharded"
    summary = _recipe("train").train(cfg, tmp_path / "run")
    assert summary["step"] == 2
