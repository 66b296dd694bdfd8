"""The denoising network: a diffusers backbone (U-Net or DiT) plus the routing of conditions into it.

Backbones (``model.arch``):

* ``unet``: ``UNet2DConditionModel``, from a ~1M-parameter CPU model to the paper's LDM-4 (Chen et al. 2024:
  block_out_channels 192 x (1, 2, 3, 5), attention at the three lower resolutions, cross-attention dim 512);
* ``dit``: ``PixArtTransformer2DModel``, DiT blocks (Peebles & Xie 2023) with cross-attention and adaLN-single
  (PixArt-alpha), so that class tokens and text tokens reach it the same way; DiT-XL/2 sizes in the configs;
* ``pretrained``: the ``UNet2DConditionModel`` of a pretrained pipeline, in full or with LoRA adapters
  (:mod:`robust_gen.image.model.pretrained`).

Condition routing (``control.mode``; Berrada et al. 2024, papers.md §3):

* ``none``: semantics (class or text tokens) through cross-attention; no control metadata.
* ``disentangled``: semantics through cross-attention; control metadata embedded on its own
  (:class:`~robust_gen.conditioning.ControlEmbedding`), gated by the noise level ``u = schedule.noise_fraction(t)``
  and ADDED TO THE TIMESTEP EMBEDDING (the U-Net's ``class_embedding`` input with ``class_embed_type=
  "projection"``; for the DiT, a projection added to adaLN-single's timestep embedding).
* ``entangled`` (the ablation, like older adaLN models): one vector, the pooled semantic tokens plus the
  ungated control embedding, goes into the timestep embedding AND is the only cross-attention token, so semantics
  and control reach the network mixed together everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robust_gen.conditioning import ControlEmbedding, NoiseLevelGate
from robust_gen.diffusion.schedules import NoiseSchedule

__all__ = ["ARCHS", "ROUTINGS", "Denoiser", "build_backbone", "build_denoiser", "count_parameters"]

ARCHS = ("unet", "dit", "pretrained")
ROUTINGS = ("none", "disentangled", "entangled")


class _TimestepPlusAdded(nn.Module):
    """PixArt's combined timestep embedding plus a projected extra vector (passed as ``added``).

    PixArt forwards ``added_cond_kwargs`` untouched to this module, so the extra vector travels as an argument.
    """

    def __init__(self, base: nn.Module, added_dim: int, width: int) -> None:
        super().__init__()
        self.base = base
        self.projection = nn.Sequential(nn.Linear(added_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, timestep, resolution=None, aspect_ratio=None, batch_size=None, hidden_dtype=None, added=None):
        out = self.base(timestep, resolution, aspect_ratio, batch_size, hidden_dtype)
        if added is not None:
            out = out + self.projection(added.to(out.dtype))
        return out


def build_backbone(
    model_cfg: dict, *, in_channels: int, sample_size: int, context_dim: int, added_dim: int | None = None
) -> nn.Module:
    """Instantiate the diffusers backbone of ``model_cfg`` (the ``model`` config group).

    ``model_cfg["backbone"]`` holds the diffusers constructor arguments; the channels, the sample size, the
    cross-attention width and the extra-embedding input are filled in here from the data and conditioning.
    ``model_cfg["gradient_checkpointing"]`` (default false) turns on diffusers' activation checkpointing: the
    blocks' activations are recomputed in the backward pass instead of stored (about a third more compute, much
    less activation memory; for LDM-4 / DiT-XL/2 on small GPUs). It only acts while gradients are being taken.

    Examples
    --------
    >>> cfg = {"arch": "dit", "backbone": {"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 8},
    ...        "gradient_checkpointing": True}
    >>> net = build_backbone(cfg, in_channels=4, sample_size=8, context_dim=16, added_dim=5)
    >>> type(net).__name__, net.config.caption_channels, net.gradient_checkpointing
    ('PixArtTransformer2DModel', 16, True)
    """
    model = _construct_backbone(model_cfg, in_channels=in_channels, sample_size=sample_size,
                                context_dim=context_dim, added_dim=added_dim)
    checkpointing = model_cfg.get("gradient_checkpointing", False)
    if not isinstance(checkpointing, bool):
        raise ValueError(f"model.gradient_checkpointing must be true or false, got {checkpointing!r}")
    if checkpointing:
        model.enable_gradient_checkpointing()
    return model


def _construct_backbone(
    model_cfg: dict, *, in_channels: int, sample_size: int, context_dim: int, added_dim: int | None
) -> nn.Module:
    arch, kwargs = model_cfg.get("arch"), dict(model_cfg.get("backbone") or {})
    if "gradient_checkpointing" in kwargs:  # not a constructor argument: diffusers would reject it obscurely
        raise ValueError("gradient_checkpointing is a model setting, not a backbone argument: set "
                         "model.gradient_checkpointing instead of model.backbone.gradient_checkpointing")
    if arch == "pretrained":
        if added_dim:
            raise ValueError("a pretrained U-Net takes no control embedding: use control=none")
        from robust_gen.image.model.pretrained import load_unet

        return load_unet(model_cfg, in_channels=in_channels, context_dim=context_dim)
    if arch == "unet":
        from diffusers import UNet2DConditionModel

        kwargs.update(in_channels=in_channels, out_channels=in_channels, sample_size=sample_size,
                      cross_attention_dim=context_dim)
        if added_dim:
            kwargs.update(class_embed_type="projection", projection_class_embeddings_input_dim=added_dim)
        return UNet2DConditionModel(**kwargs)
    if arch == "dit":
        from diffusers import PixArtTransformer2DModel

        width = int(kwargs.get("num_attention_heads", 16)) * int(kwargs.get("attention_head_dim", 72))
        kwargs.update(in_channels=in_channels, out_channels=in_channels, sample_size=sample_size,
                      caption_channels=context_dim, cross_attention_dim=width, use_additional_conditions=False)
        if sample_size % int(kwargs.get("patch_size", 2)):
            raise ValueError(f"the latent size {sample_size} must be a multiple of the DiT patch size")
        model = PixArtTransformer2DModel(**kwargs)
        if added_dim:
            model.adaln_single.emb = _TimestepPlusAdded(model.adaln_single.emb, added_dim, width)
        return model
    raise ValueError(f"model.arch must be one of {ARCHS}, got {arch!r}")


def _pool(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of the real tokens of each sequence."""
    if mask is None:
        return tokens.mean(dim=1)
    weights = mask.to(tokens.dtype)[..., None]
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class Denoiser(nn.Module):
    """``denoiser(x_t, t, context=, context_mask=, control=, control_keep=) -> prediction`` (shaped like ``x_t``).

    Parameters
    ----------
    backbone:
        From :func:`build_backbone`.
    arch:
        ``"unet"`` or ``"dit"``.
    routing:
        ``"none"``, ``"disentangled"`` or ``"entangled"`` (module docstring).
    schedule:
        The noise schedule, for the control gate's noise fraction.
    control_embedding:
        A :class:`~robust_gen.conditioning.ControlEmbedding` (required unless ``routing="none"``).

    Examples
    --------
    >>> from robust_gen.diffusion.schedules import DiscreteVP
    >>> cfg = {"arch": "dit", "backbone": {"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 8}}
    >>> net = build_denoiser(cfg, routing="disentangled", control_cfg={"dim": 8}, schedule=DiscreteVP(),
    ...                      in_channels=4, sample_size=8, context_dim=16,
    ...                      control_names=['top', 'left', 'height', 'width', 'flip'])
    >>> out = net(torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), context=torch.randn(2, 1, 16),
    ...           control=torch.zeros(2, 5), control_keep=torch.tensor([True, False]))
    >>> out.shape
    torch.Size([2, 4, 8, 8])
    """

    def __init__(
        self,
        backbone: nn.Module,
        arch: str,
        routing: str,
        schedule: NoiseSchedule,
        control_embedding: ControlEmbedding | None = None,
    ) -> None:
        super().__init__()
        if routing not in ROUTINGS:
            raise ValueError(f"control.mode must be one of {ROUTINGS}, got {routing!r}")
        if (control_embedding is None) != (routing == "none"):
            raise ValueError("a control embedding is needed exactly when control.mode is not 'none'")
        self.backbone, self.arch, self.routing = backbone, arch, routing
        self.schedule = schedule
        self.control_embedding = control_embedding

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor | None = None,
        control: torch.Tensor | None = None,
        control_keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        added = None
        if self.routing != "none":
            if control is None:
                raise ValueError(f"control.mode={self.routing!r} needs the control metadata of every sample")
            u = self.schedule.noise_fraction(t).to(x_t.device)
            added = self.control_embedding(control, u, keep=control_keep)
            if self.routing == "entangled":
                added = _pool(context, context_mask) + added
                context, context_mask = added[:, None, :], None
        if self.arch in ("unet", "pretrained"):
            return self.backbone(
                x_t, t, encoder_hidden_states=context, class_labels=added, encoder_attention_mask=context_mask
            ).sample
        extra = {"resolution": None, "aspect_ratio": None}
        if added is not None:
            extra["added"] = added
        return self.backbone(
            x_t, encoder_hidden_states=context, timestep=t, added_cond_kwargs=extra, encoder_attention_mask=context_mask
        ).sample


def build_denoiser(
    model_cfg: dict,
    *,
    routing: str,
    control_cfg: dict,
    schedule: NoiseSchedule,
    in_channels: int,
    sample_size: int,
    context_dim: int,
    control_names: Sequence[str],
) -> Denoiser:
    """Backbone plus control embedding for ``routing``; the entangled embedding is ungated and ``context_dim``
    wide (it is summed with the pooled semantic tokens), the disentangled one is ``control.dim`` wide and gated."""
    control_embedding, added_dim = None, None
    if routing != "none":
        gate_cfg = dict(control_cfg.get("gate") or {})
        gate = NoiseLevelGate("none") if routing == "entangled" else NoiseLevelGate(**gate_cfg)
        added_dim = context_dim if routing == "entangled" else int(control_cfg.get("dim", context_dim))
        control_embedding = ControlEmbedding(
            list(control_names),
            added_dim,
            num_frequencies=int(control_cfg.get("num_frequencies", 8)),
            max_period=float(control_cfg.get("max_period", 10000.0)),
            gate=gate,
        )
    backbone = build_backbone(
        model_cfg, in_channels=in_channels, sample_size=sample_size, context_dim=context_dim, added_dim=added_dim
    )
    return Denoiser(backbone, model_cfg["arch"], routing, schedule, control_embedding)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (works on meta-device modules too).

    Examples
    --------
    >>> count_parameters(nn.Linear(3, 2))
    8
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
