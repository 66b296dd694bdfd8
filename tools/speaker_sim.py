"""Speaker similarity of synthesized speech to reference recordings (pseudo-Huber paper, Figures 3-4).

    python tools/speaker_sim.py --model runs/speaker/default/model \\
        --refs ~/.cache/robust_gen/corpus/espeak-<digest> --runs runs/tts/l2 runs/tts/huber --clean-run runs/tts/clean
    python tools/speaker_sim.py --refs refs/filelist.txt --synth "out/*.wav" --device cuda   # hub ECAPA model

Writes beside what it scored (<run>/speaker_sim/ for one --runs folder; see --out): speaker_similarity.csv (one row per file), speaker_similarity.json (mean / std per speaker
and overall, counts below each threshold, skipped files), and with several steps or runs per_step.csv,
similarity_over_steps.png and (with --clean-run) resilience.csv. No network? Train the offline model with
``python recipes/speaker/train.py`` and pass ``--model runs/speaker/default/model``.

What a similarity means (study 3 passes all three; issue 17):

* ``--compare-to us_m1``: each file's similarity to another speaker's centroid too (the contaminant);
* ``--identify``: each file's nearest centroid among every reference speaker (give the folder of all voices);
  per step, the share named as their own speaker;
* ``--ceiling``: the vocoded-real ceiling of each synthesized speaker: its last ``--ceiling-files`` references
  (sorted) are held out, turned into log-mels and back through the vocoder the samples went through (the ``mel``
  and ``vocoder`` of the ``--runs``' config.yaml; runs that differ in them are scored separately; without runs,
  the recipe's defaults in configs/tts/train.yaml, Griffin-Lim), and scored against its other references;
  printed beside the similarity and cached under the cache folder.
"""

from __future__ import annotations

from robust_gen.launch import start_process

start_process()  # before torch loads: idle OpenMP threads sleep; a mismatched torch trio exits with the fix

import argparse
import sys
from pathlib import Path

import yaml

from robust_gen.environment import default_cache_dir
from robust_gen.speaker import (
    ACTIVITY_MODES,
    DEFAULT_HUB_MODEL,
    DEFAULT_THRESHOLDS,
    ActivityCheck,
    CeilingSpec,
    SpeakerEmbedder,
    SpeakerModelUnavailable,
    default_out_dir,
    evaluate_speaker_similarity,
    headline,
    load_speaker_encoder,
    model_threshold,
    threshold_key,
)

REPO = Path(__file__).resolve().parents[1]
TTS_CONFIG = REPO / "configs" / "tts" / "train.yaml"


def recipe_vocoder_settings(config: Path = TTS_CONFIG) -> dict:
    """The ``mel`` and ``vocoder`` sections of a speech config (a run's config.yaml, or the recipe's defaults):
    what that run's samples go through."""
    try:
        cfg = yaml.safe_load(config.read_text())
        return {"mel": dict(cfg["mel"]), "vocoder": {k: v for k, v in cfg["vocoder"].items() if v is not None}}
    except (OSError, yaml.YAMLError, KeyError, TypeError) as error:
        raise ValueError(f"--ceiling reads the mel and vocoder settings from {config}: {error}") from None


def runs_vocoder_settings(runs: list[str]) -> dict:
    """The ``mel`` and ``vocoder`` the ``runs`` were trained and sampled with (their config.yaml), so that the
    ceiling goes through the same path as their samples; the recipe's defaults when no run names them. Runs that
    differ get one error: a single ceiling cannot stand for both."""
    found: dict[str, dict] = {}
    for run in runs:
        config = Path(run) / "config.yaml"
        if not config.is_file():
            continue
        cfg = yaml.safe_load(config.read_text()) or {}
        if isinstance(cfg, dict) and "mel" in cfg and "vocoder" in cfg:
            found[str(run)] = recipe_vocoder_settings(config)
    if not found:
        return recipe_vocoder_settings()
    (first, settings), *others = found.items()
    for run, other in others:
        if other != settings:
            raise ValueError(f"--ceiling: {run} was sampled with other mel or vocoder settings than {first} "
                             f"({other} vs {settings}); score them in separate calls")  # fmt: skip
    return settings


def ceiling_spec(held_out: int, device: str, runs: list[str] = ()) -> CeilingSpec:
    """Held-out real files through the runs' features and vocoder (the recipe's defaults without runs; imported
    here: the speaker package does not import the speech models)."""
    from robust_gen.speech.data.mel import MelConfig
    from robust_gen.speech.vocoder import build_vocoder

    settings = runs_vocoder_settings(list(runs))
    mel_config = MelConfig(**settings["mel"])
    options = {k: v for k, v in settings["vocoder"].items() if k != "kind"}
    vocoder = build_vocoder(settings["vocoder"]["kind"], mel_config=mel_config, device=device, **options)
    return CeilingSpec(vocoder, settings["vocoder"], held_out=held_out, mel_config=mel_config)


def _thresholds(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--thresholds must be comma-separated numbers, got {text!r}"
        ) from None
    if not values or any(not -1.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"--thresholds must be cosines in [-1, 1], got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--refs",
        nargs="+",
        required=True,
        help="reference audio: files, globs, a folder with one sub-folder per speaker, or a path|text|speaker filelist",
    )
    parser.add_argument(
        "--synth",
        nargs="+",
        default=[],
        help="synthesized audio: files, globs, folders, or run directories (samples/*/samples.jsonl)",
    )
    parser.add_argument(
        "--runs", nargs="+", default=[], help="run directories of the speech recipe, one curve each"
    )
    parser.add_argument(
        "--clean-run",
        help="run trained on clean data: resilience = mean similarity of a run minus the clean run's, per step",
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_HUB_MODEL,
        help=f"SpeechBrain EncoderClassifier: hub id or local directory (default {DEFAULT_HUB_MODEL})",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=16, help="files per forward pass")
    parser.add_argument(
        "--thresholds",
        type=_thresholds,
        default=list(DEFAULT_THRESHOLDS),
        help="comma-separated similarity thresholds; the model's calibrated one is added",
    )
    parser.add_argument(
        "--out", default=None,
        help="output folder (default: beside what was scored: <run>/speaker_sim for one run, <common folder of "
        "the runs>/speaker_sim for several, <folder of the first --synth input>/speaker_sim)",
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="reference-embedding cache folder (default <robust_gen cache>/speaker_embeddings)",
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="do not read or write the reference-embedding cache"
    )
    parser.add_argument(
        "--strict", action="store_true", help="fail on any unusable file instead of skipping and listing it"
    )
    parser.add_argument(
        "--hub-timeout", type=float, default=3.0, help="seconds to wait for the hub before failing"
    )
    parser.add_argument(
        "--activity", choices=ACTIVITY_MODES, default="exclude",
        help="files without usable speech (mostly silence or clicks): exclude (default), flag, or off",
    )
    parser.add_argument(
        "--min-active-share", type=float, default=ActivityCheck.min_active_share,
        help="least share of frames above the activity level (-45 dBFS) for a file to count as speech",
    )
    parser.add_argument(
        "--min-voiced-share", type=float, default=ActivityCheck.min_voiced_share,
        help="least share of active voiced frames (0 for breathy voices that YIN rarely finds voiced)",
    )
    parser.add_argument(
        "--compare-to", nargs="+", default=[], metavar="SPK",
        help="speakers whose similarity is also computed for every file (e.g. the contaminant); in --refs",
    )
    parser.add_argument(
        "--identify", action="store_true",
        help="name each file's nearest speaker among every reference speaker (--refs: all the voices)",
    )
    parser.add_argument(
        "--ceiling", action="store_true",
        help="the vocoded-real ceiling of each synthesized speaker, from held-out references (slow once, cached)",
    )
    parser.add_argument(
        "--ceiling-files", type=int, default=None, metavar="N",
        help="references held out per speaker for --ceiling (the last N, sorted; default 10)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be positive, got {args.batch_size}")
    if args.ceiling_files is not None and not args.ceiling:
        parser.error("--ceiling-files needs --ceiling")
    held_out = 10 if args.ceiling_files is None else args.ceiling_files
    if held_out < 1:
        parser.error(f"--ceiling-files must be positive, got {held_out}")
    try:
        encoder = load_speaker_encoder(args.model, device=args.device, hub_timeout=args.hub_timeout)
        embedder = SpeakerEmbedder(
            encoder, batch_size=args.batch_size, progress=False if args.no_progress else None
        )
        cache_dir = (
            None if args.no_cache else Path(args.cache_dir or default_cache_dir() / "speaker_embeddings")
        )
        result = evaluate_speaker_similarity(
            embedder, args.refs, args.synth, runs=args.runs, clean_run=args.clean_run,
            thresholds=args.thresholds, calibrated_threshold=model_threshold(args.model),
            out_dir=args.out or default_out_dir(args.synth, args.runs),
            cache_dir=cache_dir, strict=args.strict, model_name=str(args.model), activity=args.activity,
            activity_check=ActivityCheck(min_active_share=args.min_active_share,
                                         min_voiced_share=args.min_voiced_share),
            compare_to=args.compare_to, identify=args.identify,
            ceiling=ceiling_spec(held_out, args.device, args.runs) if args.ceiling else None,
        )  # fmt: skip
    except (SpeakerModelUnavailable, FileNotFoundError, ValueError) as error:
        parser.exit(2, f"speaker_sim: error: {error}\n")
    summary = result.summary
    for line in headline(summary):  # runs: the last step's mean first, then the trend
        print(line)
    if any(row["step"] is not None for row in summary["per_step"]):
        print("per speaker, all scored steps pooled:")
    for speaker, stats in summary["per_speaker"].items():
        print(f"  {speaker:>16s}  n={stats['count']:<4d} {stats['mean']:.3f} ± {stats['std']:.3f}")
    if summary["calibrated_threshold"] is not None:
        print(f"calibrated threshold of the model: {threshold_key(summary['calibrated_threshold'])}")
    for row in result.resilience:
        print(f"resilience {row['run']} step {row['step']}: {row['resilience']:+.4f}")
    if summary["activity"]["no_speech"]:
        verb = "excluded" if args.activity == "exclude" else "flagged"
        print(f"{verb} {summary['activity']['no_speech']} file(s) without usable speech", file=sys.stderr)
    if result.skipped:
        print(f"skipped {len(result.skipped)} file(s) (listed in {result.files['json']})", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in result.files.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
