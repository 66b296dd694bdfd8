"""Paired comparisons of a study's methods, with bootstrap intervals and a verdict on each of the papers' claims.

Two methods trained with the same training seed and the same corruption draw differ only in the method, so the
difference of their results at that seed removes most of the seed-to-seed spread that a comparison of two means
carries. This module pairs records on their seed keys (``trainer.seed``, ``corruption.seed``), takes the
per-seed differences ``treatment - baseline`` of one metric, and gives their mean with a percentile bootstrap
confidence interval of the mean (resampling the pairs; seeded, so a report is reproducible).

A :class:`Claim` is one sentence of a paper ("CEP-U lowers FID") written as data: the metric, the key that
tells the two methods apart, their values, and which direction the paper reports as better. :func:`judge`
turns a claim's paired differences into "reproduced" (the whole interval on the paper's side of zero), "not
reproduced" (the whole interval on the other side) or "inconclusive" (the interval holds zero, or fewer than
``min_pairs``, default 5, pairs). With few pairs a percentile bootstrap interval is too narrow (with two pairs it
is just the range of their mean), so fewer than ``min_pairs`` pairs are always "inconclusive"; the report also
says in how many pairs the difference went the paper's way.

:func:`spread_sources` separates the two sources of seed spread when the training seed and the corruption draw
vary independently (a crossed design, ``-- trainer.seed=0,1,2 corruption.seed=0,1``); when they vary together
(``corruption.seed: ${trainer.seed}``, the studies' default) it says so instead of pretending to separate them.

Examples
--------
>>> records = [{"cep.kind": k, "trainer.seed": s, "fid": 10.0 + s - (1.0 if k == "uniform" else 0.0)}
...            for k in ("none", "uniform") for s in range(5)]
>>> claim = Claim("CEP-U lowers FID", metric="fid", key="cep.kind", treatment="uniform", baseline="none")
>>> [row["verdict"] for row in judge(records, claim)]
['reproduced']
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "MIN_PAIRS",
    "PAIR_KEYS",
    "Claim",
    "bootstrap_mean_ci",
    "judge",
    "paired_differences",
    "spread_sources",
    "verdict",
]

#: What makes two runs a pair: the same training seed and the same corruption draw.
PAIR_KEYS = ("trainer.seed", "corruption.seed")
#: Fewer pairs than this never give a verdict: a bootstrap interval over 2-4 pairs is far too narrow.
MIN_PAIRS = 5
VERDICTS = ("reproduced", "not reproduced", "inconclusive")


@dataclass(frozen=True)
class Claim:
    """One claim of a paper as a paired comparison.

    ``paper``: the claim in words ("the paper says ..."); ``metric``: the record key compared; ``key``: the config
    key whose value tells the methods apart (``cep.kind``, ``loss.method``, ``corruption.ratio``);
    ``treatment`` / ``baseline``: its two values (difference = treatment - baseline); ``better``: ``lower`` or
    ``higher`` (which sign of the difference the paper reports); ``where``: only records with these values (e.g.
    ``{"corruption.ratio": 0.0}``); ``across``: keys whose values each get their own row (e.g. the ratio).
    """

    paper: str
    metric: str
    key: str
    treatment: Any
    baseline: Any
    better: str = "lower"
    where: Mapping[str, Any] = field(default_factory=dict)
    across: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.better not in ("lower", "higher"):
            raise ValueError(f"Claim.better must be 'lower' or 'higher', got {self.better!r}")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=0.0, abs_tol=1e-12)
    return a == b


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


def bootstrap_mean_ci(
    values: Sequence[float], *, confidence: float = 0.95, resamples: int = 10000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (NaN, NaN for fewer than two values).

    Examples
    --------
    >>> low, high = bootstrap_mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    >>> 1.0 < low < 3.0 < high < 5.0
    True
    >>> bootstrap_mean_ci([1.0])
    (nan, nan)
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    data = np.asarray([float(v) for v in values], dtype=np.float64)
    if data.size < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(int(resamples), data.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def paired_differences(
    records: Sequence[Mapping[str, Any]],
    *,
    metric: str,
    key: str,
    treatment: Any,
    baseline: Any,
    pair_keys: Sequence[str] = PAIR_KEYS,
    where: Mapping[str, Any] | None = None,
    across: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Per-seed differences ``metric(treatment) - metric(baseline)``, one row per value of the ``across`` keys.

    Records pair when they agree on ``pair_keys`` (those present) and on ``across``; each row carries the
    ``across`` values, the pairs' seeds, their differences and their mean. A seed with more than one record of
    the same method raises ``ValueError`` (two settings would be mixed: add the key that differs to ``across``).

    Examples
    --------
    >>> recs = [{"m": m, "trainer.seed": s, "x": s + (2.0 if m == "b" else 0.0)} for m in "ab" for s in (0, 1)]
    >>> row = paired_differences(recs, metric="x", key="m", treatment="b", baseline="a")[0]
    >>> row["differences"], row["mean"], row["seeds"]
    ([2.0, 2.0], 2.0, ['trainer.seed=0', 'trainer.seed=1'])
    """
    where = dict(where or {})
    kept = [r for r in records if all(_same(r.get(k), v) for k, v in where.items())]
    cells: dict[str, dict[str, dict[str, Any]]] = {}
    for record in kept:
        side = "treatment" if _same(record.get(key), treatment) else "baseline" if _same(record.get(key), baseline) else None
        if side is None:
            continue
        group = json.dumps([record.get(k) for k in across], default=str)
        seed = ",".join(f"{k}={record[k]}" for k in pair_keys if k in record)
        slot = cells.setdefault(group, {}).setdefault(seed, {})
        if side in slot:
            raise ValueError(
                f"two runs of {key}={record.get(key)!r} at {seed or 'one seed'} ({slot[side].get('run_dir')}, "
                f"{record.get('run_dir')}): they differ in a key that is neither a seed nor in `across`"
            )
        slot[side] = record
    rows = []
    for group, seeds in cells.items():
        pairs = []
        for seed, slot in sorted(seeds.items()):
            if "treatment" in slot and "baseline" in slot:
                a, b = _number(slot["treatment"].get(metric)), _number(slot["baseline"].get(metric))
                if a is not None and b is not None:
                    pairs.append((seed, a - b))
        values = [d for _, d in pairs]
        row = dict(zip(across, json.loads(group)))
        row.update(seeds=[s for s, _ in pairs], differences=values, n=len(values),
                   mean=statistics.fmean(values) if values else math.nan)  # fmt: skip
        rows.append(row)
    return sorted(rows, key=lambda r: [str(r.get(k)) for k in across])


def verdict(low: float, high: float, better: str) -> str:
    """``reproduced`` when the interval lies wholly on the paper's side of zero, ``not reproduced`` when wholly on
    the other side, ``inconclusive`` otherwise (or without an interval).

    Examples
    --------
    >>> verdict(-2.0, -0.5, "lower"), verdict(0.1, 0.4, "lower"), verdict(-1.0, 1.0, "higher")
    ('reproduced', 'not reproduced', 'inconclusive')
    """
    if math.isnan(low) or math.isnan(high):
        return "inconclusive"
    good_side = (high < 0.0) if better == "lower" else (low > 0.0)
    bad_side = (low > 0.0) if better == "lower" else (high < 0.0)
    return "reproduced" if good_side else "not reproduced" if bad_side else "inconclusive"


def judge(
    records: Sequence[Mapping[str, Any]],
    claim: Claim,
    *,
    confidence: float = 0.95,
    seed: int = 0,
    min_pairs: int = MIN_PAIRS,
) -> list[dict[str, Any]]:
    """The claim's paired differences (:func:`paired_differences`) with interval, the number of pairs that went
    the paper's way, the verdict and a sentence "the paper says X; here ... the paired difference is Y [CI]".
    With fewer than ``min_pairs`` pairs the verdict is "inconclusive" whatever the interval.

    Examples
    --------
    >>> recs = [{"k": k, "trainer.seed": s, "acc": 0.5 + 0.01 * s} for k in ("a", "b") for s in range(5)]
    >>> row = judge(recs, Claim("b is more accurate", "acc", "k", "b", "a", better="higher"))[0]
    >>> row["verdict"], row["agree"], row["n"]
    ('inconclusive', 0, 5)
    """
    rows = paired_differences(
        records, metric=claim.metric, key=claim.key, treatment=claim.treatment, baseline=claim.baseline,
        where=claim.where, across=claim.across,
    )  # fmt: skip
    out = []
    for row in rows:
        low, high = bootstrap_mean_ci(row["differences"], confidence=confidence, seed=seed)
        agree = sum((d < 0) if claim.better == "lower" else (d > 0) for d in row["differences"])
        result = verdict(low, high, claim.better)
        if row["n"] < min_pairs:
            result = f"inconclusive (only {row['n']} pairs; a verdict needs {min_pairs})"
        setting = ", ".join([f"{k}={v}" for k, v in claim.where.items()] + [f"{k}={row[k]}" for k in claim.across])
        setting = setting or "all runs"
        sentence = (
            f"The paper says: {claim.paper}. Here ({setting}), {claim.metric} of "
            f"{claim.key}={claim.treatment} minus {claim.key}={claim.baseline} at the same seed is "
            f"{_fmt(row['mean'])} [{_fmt(low)}, {_fmt(high)}] ({confidence:.0%} bootstrap CI, {row['n']} pairs, "
            f"{agree} of {row['n']} {claim.better}): {result}."
        )
        out.append({**row, "paper": claim.paper, "metric": claim.metric, "ci_low": low, "ci_high": high,
                    "agree": agree, "verdict": result, "setting": setting, "sentence": sentence})  # fmt: skip
    return out


def _fmt(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:+.3g}"


def spread_sources(members: Sequence[Mapping[str, Any]], metric: str) -> dict[str, Any]:
    """The seed spread of ``metric`` over the runs of one setting, split by source where the design allows.

    ``design``: ``training seed only`` (one corruption draw), ``tied`` (each training seed with its own draw:
    the spread ``total`` holds both sources, inseparably), ``crossed`` (both vary independently:
    ``training`` = mean std over training seeds at a fixed draw, ``corruption`` = mean std over draws at a fixed
    training seed). Stds are sample stds (ddof 1); NaN where a group has fewer than two runs.

    Examples
    --------
    >>> runs = [{"trainer.seed": t, "corruption.seed": c, "m": t + 10 * c} for t in (0, 1, 2) for c in (0, 1)]
    >>> s = spread_sources(runs, "m")
    >>> s["design"], s["training"], round(s["corruption"], 2)
    ('crossed', 1.0, 7.07)
    >>> spread_sources([{"trainer.seed": t, "corruption.seed": t, "m": t} for t in (0, 1)], "m")["design"]
    'tied'
    """
    rows = [(m.get("trainer.seed"), m.get("corruption.seed"), _number(m.get(metric))) for m in members]
    rows = [r for r in rows if r[2] is not None]
    total = statistics.stdev([r[2] for r in rows]) if len(rows) > 1 else math.nan
    training_seeds, draws = {r[0] for r in rows}, {r[1] for r in rows}
    out = {"n": len(rows), "total": total, "training": math.nan, "corruption": math.nan}
    if len(draws) <= 1:
        return {**out, "design": "training seed only", "training": total}
    if len({(r[0], r[1]) for r in rows}) == len(training_seeds) == len(draws):
        return {**out, "design": "tied"}

    def mean_std(index: int) -> float:
        groups: dict[Any, list[float]] = {}
        for r in rows:
            groups.setdefault(r[index], []).append(r[2])
        stds = [statistics.stdev(v) for v in groups.values() if len(v) > 1]
        return statistics.fmean(stds) if stds else math.nan

    # std over training seeds within each draw (grouped by draw), and over draws within each training seed
    return {**out, "design": "crossed", "training": mean_std(1), "corruption": mean_std(0)}
