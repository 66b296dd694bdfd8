"""Train a latent diffusion model on images (class- or text-conditional), optionally on corrupted data.

    python recipes/image/train.py                                      # digits, tiny autoencoder + UNet, CPU
    python recipes/image/train.py condition=text corruption=caption_swap corruption.ratio=0.05 \
        loss=pseudo_huber loss.schedule=snr trainer.max_steps=2000
    python recipes/image/train.py control=disentangled data.crop_margin=8 data.flip=true cep=uniform

The run directory (runs/image/<overrides>) receives config.yaml, .hydra/, image_meta.json, the corruption manifest,
the trained autoencoder, checkpoints, metrics.jsonl, TensorBoard logs and samples/step_*/grid.png. The autoencoder
and its latents come from the shared cache when another run trained the same one (autoencoder.cache).
Re-running the same command resumes from the last checkpoint (the autoencoder and latents are reused).

A sweep on a launcher, each job training, sampling and evaluating its own run (report afterwards from the runs):
    python recipes/image/train.py -m hydra/launcher=submitit_local corruption=label_flip corruption.ratio=0,0.1 \
        trainer.max_steps=10 finish.sample=true finish.evaluate=true
A job pre-empted (SIGUSR1 or SIGTERM) checkpoints its step and, under submitit, is requeued and resumes.
"""

from __future__ import annotations

from robust_gen.launch import start_process

# first, before torch loads: --help prints and exits; idle OpenMP threads sleep; the torch trio is checked
start_process(help_for="image/train", optional_groups=("experiment",))

import logging
from pathlib import Path

from accelerate import PartialState
from omegaconf import DictConfig

from robust_gen.experiments.driver import finish_run, preemption_signals, requeue_if_preempted
from robust_gen.image.build import prepare_training
from robust_gen.image.data.sources import validate_image_config
from robust_gen.training.entry import recipe_main
from robust_gen.training.interrupt import StopRequested
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
        with preemption_signals() as preempted:
            try:
                summary = trainer.fit()
            except StopRequested:
                requeue_if_preempted(preempted)  # under submitit after SIGUSR1: requeued, and the process exits
                raise
    log.info("%s at step %s: loss %s; run directory %s", summary.get("status", "complete"), summary.get("step"),
             summary.get("loss"), run_dir)
    finish = cfg.get("finish") or {}
    if (finish.get("sample") or finish.get("evaluate")) and PartialState().is_main_process:
        summary["finish"] = finish_run(run_dir, sample=bool(finish.get("sample")),
                                       evaluate=bool(finish.get("evaluate")),
                                       sample_args=list(finish.get("sample_args") or []),
                                       evaluate_args=list(finish.get("evaluate_args") or []))
    return summary


@recipe_main("image", "train", lock=True, validate=validate_image_config)
def main(cfg: DictConfig, run_dir: Path) -> None:
    train(cfg, run_dir)


if __name__ == "__main__":
    main()
