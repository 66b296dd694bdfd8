"""An audit's scores and what it writes under ``RUN_DIR/audit/``: ``summary.json``, ``ranked.csv``, ``roc.png``.

``summary.json`` holds the score's name and settings and, when the run has a corruption manifest, the metrics of
:func:`~robust_gen.audit.metrics.score_metrics` for the audit's score and for each baseline score (e.g. the
per-sample loss, and uniformly random scores), so every audit reports what it gained over the simple answers.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robust_gen.audit.filters import DataFilter
from robust_gen.audit.metrics import corrupted_mask, random_baseline, roc_points, score_metrics
from robust_gen.training.run_dir import atomic_write_text, save_figure, write_json

__all__ = ["AuditScores", "write_audit"]


@dataclass
class AuditScores:
    """One score per audited sample (higher = more likely corrupted), with what the table shows beside it.

    Parameters
    ----------
    kind:
        What was scored: ``label_flip``, ``caption_swap``, ``outliers`` or ``speaker_contamination``.
    ids:
        Sample indices (the data as loaded, the manifest's indices).
    scores:
        The audit's score.
    given:
        The sample's label / caption / speaker as trained on.
    suggested:
        The audit's better guess (e.g. the argmin class), or None where it has none.
    baselines:
        Other scores of the same samples, reported beside the audit's (``final_loss``, ...).
    settings:
        How the score was computed (noise levels, seeds, checkpoint step), for the summary.
    field:
        The record field ``suggested`` replaces in a relabel list (``label``), or None.

    Examples
    --------
    >>> a = AuditScores("label_flip", [0, 1, 2], [0.1, 2.0, -1.0], given=[3, 4, 5], suggested=[3, 7, 5])
    >>> a.ranking().tolist()
    [1, 0, 2]
    """

    kind: str
    ids: Sequence[int]
    scores: Sequence[float]
    given: Sequence[Any]
    suggested: Sequence[Any] | None = None
    baselines: dict[str, Sequence[float]] = dataclasses.field(default_factory=dict)
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    field: str | None = None

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=np.int64)
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.baselines = {k: np.asarray(v, dtype=np.float64) for k, v in self.baselines.items()}
        n = len(self.ids)
        columns = {"scores": self.scores, "given": self.given, **{f"baseline {k}": v for k, v in self.baselines.items()}}
        if self.suggested is not None:
            columns["suggested"] = self.suggested
        wrong = {k: len(v) for k, v in columns.items() if len(v) != n}
        if wrong:
            raise ValueError(f"{n} sample ids but {wrong} values")

    def ranking(self) -> np.ndarray:
        """Positions sorted from most to least suspicious (stable for ties)."""
        return np.argsort(-self.scores, kind="stable")

    def to_filter(self, num_samples: int, count: int, mode: str = "exclude") -> DataFilter:
        """A :class:`DataFilter` that excludes (or relabels to the suggestion) the ``count`` top-ranked samples.

        Examples
        --------
        >>> a = AuditScores("label_flip", [0, 1, 2], [0.1, 2.0, -1.0], given=[3, 4, 5], suggested=[3, 7, 5],
        ...                 field="label")
        >>> a.to_filter(3, 1, mode="relabel").relabel
        {1: 7}
        """
        top = self.ranking()[: max(int(count), 0)]
        source = {"kind": self.kind, "settings": self.settings}
        if mode == "exclude":
            return DataFilter(num_samples, exclude=self.ids[top].tolist(), source=source)
        if mode != "relabel":
            raise ValueError(f"filter mode must be 'exclude' or 'relabel', got {mode!r}")
        if self.suggested is None or self.field is None:
            raise ValueError(f"a {self.kind} audit suggests no replacement: use --filter-mode exclude")
        # a top-ranked sample whose suggestion is its given value has nothing to relabel: leave it out instead
        relabel = {int(self.ids[i]): _plain(self.suggested[i]) for i in top if self.suggested[i] != self.given[i]}
        exclude = [int(self.ids[i]) for i in top if int(self.ids[i]) not in relabel]
        return DataFilter(num_samples, exclude=exclude, relabel=relabel, field=self.field, source=source)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _ranked_csv(audit: AuditScores, corrupted: np.ndarray | None) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["rank", "id", "score", "given", "suggested", *audit.baselines]
    if corrupted is not None:
        header.append("corrupted")
    writer.writerow(header)
    for rank, i in enumerate(audit.ranking(), start=1):
        row = [rank, int(audit.ids[i]), f"{audit.scores[i]:.6g}", audit.given[i],
               "" if audit.suggested is None else audit.suggested[i],
               *(f"{v[i]:.6g}" for v in audit.baselines.values())]
        if corrupted is not None:
            row.append(int(corrupted[i]))
        writer.writerow(row)
    return buffer.getvalue()


def _roc_figure(audit: AuditScores, corrupted: np.ndarray, metrics: dict[str, dict]):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.5, 4.2))
    ax = figure.add_subplot()
    for name, scores in {"audit": audit.scores, **audit.baselines}.items():
        fpr, tpr = roc_points(scores, corrupted)
        ax.plot(fpr, tpr, label=f"{name} (AUC {metrics[name]['roc_auc']:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="random")
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title=f"{audit.kind}: corrupted vs clean")
    ax.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    return figure


def write_audit(out_dir: str | os.PathLike, audit: AuditScores, changed_indices: Sequence[int] | None = None,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``summary.json``, ``ranked.csv`` and (with a manifest) ``roc.png`` into ``out_dir``; return the summary.

    ``changed_indices``: the manifest's changed indices, or None when the run has no manifest (a real dataset):
    then the summary has the ranking only.

    Examples
    --------
    >>> import tempfile
    >>> a = AuditScores("outliers", [0, 1, 2, 3], [0.9, 0.1, 0.8, 0.2], given=["a"] * 4,
    ...                 baselines={"final_loss": [0.5, 0.4, 0.3, 0.2]})
    >>> s = write_audit(tempfile.mkdtemp(), a, changed_indices=[0, 2])
    >>> s["metrics"]["audit"]["roc_auc"], s["metrics"]["final_loss"]["roc_auc"], sorted(s["files"])
    (1.0, 0.75, ['ranked.csv', 'roc.png', 'summary.json'])
    """
    out = Path(out_dir)
    corrupted = None if changed_indices is None else corrupted_mask(changed_indices, audit.ids)
    summary: dict[str, Any] = {"kind": audit.kind, "num_samples": len(audit.ids), "settings": audit.settings,
                               **(extra or {})}
    files = ["summary.json", "ranked.csv"]
    atomic_write_text(out / "ranked.csv", _ranked_csv(audit, corrupted))
    if corrupted is not None:
        metrics = {"audit": score_metrics(audit.scores, corrupted)}
        metrics.update({name: score_metrics(v, corrupted) for name, v in audit.baselines.items()})
        metrics["random"] = random_baseline(corrupted)
        summary["metrics"] = metrics
        # the headline numbers at the top level, as the issue asks: the audit's own score
        summary.update({k: metrics["audit"][k] for k in ("roc_auc", "average_precision", "precision_at_k")})
        summary["num_corrupted"] = metrics["audit"]["num_corrupted"]
        if metrics["audit"]["num_corrupted"] and metrics["audit"]["num_corrupted"] < len(audit.ids):
            save_figure(_roc_figure(audit, corrupted, metrics), out / "roc.png", dpi=120)
            files.append("roc.png")
    summary["files"] = files
    write_json(out / "summary.json", summary)
    return summary
