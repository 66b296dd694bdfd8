"""Summaries and report files of speaker similarity (pseudo-Huber paper, Figures 3-4).

:func:`similarity_stats` summarises centroid similarities (mean, std, counts below thresholds);
:func:`per_step_table` groups them per run and training step; :func:`resilience_table` subtracts the clean
run's mean at the same step. :func:`write_reports` writes the per-file CSV, the JSON summary, the step and
resilience tables and :func:`plot_similarity_over_steps`.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from robust_gen.training.run_dir import atomic_write_text, save_figure, write_json

__all__ = [
    "CSV_NAME",
    "DEFAULT_THRESHOLDS",
    "JSON_NAME",
    "PLOT_NAME",
    "RESILIENCE_CSV",
    "STEPS_CSV",
    "SampleScore",
    "SimilarityResult",
    "default_out_dir",
    "headline",
    "last_steps",
    "per_step_table",
    "plot_similarity_over_steps",
    "resilience_table",
    "similarity_stats",
    "threshold_key",
    "write_reports",
]

DEFAULT_THRESHOLDS = (0.25, 0.5, 0.75)
CSV_NAME, JSON_NAME = "speaker_similarity.csv", "speaker_similarity.json"
STEPS_CSV, RESILIENCE_CSV, PLOT_NAME = "per_step.csv", "resilience.csv", "similarity_over_steps.png"


@dataclass(frozen=True)
class SampleScore:
    """Similarity of one synthesized file to its speaker's references."""

    file: str
    speaker: str
    run: str
    step: int | None
    centroid_similarity: float
    mean_pairwise_similarity: float
    # speech activity (robust_gen.speaker.activity); None when not measured
    rms_dbfs: float | None = None
    active_share: float | None = None
    voiced_share: float | None = None
    speech_ok: bool | None = None
    # centroid similarity to other speakers (compare_to, e.g. the contaminant); None when not asked
    similarity_to: dict[str, float] | None = None
    # the speaker of the nearest reference centroid among every reference speaker (identify); None when not asked
    identified_as: str | None = None


def threshold_key(threshold: float) -> str:
    """JSON key of a threshold (``0.25`` -> ``"0.25"``)."""
    return f"{threshold:.4g}"


def similarity_stats(scores: Sequence[SampleScore], thresholds: Sequence[float]) -> dict:
    """Count, mean, sample std (ddof 1), min, max of the centroid similarity, the pairwise mean, and the
    number of samples strictly below each threshold (the pseudo-Huber paper's Figure 4).

    Where measured, also: ``similarity_to`` (``{speaker: mean}``, the similarity to other speakers' centroids),
    ``identified`` (the share of files whose nearest centroid is their own speaker's), and the level and
    speech activity (``rms_dbfs_median``, ``active_share_mean``, ``voiced_share_mean``, ``no_speech``: files
    that failed the activity check).

    Examples
    --------
    >>> s = [SampleScore("f", "a", "", None, v, v) for v in (0.2, 0.6, 0.8)]
    >>> stats = similarity_stats(s, [0.25, 0.7])
    >>> stats["count"], round(stats["mean"], 4), stats["below"]
    (3, 0.5333, {'0.25': 1, '0.7': 2})
    >>> s = [SampleScore("f", "a", "", None, 0.8, 0.8, similarity_to={"b": b}, identified_as=n)
    ...      for b, n in ((0.1, "a"), (0.3, "b"))]
    >>> stats = similarity_stats(s, [])
    >>> round(stats["similarity_to"]["b"], 4), stats["identified"]
    (0.2, 0.5)
    """
    values = torch.tensor([s.centroid_similarity for s in scores], dtype=torch.float64)
    pairwise = torch.tensor([s.mean_pairwise_similarity for s in scores], dtype=torch.float64)
    count = len(scores)
    measured = [s for s in scores if s.active_share is not None]
    activity = {}
    if measured:  # level and speech activity of the scored files (flagged ones included)
        levels = torch.tensor([s.rms_dbfs for s in measured], dtype=torch.float64)
        activity = {
            "rms_dbfs_median": float(levels.nanmedian()),
            "active_share_mean": sum(s.active_share for s in measured) / len(measured),
            "voiced_share_mean": sum(s.voiced_share for s in measured) / len(measured),
            "no_speech": sum(s.speech_ok is False for s in measured),
        }
    compared: dict[str, list[float]] = defaultdict(list)
    for score in scores:
        for speaker, value in (score.similarity_to or {}).items():
            compared[speaker].append(value)
    if compared:
        activity["similarity_to"] = {s: sum(v) / len(v) for s, v in sorted(compared.items())}
    named = [s for s in scores if s.identified_as is not None]
    if named:
        activity["identified"] = sum(s.identified_as == s.speaker for s in named) / len(named)
    return {
        "count": count,
        "mean": float(values.mean()) if count else math.nan,
        "std": float(values.std()) if count > 1 else 0.0,
        "min": float(values.min()) if count else math.nan,
        "max": float(values.max()) if count else math.nan,
        "pairwise_mean": float(pairwise.mean()) if count else math.nan,
        "pairwise_std": float(pairwise.std()) if count > 1 else 0.0,
        "below": {threshold_key(t): int((values < t).sum()) for t in thresholds},
        **activity,
    }


def per_step_table(scores: Sequence[SampleScore], thresholds: Sequence[float]) -> list[dict]:
    """One row per (run, step): the statistics of :func:`similarity_stats`, sorted by run then step."""
    groups: dict[tuple[str, int | None], list[SampleScore]] = defaultdict(list)
    for score in scores:
        groups[(score.run, score.step)].append(score)
    order = sorted(groups, key=lambda key: (key[0], -1 if key[1] is None else key[1]))
    return [
        {"run": run, "step": step, **similarity_stats(groups[(run, step)], thresholds)} for run, step in order
    ]


def resilience_table(per_step: Sequence[dict], clean_run: str) -> list[dict]:
    """Resilience per run and step: mean similarity of the run minus that of the clean run at the same step.

    Examples
    --------
    >>> rows = [{"run": "clean", "step": 10, "mean": 0.8}, {"run": "l2", "step": 10, "mean": 0.6},
    ...         {"run": "l2", "step": 20, "mean": 0.5}]
    >>> [(r["run"], r["step"], round(r["resilience"], 3)) for r in resilience_table(rows, "clean")]
    [('l2', 10, -0.2)]
    """
    clean = {row["step"]: row["mean"] for row in per_step if row["run"] == clean_run}
    if not clean:
        raise ValueError(f"the clean run {clean_run!r} has no scored samples")
    rows = [
        {"run": row["run"], "step": row["step"], "mean": row["mean"], "clean_mean": clean[row["step"]],
         "resilience": row["mean"] - clean[row["step"]]}
        for row in per_step
        if row["run"] != clean_run and row["step"] in clean
    ]  # fmt: skip
    if not rows:
        others = sorted({(r["run"], r["step"]) for r in per_step if r["run"] != clean_run}, key=str)
        raise ValueError(
            f"no step in common with the clean run {clean_run!r} (clean steps {sorted(clean, key=str)}, "
            f"others {others}); synthesize at the same checkpoints"
        )
    return rows


def last_steps(per_step: Sequence[dict], exclude: str | None = None) -> dict[str, dict]:
    """Each run's row at its last scored step (the trained model; runs without steps are left out).

    Examples
    --------
    >>> rows = [{"run": "l2", "step": 10, "mean": 0.1}, {"run": "l2", "step": 30, "mean": 0.4},
    ...         {"run": "clean", "step": 30, "mean": 0.6}]
    >>> {run: row["step"] for run, row in last_steps(rows, exclude="clean").items()}
    {'l2': 30}
    """
    last: dict[str, dict] = {}
    for row in per_step:
        if row["step"] is not None and row["run"] != exclude and row["step"] >= last.get(row["run"], row)["step"]:
            last[row["run"]] = row
    return last


def headline(summary: dict) -> list[str]:
    """The lines a user reads first: per run, the LAST step's mean (the trained model), then the trend over the
    scored steps; plain files (no steps) get the pooled mean. Averaging all steps would mix the untrained early
    checkpoints into the figure (0.07 pooled vs 0.43 at the last step in one run).

    Examples
    --------
    >>> rows = [{"run": "l2", "step": 10, "count": 4, "mean": 0.1, "std": 0.2, "below": {"0.25": 3}},
    ...         {"run": "l2", "step": 30, "count": 4, "mean": 0.43, "std": 0.05, "below": {"0.25": 0}}]
    >>> print("\\n".join(headline({"per_step": rows, "clean_run": None, "overall": None})))
    l2: similarity 0.430 ± 0.050 at step 30 (4 samples; < 0.25: 0); trend 0.100 (step 10) -> 0.430 (step 30)
    """
    lines = []
    clean = summary.get("clean_run")
    rows = summary["per_step"]
    ceilings = summary.get("ceiling") or {}
    # one synthesized speaker (the studies): its ceiling beside every similarity; several: listed after the runs
    ceiling = f" (ceiling {next(iter(ceilings.values()))['mean']:.3f})" if len(ceilings) == 1 else ""
    for run, row in last_steps(rows, exclude=None).items():
        series = sorted((r for r in rows if r["run"] == run and r["step"] is not None), key=lambda r: r["step"])
        below = ", ".join(f"< {k}: {v}" for k, v in row["below"].items())
        name = f"{run or 'samples'}{' (clean)' if run == clean else ''}"
        line = f"{name}: similarity {row['mean']:.3f} ± {row['std']:.3f}{ceiling} at step {row['step']} "
        line += f"({row['count']} samples" + (f"; {below})" if below else ")")
        line += _extras(row)
        if len(series) > 1:
            line += "; trend " + " -> ".join(f"{r['mean']:.3f} (step {r['step']})" for r in _trend_points(series))
        else:
            line += "; one step scored, no trend"
        lines.append(line)
    overall = summary.get("overall")
    if overall and not lines:
        below = ", ".join(f"< {k}: {v}" for k, v in overall["below"].items())
        lines.append(f"{overall['count']} samples: similarity {overall['mean']:.3f} ± {overall['std']:.3f}{ceiling} "
                     f"({below})" + _extras(overall))
    for speaker, found in ceilings.items():
        lines.append(f"vocoded-real ceiling of {speaker}: {found['mean']:.3f} ± {found['std']:.3f} "
                     f"({found['count']} held-out real files through the vocoder, {found['references']} references)")
    return lines


def _extras(row: dict) -> str:
    """Similarity to other speakers, identification and level of a stats row, where measured."""
    parts = [f"to {speaker} {value:.3f}" for speaker, value in (row.get("similarity_to") or {}).items()]
    if row.get("identified") is not None:
        parts.append(f"identified {100 * row['identified']:.0f} %")
    if row.get("rms_dbfs_median") is not None:
        parts.append(f"median level {row['rms_dbfs_median']:.1f} dBFS, {row.get('no_speech', 0)} without speech")
    return "; " + "; ".join(parts) if parts else ""


def _trend_points(series: Sequence[dict], most: int = 4) -> list[dict]:
    """At most ``most`` rows spread over ``series``, always the first and the last."""
    if len(series) <= most:
        return list(series)
    picks = sorted({round(i * (len(series) - 1) / (most - 1)) for i in range(most)})
    return [series[i] for i in picks]


def default_out_dir(synthesized: Sequence[str | os.PathLike], runs: Sequence[str | os.PathLike]) -> Path:
    """Where the reports go without ``--out``: beside what was scored.

    One run: ``<run>/speaker_sim``; several runs: ``<their common folder>/speaker_sim`` (runs/tts/speaker_sim for
    runs/tts/a and runs/tts/b); plain files: ``speaker_sim`` in the folder holding the first input.

    Examples
    --------
    >>> default_out_dir([], ["runs/tts/l2"]), default_out_dir([], ["runs/tts/a", "runs/tts/b"])
    (PosixPath('runs/tts/l2/speaker_sim'), PosixPath('runs/tts/speaker_sim'))
    >>> default_out_dir(["out/wavs/*.wav"], [])
    PosixPath('out/wavs/speaker_sim')
    """
    if len(runs) == 1:
        return Path(runs[0]) / "speaker_sim"
    if runs:
        paths = [str(r) for r in runs]
        if len({os.path.isabs(p) for p in paths}) > 1:  # commonpath refuses a mix of absolute and relative
            paths = [os.path.abspath(p) for p in paths]
        return Path(os.path.commonpath(paths)) / "speaker_sim"
    first = Path(str(synthesized[0]))
    while any(ch in first.name for ch in "*?[") or first.suffix:  # a glob or a file: its folder
        first = first.parent
    return first / "speaker_sim"


# ---------------------------------------------------------------------------------------------------
# Result and files.


@dataclass
class SimilarityResult:
    """Everything :func:`evaluate_speaker_similarity` computed, and the files it wrote."""

    scores: list[SampleScore]
    skipped: list[dict]
    summary: dict
    per_step: list[dict]
    resilience: list[dict] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)


def _csv_text(rows: Sequence[dict], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return buffer.getvalue()


def write_reports(result: SimilarityResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the per-file CSV, the JSON summary and, for several steps or runs, the step table and plot."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / CSV_NAME, "json": out / JSON_NAME}
    compared = sorted({speaker for s in result.scores for speaker in (s.similarity_to or {})})
    columns = ["file", "speaker", "run", "step", "centroid_similarity", "mean_pairwise_similarity",
               "rms_dbfs", "active_share", "voiced_share", "speech_ok"]  # fmt: skip
    columns += [f"similarity_to_{speaker}" for speaker in compared]
    if any(s.identified_as is not None for s in result.scores):
        columns.append("identified_as")
    atomic_write_text(files["csv"], _csv_text([_flat(asdict(s)) for s in result.scores], columns))
    thresholds = result.summary["thresholds"]
    if len(result.per_step) > 1 or any(row["step"] is not None for row in result.per_step):
        flat = [{**_flat({k: v for k, v in row.items() if k != "below"}),
                 **{f"below_{k}": v for k, v in row["below"].items()}} for row in result.per_step]  # fmt: skip
        step_columns = ["run", "step", "count", "mean", "std", "pairwise_mean", "min", "max"]
        step_columns += [f"similarity_to_{speaker}" for speaker in compared]
        step_columns += ["identified", "rms_dbfs_median", "active_share_mean", "voiced_share_mean", "no_speech"]
        step_columns += [f"below_{threshold_key(t)}" for t in thresholds]
        files["per_step"] = out / STEPS_CSV
        atomic_write_text(files["per_step"], _csv_text(flat, step_columns))
        if plot_similarity_over_steps(result, out / PLOT_NAME):
            files["plot"] = out / PLOT_NAME
    if result.resilience:
        files["resilience"] = out / RESILIENCE_CSV
        columns = ["run", "step", "mean", "clean_mean", "resilience"]
        atomic_write_text(files["resilience"], _csv_text(result.resilience, columns))
    result.summary["files"] = {k: p.name for k, p in files.items()}
    write_json(files["json"], _json_safe(result.summary))
    return files


def _flat(row: dict) -> dict:
    """``similarity_to: {spk: v}`` -> ``similarity_to_<spk>: v`` (one CSV column per compared speaker)."""
    compared = row.pop("similarity_to", None) or {}
    return {**row, **{f"similarity_to_{speaker}": value for speaker, value in compared.items()}}


def _json_safe(value):
    """NaN -> None, so the summary is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def plot_similarity_over_steps(result: SimilarityResult, path: str | os.PathLike) -> bool:
    """Mean similarity (± std) against training step, one line per run, the clean run dashed, and the
    resilience below when there is a clean run (the pseudo-Huber paper's Figure 3). False if no step."""
    from matplotlib.figure import Figure

    rows = [row for row in result.per_step if row["step"] is not None]
    if not rows:
        return False
    clean = result.summary.get("clean_run")
    if len({row["step"] for row in rows}) == 1 and not result.resilience:
        return _plot_one_step(result, rows, clean, path)
    figure = Figure(figsize=(7, 6.5 if result.resilience else 4), layout="constrained")
    axes = figure.subplots(2 if result.resilience else 1, 1, squeeze=False)[:, 0]
    colors = {}
    for run in sorted({row["run"] for row in rows}):
        series = sorted((row for row in rows if row["run"] == run), key=lambda row: row["step"])
        steps = [row["step"] for row in series]
        mean = torch.tensor([row["mean"] for row in series])
        std = torch.tensor([row["std"] for row in series])
        label = run or "samples"
        if run == clean and "clean" not in run.lower():
            label += " (clean)"
        (line,) = axes[0].plot(steps, mean, marker="o", linestyle="--" if run == clean else "-", label=label)
        axes[0].fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.15)
        # the last step's value written on the curve: the figure the headline reports
        axes[0].annotate(f"{mean[-1]:.3f}", (steps[-1], float(mean[-1])), textcoords="offset points",
                         xytext=(4, 4), fontsize="small", color=line.get_color())
        colors[run] = line.get_color()
    calibrated = result.summary.get("calibrated_threshold")
    if calibrated is not None:
        axes[0].axhline(calibrated, color="gray", linewidth=0.8, linestyle=":", label="calibrated threshold")
    axes[0].set(
        xlabel="training step", ylabel="speaker similarity (cosine)", title="Speaker similarity over training"
    )
    axes[0].legend(fontsize="small")
    if result.resilience:
        for run in sorted({row["run"] for row in result.resilience}):
            series = [r for r in result.resilience if r["run"] == run and r["step"] is not None]
            series.sort(key=lambda r: r["step"])
            axes[1].plot(
                [r["step"] for r in series], [r["resilience"] for r in series], marker="o", label=run,
                color=colors.get(run),
            )  # fmt: skip
        axes[1].axhline(0.0, color="gray", linewidth=0.8)
        axes[1].set(xlabel="training step", ylabel="resilience (run - clean)")
        axes[1].legend(fontsize="small")
    save_figure(figure, path, dpi=120)
    return True


def _plot_one_step(result: SimilarityResult, rows: Sequence[dict], clean: str | None, path) -> bool:
    """One scored step: a bar per run (mean ± std, value written on it) instead of a one-point line."""
    from matplotlib.figure import Figure

    rows = sorted(rows, key=lambda row: (row["run"] == clean, row["run"]))
    labels = [(row["run"] or "samples") + (" (clean)" if row["run"] == clean else "") for row in rows]
    means = [row["mean"] for row in rows]
    figure = Figure(figsize=(max(4.0, 1.2 * len(rows) + 2), 4), layout="constrained")
    axes = figure.subplots()
    bars = axes.bar(labels, means, yerr=[row["std"] for row in rows], capsize=4, color="tab:blue", alpha=0.8)
    axes.bar_label(bars, labels=[f"{m:.3f}\n(n={row['count']})" for m, row in zip(means, rows)], fontsize="small",
                   label_type="center", color="white")
    calibrated = result.summary.get("calibrated_threshold")
    if calibrated is not None:
        axes.axhline(calibrated, color="gray", linewidth=0.8, linestyle=":", label="calibrated threshold")
        axes.legend(fontsize="small")
    axes.set(ylabel="speaker similarity (cosine)", title=f"Speaker similarity at step {rows[0]['step']} (one step)")
    save_figure(figure, path, dpi=120)
    return True
