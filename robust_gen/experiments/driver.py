"""The study driver: train a study's sweep, sample and evaluate every run, write its report.

Each step is skipped when its output exists, so an interrupted study resumes where it stopped. The steps run the
recipes as subprocesses from the repository root (``recipes/<recipe>/train.py -m +experiment=<overlay>``, then
``recipes/image/sample.py`` / ``evaluate.py`` or ``tools/speaker_sim.py`` per run); ``tools/run_experiment.py`` is
the command line.

On many machines the sweep goes through a Hydra launcher instead (``launcher="submitit_slurm"``, or
``hydra/launcher=submitit_local|submitit_slurm|joblib`` on the training command itself): every job trains, then
samples and evaluates its own run (:func:`finish_run`, switched on by ``finish.sample`` / ``finish.evaluate``), so
no driver loop waits on the cluster; the report is gathered afterwards from the run directories
(``--report-only``). A job warned of pre-emption (SIGUSR1 before a time limit, or SIGTERM) checkpoints the step it
is on and asks submitit to requeue it (:func:`preemption_signals`, :func:`requeue_if_stopped`); the requeued job
resumes from that checkpoint exactly.

Examples
--------
>>> merge_overrides(["a=1", "b=2"], ["a=3"])
['a=3', 'b=2']
>>> path_override("run_dir", "runs/image/a=1,b=2")
"run_dir='runs/image/a=1,b=2'"
"""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from robust_gen.experiments.report import (
    BOOKKEEPING_KEYS,
    collect_runs,
    collect_series,
    flatten,
    write_study_report,
)
from robust_gen.experiments.studies import STUDIES

__all__ = [
    "REPO",
    "Runner",
    "clean_run",
    "control_tags",
    "finish_run",
    "image_study",
    "launcher_overrides",
    "merge_overrides",
    "path_override",
    "preemption_signals",
    "requeue_if_preempted",
    "run_study",
    "speech_study",
]

log = logging.getLogger(__name__)

#: The repository root: the recipes and tools the driver runs live there.
REPO = Path(__file__).resolve().parents[2]

SHARED_AUTOENCODER_STEPS = 1  # the prep run trains the autoencoder, then one diffusion step


def compose_train_config(recipe: str, overlay: str, extra: list[str]) -> dict:
    """The composed training config of an overlay (with ``hydra``), as plain data."""
    from omegaconf import OmegaConf

    from robust_gen.training.recipe import compose_config

    # only what names the sweep folder: the rest may be sweeps (a,b), which compose does not take
    sweep_only = [o for o in extra if o.startswith(("hydra.sweep.dir=", "study.name="))]
    cfg = compose_config(recipe, "train", [f"+experiment={overlay}", *sweep_only], return_hydra_config=True)
    return {"study": OmegaConf.to_container(cfg.study, resolve=False), "sweep_dir": str(cfg.hydra.sweep.dir)}


class Runner:
    def __init__(self, dry_run: bool, log_dir: Path) -> None:
        self.dry_run, self.log_dir = dry_run, log_dir

    def __call__(self, args: list[str], name: str) -> None:
        print("$ " + shlex.join(args), flush=True)
        if self.dry_run:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with log.open("a") as handle:
            result = subprocess.run(args, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, check=False)
        if result.returncode != 0:
            tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
            raise SystemExit(f"run_experiment: step failed ({result.returncode}): {shlex.join(args)}\n"
                             f"--- last lines of {log} ---\n{tail}")  # fmt: skip


def path_override(key: str, path: str | Path) -> str:
    """``key='path'``: run folders are named after their overrides (``a=1,b=2``), which Hydra's override grammar
    would otherwise read as more overrides."""
    text = str(path)
    if "'" in text:
        raise SystemExit(f"run_experiment: paths with a single quote are not supported: {text}")
    return f"{key}='{text}'"


def merge_overrides(*groups: list[str]) -> list[str]:
    """Overrides in order, a later value of the same key replacing an earlier one (Hydra refuses duplicates).

    >>> merge_overrides(["a=1", "b=2"], ["a=3"])
    ['a=3', 'b=2']
    """
    merged: dict[str, str] = {}
    for override in (o for group in groups for o in group):
        merged[override.split("=", 1)[0]] = override
    return list(merged.values())


def _check_filled(overrides: list[str], where: str) -> None:
    missing = [o for o in overrides if o.endswith("=???")]
    if missing:
        raise SystemExit(
            f"run_experiment: {where} leaves {missing} to be set: pass e.g. --sample-args/--eval-args "
            f"'{missing[0].replace('???', '<value>')}'"
        )


def shared_autoencoder(run: Runner, root: Path) -> list[str]:
    """Train (once) the tiny autoencoder and return the overrides that make every run use it and its cache."""
    shared = root / "_shared_autoencoder"
    if not (shared / "autoencoder" / "config.json").is_file():
        run([sys.executable, "recipes/image/train.py", path_override("hydra.run.dir", shared),
             f"trainer.max_steps={SHARED_AUTOENCODER_STEPS}", "trainer.progress=false"], "shared_autoencoder")  # fmt: skip
    return [
        "autoencoder=pretrained",
        path_override("autoencoder.path", (shared / "autoencoder").resolve()),
        path_override("latents.cache_dir", (root / "_shared_latents").resolve()),
    ]


def _run_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p.parent for p in sweep_dir.glob("*/config.yaml") if (p.parent / "checkpoints").is_dir())


def _config(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text())


def _settings(cfg: dict) -> dict:
    """The run's settings apart from its corruption: bookkeeping and values measured from the data (the
    report's :data:`~robust_gen.experiments.report.BOOKKEEPING_KEYS`, e.g. a speech run's ``mel_range``) left out."""
    flat = flatten(cfg)
    return {k: v for k, v in flat.items() if not k.startswith("corruption.") and k not in BOOKKEEPING_KEYS}


def clean_run(run_dir: Path, runs: list[Path]) -> Path | None:
    """The run with corruption ratio 0 and otherwise the same settings (loss, seed, ...) as ``run_dir``.

    Entries measured from the training data (``mel_range``: each corruption draw has its own) and bookkeeping
    (thread count, cache folders) do not count as settings: the report's ``BOOKKEEPING_KEYS``, one list for both.

    Examples
    --------
    >>> import tempfile, yaml
    >>> root = Path(tempfile.mkdtemp())
    >>> def run(name, ratio, high, lr=1e-3):
    ...     (root / name).mkdir()
    ...     config = {"corruption": {"ratio": ratio}, "mel_range": {"high": [high]}, "trainer": {"lr": lr}}
    ...     (root / name / "config.yaml").write_text(yaml.safe_dump(config))
    ...     return root / name
    >>> runs = [run("clean", 0.0, 1.0), run("clean_other_lr", 0.0, 1.0, lr=0.5), run("dirty", 0.4, 2.0)]
    >>> clean_run(runs[2], runs).name
    'clean'
    """
    cfg = _config(run_dir)
    if cfg["corruption"]["ratio"] == 0:
        return None
    for other in runs:
        o = _config(other)
        if o["corruption"]["ratio"] == 0 and _settings(o) == _settings(cfg):
            return other
    return None


def _sample_stamps(run_dir: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (run_dir / "samples").glob("*/images.npz")}


def sample_with_control(run_dir: Path, overrides: list[str], control: list[float]) -> None:
    """recipes/image/sample.py's ``sample`` with ``control_values`` set, in this process (the driver then renames
    the new sample folder to its study tag)."""
    from omegaconf import open_dict

    from robust_gen.training.recipe import compose_config

    module = _load_recipe("sample")
    cfg = compose_config("image", "sample", [path_override("run_dir", run_dir), *overrides])
    with open_dict(cfg):
        cfg.control_values = [float(v) for v in control]
    module.sample(cfg)


def control_tags(run_dir: Path, study: dict) -> list[tuple[str, list[float]]]:
    """The sample tags a study draws with explicit control values, each with its values: for Berrada et al.'s
    study (``study.shifted_crop``) the run's default control (``centred``) and the same with the crop offsets moved
    (``shifted``), the same seeds and labels, only the crop condition changed; ``[]`` for every other study.

    >>> import tempfile
    >>> run = Path(tempfile.mkdtemp())
    >>> _ = (run / "image_meta.json").write_text('{"sample_control": [4, 4, 40, 40, 0]}')
    >>> control_tags(run, {"shifted_crop": [0, 0]})
    [('centred', [4, 4, 40, 40, 0]), ('shifted', [0, 0, 40, 40, 0])]
    >>> control_tags(run, {"sample": []})
    []
    """
    if "shifted_crop" not in study:
        return []
    centred = list(json.loads((run_dir / "image_meta.json").read_text())["sample_control"])
    return [("centred", centred), ("shifted", [*study["shifted_crop"], *centred[2:]])]


def _sample_tag(
    dry_run: bool, run_dir: Path, overrides: list[str], tag: str, control: list[float], force: bool
) -> bool:
    """Sample ``run_dir`` with ``control`` into ``samples/<tag>`` (sample.py names its folders
    <sampler><steps>_g<scale>, with no room for the control values, so the new folder is renamed)."""
    target = run_dir / "samples" / tag
    if (target / "images.npz").is_file() and not force:
        return False
    print(
        f"$ (in process) recipes/image/sample.py run_dir={run_dir} {shlex.join(overrides)} control={control}"
    )
    if dry_run:
        return False
    before = _sample_stamps(run_dir)
    sample_with_control(run_dir, overrides, control)
    written = [name for name, stamp in _sample_stamps(run_dir).items() if before.get(name) != stamp]
    written = [
        name for name in written if name not in ("centred", "shifted") and not name.startswith("step_")
    ]
    if len(written) != 1:
        raise SystemExit(f"run_experiment: expected one new sample folder in {run_dir}/samples for tag {tag!r} "
                         f"(one guidance scale), got {written}")  # fmt: skip
    if target.exists():
        shutil.rmtree(target)
    (run_dir / "samples" / written[0]).rename(target)
    (target / "study_control.json").write_text(json.dumps({"tag": tag, "control": control}))
    return True


def image_study(
    run: Runner, runs: list[Path], force: bool, sample_args: list[str], eval_args: list[str]
) -> None:
    for run_dir in runs:
        study = _config(run_dir)["study"]
        overrides = merge_overrides(study["sample"], sample_args)
        _check_filled(overrides, f"{run_dir}/config.yaml study.sample")
        tags = control_tags(run_dir, study)
        for tag, control in tags:
            _sample_tag(run.dry_run, run_dir, overrides, tag, control, force)
        if not tags and (force or not any((run_dir / "samples").glob("*_g*/images.npz"))):
            run(
                [sys.executable, "recipes/image/sample.py", path_override("run_dir", run_dir), *overrides],
                "sample",
            )
    for run_dir in runs:
        study = _config(run_dir)["study"]
        if (run_dir / "eval" / "metrics.json").is_file() and not force:
            continue
        overrides = merge_overrides(study["evaluate"], eval_args)
        _check_filled(overrides, f"{run_dir}/config.yaml study.evaluate")
        clean = clean_run(run_dir, runs) if study.get("clean_reference") else None
        extra = [path_override("clean_run_dir", clean)] if clean is not None else []
        run(
            [
                sys.executable,
                "recipes/image/evaluate.py",
                path_override("run_dir", run_dir),
                *overrides,
                *extra,
            ],
            "evaluate",
        )


def _load_recipe(name: str) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"image_{name}_recipe", REPO / "recipes" / "image" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _beside_running_hydra() -> Iterator[None]:
    """Let ``compose_config`` run inside a Hydra job (which holds Hydra's global state): set that state aside
    while composing the sample / evaluate configs, and put it back after."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    running = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    job_cfg = HydraConfig.instance().cfg
    GlobalHydra.instance().clear()
    try:
        yield
    finally:
        GlobalHydra.instance().clear()
        if running is not None:
            GlobalHydra.instance().initialize(running)
        HydraConfig.instance().cfg = job_cfg


def finish_run(run_dir: str | Path, *, sample: bool = True, evaluate: bool = True, sample_args: Sequence[str] = (),
               evaluate_args: Sequence[str] = ()) -> dict:
    """Sample and evaluate one trained image run in this process: what a launcher job does after training.

    The overrides are the run's ``study.sample`` / ``study.evaluate`` (from its ``config.yaml``, when it was trained
    under a study overlay) followed by ``sample_args`` / ``evaluate_args``. A step whose output exists is skipped,
    so a requeued job does not redo it. Resilience against a clean run (``study.clean_reference``) needs that other
    run's samples, which a parallel job cannot wait for: it is left to ``tools/run_experiment.py --skip-train``.
    Returns ``{"samples": [...folders], "metrics": path or None}``.
    """
    from robust_gen.training.recipe import compose_config

    run_dir = Path(run_dir)
    study = _config(run_dir).get("study") or {}
    done: dict[str, Any] = {"samples": [], "metrics": None}
    tags = control_tags(run_dir, study)
    if sample and (tags or not any((run_dir / "samples").glob("*_g*/images.npz"))):
        overrides = merge_overrides(list(study.get("sample", [])), list(sample_args))
        _check_filled(overrides, f"{run_dir}/config.yaml study.sample")
        if tags:  # the study's own tags (centred / shifted crop), as the driver draws them
            with _beside_running_hydra():
                for tag, control in tags:
                    if _sample_tag(False, run_dir, overrides, tag, control, force=False):
                        done["samples"].append(str(run_dir / "samples" / tag))
        else:
            with _beside_running_hydra():
                cfg = compose_config("image", "sample", [path_override("run_dir", run_dir), *overrides])
            done["samples"] = _load_recipe("sample").sample(cfg)
    metrics = run_dir / "eval" / "metrics.json"
    if evaluate and not metrics.is_file():
        overrides = merge_overrides(list(study.get("evaluate", [])), list(evaluate_args))
        _check_filled(overrides, f"{run_dir}/config.yaml study.evaluate")
        with _beside_running_hydra():
            cfg = compose_config("image", "evaluate", [path_override("run_dir", run_dir), *overrides])
        _load_recipe("evaluate").evaluate(cfg)
    done["metrics"] = str(metrics) if metrics.is_file() else None
    return done


def _is_submitit_handler(handler: Any) -> bool:
    """submitit's job handler for its pre-emption signal (it checkpoints the job's callable and requeues it)."""
    return getattr(handler, "__name__", "") == "checkpoint_and_try_requeue"


@contextlib.contextmanager
def preemption_signals() -> Iterator[dict]:
    """While training: SIGUSR1 (SLURM's / submitit's warning before a time limit or pre-emption) stops the trainer
    the way SIGTERM does: the step finishes, a checkpoint is written, ``fit`` returns.

    Yields a dict whose ``"signal"`` names the signal received (or None) and whose ``"requeue"`` is submitit's
    handler when the process is a submitit job (else None), for :func:`requeue_if_stopped`.

    Examples
    --------
    >>> with preemption_signals() as state:
    ...     state["signal"], state["requeue"]
    (None, None)
    """
    state: dict[str, Any] = {"signal": None, "requeue": None}
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield state
        return
    previous = signal.getsignal(signal.SIGUSR1)
    state["requeue"] = previous if _is_submitit_handler(previous) else None

    def stop_training(signum: int, frame: Any) -> None:
        state["signal"] = signal.Signals(signum).name
        trainer_handler = signal.getsignal(signal.SIGTERM)  # the trainer's while it trains: finish, checkpoint
        if callable(trainer_handler) and not _is_submitit_handler(trainer_handler):
            trainer_handler(signum, frame)

    signal.signal(signal.SIGUSR1, stop_training)
    try:
        yield state
    finally:
        signal.signal(signal.SIGUSR1, previous)


def requeue_if_preempted(state: dict) -> bool:
    """After training stopped on a signal (:class:`~robust_gen.training.interrupt.StopRequested`, checkpoint
    written): when the stop was SIGUSR1 in a submitit job, log it and call submitit's handler, which requeues the job
    and exits this process; otherwise return False (the stop then ends the process with 128 + signal, and the same
    command resumes).

    Examples
    --------
    >>> requeue_if_preempted({"signal": None, "requeue": None}), requeue_if_preempted({"signal": "SIGUSR1", "requeue": None})
    (False, False)
    """
    if state.get("signal") is None or state.get("requeue") is None:
        return False
    log.warning("pre-empted (%s): checkpoint written, requeueing the job", state["signal"])
    state["requeue"](signal.SIGUSR1, None)  # submitit: pickles the job, requeues it, exits
    return True


def launcher_overrides(launcher: str, sample_args: list[str], eval_args: list[str]) -> list[str]:
    """The training overrides that send a sweep through a Hydra launcher with sampling and evaluation in each job.

    Examples
    --------
    >>> launcher_overrides("submitit_slurm", ["num_images=10"], [])
    ['hydra/launcher=submitit_slurm', 'finish.sample=true', 'finish.evaluate=true', "finish.sample_args=['num_images=10']", 'finish.evaluate_args=[]']
    """
    def listed(items: list[str]) -> str:
        return "[" + ",".join(f"'{item}'" for item in items) + "]"

    return [f"hydra/launcher={launcher}", "finish.sample=true", "finish.evaluate=true",
            f"finish.sample_args={listed(sample_args)}", f"finish.evaluate_args={listed(eval_args)}"]


def speech_study(run: Runner, runs: list[Path], force: bool) -> None:
    from robust_gen.speech.data.corpus import DEFAULT_VOICES, default_corpus_root

    for run_dir in runs:
        out = run_dir / "speaker_sim"
        if (out / "speaker_similarity.json").is_file() and not force:
            continue
        cfg = _config(run_dir)
        data = cfg["data"]
        # identification needs several reference voices: the espeak corpus has them (one folder each); another
        # corpus only when the study says so (study.identify), as a one-speaker filelist would fail
        identify = bool(cfg["study"].get("identify", False))
        if data.get("source") == "espeak" and data.get("root") is None:
            voices = data.get("voices") or DEFAULT_VOICES
            refs = default_corpus_root(voices, data["utterances_per_voice"], data["corpus_seed"])
            identify = identify or len(voices) > 1
        else:
            refs = data.get("filelist") or data.get("root")
        clean = clean_run(run_dir, runs) if cfg["study"].get("clean_reference") else None
        args = [sys.executable, "tools/speaker_sim.py", "--model", cfg["study"]["speaker_model"], "--refs",
                str(refs), "--runs", str(run_dir), "--out", str(out), "--no-progress",
                # flag, not exclude: a run whose samples are all unusable still gets its row and its count
                "--activity", str(cfg["study"].get("activity", "flag")),
                "--ceiling"]  # the vocoded-real ceiling beside every similarity (cached: measured once)  # fmt: skip
        if identify:
            args.append("--identify")
        if data.get("contaminant_speaker"):
            args += ["--compare-to", str(data["contaminant_speaker"])]
        if clean is not None:
            args += ["--clean-run", str(clean)]
        run(args, "speaker_sim")




def run_study(
    study: str,
    *,
    scale: str = "cpu",
    train_overrides: Sequence[str] = (),
    report_only: bool = False,
    skip_train: bool = False,
    force: bool = False,
    dry_run: bool = False,
    shared_first_stage: bool = True,
    sample_args: Sequence[str] = (),
    eval_args: Sequence[str] = (),
    out: str | Path | None = None,
    launcher: str | None = None,
    overlays: Sequence[str] | None = None,
) -> int:
    """Run ``study`` end to end (see the module docstring); returns a process exit code.

    ``overlays``: train only these of the study's overlays (a multi-overlay study trimmed to the comparison at
    hand; the CPU-scale names, ``_paper`` is added at paper scale); sampling, evaluation and the report still
    cover every run in the study's folder.

    ``launcher`` (image studies): the Hydra launcher of the sweep (``submitit_slurm``, ``submitit_local``,
    ``joblib``); every job then samples and evaluates its own run (:func:`launcher_overrides`).
    """
    spec = STUDIES[study]
    recipe = spec.recipe
    if overlays:
        unknown = [o for o in overlays if o not in spec.overlays]
        if unknown:
            raise SystemExit(f"run_experiment: {study} has no overlay {', '.join(unknown)}; its overlays: "
                             f"{', '.join(spec.overlays)}")
        overlays = [o for o in spec.overlays if o in overlays]  # the study's order: the report expects it
    else:
        overlays = list(spec.overlays)
    if scale == "paper":
        overlays = [f"{o}_paper" for o in overlays]
    composed = compose_train_config(recipe, overlays[0], list(train_overrides))
    sweep_dir = REPO / composed["sweep_dir"]
    name = composed["study"]["name"]
    run = Runner(dry_run, REPO / "runs" / "logs" / name)

    if not report_only:
        extra = list(train_overrides)
        if recipe == "image" and scale == "cpu" and shared_first_stage:
            extra += shared_autoencoder(run, sweep_dir.parent)
        if launcher is not None:
            if recipe != "image":
                raise SystemExit("run_experiment: --launcher runs sampling and evaluation inside image jobs; speech "
                                 "studies run speaker similarity afterwards: run them without --launcher")
            extra += launcher_overrides(launcher, list(sample_args), list(eval_args))
        if not skip_train:
            for overlay in overlays:
                run([sys.executable, f"recipes/{recipe}/train.py", "-m", f"+experiment={overlay}",
                     "trainer.progress=false", *extra], f"train_{overlay}")  # fmt: skip
        runs = _run_dirs(sweep_dir) if not dry_run else []
        if recipe == "image":
            image_study(run, runs, force, list(sample_args), list(eval_args))
        else:
            speech_study(run, runs, force)
    if dry_run:
        return 0
    records = collect_runs([sweep_dir])
    series = collect_series([sweep_dir])
    out = Path(out) if out else REPO / "reports" / name
    files = write_study_report(records, spec, out, series=series)
    print(Path(files["md"]).read_text())
    print(f"{len(records)} runs; wrote " + ", ".join(str(p) for p in files.values()))
    return 0
