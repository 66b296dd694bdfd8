"""Fill the sharded latent cache before training, in parallel (data that does not fit in memory).

    accelerate launch --num_processes 4 recipes/image/encode.py data=folder data.root=/data/imagenet/train \
        data.lazy=true data.index_dir=/data/imagenet_index latents.format=sharded latents.cache_dir=/data/latents \
        autoencoder=pretrained autoencoder.path=stabilityai/sd-vae-ft-ema
    python recipes/image/train.py <the same overrides>          # opens the finished cache, trains

On a host without GPUs start the processes with torchrun (`torchrun --nproc_per_node 4 recipes/image/encode.py ...`;
checked here with 2 CPU processes): `accelerate launch --cpu --num_processes N` without an accelerate config ran a
single process on this machine. Each process encodes every N-th shard; a killed step resumes where it stopped (run
the same command again).
Takes the training config (configs/image/train.yaml), so the overrides are the same as training's.
"""

from __future__ import annotations

from robust_gen.launch import start_process

start_process()  # before torch loads: idle OpenMP threads sleep; a mismatched torch trio exits with the fix

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from robust_gen.image.encoding import encode_dataset
from robust_gen.training.recipe import CONFIG_ROOT, register_resolvers

register_resolvers()


@hydra.main(config_path=str(CONFIG_ROOT / "image"), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    encode_dataset(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
