"""Train the offline speaker model used by tools/speaker_sim.py.

    python recipes/speaker/train.py                      # -> runs/speaker/default/model (about a minute, CPU)
    python recipes/speaker/train.py training.steps=300 cpu_threads=null
    python tools/speaker_sim.py --model runs/speaker/default/model --refs ... --synth ...

A small SpeechBrain ECAPA-TDNN with an AAM-softmax head learns the voices of the embedded espeak-ng corpus
(DEFAULT_VOICES plus the extra voices of the config); the directory it writes loads offline with
``EncoderClassifier.from_hparams(source=<dir>, savedir=<dir>)``. The model is then calibrated on
HELD_OUT_VOICES, never seen in training: equal error rate and its threshold over all same-speaker and
different-speaker utterance pairs go to ``<model>/calibration.json`` and the log.
"""

from __future__ import annotations

from robust_gen.launch import apply_cpu_threads, start_process

# first, before torch loads: --help prints and exits; idle OpenMP threads sleep; the torch trio is checked
start_process(help_for="speaker/train")

import logging
import time
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from robust_gen.speaker import (
    SpeakerEmbedder,
    SpeakerModelSpec,
    SpeakerTrainingConfig,
    calibrate,
    espeak_training_records,
    load_speaker_encoder,
    save_speaker_model,
    train_speaker_model,
    write_calibration,
)
from robust_gen.speech.data.corpus import HELD_OUT_VOICES, synthesize_corpus
from robust_gen.speech.data.filelists import read_filelist
from robust_gen.training.entry import recipe_main
from robust_gen.training.recipe import register_resolvers, write_resolved_config

register_resolvers()
log = logging.getLogger("recipes.speaker.train")


def _output_dir(cfg: DictConfig) -> Path:
    if cfg.get("output_dir"):
        return Path(cfg.output_dir)
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    raise ValueError("output_dir is not set and Hydra is not running; pass output_dir=<folder>")


def _training_records(data: DictConfig) -> list[dict]:
    if data.get("filelist"):
        return list(read_filelist(data.filelist))
    extra = OmegaConf.to_container(data.extra_voices, resolve=True) or []
    return espeak_training_records(
        data.utterances_per_voice, extra, data.extra_utterances_per_voice, data.seed
    )


def train(cfg: DictConfig) -> dict:
    """Train, save, reload offline through SpeechBrain, calibrate on held-out voices; return the facts."""
    apply_cpu_threads(cfg.cpu_threads)
    output_dir = _output_dir(cfg)
    model_dir = Path(cfg.model_dir) if cfg.get("model_dir") else output_dir / "model"
    output_dir.mkdir(parents=True, exist_ok=True)
    write_resolved_config(cfg, output_dir)
    records = _training_records(cfg.data)
    held_out_ids = {voice.speaker for voice in HELD_OUT_VOICES}
    overlap = held_out_ids & {r["speaker"] for r in records}
    if overlap:
        raise ValueError(f"training data contains held-out speakers {sorted(overlap)}; they must stay unseen")
    log.info("training on %d utterances of %d speakers", len(records), len({r["speaker"] for r in records}))
    spec = SpeakerModelSpec(**OmegaConf.to_container(cfg.model, resolve=True))
    config = SpeakerTrainingConfig(**OmegaConf.to_container(cfg.training, resolve=True))
    trained = train_speaker_model(records, spec, config, model_dir=model_dir, progress=bool(cfg.progress))
    save_speaker_model(trained, model_dir)
    log.info(
        "trained %d parameters in %.1f s (final loss %.3f, accuracy %.3f); saved to %s",
        trained.facts["num_parameters"], trained.facts["train_seconds"], trained.facts["final_loss"],
        trained.facts["final_accuracy"], model_dir,
    )  # fmt: skip

    started = time.perf_counter()
    held_out = read_filelist(
        synthesize_corpus(
            voices=HELD_OUT_VOICES,
            utterances_per_voice=cfg.heldout.utterances_per_voice,
            seed=cfg.heldout.seed,
        )
    )
    # Reload through EncoderClassifier.from_hparams: calibrate exactly what speaker_sim will load.
    embedder = SpeakerEmbedder(load_speaker_encoder(model_dir), progress=False)
    embeddings, skipped = embedder.embed_files([r["path"] for r in held_out], role="held-out")
    if skipped:
        raise ValueError(f"held-out utterances could not be embedded: {skipped[:3]}")
    paths = [Path(r["path"]) for r in held_out]
    calibration = calibrate(torch.stack([embeddings[p] for p in paths]), [r["speaker"] for r in held_out])
    calibration["heldout"] = {
        "utterances_per_voice": cfg.heldout.utterances_per_voice,
        "seed": cfg.heldout.seed,
    }
    write_calibration(model_dir, calibration)
    log.info(
        "held-out voices %s: EER %.2f %% at threshold %.3f; same-speaker cosine %.3f ± %.3f, "
        "different-speaker %.3f ± %.3f (%d / %d pairs, %.1f s)",
        ", ".join(calibration["speakers"]), 100 * calibration["eer"], calibration["threshold"],
        calibration["same_mean"], calibration["same_std"], calibration["different_mean"],
        calibration["different_std"], calibration["num_same_pairs"], calibration["num_different_pairs"],
        time.perf_counter() - started,
    )  # fmt: skip
    log.info("use it: python tools/speaker_sim.py --model %s --refs ... --synth ...", model_dir)
    return {"model_dir": str(model_dir), "training": trained.facts, "calibration": calibration}


@recipe_main("speaker", "train")
def main(cfg: DictConfig, output_dir: Path) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
