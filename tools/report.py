"""Tables and plots of an experiment from its run directories (seeds aggregated: mean ± std, n).

    python tools/report.py slight_label runs/image/experiments/slight_label --out reports/slight_label
    python tools/report.py huber_speech runs/tts/experiments/huber_speech --out reports/huber_speech
    python tools/report.py custom runs/image/my_sweep --by corruption.ratio loss.method --x corruption.ratio \\
        --metric eval.best.fid --where condition.kind=class

Studies: slight_label, slight_caption, huber_image, huber_speech, conditioning (robust_gen/experiments/studies.py), or
``custom`` (rows: --by, default every config key that varies between the runs but the seeds). Writes
<out>/report.md, report.csv (aggregated), report_runs.csv (every run), report_<metric>.png and, for per-step
results, report_series.csv / report_series_<metric>.png.
"""

from __future__ import annotations

from robust_gen.launch import start_process

# no torch here (the recipes it runs check the torch trio themselves): skip the ~2 s check
start_process(check_torch=False)

import argparse
import dataclasses
import sys
from pathlib import Path

import yaml

from robust_gen.experiments.report import (
    collect_runs,
    collect_series,
    varying_keys,
    write_study_report,
)
from robust_gen.experiments.studies import STUDIES, StudySpec


def _where(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--where takes key=value, got {text!r}")
    return key, yaml.safe_load(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("study", choices=[*STUDIES, "custom"], help="which study's table and plots")
    parser.add_argument(
        "roots", nargs="+", help="run directories or folders holding them (searched recursively)"
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--by", nargs="+", help="row keys (replace the study's)")
    parser.add_argument("--x", help="plot x axis (one of the row keys)")
    parser.add_argument("--metric", nargs="+", help="result keys to show (replace the study's)")
    parser.add_argument("--where", nargs="+", type=_where, default=[], help="keep runs with key=value")
    parser.add_argument("--name", default="report", help="file name stem")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        records = collect_runs(args.roots)
        series = collect_series(args.roots)
        for key, value in args.where:
            records = [r for r in records if r.get(key) == value]
            series = [r for r in series if r.get(key) == value]
        if not records:
            parser.exit(2, f"report: error: no run left after --where {args.where}\n")
        spec = STUDIES.get(args.study)
        if spec is None:
            by = tuple(args.by or varying_keys(records) or ["loss.method"])
            metrics = tuple(
                args.metric or sorted({k for r in records for k in r if k.startswith("eval.best.")})
            )
            spec = StudySpec("custom", by=by, x=args.x or by[0], metrics=metrics)
        else:
            # the study's own settings (claims included), with the command line's row keys / axis / metrics
            spec = dataclasses.replace(
                spec, by=tuple(args.by or spec.by), x=args.x or spec.x, metrics=tuple(args.metric or spec.metrics)
            )
        if spec.x not in spec.by:
            parser.exit(2, f"report: error: --x {spec.x!r} must be one of the row keys {list(spec.by)}\n")
        files = write_study_report(records, spec, Path(args.out), name=args.name, series=series)
    except (FileNotFoundError, ValueError) as error:
        parser.exit(2, f"report: error: {error}\n")
    print(Path(files["md"]).read_text())
    print(f"{len(records)} runs; wrote " + ", ".join(str(p) for p in files.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
