"""Run one study end to end: the training sweep, sampling + evaluation of every run, and the report.

    python tools/run_experiment.py slight_label                 # CPU scale (embedded digits, tiny models)
    python tools/run_experiment.py huber_speech
    python tools/run_experiment.py slight_label --scale paper -- corruption.ratio=0,0.025 data.limit=100000
    python tools/run_experiment.py slight_label --report-only
    python tools/run_experiment.py slight_label --sample-args num_images=50 -- cep=none,uniform \\
        corruption.ratio=0,0.05 trainer.max_steps=30          # a smoke run of the pipeline

Studies (configs/<recipe>/experiment/<overlay>.yaml; --scale paper selects <overlay>_paper.yaml):
  slight_label    label flips x {no CEP, CEP-U, CEP-G}, class-conditional       (Chen et al. 2024)
  slight_caption  caption swaps x {no CEP, CEP-U, CEP-G}, text-conditional      (Chen et al. 2024)
  huber_image     one concept + 15/30/45 % outliers x five losses, resilience   (Khrapov et al. 2024)
  huber_speech    target speaker + another's utterances x {L2, pseudo-Huber}    (Khrapov et al. 2024)
  conditioning    entangled vs disentangled control, centred vs shifted crop    (Berrada et al. 2024)

Steps (each skipped when its output exists, so an interrupted study resumes where it stopped; --force redoes
sampling and evaluation): [image, CPU scale] train one shared autoencoder and latent cache for all runs;
the Hydra multirun(s); per run recipes/image/sample.py and evaluate.py with the overlay's ``study.sample`` and
``study.evaluate`` overrides (resilience against the ratio-0 run of the same loss and seed where
``study.clean_reference``), or tools/speaker_sim.py for speech; tools/report.py's tables and plots into
reports/<study>[_paper]/. Arguments after ``--`` are added to every training command.

With ``--launcher submitit_slurm`` (or submitit_local, joblib; image studies) the sweep's jobs go through that
Hydra launcher and each one samples and evaluates its own run (``finish.*``); set the launcher's own settings
after ``--`` (``hydra.launcher.partition=... hydra.launcher.timeout_min=...``). Resilience against the clean
run is then computed by a later ``--skip-train --force`` pass.
"""

from __future__ import annotations

from robust_gen.launch import start_process

# no torch here (the recipes it runs check the torch trio themselves): skip the ~2 s check
start_process(check_torch=False)

import argparse
import sys

from robust_gen.experiments.driver import run_study
from robust_gen.experiments.studies import STUDIES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("study", choices=list(STUDIES))
    parser.add_argument("--scale", choices=["cpu", "paper"], default="cpu")
    parser.add_argument("--report-only", action="store_true", help="only (re)write the report")
    parser.add_argument("--skip-train", action="store_true", help="sample / evaluate / report existing runs")
    parser.add_argument("--force", action="store_true", help="redo sampling and evaluation")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--no-shared-autoencoder", action="store_true",
                        help="CPU scale: let every run train its own autoencoder (slower)")  # fmt: skip
    parser.add_argument(
        "--sample-args", nargs="*", default=[], help="extra recipes/image/sample.py overrides"
    )
    parser.add_argument(
        "--eval-args", nargs="*", default=[], help="extra recipes/image/evaluate.py overrides"
    )
    parser.add_argument("--out", help="report folder (default reports/<study>[_paper])")
    parser.add_argument("--launcher", help="Hydra launcher of the sweep (submitit_slurm, submitit_local, joblib): "
                        "each job then samples and evaluates its own run")
    parser.add_argument("--overlays", nargs="+", metavar="OVERLAY",
                        help="train only these of the study's overlays (e.g. huber_image huber_image_delta); the "
                        "report still covers every run in the study's folder")
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.train_overrides = argv[split + 1 :]  # after --: overrides for every training command

    return run_study(
        args.study, scale=args.scale, train_overrides=args.train_overrides, report_only=args.report_only,
        skip_train=args.skip_train, force=args.force, dry_run=args.dry_run,
        shared_first_stage=not args.no_shared_autoencoder, sample_args=args.sample_args, eval_args=args.eval_args,
        out=args.out, launcher=args.launcher, overlays=args.overlays,
    )


if __name__ == "__main__":
    sys.exit(main())
