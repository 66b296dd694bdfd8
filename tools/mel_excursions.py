"""How far a trained speech model's raw mels leave the training range (issue 17: diverged top bands = clicks).

    python tools/mel_excursions.py runs/tts/experiments/huber_speech/*
    python tools/mel_excursions.py runs/tts/my_run --texts "A new sentence." "Another one." --out excursions.json

For each run: synthesizes its ``samples.texts`` (or ``--texts``) for its first sample speaker with the run's own
sampler settings, *without* the clamp that the recipe applies before vocoding, and compares every value with its
band's training range stored in the run (``mel_range``, measured from the training mels). Prints, per run, the
files with a value more than ``--margin`` (log units) above its band's maximum, how many such values, the largest
excess and its band; ``--out`` writes the rows as JSON. Runs trained before ranges were recorded are refused.
"""

from __future__ import annotations

from robust_gen.launch import start_process

start_process()  # before torch loads: idle OpenMP threads sleep; a mismatched torch trio exits with the fix

import argparse
import json
import sys
from pathlib import Path

import yaml

from robust_gen.speech.mel_range import DEFAULT_MARGIN, MelRange
from robust_gen.speech.synthesis import Synthesizer, load_trained
from robust_gen.speech.vocoder import GriffinLimVocoder


def measure_run(run: Path, texts: list[str] | None, margin: float, seed: int) -> dict:
    config = yaml.safe_load((run / "config.yaml").read_text())
    band_range = MelRange.from_config(config.get("mel_range"))
    if band_range is None:
        raise ValueError(f"{run}: no mel_range in config.yaml (trained before ranges were recorded); retrain it")
    samples = config.get("samples") or {}
    trained = load_trained(run)
    speaker = (samples.get("speakers") or [next(iter(trained.speakers))])[0]
    texts = texts or list(samples.get("texts") or [])
    if not texts:
        raise ValueError(f"{run}: no samples.texts in its config; pass --texts")
    synthesizer = Synthesizer(trained.model, trained.speakers, GriffinLimVocoder(n_iter=1), mel_range=None)
    mels = synthesizer.mels(texts, [speaker] * len(texts), n_timesteps=int(samples.get("n_timesteps", 10)),
                            temperature=float(samples.get("temperature", 1.5)),
                            sampler=str(samples.get("sampler", "euler_ode")),
                            length_scale=float(samples.get("length_scale", 1.0)), seed=seed)  # fmt: skip
    return {"run": str(run), "step": trained.step, "speaker": speaker, **band_range.excursions(mels, margin)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories of the speech recipe")
    parser.add_argument("--texts", nargs="+", help="sentences to synthesize (default: each run's samples.texts)")
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help="log units above the band maximum")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--out", type=Path, help="write the rows as JSON")
    args = parser.parse_args(argv)
    rows = []
    for run in args.runs:
        try:
            row = measure_run(run, args.texts, args.margin, args.seed)
        except (FileNotFoundError, ValueError) as error:
            parser.exit(2, f"mel_excursions: error: {error}\n")
        rows.append(row)
        print(f"{run}: {row['files_above']} of {row['files']} files with a value > {args.margin:g} above its band's "
              f"training maximum ({row['values_above']} values); largest excess {row['max_excess']:+.2f} in band "
              f"{row['worst_band']}")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
