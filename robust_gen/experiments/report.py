"""Experiment reports: read run directories into flat records, aggregate over seeds, write Markdown / CSV / PNG.

The pipeline is made of pure functions on plain dicts so that it can be tested on synthetic run folders:

1. :func:`read_run` turns one run directory (``config.yaml`` + ``summary.json`` + ``eval/metrics.json`` +
   ``corruption_manifest.json`` + speaker-similarity output) into one flat record. Config keys keep their dotted
   names (``corruption.ratio``, ``loss.schedule``, ``cep.kind``, ``trainer.seed``); results live under reserved
   prefixes: ``train.*`` (summary.json), ``eval.<tag>.*`` (image evaluation; ``eval.best.*`` is the tag of lowest
   FID, Chen et al. 2024 report the best guidance scale of a sweep), ``manifest.*`` and ``speaker_sim.*``.
   ``loss.method`` names the loss for legends (``l2``, ``pseudo_huber:snr``).
2. :func:`read_run_series` gives the per-step rows of a run (speaker similarity over training iterations,
   Khrapov et al. 2024 Figure 3).
3. :func:`aggregate` groups records by method keys and takes mean / sample std / n over seeds, refusing to
   silently average runs whose other settings differ.
4. :func:`write_markdown`, :func:`write_csv`, :func:`plot_metric` write the tables and the papers' plots
   (a metric against the corruption ratio, one line per method; similarity against the iteration).
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import math
import statistics
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from robust_gen.experiments.paired import MIN_PAIRS, judge, spread_sources
from robust_gen.experiments.studies import StudySpec
from robust_gen.training.run_dir import save_figure

__all__ = [
    "BOOKKEEPING_KEYS",
    "RESULT_PREFIXES",
    "SEED_KEYS",
    "aggregate",
    "collect_runs",
    "collect_series",
    "expand_metrics",
    "find_run_dirs",
    "flatten",
    "format_value",
    "loss_method",
    "plot_bars",
    "plot_metric",
    "read_run",
    "read_run_series",
    "records_at_each_guidance_scale",
    "varying_keys",
    "write_claims",
    "write_csv",
    "write_guidance_report",
    "write_markdown",
    "write_spread",
    "write_study_report",
]

#: Prefixes of result keys in a record; everything else (but ``run_dir``) is a config key.
RESULT_PREFIXES = ("train.", "eval.", "manifest.", "speaker_sim.")
#: Config keys that tell seeds apart: runs differing only in these are repetitions of one setting.
SEED_KEYS = ("trainer.seed", "corruption.seed", "seed")
#: Config keys that never tell settings apart (bookkeeping that may differ between repetitions).
BOOKKEEPING_KEYS = (
    "trainer.progress",
    "trainer.tensorboard",
    "latents.cache_dir",
    "data.cache_dir",
    "run_dir",
    "cpu_threads",
    # measured from the training data and stored with the run (speech: each band's range), not a setting: each
    # corruption draw has its own
    "mel_range.low",
    "mel_range.high",
)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into one dict with dotted keys; lists become JSON text (one cell in a table).

    Examples
    --------
    >>> flatten({"loss": {"schedule": "snr", "c_min": 0.1}, "betas": [0.9, 0.99]})
    {'loss.schedule': 'snr', 'loss.c_min': 0.1, 'betas': '[0.9, 0.99]'}
    >>> flatten(3, "x")
    {'x': 3}
    """
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(obj, (list, tuple)):
        return {prefix: json.dumps(list(obj))}
    return {prefix: obj}


def loss_method(record: Mapping[str, Any]) -> str:
    """A short name of the training loss of a record, for table rows and plot legends.

    Examples
    --------
    >>> loss_method({"loss._target_": "robust_gen.diffusion.losses.L2Loss"})
    'l2'
    >>> loss_method({"loss._target_": "robust_gen.diffusion.losses.PseudoHuberLoss", "loss.schedule": "snr"})
    'pseudo_huber:snr'
    >>> loss_method({"loss._target_": "robust_gen.diffusion.losses.PseudoHuberLoss", "loss.schedule": "snr",
    ...              "loss.form": "vector", "loss.c_min": 0.01})
    'pseudo_huber:snr,form=vector,c_min=0.01'
    >>> loss_method({})
    'unknown'

    The pseudo-Huber form and c_min are named only where they differ from the studies' defaults (huber, 0.1).
    """
    target = str(record.get("loss._target_", ""))
    name = target.rsplit(".", 1)[-1]
    if name == "PseudoHuberLoss":
        extra = ""
        if record.get("loss.form", "huber") != "huber":
            extra += f",form={record['loss.form']}"
        if record.get("loss.c_min", 0.1) != 0.1:
            extra += f",c_min={record['loss.c_min']:g}"
        return f"pseudo_huber:{record.get('loss.schedule', '?')}{extra}"
    if name.endswith("Loss"):
        return name[: -len("Loss")].lower()
    return name.lower() or "unknown"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}); re-run the step that writes it") from None


def _speaker_sim_file(run_dir: Path) -> Path | None:
    for candidate in (
        run_dir / "speaker_sim" / "speaker_similarity.json",
        run_dir / "speaker_similarity.json",
    ):
        if candidate.is_file():
            return candidate
    return None


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """One flat record of a run directory: its resolved config and every result file it holds.

    Raises ``FileNotFoundError`` when ``run_dir/config.yaml`` is missing (not a run directory).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> run = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (run / "config.yaml").write_text("corruption:\\n  ratio: 0.05\\ntrainer:\\n  seed: 1\\n")
    >>> _ = (run / "summary.json").write_text('{"step": 10, "loss": 0.5}')
    >>> record = read_run(run)
    >>> record["corruption.ratio"], record["trainer.seed"], record["train.loss"]
    (0.05, 1, 0.5)
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: {run_dir} is not a run directory of a recipe")
    try:
        config = yaml.safe_load(config_path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{config_path}: not valid YAML ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: expected a mapping at the top level, got {type(config).__name__}")
    record = flatten(config)
    clashes = sorted(k for k in record if k.startswith(RESULT_PREFIXES) or k == "run_dir")
    if clashes:
        raise ValueError(f"{config_path}: config keys {clashes} clash with the report's result prefixes")
    record["run_dir"] = str(run_dir)
    record["loss.method"] = loss_method(record)
    summary = run_dir / "summary.json"
    if summary.is_file():
        record.update(flatten(_read_json(summary), "train"))
    manifest = run_dir / "corruption_manifest.json"
    if manifest.is_file():
        data = _read_json(manifest)
        record.update(
            {f"manifest.{k}": data.get(k) for k in ("kind", "ratio", "num_samples", "changes") if k in data}
        )
        changes = data.get("changes")
        if isinstance(changes, list):
            record["manifest.changes"] = len(changes)  # a count in the tables, not every change
        params = data.get("params") or {}
        # what the corruption really changed beside the nominal ratio (caption swaps inside one concept change
        # nothing the model is asked for; robust_gen.corruption.captions)
        for key in ("effective_ratio", "effective_changes", "across_concepts"):
            if key in params:
                record[f"manifest.{key}"] = params[key]
    metrics = run_dir / "eval" / "metrics.json"
    if metrics.is_file():
        tags = _read_json(metrics).get("tags", {})
        for tag, entry in tags.items():
            record.update(flatten(entry, f"eval.{tag}"))
        scored = [t for t, e in tags.items() if isinstance(e.get("fid"), (int, float))]
        if scored:
            best = min(scored, key=lambda t: tags[t]["fid"])
            record.update(flatten(tags[best], "eval.best"))
            record["eval.best.tag"] = best
        record.update(_shift_drop(tags))
    similarity = _speaker_sim_file(run_dir)
    if similarity is not None:
        data = _read_json(similarity)
        if data.get("overall"):
            record.update(flatten(data["overall"], "speaker_sim"))
        # the last evaluated step of this run: the paper's "best / final checkpoint" view, and its resilience
        steps = [r for r in _own_rows(data.get("per_step", []), run_dir) if r.get("step") is not None]
        if steps:
            last = max(steps, key=lambda r: r["step"])
            record.update(flatten({k: v for k, v in last.items() if k != "run"}, "speaker_sim.last"))
            for row in _own_rows(data.get("resilience") or [], run_dir):
                if row.get("step") == last["step"]:
                    record["speaker_sim.last.resilience"] = row.get("resilience")
        record.update(_ceiling_keys(data.get("ceiling")))
    return record


def _shift_drop(tags: Mapping[str, Any]) -> dict[str, Any]:
    """Berrada et al.'s study draws each run twice, with the centred and with a shifted crop condition
    (``robust_gen.experiments.driver.control_tags``): the conditional accuracy lost by moving the crop, within
    the run, is how much the control changes the class (the designs' centred accuracies differ, so comparing
    shifted accuracies alone mixes the two).

    >>> _shift_drop({"centred": {"conditional_accuracy": 0.9}, "shifted": {"conditional_accuracy": 0.8}})
    {'eval.shift_drop.conditional_accuracy': 0.1}
    >>> _shift_drop({"dpm_solver20_g3": {"conditional_accuracy": 0.9}})
    {}
    """
    accuracy = [tags.get(tag, {}).get("conditional_accuracy") for tag in ("centred", "shifted")]
    if not all(isinstance(value, (int, float)) for value in accuracy):
        return {}
    return {"eval.shift_drop.conditional_accuracy": round(accuracy[0] - accuracy[1], 12)}


def _ceiling_keys(ceiling: Any) -> dict[str, Any]:
    """``speaker_sim.ceiling.<speaker>.<stat>`` of each synthesized speaker's vocoded-real ceiling, and
    ``speaker_sim.ceiling.mean``: the mean of the speakers' means (the ceiling itself for one speaker).

    Examples
    --------
    >>> keys = _ceiling_keys({"us_f1": {"mean": 0.93, "std": 0.02, "count": 10, "values": [0.9], "cached": True}})
    >>> keys["speaker_sim.ceiling.mean"], keys["speaker_sim.ceiling.us_f1.count"], "values" in str(keys)
    (0.93, 10, False)
    """
    if not isinstance(ceiling, Mapping) or not ceiling:
        return {}
    out: dict[str, Any] = {}
    means = []
    for speaker, found in ceiling.items():
        if not isinstance(found, Mapping):
            continue
        stats = {k: v for k, v in found.items() if k not in ("values", "held_out", "cached")}
        out.update(flatten(stats, f"speaker_sim.ceiling.{speaker}"))
        if _number(found.get("mean")) is not None:
            means.append(float(found["mean"]))
    if means:
        out["speaker_sim.ceiling.mean"] = statistics.fmean(means)
    return out


def _own_rows(rows: list[dict], run_dir: Path) -> list[dict]:
    """Rows of a table that tools/speaker_sim.py may have written for several runs: this run's (its folder name)."""
    labels = {r.get("run") for r in rows}
    return [r for r in rows if r.get("run") == run_dir.name] if len(labels) > 1 else rows


def read_run_series(run_dir: str | Path) -> list[dict[str, Any]]:
    """Per-step rows of a run (speaker similarity per training step), each carrying the run's config keys.

    Rows come from the speaker-similarity ``per_step`` table (tools/speaker_sim.py) restricted to this run's
    label (the run folder's name), with keys ``step`` and ``speaker_sim.<stat>``.

    Examples
    --------
    >>> import tempfile, pathlib, json
    >>> run = pathlib.Path(tempfile.mkdtemp()) / "l2"
    >>> (run / "speaker_sim").mkdir(parents=True)
    >>> _ = (run / "config.yaml").write_text("trainer:\\n  seed: 0\\n")
    >>> rows = [{"run": "l2", "step": 100, "mean": 0.5, "below": {"0.25": 1}}]
    >>> _ = (run / "speaker_sim" / "speaker_similarity.json").write_text(json.dumps({"per_step": rows}))
    >>> [(r["step"], r["speaker_sim.mean"], r["speaker_sim.below.0.25"]) for r in read_run_series(run)]
    [(100, 0.5, 1)]
    """
    run_dir = Path(run_dir)
    base = {k: v for k, v in read_run(run_dir).items() if not k.startswith(RESULT_PREFIXES)}
    similarity = _speaker_sim_file(run_dir)
    if similarity is None:
        return []
    rows = [
        r for r in _own_rows(_read_json(similarity).get("per_step", []), run_dir) if r.get("step") is not None
    ]
    out = []
    for row in rows:
        stats = {k: v for k, v in row.items() if k not in ("run", "step")}
        out.append({**base, "step": int(row["step"]), **flatten(stats, "speaker_sim")})
    return sorted(out, key=lambda r: r["step"])


def find_run_dirs(roots: Iterable[str | Path]) -> list[Path]:
    """Every run directory (a folder with ``config.yaml``) under ``roots``, sorted; checkpoints are skipped.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("a", "b/c", "a/checkpoints/step_1"):
    ...     (root / name).mkdir(parents=True, exist_ok=True)
    ...     _ = (root / name / "config.yaml").write_text("x: 1\\n")
    >>> [p.relative_to(root).as_posix() for p in find_run_dirs([root])]
    ['a', 'b/c']
    >>> find_run_dirs([root / "missing"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: run root ... does not exist; pass a run directory or a sweep folder
    """
    found: set[Path] = set()
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"run root {root} does not exist; pass a run directory or a sweep folder")
        for config in root.rglob("config.yaml"):
            run = config.parent
            if "checkpoints" in run.relative_to(root).parts or run.name in (".hydra", "eval", "samples"):
                continue
            found.add(run)
        if (root / "config.yaml").is_file():
            found.add(root)
    return sorted(found)


def collect_runs(roots: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Records of every run directory under ``roots`` (see :func:`read_run`)."""
    runs = find_run_dirs(roots)
    if not runs:
        raise FileNotFoundError(f"no run directories (with config.yaml) under {[str(r) for r in roots]}")
    return [read_run(run) for run in runs]


def collect_series(roots: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Per-step rows of every run under ``roots`` (see :func:`read_run_series`)."""
    return [row for run in find_run_dirs(roots) for row in read_run_series(run)]


def varying_keys(records: Sequence[Mapping[str, Any]], *, ignore: Iterable[str] = ()) -> list[str]:
    """Config keys whose value differs between records (results, seeds and bookkeeping excluded).

    Examples
    --------
    >>> varying_keys([{"a": 1, "b": 2, "trainer.seed": 0}, {"a": 1, "b": 3, "trainer.seed": 1}])
    ['b']
    """
    skip = set(SEED_KEYS) | set(BOOKKEEPING_KEYS) | set(ignore)
    keys = sorted({k for r in records for k in r if not k.startswith(RESULT_PREFIXES) and k not in skip})
    return [k for k in keys if len({json.dumps(r.get(k), default=str) for r in records}) > 1]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


def aggregate(
    records: Sequence[Mapping[str, Any]],
    by: Sequence[str],
    metrics: Sequence[str],
    *,
    seed_keys: Sequence[str] = SEED_KEYS,
    strict: bool = True,
) -> list[dict[str, Any]]:
    """Group records by the ``by`` keys and take mean, sample std (ddof 1) and n of each metric over seeds.

    A missing or non-numeric metric is left out of its group's n (mean is NaN when no run has it). With
    ``strict`` a group whose runs differ in any other config key raises ``ValueError``: averaging them would mix
    different settings (add the key to ``by`` or filter the records). Rows come sorted by the ``by`` values.

    Examples
    --------
    >>> records = [{"cep.kind": "none", "trainer.seed": s, "eval.fid": f} for s, f in ((0, 10.0), (1, 12.0))]
    >>> records.append({"cep.kind": "uniform", "trainer.seed": 0, "eval.fid": 9.0})
    >>> rows = aggregate(records, ["cep.kind"], ["eval.fid"])
    >>> [(r["cep.kind"], r["eval.fid.mean"], round(r["eval.fid.std"], 3), r["eval.fid.n"]) for r in rows]
    [('none', 11.0, 1.414, 2), ('uniform', 9.0, nan, 1)]
    >>> aggregate([{"a": 1, "b": 1}, {"a": 1, "b": 2}], ["a"], [])
    Traceback (most recent call last):
    ...
    ValueError: runs grouped under {'a': 1} differ in ['b'] (not a seed key): add them to `by` or filter ...
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        key = json.dumps([record.get(k) for k in by], default=str)
        groups.setdefault(key, []).append(record)
    rows = []
    for members in groups.values():
        if strict and len(members) > 1:
            differ = varying_keys(members, ignore=[*by, *seed_keys, *metrics, "loss.method"])
            if differ:
                where = {k: members[0].get(k) for k in by}
                raise ValueError(
                    f"runs grouped under {where} differ in {differ} (not a seed key): add them to `by` or filter "
                    f"the records; runs: {[m.get('run_dir') for m in members]}"
                )
        row: dict[str, Any] = {k: members[0].get(k) for k in by}
        row["runs"] = len(members)
        for metric in metrics:
            values = [v for v in (_number(m.get(metric)) for m in members) if v is not None]
            row[f"{metric}.mean"] = statistics.fmean(values) if values else math.nan
            row[f"{metric}.std"] = statistics.stdev(values) if len(values) > 1 else math.nan
            row[f"{metric}.n"] = len(values)
        rows.append(row)
    return sorted(rows, key=lambda r: [_sort_key(r[k]) for k in by])


def _sort_key(value: Any) -> tuple:
    number = _number(value)
    return (0, number, "") if number is not None else (1, 0.0, str(value))


def format_value(value: Any, digits: int = 4) -> str:
    """A table cell: numbers with ``digits`` significant digits, NaN / None as an en dash.

    Examples
    --------
    >>> format_value(0.123456), format_value(float("nan")), format_value(None), format_value("snr")
    ('0.1235', '–', '–', 'snr')
    """
    if value is None:
        return "–"
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.{digits}g}"
    return str(value)


def _mean_spread(row: Mapping[str, Any], metric: str) -> str:
    mean, std, n = row.get(f"{metric}.mean"), row.get(f"{metric}.std"), row.get(f"{metric}.n", 0)
    if not n:
        return "–"
    if std is None or math.isnan(std):
        return f"{format_value(mean)} (n={n})"
    return f"{format_value(mean)} ± {format_value(std, 2)} (n={n})"


def write_markdown(
    rows: Sequence[Mapping[str, Any]],
    by: Sequence[str],
    metrics: Sequence[str],
    path: str | Path,
    *,
    title: str = "",
    notes: str = "",
) -> Path:
    """A Markdown table of aggregated rows: one column per ``by`` key, ``mean ± std (n=seeds)`` per metric.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> rows = [{"cep.kind": "none", "runs": 2, "eval.fid.mean": 11.0, "eval.fid.std": 1.4, "eval.fid.n": 2}]
    >>> p = write_markdown(rows, ["cep.kind"], ["eval.fid"], pathlib.Path(tempfile.mkdtemp()) / "t.md")
    >>> print(p.read_text().splitlines()[2])
    | none | 2 | 11 ± 1.4 (n=2) |
    """
    lines = [f"## {title}", ""] if title else []
    if notes:
        lines += [notes, ""]
    header = [*by, "runs", *metrics]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for row in rows:
        cells = [format_value(row.get(k)) for k in by] + [str(row.get("runs", ""))]
        cells += [_mean_spread(row, m) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_csv(
    rows: Sequence[Mapping[str, Any]], path: str | Path, columns: Sequence[str] | None = None
) -> Path:
    """Rows as CSV (columns: ``columns`` or every key in first-seen order; missing cells empty).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = write_csv([{"a": 1, "b": 0.5}, {"a": 2}], pathlib.Path(tempfile.mkdtemp()) / "t.csv")
    >>> p.read_text().splitlines()
    ['a,b', '1,0.5', '2,']
    """
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buffer.getvalue())
    return path


def plot_metric(
    rows: Sequence[Mapping[str, Any]],
    x: str,
    metric: str,
    path: str | Path,
    *,
    hue: Sequence[str] = (),
    title: str = "",
    xlabel: str | None = None,
    ylabel: str | None = None,
    x_scale: float = 1.0,
) -> Path:
    """The papers' plot form: ``metric`` (mean, with a ±std band where n > 1) against ``x``, one line per
    combination of the ``hue`` keys. ``x_scale`` multiplies x (100 shows ratios in percent).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> rows = [{"r": r, "m": m, "f.mean": r + i, "f.std": 0.1, "f.n": 2} for i, m in enumerate("ab") for r in (0, 1)]
    >>> plot_metric(rows, "r", "f", pathlib.Path(tempfile.mkdtemp()) / "f.png", hue=["m"]).stat().st_size > 0
    True
    """
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone

    lines: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        label = ", ".join(f"{k}={row.get(k)}" for k in hue) or metric
        lines.setdefault(label, []).append(row)
    fig = Figure(figsize=(5.2, 3.6))
    ax = fig.subplots()
    for label, members in lines.items():
        points = sorted(
            (
                (_number(r.get(x)), r.get(f"{metric}.mean"), r.get(f"{metric}.std"))
                for r in members
                if _number(r.get(x)) is not None and _number(r.get(f"{metric}.mean")) is not None
            ),
            key=lambda p: p[0],
        )
        if not points:
            continue
        xs = [p[0] * x_scale for p in points]
        means = [p[1] for p in points]
        stds = [0.0 if p[2] is None or math.isnan(p[2]) else p[2] for p in points]
        ax.plot(xs, means, marker="o", label=label)
        if any(stds):
            ax.fill_between(
                xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)], alpha=0.2
            )
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or metric)
    if title:
        ax.set_title("\n".join(textwrap.wrap(title, 64)), fontsize=9)  # long study titles fit
    if len(lines) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def plot_bars(
    rows: Sequence[Mapping[str, Any]],
    x: str,
    metrics: Sequence[str],
    path: str | Path,
    *,
    title: str = "",
    ylabel: str | None = None,
) -> Path:
    """Grouped bars for a categorical ``x`` (e.g. the control mode): one group per value of ``x``, one bar per
    metric (mean, ±std error bar where n > 1), the form used to compare conditions side by side.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> rows = [{"m": m, "a.mean": 0.5, "a.std": 0.1, "b.mean": 0.4, "b.std": None} for m in ("x", "y")]
    >>> plot_bars(rows, "m", ["a", "b"], pathlib.Path(tempfile.mkdtemp()) / "f.png").stat().st_size > 0
    True
    """
    from matplotlib.figure import Figure

    groups = [str(r.get(x)) for r in rows]
    width = 0.8 / max(len(metrics), 1)
    fig = Figure(figsize=(5.2, 3.6))
    ax = fig.subplots()
    for i, metric in enumerate(metrics):
        means = [_number(r.get(f"{metric}.mean")) for r in rows]
        stds = [_number(r.get(f"{metric}.std")) for r in rows]
        positions = [g + (i - (len(metrics) - 1) / 2) * width for g in range(len(rows))]
        ax.bar(
            positions, [math.nan if m is None else m for m in means], width,
            yerr=[0.0 if s is None or math.isnan(s) else s for s in stds], capsize=3, label=metric,
        )  # fmt: skip
    ax.set_xticks(range(len(groups)), groups)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or ", ".join(metrics))
    if title:
        ax.set_title("\n".join(textwrap.wrap(title, 64)), fontsize=9)  # long study titles fit
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def write_claims(
    records: Sequence[Mapping[str, Any]], spec: StudySpec, path: str | Path, *, min_pairs: int = MIN_PAIRS
) -> list[dict[str, Any]]:
    """Judge each of ``spec.claims`` on ``records`` (:func:`~robust_gen.experiments.paired.judge`) and write them
    as Markdown: one line per claim and setting, "the paper says X; here the paired difference is Y [CI]; verdict".
    Settings without a single pair are left out; fewer than ``min_pairs`` pairs give no verdict ("inconclusive").
    Returns the judged rows (for the CSV).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from robust_gen.experiments.paired import Claim
    >>> spec = StudySpec("t", by=("m",), x="m", metrics=("f",), claims=(Claim("b is lower", "f", "m", "b", "a"),))
    >>> recs = [{"m": m, "trainer.seed": s, "f": s + (0.0 if m == "a" else -1.0)} for m in "ab" for s in range(5)]
    >>> rows = write_claims(recs, spec, pathlib.Path(tempfile.mkdtemp()) / "claims.md")
    >>> rows[0]["verdict"], rows[0]["n"]
    ('reproduced', 5)
    """
    judged = [row for claim in spec.claims for row in judge(records, claim, min_pairs=min_pairs) if row["n"]]
    lines = ["## The papers' claims, paired by seed", ""]
    lines += [f"- {row['sentence']}" for row in judged] or ["No claim has a pair of runs here (same seeds, both methods)."]
    lines += ["", "Paired difference: treatment minus baseline at the same training seed and corruption draw; "
              "interval: percentile bootstrap of the mean over the pairs (too narrow for fewer than ~10 pairs, "
              "hence the count of pairs that went the paper's way). Reproduced / not reproduced: the whole "
              "interval on the paper's side of zero / on the other side; inconclusive: it holds zero, or there are "
              f"fewer than {min_pairs} pairs."]  # fmt: skip
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return judged


def _claim_columns(spec: StudySpec) -> list[str]:
    """Columns of a claims CSV: the claim, the setting keys its pairs are split by, the paired statistics."""
    across = dict.fromkeys(k for claim in spec.claims for k in claim.across)
    return ["paper", "metric", *across, "n", "mean", "ci_low", "ci_high", "agree", "verdict", "seeds", "differences"]


def records_at_each_guidance_scale(records: Sequence[Mapping[str, Any]]) -> dict[float, list[dict[str, Any]]]:
    """Per guidance scale the runs were sampled at, the records with every ``eval.best.*`` key replaced by the
    value of the sample tag at that scale, so whatever reads ``eval.best.*`` (tables, claims) reads that scale.

    A run sampled twice at one scale (two tags, e.g. two crop conditions) is ambiguous and left out of that scale.

    Examples
    --------
    >>> run = {"trainer.seed": 0, "eval.best.fid": 1.0, "eval.best.guidance_scale": 2.0,
    ...        "eval.g1.fid": 3.0, "eval.g1.guidance_scale": 1.0, "eval.g2.fid": 1.0, "eval.g2.guidance_scale": 2.0}
    >>> at = records_at_each_guidance_scale([run])
    >>> sorted(at), at[1.0][0]["eval.best.fid"], at[1.0][0]["eval.best.guidance_scale"]
    ([1.0, 2.0], 3.0, 1.0)
    """
    out: dict[float, list[dict[str, Any]]] = {}
    suffix = ".guidance_scale"
    for record in records:
        tags_at: dict[float, list[str]] = {}
        for key, value in record.items():
            if key.startswith("eval.") and key.endswith(suffix) and _number(value) is not None:
                tag = key[len("eval.") : -len(suffix)]
                if tag != "best":
                    tags_at.setdefault(float(value), []).append(tag)
        for scale, tags in tags_at.items():
            if len(tags) != 1:
                continue
            prefix = f"eval.{tags[0]}."
            at_scale = {k: v for k, v in record.items() if not k.startswith("eval.best.")}
            at_scale.update({"eval.best." + k[len(prefix):]: v for k, v in record.items() if k.startswith(prefix)})
            out.setdefault(scale, []).append(at_scale)
    return dict(sorted(out.items()))


def write_guidance_report(
    records: Sequence[Mapping[str, Any]], spec: StudySpec, out_dir: str | Path, *, name: str = "report"
) -> dict[str, Path]:
    """``spec.guidance_metrics`` at every guidance scale (:func:`records_at_each_guidance_scale`): mean ± std per
    setting and scale (``<name>_guidance.csv``), a curve per setting (``<name>_guidance_<metric>.png``) and
    ``spec.claims`` judged at each fixed scale (``<name>_guidance_claims.md`` / ``.csv``). Nothing is written for
    runs sampled at one scale only. Returns the written files by kind.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> spec = StudySpec("t", by=("m",), x="m", metrics=(), guidance_metrics=("eval.best.fid",))
    >>> recs = [{"m": m, "trainer.seed": s, f"eval.g{g}.guidance_scale": g, f"eval.g{g}.fid": g + s}
    ...         for m in "ab" for s in (0, 1) for g in (1, 2)]
    >>> recs = [{k: v for r in recs if (r["m"], r["trainer.seed"]) == (m, s) for k, v in r.items()}
    ...         for m in "ab" for s in (0, 1)]
    >>> sorted(write_guidance_report(recs, spec, pathlib.Path(tempfile.mkdtemp())))
    ['guidance_csv', 'guidance_png:eval.best.fid']
    """
    if not spec.guidance_metrics:
        return {}
    out_dir = Path(out_dir)
    per_scale = records_at_each_guidance_scale(records)
    if len(per_scale) < 2:
        return {}
    by = (*spec.by, *spec.extra_by, "guidance_scale")
    long = [{**r, "guidance_scale": scale} for scale, members in per_scale.items() for r in members]
    rows = aggregate(long, by, spec.guidance_metrics)
    files: dict[str, Path] = {"guidance_csv": write_csv(rows, out_dir / f"{name}_guidance.csv")}
    for metric in spec.guidance_metrics:
        short = metric.rsplit(".", 1)[-1]
        files[f"guidance_png:{metric}"] = plot_metric(
            rows, "guidance_scale", metric, out_dir / f"{name}_guidance_{short}.png", hue=by[:-1],
            title=f"{spec.title}: {short} at each guidance scale", xlabel="guidance scale", ylabel=short,
        )  # fmt: skip
    judged = [
        (scale, claim, row)
        for scale, members in per_scale.items()
        for claim in spec.claims
        if claim.metric in spec.guidance_metrics
        for row in judge(members, claim)
        if row["n"]
    ]
    if judged:
        lines = ["## The claims at each fixed guidance scale", "",
                 "Each run's samples at one scale instead of its best scale (paired by seed as above).", "",
                 "| the paper says | setting | guidance | treatment minus baseline [95% CI] | pairs the paper's way "
                 "| verdict |", "|---|---|---|---|---|---|"]  # fmt: skip
        lines += [
            f"| {claim.paper} ({claim.key}={claim.treatment} vs {claim.baseline}) | {row['setting']} "
            f"| {format_value(scale)} | {row['mean']:+.3g} [{row['ci_low']:+.3g}, {row['ci_high']:+.3g}] "
            f"| {row['agree']} of {row['n']} | {row['verdict']} |"
            for scale, claim, row in judged
        ]
        files["guidance_claims_md"] = out_dir / f"{name}_guidance_claims.md"
        files["guidance_claims_md"].write_text("\n".join(lines) + "\n")
        files["guidance_claims_csv"] = write_csv(
            [{"guidance_scale": scale, **row} for scale, _, row in judged],
            out_dir / f"{name}_guidance_claims.csv", columns=["guidance_scale", *_claim_columns(spec)],
        )  # fmt: skip
    return files


def write_spread(
    records: Sequence[Mapping[str, Any]], by: Sequence[str], metrics: Sequence[str], path: str | Path
) -> list[dict[str, Any]]:
    """Per setting and metric, the seed spread split into training seed and corruption draw where the design
    allows (:func:`~robust_gen.experiments.paired.spread_sources`), as CSV. Returns the rows.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> recs = [{"m": "a", "trainer.seed": t, "corruption.seed": c, "f": t + c} for t in (0, 1) for c in (0, 1)]
    >>> row = write_spread(recs, ["m"], ["f"], pathlib.Path(tempfile.mkdtemp()) / "s.csv")[0]
    >>> row["design"], row["training"], row["corruption"]
    ('crossed', 0.7071067811865476, 0.7071067811865476)
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        groups.setdefault(json.dumps([record.get(k) for k in by], default=str), []).append(record)
    rows = []
    for key, members in groups.items():
        for metric in metrics:
            spread = spread_sources(members, metric)
            if spread["n"]:
                rows.append({**dict(zip(by, json.loads(key))), "metric": metric, **spread})
    rows.sort(key=lambda r: [_sort_key(r[k]) for k in by])
    write_csv(rows, path, columns=[*by, "metric", "design", "n", "total", "training", "corruption"])
    return rows


def expand_metrics(patterns: Sequence[str], records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Metric keys of a study: each plain key as is, each pattern with ``*`` (``speaker_sim.last.similarity_to.*``:
    named after a speaker the config chose) replaced by the matching keys of ``records``, sorted.

    Examples
    --------
    >>> records = [{"a.to.us_m1": 0.1, "b": 1}, {"a.to.gb_m2": 0.2}]
    >>> expand_metrics(["b", "a.to.*", "c.*"], records)
    ['b', 'a.to.gb_m2', 'a.to.us_m1']
    """
    keys = sorted({k for record in records for k in record})
    out: list[str] = []
    for pattern in patterns:
        found = [k for k in keys if fnmatch.fnmatchcase(k, pattern)] if "*" in pattern else [pattern]
        out += [k for k in found if k not in out]
    return out


def write_study_report(
    records: Sequence[Mapping[str, Any]],
    spec: StudySpec,
    out_dir: str | Path,
    *,
    name: str = "report",
    series: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Path]:
    """Aggregate ``records`` (and per-step ``series`` rows) as ``spec`` says and write ``<name>.md``,
    ``<name>.csv``, ``<name>_runs.csv`` (every run, unaggregated), ``<name>_<metric>.png`` per metric against
    ``spec.x`` (when ``x`` is numeric), ``<name>_series_<metric>.png`` / ``<name>_series.csv``,
    ``<name>_spread.csv`` (seed spread by source) and, for a study with claims, ``<name>_claims.md`` /
    ``<name>_claims.csv`` (paired differences with bootstrap intervals and verdicts, also appended to
    ``<name>.md``). Returns the written files by kind.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> spec = StudySpec("t", by=("r", "m"), x="r", metrics=("f",))
    >>> recs = [{"r": r, "m": m, "trainer.seed": s, "f": r + s} for r in (0, 1) for m in "ab" for s in (0, 1)]
    >>> files = write_study_report(recs, spec, pathlib.Path(tempfile.mkdtemp()))
    >>> sorted(files)
    ['csv', 'md', 'png:f', 'runs_csv', 'spread_csv']
    """
    out_dir = Path(out_dir)
    by = (*spec.by, *spec.extra_by)
    metrics = expand_metrics(spec.metrics, records)
    rows = aggregate(records, by, metrics)
    files = {
        "md": write_markdown(
            rows, by, metrics, out_dir / f"{name}.md", title=spec.title, notes=spec.notes
        ),
        "csv": write_csv(rows, out_dir / f"{name}.csv"),
        "runs_csv": write_csv(records, out_dir / f"{name}_runs.csv"),
    }
    spread = write_spread(records, by, metrics, out_dir / f"{name}_spread.csv")
    if spread:
        files["spread_csv"] = out_dir / f"{name}_spread.csv"
        designs = sorted({r["design"] for r in spread})
        with files["md"].open("a") as handle:
            handle.write(f"\nSeed spread by source ({name}_spread.csv): design {', '.join(designs)} (crossed: "
                         "training seed and corruption draw vary independently and are separated; tied: each "
                         "training seed has its own draw, so the std holds both).\n")  # fmt: skip
    if spec.claims:
        judged = write_claims(records, spec, out_dir / f"{name}_claims.md")
        files["claims_md"] = out_dir / f"{name}_claims.md"
        files["claims_csv"] = write_csv(judged, out_dir / f"{name}_claims.csv", columns=_claim_columns(spec))
        with files["md"].open("a") as handle:
            handle.write("\n" + files["claims_md"].read_text())
    numeric_x = all(_number(r.get(spec.x)) is not None for r in rows)
    hue = tuple(k for k in by if k != spec.x)
    for metric in metrics if numeric_x else ():
        if any(r[f"{metric}.n"] for r in rows):
            files[f"png:{metric}"] = plot_metric(
                rows, spec.x, metric, out_dir / f"{name}_{metric}.png", hue=hue, title=spec.title,
                xlabel=spec.xlabel or spec.x, x_scale=spec.x_scale,
            )  # fmt: skip
    for group in spec.bar_groups if not numeric_x else ():
        if any(r[f"{metric}.n"] for r in rows for metric in group):
            suffix = group[0].rsplit(".", 1)[-1]
            files[f"bars:{suffix}"] = plot_bars(
                rows, spec.x, group, out_dir / f"{name}_{suffix}.png", title=spec.title, ylabel=suffix
            )
    guidance = write_guidance_report(records, spec, out_dir, name=name)
    files.update(guidance)
    if "guidance_claims_md" in guidance:
        with files["md"].open("a") as handle:
            handle.write("\n" + guidance["guidance_claims_md"].read_text())
    if series and spec.series_metrics:
        series_rows = aggregate(series, (*by, "step"), spec.series_metrics)
        files["series_csv"] = write_csv(series_rows, out_dir / f"{name}_series.csv")
        for metric in spec.series_metrics:
            files[f"series_png:{metric}"] = plot_metric(
                series_rows, "step", metric, out_dir / f"{name}_series_{metric}.png", hue=by,
                title=spec.title, xlabel="training iteration",
            )  # fmt: skip
    return files
