"""Synthesize speech with a trained Grad-TTS (text or a list of texts -> mel -> waveform).

Command::

    python recipes/tts/synthesize.py run_dir=runs/tts/default text="The red bicycle is near the river." speaker=us_f1
    python recipes/tts/synthesize.py run_dir=runs/tts/default filelist=texts.txt n_timesteps=50 sampler=euler_sde
    python recipes/tts/synthesize.py run_dir=runs/tts/default text="Hello." \\
        vocoder.kind=hifigan vocoder.source=speechbrain/tts-hifigan-ljspeech

Writes ``<out_dir>`` (default ``<run_dir>/synthesized``): ``<speaker>_<i>.wav``, mel plots and ``samples.jsonl``.
The model's sizes, mel and text settings and speaker ids come from the checkpoint.
"""

from __future__ import annotations

from robust_gen.launch import start_process

# first, before torch loads: --help prints and exits; idle OpenMP threads sleep; the torch trio is checked
start_process(help_for="tts/synthesize")



import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from robust_gen.speech.synthesis import Synthesizer, load_trained, read_text_list, write_samples
from robust_gen.speech.vocoder import build_vocoder, validate_vocoder_config
from robust_gen.training.entry import recipe_main
from robust_gen.training.recipe import register_resolvers

register_resolvers()
log = logging.getLogger(__name__)


def synthesize(cfg: DictConfig) -> list[dict]:
    """Run the recipe with a composed config; returns the ``samples.jsonl`` rows."""
    trained = load_trained(cfg.run_dir, use_ema=cfg.use_ema, device=cfg.device)
    default_speaker = cfg.speaker or min(trained.speakers, key=trained.speakers.get)
    if cfg.text:
        items = [(str(cfg.text), default_speaker)]
    elif cfg.filelist:
        items = [(text, speaker or default_speaker) for text, speaker in read_text_list(cfg.filelist)]
    else:
        raise ValueError('nothing to say: pass text="..." or filelist=<file>')
    options = {k: v for k, v in OmegaConf.to_container(cfg.vocoder).items() if k != "kind" and v is not None}
    vocoder = build_vocoder(cfg.vocoder.kind, mel_config=trained.mel_config, device=cfg.device, **options)
    synthesizer = Synthesizer(trained.model, trained.speakers, vocoder, add_blank=trained.add_blank,
                              cleaner=trained.cleaner, mel_range=trained.mel_range)  # fmt: skip
    out_dir = Path(cfg.out_dir)
    rows = write_samples(
        synthesizer, items, out_dir, sample_rate=trained.mel_config.sample_rate, plots=cfg.plots,
        n_timesteps=cfg.n_timesteps, temperature=cfg.temperature, sampler=cfg.sampler,
        length_scale=cfg.length_scale, seed=cfg.seed,
    )  # fmt: skip
    log.info("wrote %d utterance(s) from step %d to %s", len(rows), trained.step, out_dir)
    return rows


@recipe_main("tts", "synthesize", required=("run_dir",), validate=validate_vocoder_config)
def main(cfg: DictConfig, output_dir: Path) -> None:
    synthesize(cfg)


if __name__ == "__main__":
    main()
