"""The parallel encode step: fill the sharded latent cache with several processes before training.

Every process (``accelerate launch --num_processes N``; one per GPU, or CPU processes) builds the same source and
autoencoder (the main process first: it indexes a lazy folder and trains a ``trained`` first stage, the others
then reuse both), encodes every N-th shard (:func:`~robust_gen.image.data.latents.encode_shards`, which skips
shards already written, so a killed step resumes), waits for the others, and the main process writes the
cache's ``meta.json`` (:func:`~robust_gen.image.data.latents.finish_shards`). Training with the same overrides
then opens the finished cache instead of encoding.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from robust_gen.image.build import build_first_stage, build_source
from robust_gen.image.data.latents import cache_key, encode_shards, finish_shards, shard_folder
from robust_gen.launch import apply_cpu_threads
from robust_gen.training.run_dir import write_json
from robust_gen.training.trainer import run_on_cpu

__all__ = ["ENCODE_REPORT", "encode_dataset"]

log = logging.getLogger(__name__)

#: Written by the main process into the run directory: images, shards, seconds, images/s.
ENCODE_REPORT = "encode.json"


def encode_dataset(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Encode the data of ``cfg`` into its sharded latent cache with every process of the launch; returns the
    report (also in ``<run_dir>/encode.json``): images, shards written by this process, seconds, images/s."""
    from accelerate import PartialState

    if cfg.latents.get("format", "table") != "sharded":
        raise ValueError("the encode step fills the sharded cache: set latents.format=sharded (and pass the same "
                         "overrides to training)")
    run_dir = Path(run_dir)
    state = PartialState(cpu=run_on_cpu(cfg.trainer.cpu))
    if state.device.type == "cpu":
        apply_cpu_threads(cfg.cpu_threads)
    with state.main_process_first():
        source = build_source(cfg.data, run_dir if state.is_main_process else None, index_dir=run_dir / "data_index")
        autoencoder = build_first_stage(cfg, source, run_dir, state.device)
    flips = bool(cfg.data.flip)
    key = cache_key(autoencoder, source.images, flips)
    folder = shard_folder(cfg.latents.cache_dir or run_dir / "latents", key)
    shard_size = int(cfg.latents.shard_size)
    start = time.perf_counter()
    written = encode_shards(autoencoder, source.images, folder, flips=flips,
                            batch_size=int(cfg.latents.encode_batch_size), shard_size=shard_size,
                            process_index=state.process_index, num_processes=state.num_processes)
    seconds = time.perf_counter() - start
    images = sum(min(len(source.images), (n + 1) * shard_size) - n * shard_size for n in written)
    state.wait_for_everyone()
    report = {"process": state.process_index, "processes": state.num_processes, "images": images,
              "shards": written, "seconds": seconds, "images_per_s": images / seconds if seconds > 0 else None,
              "cache": str(folder)}
    if state.is_main_process:
        finish_shards(autoencoder, folder, key, len(source.images), shard_size=shard_size,
                      scaling_factor=cfg.autoencoder.get("scaling_factor", "data"))
        write_json(run_dir / ENCODE_REPORT, report)
    state.wait_for_everyone()
    log.info("process %d/%d encoded %d images in %.1f s (%s images/s); cache %s", state.process_index + 1,
             state.num_processes, images, seconds, report["images_per_s"], folder)
    return report
