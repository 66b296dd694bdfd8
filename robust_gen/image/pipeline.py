"""A small diffusers pipeline for the class-conditional runs of the image recipe.

Why not a diffusers class: ``DiTPipeline`` is the only class-conditional one, and it hard-wires ImageNet's 1000
classes (the null class is label 1000), a ``Transformer2DModel`` that takes ``class_labels`` into adaLN, and
learned-sigma outputs. The recipe's models read the class as a cross-attention TOKEN (Berrada et al. 2024: the
semantic condition goes through attention), from a U-Net or a PixArt-style DiT, with any number of classes and the
null class in the last row. :class:`ClassConditionalPipeline` follows diffusers' conventions (components
registered with ``register_modules``, ``save_pretrained`` / ``from_pretrained``, ``__call__`` returning an
``ImagePipelineOutput``); importing this module registers it with diffusers, so that
``DiffusionPipeline.from_pretrained(folder)`` resolves the ``_class_name`` in ``model_index.json``.

Components: ``denoiser`` (``UNet2DConditionModel`` or ``PixArtTransformer2DModel``), ``class_embedding``
(:class:`ClassEmbedding`), ``scheduler`` (a ``DDIMScheduler`` carrying the run's exact betas and prediction type)
and ``vae`` (``AutoencoderKL`` / ``VQModel``, or None for pixel-space runs).
"""

from __future__ import annotations

from typing import ClassVar

import diffusers
import numpy as np
import torch
from diffusers import ConfigMixin, DiffusionPipeline, ImagePipelineOutput, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

__all__ = ["ClassConditionalPipeline", "ClassEmbedding", "save_class_pipeline"]

_PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


class ClassEmbedding(ModelMixin, ConfigMixin):
    """A run's class-token table as a diffusers model: rows ``0 .. num_classes - 1`` and the null class last.

    Examples
    --------
    >>> table = ClassEmbedding(num_classes=3, dim=4, class_names=["a", "b", "c"])
    >>> table(torch.tensor([0, 3])).shape, table.config.class_names[1]
    (torch.Size([2, 1, 4]), 'b')
    """

    @register_to_config
    def __init__(self, num_classes: int, dim: int, class_names: list[str] | None = None) -> None:
        super().__init__()
        self.embedding = nn.Embedding(int(num_classes) + 1, int(dim))

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding(labels)[:, None, :]


class ClassConditionalPipeline(DiffusionPipeline):
    """Sample a class-conditional robust_gen model with classifier-free guidance.

    Parameters
    ----------
    denoiser, class_embedding, scheduler, vae:
        See the module docstring.
    latent_scaling:
        The latent scaling factor the model was trained with (latents are divided by it before decoding).
    data_channels:
        Channels of the training images (grayscale data through an RGB autoencoder comes back as their mean).
    """

    model_cpu_offload_seq = "class_embedding->denoiser->vae"
    _optional_components: ClassVar[list[str]] = ["vae"]

    def __init__(self, denoiser, class_embedding: ClassEmbedding, scheduler, vae=None, latent_scaling: float = 1.0,
                 data_channels: int = 3) -> None:
        super().__init__()
        self.register_modules(denoiser=denoiser, class_embedding=class_embedding, scheduler=scheduler, vae=vae)
        self.register_to_config(latent_scaling=float(latent_scaling), data_channels=int(data_channels))

    def _predict(self, x: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        steps = t.expand(x.shape[0]).to(x.device)
        if isinstance(self.denoiser, diffusers.UNet2DConditionModel):
            return self.denoiser(x, steps, encoder_hidden_states=tokens).sample
        extra = {"resolution": None, "aspect_ratio": None}
        return self.denoiser(x, encoder_hidden_states=tokens, timestep=steps, added_cond_kwargs=extra).sample

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | list[int] | torch.Tensor,
        guidance_scale: float = 3.0,
        num_inference_steps: int = 50,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Images of ``class_labels`` (ints in ``[0, num_classes)``); ``output_type`` ``"pil"``, ``"np"``
        (float ``[B, H, W, C]`` in [0, 1]) or ``"pt"`` (float ``[B, C, H, W]`` in [0, 1])."""
        device = self._execution_device
        labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1).to(device)
        num_classes = int(self.class_embedding.config.num_classes)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(f"class labels must lie in [0, {num_classes}), got {labels.tolist()}")
        config = self.denoiser.config
        shape = (len(labels), int(config.in_channels), int(config.sample_size), int(config.sample_size))
        dtype = self.denoiser.dtype
        latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)
        guided = guidance_scale != 1.0
        tokens = self.class_embedding(labels)
        if guided:
            null = self.class_embedding(torch.full_like(labels, num_classes))
            tokens = torch.cat([null, tokens])
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        for t in self.progress_bar(self.scheduler.timesteps):
            x = torch.cat([latents, latents]) if guided else latents
            x = self.scheduler.scale_model_input(x, t)
            out = self._predict(x, t, tokens.to(dtype))
            if guided:
                uncond, cond = out.chunk(2)
                out = uncond + guidance_scale * (cond - uncond)
            latents = self.scheduler.step(out, t, latents, generator=generator).prev_sample
        pixels = latents / self.config.latent_scaling
        if self.vae is not None:
            pixels = self.vae.decode(pixels.to(self.vae.dtype)).sample
        if pixels.shape[1] != self.config.data_channels:
            pixels = pixels.mean(dim=1, keepdim=True)
        images = (pixels.float().clamp(-1.0, 1.0) + 1.0) / 2.0
        self.maybe_free_model_hooks()
        if output_type == "np" or output_type == "pil":
            images = images.permute(0, 2, 3, 1).cpu().numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(np.asarray(images))
        elif output_type != "pt":
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        return ImagePipelineOutput(images=images) if return_dict else (images,)


# Registered with diffusers so that DiffusionPipeline.from_pretrained finds the class named in model_index.json
# (diffusers looks pipeline classes up on its own top-level module).
if getattr(diffusers, ClassConditionalPipeline.__name__, ClassConditionalPipeline) is not ClassConditionalPipeline:
    raise ImportError("diffusers already has a ClassConditionalPipeline: robust_gen's would shadow it")
setattr(diffusers, ClassConditionalPipeline.__name__, ClassConditionalPipeline)


def save_class_pipeline(task, autoencoder, meta: dict, cfg, folder) -> dict:
    """Write the class-conditional run of ``task`` (its denoiser, class table, schedule) to ``folder``."""
    from diffusers import DDIMScheduler

    from robust_gen.image.sampling import diffusers_scheduler

    if task.denoiser.routing != "none":
        raise ValueError(f"this run routes control metadata (control.mode={task.denoiser.routing!r}) through a "
                         "robust_gen embedding that no diffusers model holds; export runs with control=none")
    conditioner = task.conditioner
    table = ClassEmbedding(conditioner.num_classes, conditioner.dim, class_names=list(meta.get("class_names") or []))
    table.embedding.load_state_dict(conditioner.embedding.state_dict())
    base = diffusers_scheduler("diffusers_ddim", task.schedule)  # the run's exact betas
    scheduler = DDIMScheduler.from_config(base.config, prediction_type=_PREDICTION_TYPES[task.prediction])
    pipe = ClassConditionalPipeline(
        denoiser=task.denoiser.backbone, class_embedding=table, scheduler=scheduler, vae=autoencoder.model,
        latent_scaling=float(task.scaling_factor), data_channels=int(meta["data_channels"]),
    )
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return {"pipeline": ClassConditionalPipeline.__name__, "lora": False}
