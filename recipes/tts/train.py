"""Train Grad-TTS on (possibly speaker-contaminated) speech.

Command (defaults: the tiny model on the embedded espeak-ng corpus, a few minutes on a 2-core CPU)::

    python recipes/tts/train.py
    python recipes/tts/train.py corruption=speaker_mix corruption.ratio=0.3 loss=pseudo_huber
    python recipes/tts/train.py data.single_speaker=true corruption=speaker_mix trainer.max_steps=2000
    python recipes/tts/train.py +experiment=paper data=ljspeech data.root=/data/LJSpeech-1.1

The run folder (``runs/tts/<overrides>``) receives the resolved ``config.yaml``, ``speakers.json``, the
``corruption_manifest.json``, ``skipped_utterances.json``, ``metrics.jsonl``, checkpoints and, at the end,
``samples/step_XXXXXXX/`` (``<speaker>_<i>.wav``, mel plots, ``samples.jsonl``). Re-running the same command
resumes from the newest checkpoint.
"""

from __future__ import annotations

from robust_gen.launch import apply_cpu_threads, start_process

# first, before torch loads: --help prints and exits; idle OpenMP threads sleep; the torch trio is checked
start_process(help_for="tts/train", optional_groups=("experiment",))



import logging
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from robust_gen.speech.data.dataset import build_training_set, collate_tts, validate_tts_config
from robust_gen.speech.data.mel import MelConfig
from robust_gen.speech.gradtts.convert import start_from_run
from robust_gen.speech.mel_range import MelRange, training_mel_range
from robust_gen.speech.synthesis import Synthesizer, write_samples
from robust_gen.speech.task import GradTTSTask, segment_frames_for
from robust_gen.speech.vocoder import build_vocoder, validate_vocoder_config
from robust_gen.training.entry import recipe_main
from robust_gen.training.recipe import (
    register_resolvers,
    trainer_config,
    write_resolved_config,
)
from robust_gen.training.run_dir import lock_run
from robust_gen.training.trainer import Trainer, run_on_cpu

register_resolvers()
log = logging.getLogger(__name__)


def fill_corruption_speakers(cfg: DictConfig) -> None:
    """Give a speaker corruption the data config's target and contaminant when its config leaves them ``???``."""
    for key, data_key in (("target", "target_speaker"), ("contaminant", "contaminant_speaker")):
        if key in cfg.corruption.keys() and OmegaConf.is_missing(cfg.corruption, key):
            value = cfg.data.get(data_key)
            if value is None:
                raise ValueError(f"corruption.{key} is not set and data.{data_key} is null; set one of them")
            cfg.corruption[key] = value


def sample_speakers(cfg: DictConfig, speakers: dict[str, int]) -> list[str]:
    """``samples.speakers``, or the data's target and contaminant the model knows (else its first speaker)."""
    if cfg.samples.speakers:
        return [str(s) for s in cfg.samples.speakers]
    chosen = [
        s for s in (cfg.data.get("target_speaker"), cfg.data.get("contaminant_speaker")) if s in speakers
    ]
    return chosen or [min(speakers, key=speakers.get)]


def make_eval_fn(cfg: DictConfig, speakers: dict[str, int], mel_config: MelConfig):
    """The trainer's eval hook: synthesize the configured texts with the EMA model into ``samples/step_*``."""
    vocoder_options = {k: v for k, v in OmegaConf.to_container(cfg.vocoder).items() if k != "kind"}
    vocoder_options = {k: v for k, v in vocoder_options.items() if v is not None}
    names = sample_speakers(cfg, speakers)
    mel_range = MelRange.from_config(OmegaConf.to_container(cfg.mel_range) if "mel_range" in cfg else None)

    def evaluate(ema_task: torch.nn.Module, step: int, run_dir: Path) -> dict[str, Any]:
        device = str(next(ema_task.parameters()).device)
        vocoder = build_vocoder(cfg.vocoder.kind, mel_config=mel_config, device=device, **vocoder_options)
        synthesizer = Synthesizer(
            ema_task.model, speakers, vocoder, add_blank=cfg.text.add_blank, cleaner=cfg.text.cleaner,
            mel_range=mel_range,
        )  # fmt: skip
        rows = write_samples(
            synthesizer,
            [(str(text), speaker) for speaker in names for text in cfg.samples.texts],
            Path(run_dir) / "samples" / f"step_{step:07d}",
            sample_rate=mel_config.sample_rate,
            plots=cfg.samples.plots,
            n_timesteps=cfg.samples.n_timesteps,
            temperature=cfg.samples.temperature,
            sampler=cfg.samples.sampler,
            length_scale=cfg.samples.length_scale,
            seed=cfg.samples.seed,
        )
        return {"sample_seconds": sum(r["seconds"] for r in rows) / len(rows)}

    return evaluate


def train(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Run the recipe with a composed config; ``run_dir`` defaults to Hydra's run folder. Returns the summary."""
    run_dir = Path(run_dir) if run_dir is not None else Path(HydraConfig.get().runtime.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    apply_cpu_threads(cfg.get("cpu_threads"))
    with lock_run(run_dir):  # corpus, mel cache and manifest are written before the trainer starts
        return _train(cfg, run_dir)


def _train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    fill_corruption_speakers(cfg)
    mel_config = MelConfig(**OmegaConf.to_container(cfg.mel, resolve=True))
    # With several processes the first one synthesizes the corpus and fills the mel cache; the others reuse them.
    with PartialState(cpu=run_on_cpu(cfg.trainer.cpu)).main_process_first():
        training_set = build_training_set(
            OmegaConf.to_container(cfg.data, resolve=True),
            mel_config=mel_config,
            corruption=instantiate(cfg.corruption),
            run_dir=run_dir,
            add_blank=cfg.text.add_blank,
            cleaner=cfg.text.cleaner,
        )
    speakers = training_set.speakers
    with open_dict(cfg):
        cfg.speaker_ids = speakers  # checkpoints carry the ids, so synthesis needs nothing but the checkpoint
        # ... and the training mels' per-band range, against which synthesized mels are checked
        cfg.mel_range = training_mel_range(training_set.dataset).to_config()
    initial = start_from_run(cfg, speakers)  # init_from=<run>: its model settings and weights
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.trainer.seed)  # the initial weights are part of the run's reproducible path
        model = instantiate(cfg.model, n_speakers=len(speakers))
    if initial is not None:
        model.load_state_dict(initial)
    segment = segment_frames_for(cfg.segment_seconds, mel_config.sample_rate, mel_config.hop_length,
                                 model.frame_multiple)  # fmt: skip
    task = GradTTSTask(model, instantiate(cfg.loss), segment_frames=segment)
    log.info("Grad-TTS: %.2fM parameters, %d speaker(s), decoder crops of %s frames",
             sum(p.numel() for p in model.parameters()) / 1e6, len(speakers), segment)  # fmt: skip
    trainer = Trainer(
        task,
        training_set.dataset,
        trainer_config(cfg.trainer),
        run_dir,
        collate_fn=collate_tts,
        config_yaml=write_resolved_config(cfg, run_dir),
        eval_fn=make_eval_fn(cfg, speakers, mel_config) if cfg.samples.texts else None,
    )
    summary = trainer.fit()
    log.info(
        "%s at step %s: %s", summary.get("status", "complete"), summary.get("step"),
        {k: v for k, v in summary.items() if "loss" in k},
    )
    return summary


def validate_config(cfg: DictConfig) -> None:
    """The whole config before any work: data and model (``validate_tts_config``), then the vocoder."""
    validate_tts_config(cfg)
    validate_vocoder_config(cfg)


@recipe_main("tts", "train", lock=True, validate=validate_config)
def main(cfg: DictConfig, run_dir: Path) -> None:
    train(cfg, run_dir)


if __name__ == "__main__":
    main()
