"""Find the corrupted samples of a trained run: score every training sample, rank, check against the manifest.

    python tools/audit.py runs/image/flip20                       # label flips / caption swaps / outliers
    python tools/audit.py runs/tts/mix40 --kind speaker_contamination
    python tools/audit.py runs/image/flip20 --write-filter --filter-mode relabel
    python recipes/image/train.py corruption=label_flip corruption.ratio=0.2 data.exclude=runs/image/flip20/audit/filter.json

Writes RUN_DIR/audit/: summary.json (with the run's corruption manifest: roc_auc, average_precision and
precision at the true corruption count, for the audit's score and its baselines), ranked.csv (most suspicious
first: id, score, given, suggested, baselines), roc.png, and top_flagged.png (images) or top_flagged.txt
(speech). --write-filter adds filter.json, the data filter a recipe reads as data.exclude=<file>. What each score
is: docs/audit.md.
"""

from __future__ import annotations

from robust_gen.launch import start_process

start_process()  # before torch loads: idle OpenMP threads sleep; a mismatched torch trio exits with the fix

import argparse
import json
import sys
from pathlib import Path

KINDS = ("label_flip", "caption_swap", "outliers", "speaker_contamination")


def _levels(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--levels must be comma-separated fractions, got {text!r}") from None
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"--levels must be fractions in [0, 1] of the time range, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a trained image or tts run directory")
    parser.add_argument("--kind", choices=KINDS, help="what to look for (default: the manifest's corruption kind)")
    parser.add_argument("--levels", type=_levels, help="noise levels of the probe, fractions of the time range "
                        "(default 0.1,0.25,0.4,0.55,0.7)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the probe's fixed noise")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="output folder (default RUN_DIR/audit)")
    parser.add_argument("--top", type=int, default=64, help="top-flagged samples shown in the grid / list")
    parser.add_argument("--write-filter", action="store_true", help="write filter.json for data.exclude=<file>")
    parser.add_argument("--filter-mode", choices=("exclude", "relabel"), default="exclude",
                        help="leave the flagged samples out, or relabel them to the suggested label")
    parser.add_argument("--filter-count", type=int, help="how many top-ranked samples the filter takes (default: "
                        "those scoring above 0, i.e. fitting another condition better; needed for outliers/speech)")
    return parser


def _filter_count(args, audit) -> int:
    if args.filter_count is not None:
        return args.filter_count
    if audit.kind in ("label_flip", "caption_swap", "speaker_contamination"):
        return int((audit.scores > 0).sum())  # a margin: above 0 another condition explains the sample better
    sys.exit(f"--filter-count is needed for a {audit.kind} audit (its score has no natural threshold)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from robust_gen.audit import write_audit

    run_dir = args.run_dir
    out = args.out or run_dir / "audit"
    options = {"seed": args.seed, "batch_size": args.batch_size, "device": args.device}
    if args.levels:
        options["levels"] = args.levels
    if (run_dir / "image_meta.json").is_file():
        from robust_gen.image.audit import audit_image_run, save_top_grid

        audit, data = audit_image_run(run_dir, kind=args.kind, **options)
        num_samples, changed = data.num_records, data.manifest.changed_indices if data.manifest else None
        save_top_grid(data.images, audit.ranking(), out / "top_flagged.png", count=args.top)
    elif (run_dir / "speakers.json").is_file():
        from robust_gen.speech.audit import audit_speech_run, write_top_list

        audit, data = audit_speech_run(run_dir, **options)
        num_samples, changed = data.num_records, data.manifest.changed_indices if data.manifest else None
        write_top_list(audit, data, out / "top_flagged.txt", count=args.top)
    else:
        sys.exit(f"{run_dir} is neither an image run (image_meta.json) nor a tts run (speakers.json)")
    summary = write_audit(out, audit, changed, extra={"run_dir": str(run_dir)})
    if args.write_filter:
        data_filter = audit.to_filter(num_samples, _filter_count(args, audit), mode=args.filter_mode)
        data_filter.source["run"] = str(run_dir)
        data_filter.save(out / "filter.json")
        print(f"filter: {len(data_filter.exclude)} excluded, {len(data_filter.relabel)} relabelled -> "
              f"{out / 'filter.json'} (train with data.exclude={out / 'filter.json'})")
    headline = {k: summary.get(k) for k in ("kind", "num_samples", "num_corrupted", "roc_auc", "average_precision",
                                            "precision_at_k")}
    print(json.dumps(headline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
