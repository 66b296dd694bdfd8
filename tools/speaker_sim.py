"""Speaker similarity of synthesized speech to reference recordings (pseudo-Huber paper, Figures 3-4).

    python tools/speaker_sim.py --model runs/speaker/default/model \\
        --refs ~/.cache/robust_gen/corpus/espeak-<digest> --runs runs/tts/l2 runs/tts/huber --clean-run runs/tts/clean
    python tools/speaker_sim.py --refs refs/filelist.txt --synth "out/*.wav" --device cuda   # hub ECAPA model

Writes beside what it scored (<run>/speaker_sim/ for one --runs folder; see --out): speaker_similarity.csv (one row per file), speaker_similarity.json (mean / std per speaker
and overall, counts below each threshold, skipped files), and with several steps or runs per_step.csv,
similarity_over_steps.png and (with --clean-run) resilience.csv. No network? Train the offline model with
``python recipes/speaker/train.py`` and pass ``--model runs/speaker/default/model``.
"""

from __future__ import annotations

from robust_gen.launch import start_process

start_process()  # before torch loads: idle OpenMP threads sleep; a mismatched torch trio exits with the fix

import argparse
import sys
from pathlib import Path

from robust_gen.environment import default_cache_dir
from robust_gen.speaker import (
    ACTIVITY_MODES,
    DEFAULT_HUB_MODEL,
    DEFAULT_THRESHOLDS,
    ActivityCheck,
    SpeakerEmbedder,
    SpeakerModelUnavailable,
    default_out_dir,
    evaluate_speaker_similarity,
    headline,
    load_speaker_encoder,
    model_threshold,
    threshold_key,
)


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
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be positive, got {args.batch_size}")
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
