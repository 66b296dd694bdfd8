"""Train a latent diffusion model on images (class- or text-conditional), optionally on corrupted data.

    python recipes/image/train.py                                      # digits, tiny autoencoder + UNet, CPU
    python recipes/image/train.py condition=text corruption=caption_swap corruption.ratio=0.05 \
        loss=pseudo_huber loss.schedule=snr trainer.max_steps=2000
    python recipes/image/train.py control=disentangled data.crop_margin=8 data.flip=true cep=uniform

The run directory (runs/image/<overrides>) receives config.yaml, .hydra/, image_meta.json, the corruption manifest,
the trained autoencoder, checkpoints, metrics.jsonl, TensorBoard logs and samples/step_*/grid.png. The autoencoder
and its latents come from the shared cache when another run trained the same one (autoencoder.cache).
Re-running the same command resumes from the last checkpoint (the autoencoder and latents are reused).
"""

from __future__ import annotations

from robust_gen.launch import start_process

# first, before torch loads: --help prints and exits; idle OpenMP threads sleep; the torch trio is checked
start_process(help_for="image/train", optional_groups=("experiment",))

import logging
from pathlib import Path

from accelerate import PartialState
from omegaconf import DictConfig

from robust_gen.image.build import prepare_training
from robust_gen.image.data.sources import validate_image_config
from robust_gen.training.entry import recipe_main
from robust_gen.training.recipe import register_resolvers, trainer_config
from robust_gen.training.run_dir import lock_run
from robust_gen.training.trainer import Trainer, run_on_cpu

register_resolvers()
log = logging.getLogger("recipes.image.train")


def train(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Train the model of ``cfg`` in ``run_dir`` (resuming if it holds checkpoints); returns the trainer summary."""
    with lock_run(run_dir):  # the autoencoder stage writes into the run directory too
        # With several processes the first one trains the autoencoder and fills the latent cache; the others
        # then find them and reuse them instead of racing on the same files.
        with PartialState(cpu=run_on_cpu(cfg.trainer.cpu)).main_process_first():
            setup = prepare_training(cfg, run_dir)
        trainer = Trainer(
            setup.task, setup.dataset, trainer_config(cfg.trainer), run_dir,
            config_yaml=setup.config_yaml, eval_fn=setup.eval_fn,
        )
        summary = trainer.fit()
    log.info("%s at step %s: loss %s; run directory %s", summary.get("status", "complete"), summary.get("step"),
             summary.get("loss"), run_dir)
    return summary


@recipe_main("image", "train", lock=True, validate=validate_image_config)
def main(cfg: DictConfig, run_dir: Path) -> None:
    train(cfg, run_dir)


if __name__ == "__main__":
    main()
