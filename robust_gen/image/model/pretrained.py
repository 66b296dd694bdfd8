"""Fine-tune a pretrained diffusers pipeline's denoiser (``model=pretrained model.path=<hub id or folder>``).

The pipeline is a folder in the ``StableDiffusionPipeline`` layout (``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``), local or on the hub. The recipe takes from it:

* the U-Net (:func:`load_unet`), trained in full or through LoRA adapters (``model.lora.rank > 0``, ``peft``);
* the VAE (the ``autoencoder=pipeline`` option, chosen by ``model=pretrained``);
* the CLIP text encoder and tokenizer (``condition=pipeline``: its last hidden states go straight into the
  U-Net's cross-attention, as in ``StableDiffusionPipeline``);
* the noise schedule and prediction type, read from ``scheduler/scheduler_config.json``
  (:func:`schedule_from_scheduler_config`), never assumed. The recipe's top-level ``schedule`` / ``prediction``
  are replaced by the pipeline's (:func:`configure_pretrained`); a value the user changed that disagrees with the
  pipeline is an error naming both.

LoRA runs keep the frozen base weights out of checkpoints (``model.lora.checkpoint_base: false``, the default):
checkpoints hold the adapters (and every other trained tensor) only, and loading one rebuilds the base from
``model.path``, which must therefore still be reachable when sampling or exporting.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

__all__ = [
    "LORA_DEFAULT_TARGETS",
    "PREDICTION_TYPES",
    "add_lora",
    "configure_pretrained",
    "has_lora",
    "is_pretrained",
    "load_unet",
    "lora_state_dict",
    "read_component_config",
    "schedule_from_scheduler_config",
]

log = logging.getLogger(__name__)

#: diffusers' ``prediction_type`` -> the core's prediction names.
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
_BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
#: The attention projections that diffusers' LoRA training scripts adapt.
LORA_DEFAULT_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")


def is_pretrained(model_cfg: Any) -> bool:
    """True for the ``model=pretrained`` option (``model.arch: pretrained``).

    Examples
    --------
    >>> is_pretrained({"arch": "pretrained"}), is_pretrained({"arch": "unet"})
    (True, False)
    """
    return model_cfg.get("arch") == "pretrained"


def read_component_config(path: str, subfolder: str, revision: str | None = None, *, scheduler: bool = False) -> dict:
    """The JSON config of one pipeline component (``unet``, ``scheduler``, ...), local or from the hub.

    Only JSON is read (diffusers' ``load_config``: ``scheduler_config.json`` for a scheduler, else
    ``config.json``); nothing executes.
    """
    from diffusers import DDPMScheduler, UNet2DConditionModel

    reader = DDPMScheduler if scheduler else UNet2DConditionModel  # only their config file names matter here
    try:
        return dict(reader.load_config(path, subfolder=subfolder, revision=revision))
    except Exception as e:  # diffusers raises several types for a missing file / repo
        raise OSError(
            f"could not read the {subfolder}/ config of the pipeline {path!r} ({type(e).__name__}: {e}); "
            "model.path must be a hub id or a folder in the StableDiffusionPipeline layout (unet/, vae/, "
            "text_encoder/, tokenizer/, scheduler/), e.g. one written by save_pretrained"
        ) from e


def schedule_from_scheduler_config(config: dict) -> tuple[dict, str]:
    """The core's ``DiscreteVP`` config and prediction name for a diffusers scheduler config.

    Examples
    --------
    >>> sd15 = {"_class_name": "PNDMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    ...         "beta_end": 0.012, "num_train_timesteps": 1000, "prediction_type": "epsilon"}
    >>> schedule, prediction = schedule_from_scheduler_config(sd15)
    >>> schedule["kind"], schedule["beta_end"], prediction
    ('scaled_linear', 0.012, 'eps')
    >>> schedule_from_scheduler_config({**sd15, "rescale_betas_zero_snr": True})
    Traceback (most recent call last):
    ...
    ValueError: the pipeline's scheduler sets rescale_betas_zero_snr=true, which robust_gen's DiscreteVP does not ...
    """
    if config.get("trained_betas") is not None:
        raise ValueError("the pipeline's scheduler uses trained_betas (an explicit beta table), which robust_gen's "
                         "DiscreteVP does not support; use a pipeline with beta_schedule linear / scaled_linear / "
                         "squaredcos_cap_v2")
    if config.get("rescale_betas_zero_snr"):
        raise ValueError("the pipeline's scheduler sets rescale_betas_zero_snr=true, which robust_gen's DiscreteVP "
                         "does not implement; fine-tuning with another schedule would change the model's noise levels")
    beta_schedule = config.get("beta_schedule", "linear")
    if beta_schedule not in _BETA_SCHEDULES:
        raise ValueError(f"the pipeline's scheduler has beta_schedule={beta_schedule!r}; supported: "
                         f"{sorted(_BETA_SCHEDULES)}")
    prediction_type = config.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"the pipeline's scheduler has prediction_type={prediction_type!r}; supported: "
                         f"{sorted(PREDICTION_TYPES)}")
    schedule = {
        "_target_": "robust_gen.diffusion.schedules.DiscreteVP",
        "kind": _BETA_SCHEDULES[beta_schedule],
        "num_steps": int(config.get("num_train_timesteps", 1000)),
        "beta_start": float(config.get("beta_start", 0.0001)),
        "beta_end": float(config.get("beta_end", 0.02)),
    }
    return schedule, PREDICTION_TYPES[prediction_type]


def _recipe_defaults() -> DictConfig:
    """The image recipe's own ``schedule`` / ``prediction`` (train.yaml), to tell user overrides from defaults."""
    from robust_gen.training.recipe import CONFIG_ROOT

    return OmegaConf.load(CONFIG_ROOT / "image" / "train.yaml")


def _same_schedule(a: dict, b: dict) -> bool:
    keys = ("kind", "num_steps") if a.get("kind") == "cosine" else ("kind", "num_steps", "beta_start", "beta_end")
    return all(a.get(k) == b.get(k) if k in ("kind", "num_steps") else abs(float(a[k]) - float(b[k])) < 1e-12
               for k in keys)


def configure_pretrained(cfg: DictConfig) -> None:
    """Fill ``cfg`` (in place) from the pipeline at ``cfg.model.path``: noise schedule, prediction type and the
    U-Net's cross-attention width; check the conditioning fits the U-Net.

    A top-level ``schedule`` / ``prediction`` that differs from the recipe's default counts as set by the user:
    it must then equal the pipeline's, or this raises (fine-tuning under another schedule or parameterisation
    than the one the weights were trained with would silently start from a broken model).
    """
    model = cfg.model
    scheduler = read_component_config(model.path, model.get("scheduler_subfolder", "scheduler"), model.get("revision"),
                                      scheduler=True)
    unet = read_component_config(model.path, model.get("subfolder", "unet"), model.get("revision"))
    schedule, prediction = schedule_from_scheduler_config(scheduler)
    defaults = _recipe_defaults()
    given = OmegaConf.to_container(cfg.schedule, resolve=True)
    if not _same_schedule(given, OmegaConf.to_container(defaults.schedule)) and not _same_schedule(given, schedule):
        raise ValueError(
            f"schedule={given} was set explicitly but the pipeline {model.path!r} was trained with {schedule} "
            "(from scheduler/scheduler_config.json); drop the schedule override to use the pipeline's"
        )
    if cfg.prediction != defaults.prediction and cfg.prediction != prediction:
        raise ValueError(
            f"prediction={cfg.prediction} was set explicitly but the pipeline {model.path!r} predicts {prediction} "
            f"(prediction_type in scheduler/scheduler_config.json); drop the prediction override to use the pipeline's"
        )
    if cfg.control.mode != "none":
        raise ValueError("control.mode must be 'none' with model=pretrained: a pretrained U-Net has no input for "
                         "the control embedding")
    if unet.get("_class_name", "UNet2DConditionModel") != "UNet2DConditionModel":
        raise ValueError(f"model=pretrained fine-tunes a UNet2DConditionModel; {model.path!r} has a "
                         f"{unet.get('_class_name')}")
    with open_dict(cfg):
        cfg.schedule = schedule
        cfg.prediction = prediction
        cfg.model.cross_attention_dim = int(unet["cross_attention_dim"])
    log.info("pretrained pipeline %s: schedule %s, prediction %s", model.path, schedule, prediction)


def load_unet(model_cfg: dict, *, in_channels: int, context_dim: int) -> nn.Module:
    """The pipeline's ``UNet2DConditionModel``, with LoRA adapters when ``model_cfg["lora"]["rank"] > 0``.

    ``in_channels`` (the autoencoder's latent channels) and ``context_dim`` (the conditioner's width) must match
    the U-Net's; a mismatch names both.
    """
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(
        model_cfg["path"], subfolder=model_cfg.get("subfolder", "unet"), revision=model_cfg.get("revision")
    )
    if int(unet.config.in_channels) != int(in_channels):
        raise ValueError(f"the pipeline's U-Net takes {unet.config.in_channels} latent channels but the autoencoder "
                         f"gives {in_channels}; use the pipeline's own VAE (autoencoder=pipeline)")
    if int(unet.config.cross_attention_dim) != int(context_dim):
        raise ValueError(f"the pipeline's U-Net attends to {unet.config.cross_attention_dim}-wide tokens but the "
                         f"condition is {context_dim} wide")
    lora = dict(model_cfg.get("lora") or {})
    if int(lora.get("rank", 0) or 0) > 0:
        add_lora(unet, rank=int(lora["rank"]), alpha=float(lora.get("alpha") or lora["rank"]),
                 target_modules=lora.get("target_modules") or list(LORA_DEFAULT_TARGETS),
                 checkpoint_base=bool(lora.get("checkpoint_base", False)))
    return unet


def add_lora(
    unet: nn.Module, *, rank: int, alpha: float, target_modules: list[str], checkpoint_base: bool = False
) -> nn.Module:
    """Freeze ``unet`` and add trainable LoRA adapters (``peft``, diffusers' ``add_adapter``) to ``target_modules``.

    Gaussian initialisation of A and zeros for B (diffusers' training scripts), so the adapted network starts
    equal to the base. Without ``checkpoint_base`` the frozen base weights are left out of ``state_dict()`` (and
    so of checkpoints and the EMA's state), and ``load_state_dict`` does not ask for them.

    Examples
    --------
    >>> from diffusers import UNet2DConditionModel
    >>> unet = UNet2DConditionModel(block_out_channels=(8, 16), down_block_types=("DownBlock2D",
    ...     "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
    ...     norm_num_groups=4, cross_attention_dim=8, attention_head_dim=2, sample_size=8)
    >>> _ = add_lora(unet, rank=2, alpha=2.0, target_modules=["to_q", "to_v"])
    >>> sorted({k.split(".")[-3] for k in unet.state_dict() if "lora" in k})
    ['lora_A', 'lora_B']
    >>> all("lora" in n for n, p in unet.named_parameters() if p.requires_grad)
    True
    >>> all("lora" in k for k in unet.state_dict() if k.endswith("weight") and "norm" not in k)
    True
    """
    from peft import LoraConfig

    if rank < 1:
        raise ValueError(f"model.lora.rank must be >= 1 for LoRA, got {rank}")
    unet.requires_grad_(False)
    config = LoraConfig(r=int(rank), lora_alpha=float(alpha), init_lora_weights="gaussian",
                        target_modules=list(target_modules))
    unet.add_adapter(config)
    trainable = [n for n, p in unet.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"model.lora.target_modules={list(target_modules)} matched no layer of the U-Net")
    if not checkpoint_base:
        frozen = frozenset(n for n, p in unet.named_parameters() if not p.requires_grad)
        unet._rg_frozen_names = frozen  # a set of names survives deepcopy (the EMA copy) unchanged
        unet.register_state_dict_post_hook(_drop_frozen)
        unet.register_load_state_dict_post_hook(_allow_missing_frozen)
    log.info("LoRA rank %d alpha %g on %s: %d trainable tensors", rank, alpha, list(target_modules), len(trainable))
    return unet


def _drop_frozen(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for name in getattr(module, "_rg_frozen_names", ()):
        state_dict.pop(prefix + name, None)


def _allow_missing_frozen(module: nn.Module, incompatible_keys) -> None:
    frozen = getattr(module, "_rg_frozen_names", ())
    missing = incompatible_keys.missing_keys
    # the keys carry the path of `module` inside whatever was loaded (task, EMA wrapper): match the tail
    keep = [k for k in missing if not any(k == n or k.endswith("." + n) for n in frozen)]
    missing[:] = keep


def lora_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The U-Net's LoRA weights in diffusers' format (``convert_state_dict_to_diffusers`` of peft's state dict),
    ready for ``StableDiffusionPipeline.save_lora_weights(unet_lora_layers=...)``."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))


def has_lora(unet: nn.Module) -> bool:
    """True when ``unet`` carries peft adapters."""
    return bool(getattr(unet, "_hf_peft_config_loaded", False))
