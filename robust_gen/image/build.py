"""Build the image recipe's objects from its Hydra config: data, autoencoder stage, latent cache, training set,
task module and sampler hook for training (:func:`prepare_training`), and the trained model back from a run
directory for sampling (:func:`load_run`).

What sampling needs besides the config (classes, prompts, latent shape, scaling factor, default control
values) is written once to ``<run_dir>/image_meta.json``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from robust_gen.audit.filters import read_data_filter
from robust_gen.conditioning import ConditionalEmbeddingPerturbation
from robust_gen.diffusion.ema import averaged_weights
from robust_gen.diffusion.objective import DiffusionObjective
from robust_gen.image.data.concept import concept_label
from robust_gen.image.data.dataset import CONTROL_NAMES, Augmentation, LatentImageDataset
from robust_gen.image.data.latents import load_or_encode, load_or_encode_shards
from robust_gen.image.data.sources import (
    ImageSource,
    load_digits_source,
    load_folder_source,
    load_hf_source,
    load_table_source,
    report_skipped,
)
from robust_gen.image.model.autoencoder import ImageAutoencoder, build_autoencoder, load_pretrained
from robust_gen.image.model.conditioners import build_conditioner
from robust_gen.image.model.denoiser import build_denoiser, count_parameters
from robust_gen.image.model.pretrained import configure_pretrained, is_pretrained
from robust_gen.image.sampling import make_eval_fn
from robust_gen.image.task import ImageDiffusionTask
from robust_gen.launch import apply_cpu_threads
from robust_gen.training.checkpoint import resolve_checkpoint
from robust_gen.training.recipe import load_run_config, write_resolved_config
from robust_gen.training.run_dir import write_json
from robust_gen.training.trainer import run_on_cpu

__all__ = ["META_NAME", "ImageTraining", "autoencoder_images", "build_first_stage", "build_source", "build_task",
           "encode_latents",
           "fill_from_data", "load_run", "prepare_training"]

log = logging.getLogger(__name__)

META_NAME = "image_meta.json"
_COMMON = ("resolution", "crop_margin", "interpolation", "limit")
_SOURCE_ARGS = {  # the digits cannot be bad, so they take no `on_bad`
    "digits": ("caption_seed",),
    "folder": ("root", "channels", "caption_template", "on_bad", "min_size", "lazy", "index_dir"),
    "table": ("table", "image_column", "caption_column", "label_column", "image_root", "channels", "on_bad",
              "min_size"),
    "hf": ("name", "split", "image_column", "label_column", "caption_column", "caption_template", "config_name",
           "revision", "data_dir", "channels", "on_bad", "min_size"),
}
_LOADERS = {"digits": load_digits_source, "folder": load_folder_source, "table": load_table_source,
            "hf": load_hf_source}


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def build_source(
    data_cfg: dict | DictConfig, run_dir: str | Path | None = None, *, index_dir: str | Path | None = None
) -> ImageSource:
    """Load the data of the ``data`` config group (``source: digits | folder | table | hf``).

    Images skipped under ``data.on_bad=skip`` are counted in the log and, given ``run_dir``, listed in
    ``<run_dir>/skipped_images.json`` (:func:`~robust_gen.image.data.sources.report_skipped`). A lazy folder
    (``data.lazy=true``) is indexed into ``data.index_dir``, or ``index_dir`` when that is null.

    Examples
    --------
    >>> build_source({"source": "digits", "resolution": 16, "limit": 4}).images.shape
    (4, 16, 16, 1)
    """
    cfg = _plain(data_cfg)
    kind = cfg.get("source")
    if kind not in _LOADERS:
        raise ValueError(f"data.source must be one of {sorted(_LOADERS)}, got {kind!r}")
    kwargs = {k: cfg[k] for k in (*_COMMON, *_SOURCE_ARGS[kind]) if k in cfg}
    if kwargs.get("lazy") and kwargs.get("index_dir") is None:
        kwargs["index_dir"] = index_dir
    source = _LOADERS[kind](**kwargs)
    report_skipped(source, run_dir)
    return source


def fill_from_data(cfg: DictConfig, source: ImageSource) -> None:
    """Fill the corruption settings that come from the data (``num_classes``; ``concept`` defaults to class 0)."""
    corruption = cfg.corruption
    keys = set(corruption.keys())  # (`in` on a DictConfig is False for a missing "???" value)
    named = concept_label(cfg.data, source.class_names)  # data=concept names its folder
    with open_dict(cfg):
        if named is not None and "concept" in keys:
            if OmegaConf.is_missing(corruption, "concept"):
                corruption.concept = named
            elif int(corruption.concept) != named:
                raise ValueError(f"corruption.concept={corruption.concept} but data.concept={cfg.data.concept!r} "
                                 f"is class {named}; set only data.concept")
        if "num_classes" in keys and OmegaConf.is_missing(corruption, "num_classes"):
            corruption.num_classes = source.num_classes
        if "concept" in keys and OmegaConf.is_missing(corruption, "concept"):
            if not source.num_classes:
                raise ValueError("corruption=outliers needs labelled data (a concept is a class)")
            corruption.concept = 0
            log.info("corruption.concept not set: using class 0 (%s)", source.class_names[0])
    target = str(corruption.get("_target_", ""))
    if target.endswith("LabelFlip") and source.num_classes < 2:
        raise ValueError(f"corruption=label_flip needs labelled data with >= 2 classes; {source.name} has none")


def build_task(cfg: DictConfig, meta: dict) -> ImageDiffusionTask:
    """Conditioner, denoiser and objective of ``cfg`` for data described by ``meta`` (see :func:`prepare_training`)."""
    schedule = instantiate(cfg.schedule)
    objective = DiffusionObjective(schedule, instantiate(cfg.loss), prediction=cfg.prediction)
    context_dim = int(cfg.model.cross_attention_dim)
    condition_cfg, control_cfg = _plain(cfg.condition), _plain(cfg.control)
    conditioner = build_conditioner(condition_cfg, num_classes=int(meta["num_classes"]), dim=context_dim)
    channels, size, _ = meta["latent_shape"]
    denoiser = build_denoiser(
        _plain(cfg.model), routing=control_cfg.get("mode", "none"), control_cfg=control_cfg, schedule=schedule,
        in_channels=channels, sample_size=size, context_dim=context_dim, control_names=CONTROL_NAMES,
    )
    cep_cfg = _plain(cfg.cep)
    cep = None
    if cep_cfg.get("kind", "none") != "none":
        cep = ConditionalEmbeddingPerturbation(
            gamma=float(cep_cfg.get("gamma", 1.0)), kind=cep_cfg["kind"], perturb_null=bool(cep_cfg.get("perturb_null"))
        )
    return ImageDiffusionTask(
        denoiser, conditioner, objective, scaling_factor=float(meta["scaling_factor"]),
        p_semantic=float(cfg.condition_dropout.semantic), p_control=float(cfg.condition_dropout.control),
        cep=cep, sample_posterior=bool(cfg.latents.sample_posterior),
        cep_placement=str(cep_cfg.get("placement", "encoder_output")),
    )


@dataclass
class ImageTraining:
    """Everything the trainer needs, plus what was built on the way."""

    task: ImageDiffusionTask
    dataset: LatentImageDataset
    eval_fn: Any
    autoencoder: ImageAutoencoder
    source: ImageSource
    meta: dict
    config_yaml: str


def _meta(cfg: DictConfig, source: ImageSource, autoencoder: ImageAutoencoder, scaling_factor: float,
          augmentation: Augmentation, concept: int | None) -> dict:
    size = int(cfg.data.resolution) // autoencoder.factor
    top, left, flip = augmentation.center()
    orig = _most_common_size(source)
    return {
        "num_classes": source.num_classes,
        # what sampling asks for: a run trained on one concept (corruption=outliers) only knows that class
        "sample_classes": [int(concept)] if concept is not None else list(range(source.num_classes)),
        "class_names": source.class_names,
        "class_prompts": source.class_prompts,
        "captions": source.captions[:1000],
        "latent_shape": [autoencoder.latent_channels, size, size],
        "factor": autoencoder.factor,
        "resolution": int(cfg.data.resolution),
        "data_channels": source.channels,
        "scaling_factor": scaling_factor,
        "control_names": list(CONTROL_NAMES),
        "sample_control": [top, left, orig[0], orig[1], float(flip)],
        "source": source.name,
    }


def _most_common_size(source: ImageSource) -> tuple[int, int]:
    """The most frequent original (height, width): by column for a lazy source's record table."""
    if source.is_lazy:
        pairs = np.stack([np.asarray(source.records.column("orig_height")),
                          np.asarray(source.records.column("orig_width"))], axis=1)
        values, counts = np.unique(pairs, axis=0, return_counts=True)
        return tuple(int(v) for v in values[int(counts.argmax())])
    sizes = [(r["orig_height"], r["orig_width"]) for r in source.records]
    return max(set(sizes), key=sizes.count)


def autoencoder_images(source: ImageSource, limit: int) -> np.ndarray:
    """The images the ``trained`` autoencoder learns from: all of an in-memory source; of a lazy one, ``limit``
    evenly spaced images (decoding a million files to train a small first stage would cost more than it gives).

    Examples
    --------
    >>> autoencoder_images(load_digits_source(resolution=8, limit=6), 2).shape
    (6, 8, 8, 1)
    """
    if not source.is_lazy:
        return source.images
    count = len(source.images)
    return source.images[np.linspace(0, count - 1, num=min(int(limit), count)).round().astype(np.int64)]


def build_first_stage(cfg: DictConfig, source: ImageSource, run_dir: Path, device: Any) -> ImageAutoencoder:
    """The run's autoencoder (trained on :func:`autoencoder_images` in ``trained`` mode, reused when saved)."""
    ae_cfg = _plain(cfg.autoencoder)
    images = source.images
    if ae_cfg.get("mode") == "trained":
        images = autoencoder_images(source, int(cfg.data.get("autoencoder_images", 4096)))
    return build_autoencoder(ae_cfg, run_dir=run_dir, images=images, seed=int(cfg.trainer.seed), device=device,
                             progress=bool(cfg.trainer.progress))


def encode_latents(cfg: DictConfig, source: ImageSource, autoencoder: ImageAutoencoder, augmentation: Augmentation,
                   run_dir: Path) -> Any:
    """The latent table of ``source``: one in-memory cache file (``latents.format=table``), or the sharded cache
    read by index (``latents.format=sharded``, for data that does not fit in memory)."""
    ae_cfg = _plain(cfg.autoencoder)
    # latents of a shared (cached) autoencoder are shared too: the cache file is named by weights and images
    cache_dir = cfg.latents.cache_dir or (
        autoencoder.cache_folder / "latents" if autoencoder.cache_folder is not None else run_dir / "latents"
    )
    options = {"flips": augmentation.flip, "scaling_factor": ae_cfg.get("scaling_factor", "data"),
               "batch_size": int(cfg.latents.encode_batch_size)}
    latent_format = cfg.latents.get("format", "table")
    if latent_format == "sharded":
        return load_or_encode_shards(autoencoder, source.images, cache_dir, shard_size=int(cfg.latents.shard_size),
                                     **options)
    if latent_format != "table":
        raise ValueError(f"latents.format must be table or sharded, got {latent_format!r}")
    if source.is_lazy:
        raise ValueError("a lazy data source (data.lazy=true) needs latents.format=sharded: the one-file cache holds "
                         "every latent in memory")
    return load_or_encode(autoencoder, source.images, cache_dir, **options)


def prepare_training(cfg: DictConfig, run_dir: str | Path) -> ImageTraining:
    """Data, first stage, latent cache, training set, task and sampling hook for a run in ``run_dir``.

    Writes ``config.yaml`` (resolved, with the data-derived corruption settings filled in), the corruption
    manifest, ``image_meta.json`` and the trained autoencoder; the latent cache goes beside the autoencoder's
    shared cache entry (or ``<run_dir>/latents``, or ``latents.cache_dir``). Re-running reuses both.
    """
    from accelerate import PartialState

    run_dir = Path(run_dir)
    state = PartialState(cpu=run_on_cpu(cfg.trainer.cpu))
    if state.device.type == "cpu":
        apply_cpu_threads(cfg.cpu_threads)
    seed = int(cfg.trainer.seed)
    source = build_source(cfg.data, run_dir if state.is_main_process else None, index_dir=run_dir / "data_index")
    fill_from_data(cfg, source)
    if is_pretrained(cfg.model):  # schedule, prediction and widths from the pipeline, before the config is written
        configure_pretrained(cfg)
    config_yaml = write_resolved_config(cfg, run_dir) if state.is_main_process else OmegaConf.to_yaml(cfg, resolve=True)
    ae_cfg = _plain(cfg.autoencoder)
    with state.main_process_first():
        autoencoder = build_first_stage(cfg, source, run_dir, state.device)
        augmentation = Augmentation(int(cfg.data.resolution), int(cfg.data.crop_margin), autoencoder.factor,
                                    bool(cfg.data.flip), seed)
        table = encode_latents(cfg, source, autoencoder, augmentation, run_dir)
    _record_scaling_factor(autoencoder, table.scaling_factor, ae_cfg, run_dir, state.is_main_process)
    concept = cfg.corruption.get("concept") if "concept" in cfg.corruption else None
    if concept is None:
        concept = concept_label(cfg.data, source.class_names)
    meta = _meta(cfg, source, autoencoder, table.scaling_factor, augmentation, concept)
    if state.is_main_process:
        write_json(run_dir / META_NAME, meta)
    if cfg.control.mode != "none" and augmentation.positions == 1 and not augmentation.flip:
        log.warning("control.mode=%s but every crop is the same (data.crop_margin=0, data.flip=false): the control "
                    "metadata is constant; set e.g. data.crop_margin=8 data.flip=true", cfg.control.mode)
    corruption = instantiate(cfg.corruption)
    apply_kwargs = {}
    if cfg.corruption.get("selection") == "least_similar":
        if source.is_lazy:
            raise ValueError("corruption.selection=least_similar compares every image's pixels, which a lazy source "
                             "does not hold; use selection=random or an in-memory source")
        # "Least similar" by the images themselves (the paper uses CLIP image embeddings, not available offline).
        apply_kwargs["embeddings"] = source.images.reshape(len(source.images), -1)[[r["source"] for r in source.records]]
    exclude = cfg.data.get("exclude")
    dataset = LatentImageDataset(
        source.records, table, augmentation, corruption=corruption, run_dir=run_dir, concept=concept,
        apply_kwargs=apply_kwargs, write_manifests=state.is_main_process,
        data_filter=read_data_filter(exclude) if exclude else None,
    )
    torch.manual_seed(seed)  # the same initial weights on every process and every fresh start
    task = build_task(cfg, meta)
    log.info("denoiser: %.2fM parameters (%s, %s); %d training examples", count_parameters(task.denoiser) / 1e6,
             cfg.model.arch, cfg.control.mode, len(dataset))
    eval_fn = make_eval_fn(autoencoder, meta, _plain(cfg.samples), _plain(cfg.sampler))
    return ImageTraining(task, dataset, eval_fn, autoencoder, source, meta, config_yaml)


def _record_scaling_factor(autoencoder: ImageAutoencoder, scale: float, ae_cfg: dict, run_dir: Path, main: bool) -> None:
    """Store the latent scaling factor in the autoencoder's config, as diffusers does (and on disk when we own it)."""
    if autoencoder.model is None:
        return
    autoencoder.model.register_to_config(scaling_factor=scale)
    folder = run_dir / ae_cfg.get("dir_name", "autoencoder")
    if main and ae_cfg.get("mode") == "trained" and folder.is_dir():
        autoencoder.model.save_config(str(folder))


def _load_autoencoder(cfg: DictConfig, run_dir: Path, data_channels: int) -> ImageAutoencoder:
    ae_cfg = _plain(cfg.autoencoder)
    mode, kind = ae_cfg.get("mode"), ae_cfg.get("kind", "kl")
    if mode == "none":
        return ImageAutoencoder(None, "none", data_channels)
    if mode == "pretrained":
        return ImageAutoencoder(load_pretrained(ae_cfg["path"], kind, ae_cfg.get("subfolder"), ae_cfg.get("revision")),
                                kind, data_channels)
    folder = run_dir / ae_cfg.get("dir_name", "autoencoder")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"the run's trained autoencoder {folder} is missing; train the run first")
    return ImageAutoencoder(load_pretrained(str(folder), kind), kind, data_channels)


def load_run(
    run_dir: str | Path, *, checkpoint: int | str = "latest", weights: str = "ema", device: str | torch.device = "cpu"
) -> tuple[ImageDiffusionTask, ImageAutoencoder, dict, DictConfig]:
    """Rebuild a trained run's task module (EMA or raw weights), autoencoder, metadata and config.

    ``checkpoint`` is ``"latest"`` (the newest valid checkpoint) or a step number.
    """
    run_dir = Path(run_dir)
    for name in ("config.yaml", META_NAME):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir / name} is missing: is {run_dir} an image-recipe run directory?")
    cfg = load_run_config(run_dir)  # data, not code: every _target_ is checked
    meta = json.loads((run_dir / META_NAME).read_text())
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    ckpt = resolve_checkpoint(run_dir, step=checkpoint)
    state, step = ckpt.tensors[weights], ckpt.step
    if weights == "ema":  # AveragedModel's state: "module." prefixes and a step counter
        state = averaged_weights(state)
    task = build_task(cfg, meta)
    task.load_state_dict(state)
    task.to(device).eval()
    autoencoder = _load_autoencoder(cfg, run_dir, int(meta["data_channels"])).to(device)
    log.info("loaded %s weights of step %d from %s", weights, step, run_dir)
    return task, autoencoder, {**meta, "step": step}, cfg
