"""Memory and data throughput of the image recipe on data read from disk, at 10k .. 1M images.

    python benchmarks/bench_data_scale.py [--sizes 10000 100000 1000000] [--real-max 100000] [--steps 20]
        [--work /tmp/bench_data_scale] [--json results.json]

For each size N it builds a synthetic on-disk dataset of 8x8 RGB PNG files in 100 class folders and runs, each
in a fresh subprocess (so one measurement cannot inherit another's memory):

1. the encode step (:func:`robust_gen.image.encoding.encode_dataset`, one process): indexes the folder and fills
   the sharded latent cache; reports images/s (PNG decode + resize + encode + shard writes) and its peak RSS;
2. training (the recipe's ``train``: lazy folder, ``latents.format=sharded``, label flips at 10 %,
   ``autoencoder=none`` so the "latents" are the 8x8 pixels and the network is tiny): ``--steps`` steps; reports
   the process's peak resident memory (``VmHWM``), the seconds per step, and the seconds per batch that the data
   loader alone takes (the same DataLoader settings, timed apart): the fraction of a step spent waiting on data.

Sizes above ``--real-max`` are not written as image files (a million PNGs is 4 GB of 4-kB blocks and minutes
of a shared CPU): their index and latent shards are fabricated at full size with the code's own formats and
cache key (random pixels, file names that do not exist), which is exactly what a training process opens when
the encode step has run; those rows say ``"files": "fabricated"`` and have no encode figures.
"""

from __future__ import annotations

from robust_gen.launch import start_process

start_process()  # before torch loads: idle OpenMP threads sleep; a mismatched torch trio exits with the fix

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CLASSES = 100
RESOLUTION = 8


def make_folder(root: Path, count: int) -> float:
    """Write ``count`` random 8x8 PNGs into ``CLASSES`` class folders (skipped when already complete)."""
    from PIL import Image

    marker = root / ".complete"
    if marker.is_file() and marker.read_text() == str(count):
        return 0.0
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    for k in range(CLASSES):
        folder = root / f"class_{k:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        per_class = count // CLASSES + (k < count % CLASSES)
        pixels = rng.integers(0, 256, (per_class, RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
        for i in range(per_class):
            Image.fromarray(pixels[i]).save(folder / f"{i:06d}.png", compress_level=1)
    marker.write_text(str(count))
    return time.perf_counter() - start


def fabricate(root: Path, index_dir: Path, cache_dir: Path, count: int, shard_size: int) -> None:
    """A full-size index and latent cache for ``count`` images without the image files (see the docstring)."""
    from robust_gen.corruption.records import RecordTable
    from robust_gen.image.data.file_index import INDEX_FILE, ImageFiles, files_digest
    from robust_gen.image.data.latents import cache_key, finish_shards, shard_folder
    from robust_gen.image.model.autoencoder import ImageAutoencoder
    from robust_gen.training.run_dir import write_json

    meta_path = index_dir / INDEX_FILE
    if meta_path.is_file() and json.loads(meta_path.read_text()).get("files_sha256") and \
            json.loads(meta_path.read_text())["count"] == count:
        return
    root.mkdir(parents=True, exist_ok=True)
    index_dir.mkdir(parents=True, exist_ok=True)
    labels = (np.arange(count) * CLASSES // count).astype(np.int32)
    names = np.array([f"class_{k:03d}/{i:07d}.png".encode() for k, i in zip(labels.tolist(), range(count))])
    np.save(index_dir / "files.npy", names, allow_pickle=False)
    np.save(index_dir / "sizes.npy", np.full(count, 100, np.int64), allow_pickle=False)
    np.save(index_dir / "mtimes.npy", np.zeros(count, np.int64), allow_pickle=False)
    class_names = [f"class {k:03d}" for k in range(CLASSES)]
    RecordTable(
        {"label": labels, "caption": labels.copy(), "source": np.arange(count, dtype=np.int64),
         "orig_height": np.full(count, RESOLUTION, np.int32), "orig_width": np.full(count, RESOLUTION, np.int32)},
        {"caption": [f"a photo of a {n}" for n in class_names]},
    ).save(index_dir / "records")
    write_json(index_dir / "skipped_images.json", {"count": 0, "images": []})
    write_json(index_dir / INDEX_FILE, {"format": 1, "root": str(root.resolve()), "class_names": class_names,
                                        "caption_template": "a photo of a {name}", "limit": None, "count": count,
                                        "files_sha256": files_digest(index_dir)})
    autoencoder = ImageAutoencoder(None, "none", 3)
    files = ImageFiles(root, index_dir, RESOLUTION, 3, "bicubic")
    key = cache_key(autoencoder, files, flips=False)
    folder = shard_folder(cache_dir, key)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for number in range(-(-count // shard_size)):
        n = min(count, (number + 1) * shard_size) - number * shard_size
        mean = rng.uniform(-1, 1, (n, 1, 3, RESOLUTION, RESOLUTION)).astype(np.float32)
        np.save(folder / f"shard-{number:05d}.mean.npy", mean, allow_pickle=False)
        write_json(folder / f"shard-{number:05d}.json", {
            "count": int(mean.size), "sum": float(mean.sum(dtype=np.float64)),
            "sum_sq": float(np.square(mean, dtype=np.float64).sum()), "sum_var": 0.0, "has_std": False,
            "shape": list(mean.shape[1:])})
    finish_shards(autoencoder, folder, key, count, shard_size=shard_size)


def overrides(root: Path, index_dir: Path, cache_dir: Path, steps: int, shard_size: int) -> list[str]:
    return [
        "data=folder", f"data.root={root}", "data.lazy=true", f"data.index_dir={index_dir}",
        f"data.resolution={RESOLUTION}", "autoencoder=none", "latents.format=sharded",
        f"latents.shard_size={shard_size}", f"latents.cache_dir={cache_dir}", "latents.encode_batch_size=256",
        "corruption=label_flip", "corruption.ratio=0.1", f"trainer.max_steps={steps}", "trainer.batch_size=32",
        "trainer.progress=false", "trainer.tensorboard=false", f"trainer.log_every={steps}",
        f"trainer.checkpoint_every={10 * steps}", "trainer.warmup_steps=0", "samples.num_per_class=1",
        "sampler.num_steps=2", "model.backbone.block_out_channels=[16,32]", "model.backbone.attention_head_dim=2",
    ]


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from robust_gen.training.data import EpochSampler
    from robust_gen.training.recipe import compose_config, register_resolvers

    register_resolvers()
    cfg = compose_config("image", "train", json.loads(args.overrides))
    run_dir = Path(args.run_dir)
    if args.child == "encode":
        from robust_gen.image.encoding import encode_dataset

        start = time.perf_counter()
        report = encode_dataset(cfg, run_dir)
        return {"encode_images_per_s": report["images_per_s"], "encode_s": report["seconds"],
                "index_and_encode_s": time.perf_counter() - start, "encode_peak_rss_mb": peak_rss_mb()}
    from robust_gen.image.build import prepare_training
    from robust_gen.training.metrics import read_metrics
    from robust_gen.training.recipe import trainer_config
    from robust_gen.training.trainer import Trainer

    start = time.perf_counter()
    setup = prepare_training(cfg, run_dir)
    prepare_s = time.perf_counter() - start
    batch = int(cfg.trainer.batch_size)
    loader = DataLoader(setup.dataset, batch_size=batch, sampler=EpochSampler(len(setup.dataset), seed=1))
    batches = iter(loader)
    next(batches)
    start = time.perf_counter()
    for _ in range(args.steps):
        next(batches)
    data_s = (time.perf_counter() - start) / args.steps
    trainer = Trainer(setup.task, setup.dataset, trainer_config(cfg.trainer), run_dir, config_yaml=setup.config_yaml)
    start = time.perf_counter()
    trainer.fit()
    fit_s = time.perf_counter() - start
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "samples_per_s" in r]
    step_s = batch / rows[-1]["samples_per_s"] if rows else fit_s / args.steps
    del torch
    return {"prepare_s": prepare_s, "data_s_per_batch": data_s, "step_s": step_s, "data_fraction": data_s / step_s,
            "train_peak_rss_mb": peak_rss_mb(), "examples": len(setup.dataset)}


def run_child(kind: str, args: argparse.Namespace, run_dir: Path, extra: list[str]) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--run-dir", str(run_dir), "--steps", str(args.steps),
               "--overrides", json.dumps(extra)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode:
        raise RuntimeError(f"{kind} child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--real-max", type=int, default=100_000, help="largest size written as real PNG files")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--shard-size", type=int, default=4096)
    parser.add_argument("--work", default="/tmp/bench_data_scale")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    work = Path(args.work)
    rows = []
    for count in args.sizes:
        root, index_dir, cache_dir = work / f"images_{count}", work / f"index_{count}", work / f"latents_{count}"
        row: dict = {"images": count, "files": "real" if count <= args.real_max else "fabricated"}
        extra = overrides(root, index_dir, cache_dir, args.steps, args.shard_size)
        if count <= args.real_max:
            row["write_png_s"] = make_folder(root, count)
            row.update(run_child("encode", args, work / f"encode_run_{count}_{time.time_ns()}", extra))
        else:
            start = time.perf_counter()
            fabricate(root, index_dir, cache_dir, count, args.shard_size)
            row["fabricate_s"] = time.perf_counter() - start
        row.update(run_child("train", args, work / f"train_run_{count}_{time.time_ns()}", extra))
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0]["train_peak_rss_mb"]
    for row in rows:
        row["train_rss_growth_vs_smallest"] = row["train_peak_rss_mb"] / base - 1
    result = {"resolution": RESOLUTION, "classes": CLASSES, "steps": args.steps, "shard_size": args.shard_size,
              "cpu_threads": 1, "rows": rows}
    if args.json:
        from robust_gen.training.run_dir import write_json

        write_json(args.json, result)
    print(f"\n{'images':>9} {'files':>10} {'encode img/s':>13} {'train peak RSS MB':>18} {'growth':>7} "
          f"{'step s':>7} {'data s/batch':>13} {'data/step':>9}")
    for row in rows:
        encode = f"{row['encode_images_per_s']:.0f}" if "encode_images_per_s" in row else "-"
        print(f"{row['images']:>9} {row['files']:>10} {encode:>13} {row['train_peak_rss_mb']:>18.1f} "
              f"{row['train_rss_growth_vs_smallest']:>7.1%} {row['step_s']:>7.3f} {row['data_s_per_batch']:>13.4f} "
              f"{row['data_fraction']:>9.1%}")


if __name__ == "__main__":
    main()
