"""Audit an image run's training data: which samples are flipped labels, swapped captions or off-topic images.

Every score is built from the trained model's denoising loss of a training sample (its cached latent posterior
mean, centre crop) at fixed noise levels with fixed noise (:mod:`robust_gen.audit.probes`), under different
conditions:

* **label flips** (class conditioning): the model as a classifier of its own training data (Li et al. 2023,
  "Your diffusion model is secretly a zero-shot classifier"): the loss under every class, the same noise for all;
  score = loss(given label) - min over the other classes; suggested label = the argmin class.
* **caption swaps** (text conditioning): score = loss(own caption) - min(loss(null caption), loss(reference
  captions)) with the class prompts (or a fixed draw of training captions) as references: a caption that does not
  describe the image helps the denoiser less than the empty one or another caption does.
* **outliers** (one concept): score = the loss under the concept's condition (off-topic images are fitted worst);
  with a per-sample loss record (``trainer.track_sample_losses``) also the whole-training mean of the recorded
  losses, each epoch's values divided by that epoch's median (the whole set's loss falls as training goes on).

Baselines reported beside each score: ``final_loss`` (the sample's own-condition loss at the probe) and, when the
run recorded them, ``tracked_loss`` (the recorded loss over training).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robust_gen.audit.probes import DEFAULT_LEVELS, fixed_times, probe_noise
from robust_gen.audit.report import AuditScores
from robust_gen.audit.trajectory import tracked_loss_score
from robust_gen.corruption.manifest import Manifest
from robust_gen.diffusion.losses import L2Loss
from robust_gen.diffusion.objective import DiffusionObjective
from robust_gen.image.build import build_source, load_run
from robust_gen.image.data.dataset import Augmentation
from robust_gen.image.data.imaging import save_grid
from robust_gen.image.data.latents import load_or_encode
from robust_gen.image.task import ImageDiffusionTask
from robust_gen.training.recipe import MANIFEST_NAME

__all__ = ["ImageAuditData", "audit_image_run", "condition_losses", "load_audit_data", "save_top_grid"]

log = logging.getLogger(__name__)


@dataclass
class ImageAuditData:
    """The training set of a run as trained on: record ids, their records and their centre-crop latents."""

    ids: np.ndarray
    records: list[dict]
    latents: torch.Tensor
    images: np.ndarray
    manifest: Manifest | None
    num_records: int


def load_audit_data(run_dir: str | Path, cfg, autoencoder) -> ImageAuditData:
    """Rebuild the run's training records (the manifest applied, the concept and ``data.exclude`` respected)."""
    from robust_gen.audit.filters import read_data_filter

    run_dir = Path(run_dir)
    source = build_source(cfg.data)
    ae_cfg = cfg.autoencoder
    table = load_or_encode(autoencoder, source.images, cfg.latents.cache_dir or run_dir / "latents",
                           flips=bool(cfg.data.flip), scaling_factor=ae_cfg.get("scaling_factor", "data"),
                           batch_size=int(cfg.latents.encode_batch_size))
    manifest_path = run_dir / MANIFEST_NAME
    manifest = Manifest.load(manifest_path) if manifest_path.is_file() else None
    if manifest is not None and manifest.epoch is not None:
        log.warning("the corruption was re-drawn every epoch: auditing against epoch %s's manifest", manifest.epoch)
    records = [dict(r) for r in (manifest.apply(source.records) if manifest is not None else source.records)]
    keep = range(len(records))
    if cfg.data.get("exclude"):
        records, keep = read_data_filter(cfg.data.exclude).apply(records, where="the run's image data")
    concept = cfg.corruption.get("concept") if "concept" in cfg.corruption else None
    ids = np.array([i for i in keep if concept is None or records[i]["label"] == concept], dtype=np.int64)
    augmentation = Augmentation(int(cfg.data.resolution), int(cfg.data.crop_margin), autoencoder.factor)
    top, left, _ = augmentation.center()
    f, size = augmentation.factor, int(cfg.data.resolution) // augmentation.factor
    sources = [records[i]["source"] for i in ids]
    latents = table.mean[sources, 0, :, top // f: top // f + size, left // f: left // f + size]
    return ImageAuditData(ids, records, latents, source.images[sources], manifest, len(records))


@torch.no_grad()
def condition_losses(
    task: ImageDiffusionTask,
    latents: torch.Tensor,
    ids: np.ndarray,
    conditions: list[dict],
    *,
    meta: dict,
    levels=DEFAULT_LEVELS,
    seed: int = 0,
    batch_size: int = 256,
) -> torch.Tensor:
    """``[N, len(conditions)]`` mean squared denoising error of each sample under each condition, at the fixed
    probe (the same noise levels and noise for every condition).

    ``conditions`` are dicts for :meth:`ImageDiffusionTask.condition_kwargs`: ``{"labels": int}``,
    ``{"captions": str}``, ``{"per_sample": "labels" | "captions", "values": [...]}`` (one value per sample) or
    ``{"semantic": False}`` (the null condition).
    """
    device = task.scaling_factor.device
    # plain squared error whatever loss the run trained with: the probe measures fit, a robust loss would cap it
    objective = DiffusionObjective(task.schedule, L2Loss(), prediction=task.prediction)
    out = torch.zeros(len(ids), len(conditions), dtype=torch.float64)
    control = meta.get("sample_control")
    for start in range(0, len(ids), batch_size):
        rows = slice(start, start + batch_size)
        x0 = latents[rows].to(device) * task.scaling_factor
        b = x0.shape[0]
        times = fixed_times(task.schedule, levels, b)
        noises = [probe_noise(x0.shape[1:], ids[rows], seed, level).to(device) for level in range(len(levels))]
        for column, condition in enumerate(conditions):
            kwargs = task.condition_kwargs(
                batch_size=b, control=None if control is None else torch.tensor([control] * b, dtype=torch.float32),
                **_condition_args(condition, rows, b),
            )
            total = torch.zeros(b, dtype=torch.float64)
            for t, noise in zip(times, noises, strict=True):
                loss = objective(task.denoiser, x0, model_kwargs=kwargs, t=t.to(device), noise=noise).loss
                total += loss.double().cpu()
            out[rows, column] = total / len(levels)
    return out


def _condition_args(condition: dict, rows: slice, batch: int) -> dict[str, Any]:
    if condition.get("semantic") is False:
        return {"semantic": False}
    if "per_sample" in condition:
        values = list(condition["values"][rows])
        return {"labels": torch.tensor(values)} if condition["per_sample"] == "labels" else {"captions": values}
    if "labels" in condition:
        return {"labels": torch.full((batch,), int(condition["labels"]))}
    return {"captions": [str(condition["captions"])] * batch}


def save_top_grid(images: np.ndarray, order: np.ndarray, path: str | Path, count: int = 64) -> Path:
    """The ``count`` top-flagged training images, most suspicious first (row by row)."""
    chosen = images[order[:count]]
    return save_grid(chosen, path, nrow=min(8, len(chosen)), upscale=max(1, 64 // chosen.shape[1]))


def _kind(cfg, manifest: Manifest | None, requested: str | None) -> str:
    if requested:
        return requested
    if manifest is not None and manifest.kind in ("label_flip", "caption_swap", "outliers"):
        return manifest.kind
    if "concept" in cfg.corruption:
        return "outliers"
    return "label_flip" if cfg.condition.kind == "class" else "caption_swap"


def audit_image_run(
    run_dir: str | Path,
    *,
    kind: str | None = None,
    levels=DEFAULT_LEVELS,
    seed: int = 0,
    batch_size: int = 256,
    reference_captions: int = 10,
    device: str = "cpu",
) -> tuple[AuditScores, ImageAuditData]:
    """Score every training sample of an image run (see the module docstring); ``kind`` defaults to the
    manifest's corruption kind (or, without one, to what the run's conditioning allows)."""
    task, autoencoder, meta, cfg = load_run(run_dir, device=device)
    data = load_audit_data(run_dir, cfg, autoencoder)
    kind = _kind(cfg, data.manifest, kind)
    settings = {"levels": list(levels), "seed": seed, "checkpoint_step": meta["step"], "weights": "ema"}
    records = [data.records[i] for i in data.ids]
    losses = lambda conditions: condition_losses(  # noqa: E731
        task, data.latents, data.ids, conditions, meta=meta, levels=levels, seed=seed, batch_size=batch_size)
    tracked = tracked_loss_score(run_dir, data.ids)
    baselines = {} if tracked is None else {"tracked_loss": tracked}
    if kind == "label_flip":
        if cfg.condition.kind != "class":
            raise ValueError(f"a label-flip audit needs a class-conditional run; {run_dir} has condition.kind="
                             f"{cfg.condition.kind} (use --kind caption_swap)")
        given = np.array([int(r["label"]) for r in records])
        per_class = losses([{"labels": k} for k in range(int(meta["num_classes"]))]).numpy()
        own = per_class[np.arange(len(given)), given]
        others = per_class.copy()
        others[np.arange(len(given)), given] = np.inf
        scores = own - others.min(axis=1)
        suggested = per_class.argmin(axis=1)
        return AuditScores(kind, data.ids, scores, given.tolist(), suggested.tolist(),
                           {"final_loss": own, **baselines}, settings, field="label"), data
    if kind == "caption_swap":
        if cfg.condition.kind != "text":
            raise ValueError(f"a caption-swap audit needs a text-conditional run; {run_dir} has condition.kind="
                             f"{cfg.condition.kind}")
        given = [str(r["caption"]) for r in records]
        references = _reference_captions(meta, given, reference_captions, seed)
        table = losses([{"per_sample": "captions", "values": given}, {"semantic": False},
                        *({"captions": c} for c in references)]).numpy()
        own, alternatives = table[:, 0], table[:, 1:]
        scores = own - alternatives.min(axis=1)
        best = alternatives[:, 1:].argmin(axis=1) if references else np.zeros(len(given), int)
        suggested = [references[j] if references and alternatives[i, 1 + j] < own[i] else given[i]
                     for i, j in enumerate(best)]
        settings["reference_captions"] = references
        return AuditScores(kind, data.ids, scores, given, suggested,
                           {"final_loss": own, "own_minus_null": own - table[:, 1], **baselines}, settings,
                           field="caption"), data
    if kind == "outliers":
        given = [int(r["label"]) for r in records]
        conditions = ([{"per_sample": "labels", "values": np.array(given)}] if cfg.condition.kind == "class"
                      else [{"per_sample": "captions", "values": [str(r["caption"]) for r in records]}])
        own = losses(conditions).numpy()[:, 0]
        scores = own if tracked is None else _rank_mean(own, tracked)
        settings["score"] = "final_loss" if tracked is None else "mean rank of final_loss and tracked_loss"
        return AuditScores(kind, data.ids, scores, given, None, {"final_loss": own, **baselines}, settings), data
    raise ValueError(f"unknown image audit kind {kind!r}; choose label_flip, caption_swap or outliers")


def _rank_mean(*scores: np.ndarray) -> np.ndarray:
    """Mean of the scores' ranks in [0, 1]: combines scores on different scales without weighting one by its units."""
    ranks = [np.argsort(np.argsort(s, kind="stable"), kind="stable") / max(len(s) - 1, 1) for s in scores]
    return np.mean(ranks, axis=0)


def _reference_captions(meta: dict, given: list[str], count: int, seed: int) -> list[str]:
    """One prompt per class when the data has classes (digits), else ``count`` distinct training captions."""
    prompts = [p[0] for p in meta.get("class_prompts") or [] if p]
    if prompts:
        return prompts
    distinct = sorted(set(given))
    rng = np.random.default_rng(seed)
    return [distinct[i] for i in sorted(rng.choice(len(distinct), size=min(count, len(distinct)), replace=False))]
