"""Export an image-recipe run as a diffusers pipeline folder (``python tools/export.py RUN_DIR OUT_DIR``).

* Runs of ``model=pretrained`` with ``condition=pipeline`` (a fine-tuned Stable Diffusion-style pipeline) become a
  ``StableDiffusionPipeline``: the fine-tuned U-Net (LoRA adapters fused into its weights), the pipeline's VAE,
  text encoder (the fine-tuned one when ``condition.trainable``), tokenizer and scheduler. LoRA runs also get
  ``OUT_DIR/lora/pytorch_lora_weights.safetensors``, diffusers' LoRA format, for
  ``pipe.load_lora_weights(OUT_DIR / "lora")`` on top of the original pipeline.
* Class-conditional runs become a :class:`~robust_gen.image.pipeline.ClassConditionalPipeline` (see there why no
  diffusers class fits), loadable with ``DiffusionPipeline.from_pretrained(OUT_DIR)`` once ``robust_gen`` is
  importable.

Both reload with ``DiffusionPipeline.from_pretrained(OUT_DIR)``. ``OUT_DIR`` is written whole or not at all (a
temporary sibling folder renamed into place) and must not exist yet.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from robust_gen.training.run_dir import write_json

__all__ = ["EXPORT_INFO", "export_run"]

log = logging.getLogger(__name__)

#: What the export came from (run, step, weights), written into the exported folder.
EXPORT_INFO = "robust_gen_export.json"


def _scheduler(path: str, revision: str | None, subfolder: str):
    """The pipeline's own scheduler class and config (a diffusers class named in scheduler_config.json)."""
    import diffusers

    from robust_gen.image.model.pretrained import read_component_config

    config = read_component_config(path, subfolder, revision, scheduler=True)
    name = str(config.get("_class_name", ""))
    cls = getattr(diffusers, name, None) if name.endswith("Scheduler") else None
    if cls is None:
        raise ValueError(f"{path}/{subfolder}/scheduler_config.json names {name!r}, not a diffusers scheduler class")
    return cls.from_pretrained(path, subfolder=subfolder, revision=revision)


def _fused_unet(unet: torch.nn.Module) -> tuple[torch.nn.Module, dict[str, torch.Tensor] | None]:
    """The U-Net with its LoRA adapters fused in and removed, plus the adapters in diffusers' format (or None)."""
    from robust_gen.image.model.pretrained import has_lora, lora_state_dict

    if not has_lora(unet):
        return unet, None
    lora = {k: v.detach().clone() for k, v in lora_state_dict(unet).items()}
    unet.fuse_lora(lora_scale=1.0)
    unet.unload_lora()
    unet._rg_frozen_names = frozenset()  # every weight is the export's now: keep them all in the state dict
    return unet, lora


def _stable_diffusion(task, autoencoder, cfg, folder: Path, lora: dict | None) -> dict:
    from diffusers import StableDiffusionPipeline

    model = cfg.model
    unet = task.denoiser.backbone
    conditioner = task.conditioner
    pipe = StableDiffusionPipeline(
        vae=autoencoder.model, text_encoder=conditioner.text_model, tokenizer=conditioner.tokenizer, unet=unet,
        scheduler=_scheduler(model.path, model.get("revision"), model.get("scheduler_subfolder", "scheduler")),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder), safe_serialization=True)
    if lora is not None:
        StableDiffusionPipeline.save_lora_weights(str(folder / "lora"), unet_lora_layers=lora, safe_serialization=True)
    return {"pipeline": "StableDiffusionPipeline", "lora": lora is not None, "base": str(model.path)}


def export_run(
    run_dir: str | Path, out_dir: str | Path, *, checkpoint: int | str = "latest", weights: str = "ema"
) -> Path:
    """Write the run in ``run_dir`` (its ``checkpoint``, EMA or raw ``weights``) as a diffusers pipeline folder.

    Returns ``out_dir``. See the module docstring for which pipeline class a run becomes.
    """
    from robust_gen.image.build import load_run
    from robust_gen.image.model.pretrained import is_pretrained

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty: export into a new folder")
    task, autoencoder, meta, cfg = load_run(run_dir, checkpoint=checkpoint, weights=weights)
    task.float().cpu()
    kind = cfg.condition.kind
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        lora = _fused_unet(task.denoiser.backbone)[1] if is_pretrained(cfg.model) else None
        if is_pretrained(cfg.model) and kind == "pipeline":
            info = _stable_diffusion(task, autoencoder, cfg, staging, lora)
        elif kind == "class":  # a class-conditional fine-tune of a pretrained U-Net too (its LoRA fused)
            from robust_gen.image.pipeline import save_class_pipeline

            info = save_class_pipeline(task, autoencoder, meta, cfg, staging)
        else:
            raise ValueError(
                f"export handles text-conditional runs of model=pretrained condition=pipeline and class-conditional "
                f"runs; {run_dir} has condition.kind={kind!r} on model.arch={cfg.model.arch!r} (its projected "
                "text states and padding mask have no diffusers pipeline to go to)"
            )
        write_json(staging / EXPORT_INFO, {**info, "run_dir": str(Path(run_dir).resolve()), "step": meta["step"],
                                           "weights": weights})
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("exported %s (step %d, %s weights) to %s as %s", run_dir, meta["step"], weights, out_dir,
             info["pipeline"])
    return out_dir
