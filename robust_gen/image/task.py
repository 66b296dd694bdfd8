"""The image recipe's task module: one training step of latent diffusion with its conditioning habits.

``ImageDiffusionTask.forward(batch, rng)`` draws, in this order and all from the per-step
:class:`~robust_gen.diffusion.randomness.BatchGenerator` (so N processes draw exactly what one would, and a
resumed run draws what the uninterrupted one did):

1. the latent ``z = mean + std * eps`` from the cached posterior (LDM samples the posterior at every step),
   times the latent scaling factor;
2. two condition-dropout coins per sample: semantic and control dropped independently (Berrada et al. 2024;
   probabilities from :class:`~robust_gen.conditioning.ConditionDropout`), dropped semantics replaced by the null
   condition for classifier-free guidance;
3. CEP noise on the condition network's output (Chen et al. 2024: uniform on ``[-g/sqrt(d), g/sqrt(d)]`` or
   Gaussian with standard deviation ``g/sqrt(d)``; null rows untouched unless ``perturb_null``). Where, is
   ``cep_placement``: ``encoder_output`` (the paper's: the text encoder's hidden states, ``d`` = the encoder's
   width, 384 for MiniLM, before the trainable projection) or ``projection`` (after the projection, ``d`` = the
   cross-attention width; this project's placement before issue 16, kept as an option). For a class embedding the
   two coincide (nothing projects it);
4. the diffusion time and noise, inside :class:`~robust_gen.diffusion.objective.DiffusionObjective`.

It returns ``{"diffusion": LossTerm(per_sample_loss)}``; the trainer averages the batch.
"""

from __future__ import annotations

import torch
from torch import nn

from robust_gen.conditioning import (
    ConditionalEmbeddingPerturbation,
    ConditionDropout,
    DropoutMasks,
    cep_scale,
)
from robust_gen.diffusion.objective import DiffusionObjective
from robust_gen.diffusion.randomness import BatchGenerator
from robust_gen.image.model.conditioners import SemanticCondition
from robust_gen.image.model.denoiser import Denoiser
from robust_gen.training.trainer import LossTerm

__all__ = ["CEP_PLACEMENTS", "ImageDiffusionTask", "perturb_condition"]

#: Where text CEP adds its noise: on the text encoder's hidden states (the paper) or on the projection's output.
CEP_PLACEMENTS = ("encoder_output", "projection")


def perturb_condition(
    tokens: torch.Tensor, cep: ConditionalEmbeddingPerturbation, rng: BatchGenerator, null_rows: torch.Tensor
) -> torch.Tensor:
    """CEP with noise drawn from the step's ``rng``: ``tokens + delta`` with the scale of
    :func:`~robust_gen.conditioning.cep_scale` on the last dimension; ``null_rows`` kept unless ``perturb_null``.

    Examples
    --------
    >>> cep = ConditionalEmbeddingPerturbation(gamma=1.0, kind="uniform")
    >>> out = perturb_condition(torch.zeros(2, 1, 16), cep, BatchGenerator(0), torch.tensor([False, True]))
    >>> bool(out[0].abs().max() <= 0.25), bool(out[0].abs().max() > 0), bool(out[1].eq(0).all())
    (True, True, True)
    """
    scale = cep_scale(cep.gamma, tokens.shape[-1])
    if cep.kind == "uniform":
        delta = (rng.rand(tokens.shape) * 2.0 - 1.0) * scale
    else:
        delta = rng.randn(tokens.shape) * scale
    noisy = tokens + delta.to(device=tokens.device, dtype=tokens.dtype)
    if cep.perturb_null:
        return noisy
    rows = null_rows.to(tokens.device).view(-1, *([1] * (tokens.dim() - 1)))
    return torch.where(rows, tokens, noisy)


def _select(keep: torch.Tensor, condition: SemanticCondition, null: SemanticCondition) -> SemanticCondition:
    rows = keep.to(condition.tokens.device)
    tokens = torch.where(rows[:, None, None], condition.tokens, null.tokens.to(condition.tokens.dtype))
    mask = None
    if condition.mask is not None:
        mask = torch.where(rows[:, None], condition.mask, null.mask)
    return SemanticCondition(tokens, mask)


class ImageDiffusionTask(nn.Module):
    """Conditioner + denoiser + diffusion objective (see the module docstring).

    Parameters
    ----------
    denoiser:
        :class:`~robust_gen.image.model.denoiser.Denoiser`.
    conditioner:
        Class or text conditioner (:mod:`robust_gen.image.model.conditioners`).
    objective:
        :class:`~robust_gen.diffusion.objective.DiffusionObjective` with the configured loss.
    scaling_factor:
        Latent scaling factor (kept as a buffer, so checkpoints carry it).
    p_semantic, p_control:
        Condition-dropout probabilities.
    cep:
        A :class:`~robust_gen.conditioning.ConditionalEmbeddingPerturbation` (its gamma, kind and perturb_null are
        used; the noise comes from ``rng``), or None.
    sample_posterior:
        Draw ``z = mean + std * eps`` each step (True) or train on the posterior mean.
    cep_placement:
        ``encoder_output`` (default, Chen et al.: before the text projection) or ``projection`` (after it); see
        the module docstring.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        conditioner: nn.Module,
        objective: DiffusionObjective,
        *,
        scaling_factor: float = 1.0,
        p_semantic: float = 0.1,
        p_control: float = 0.1,
        cep: ConditionalEmbeddingPerturbation | None = None,
        sample_posterior: bool = True,
        cep_placement: str = "encoder_output",
    ) -> None:
        super().__init__()
        if cep_placement not in CEP_PLACEMENTS:
            raise ValueError(f"cep.placement must be one of {CEP_PLACEMENTS}, got {cep_placement!r}")
        self.denoiser, self.conditioner, self.objective = denoiser, conditioner, objective
        self.condition_dropout = ConditionDropout(p_semantic=p_semantic, p_control=p_control)
        self.cep, self.sample_posterior = cep, bool(sample_posterior)
        self.cep_placement = cep_placement
        if cep is not None and cep.perturb_null and cep_placement == "encoder_output" and (
            getattr(conditioner, "null_kind", "empty") == "learned"
        ):
            raise ValueError(
                "cep.perturb_null=true with condition.null_text=learned: the learned null sequence has no text-encoder "
                "output to perturb; use cep.placement=projection or condition.null_text=empty"
            )
        self.register_buffer("scaling_factor", torch.tensor(float(scaling_factor)))

    @property
    def schedule(self):
        return self.objective.schedule

    @property
    def prediction(self) -> str:
        return self.objective.prediction

    def latents(self, batch: dict, rng: BatchGenerator) -> torch.Tensor:
        """Scaled training latents of the batch (a posterior sample when ``sample_posterior``)."""
        mean = batch["latent_mean"]
        std = batch.get("latent_std")
        if self.sample_posterior and std is not None:
            mean = mean + std * rng.randn(mean.shape).to(device=mean.device, dtype=mean.dtype)
        return mean * self.scaling_factor.to(mean.dtype)

    def dropout_masks(self, batch_size: int, rng: BatchGenerator) -> DropoutMasks:
        """Keep masks from two uniform coins per sample (all True outside training)."""
        coins = rng.rand((batch_size, 2))
        if not self.training:
            coins = torch.ones_like(coins)
        dropout = self.condition_dropout
        return DropoutMasks(coins[:, 0] >= dropout.p_semantic, coins[:, 1] >= dropout.p_control)

    def training_condition(self, batch: dict, keep_semantic: torch.Tensor, rng: BatchGenerator) -> SemanticCondition:
        """The semantic condition of a training batch: dropped rows replaced by the null condition, CEP applied
        at ``cep_placement`` (on the text encoder's hidden states, or on the projected tokens)."""
        conditioner, batch_size = self.conditioner, keep_semantic.shape[0]
        perturbing = self.cep is not None and self.training
        if not perturbing or self.cep_placement == "projection" or conditioner.kind != "text":
            semantic = _select(keep_semantic, conditioner.from_batch(batch), conditioner.null(batch_size))
            if not perturbing:
                return semantic
            return SemanticCondition(perturb_condition(semantic.tokens, self.cep, rng, ~keep_semantic), semantic.mask)
        captions = list(batch["caption"])
        if conditioner.null_kind == "empty":
            # the null text is the empty caption's encoding: select before encoding, so that perturb_null can
            # reach the null rows' hidden states too
            captions = [c if keep else "" for c, keep in zip(captions, keep_semantic.tolist())]
        hidden = conditioner.encoder_output(captions)
        hidden = SemanticCondition(perturb_condition(hidden.tokens, self.cep, rng, ~keep_semantic), hidden.mask)
        semantic = conditioner.project(hidden)
        if conditioner.null_kind == "empty":
            return semantic
        return _select(keep_semantic, semantic, conditioner.null(batch_size))

    def forward(self, batch: dict, rng: BatchGenerator) -> dict[str, LossTerm]:
        x0 = self.latents(batch, rng)
        masks = self.dropout_masks(x0.shape[0], rng)
        keep_semantic = masks.keep_semantic.to(x0.device)
        semantic = self.training_condition(batch, keep_semantic, rng)
        kwargs = {"context": semantic.tokens, "context_mask": semantic.mask}
        if self.denoiser.routing != "none":
            kwargs.update(control=batch["control"], control_keep=masks.keep_control.to(x0.device))
        out = self.objective(self.denoiser, x0, model_kwargs=kwargs, generator=rng)
        return {"diffusion": LossTerm(out.loss)}

    @torch.no_grad()
    def condition_kwargs(
        self,
        *,
        labels: torch.Tensor | None = None,
        captions: list[str] | None = None,
        control: torch.Tensor | None = None,
        semantic: bool = True,
        use_control: bool = True,
        batch_size: int,
    ) -> dict:
        """Denoiser keyword arguments for sampling: the condition (or the null one) and the control metadata."""
        condition = self.conditioner(labels=labels, captions=captions) if semantic else self.conditioner.null(batch_size)
        kwargs = {"context": condition.tokens, "context_mask": condition.mask}
        if self.denoiser.routing != "none":
            if control is None:
                raise ValueError("this model was trained with control metadata: pass control values to sample")
            device = condition.tokens.device
            kwargs["control"] = control.to(device)
            kwargs["control_keep"] = torch.full((batch_size,), bool(use_control), device=device)
        return kwargs
