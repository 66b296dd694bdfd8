"""The denoising objective: per-sample times, forward noising, targets, per-sample loss, one batch mean.

:class:`DiffusionObjective` follows the shape of EDM's loss classes: one call draws a time per sample, noises the
data, calls the network and returns a loss per sample. It knows tensors, noise levels and masks only; what the
tensors mean (latents, mels) and what the conditions are (class ids, text states, speakers, Grad-TTS's ``mu``)
belongs to the recipe that builds ``model_kwargs``.

Prediction targets (``y = x0 - mu``, ``alpha = sqrt(abar)``, ``std = sqrt(1 - abar)``; ``mu = 0`` unless given):

* ``eps``: the noise ``z``;
* ``x0``: the clean data ``x0``;
* ``v``: ``alpha z - std y`` (Salimans & Ho 2022).

:func:`batch_mean` is the one place where the batch is averaged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from robust_gen.diffusion.randomness import BatchGenerator
from robust_gen.diffusion.schedules import NoiseSchedule

__all__ = ["PREDICTIONS", "DiffusionObjective", "ObjectiveOutput", "batch_mean", "convert_prediction"]

PREDICTIONS = ("eps", "v", "x0")


@dataclass
class ObjectiveOutput:
    """What one objective call returns.

    Attributes
    ----------
    loss:
        Loss per sample, ``[B]``.
    t:
        The time drawn for each sample, ``[B]``.
    weight:
        Number of (masked) elements per sample, ``[B]``: the weights of :func:`batch_mean`'s ``"element"`` mode.
    prediction:
        The network's raw output (detached), for logging.
    """

    loss: torch.Tensor
    t: torch.Tensor
    weight: torch.Tensor
    prediction: torch.Tensor


def batch_mean(
    per_sample: torch.Tensor, weights: torch.Tensor | None = None, *, weight_total: torch.Tensor | None = None
) -> torch.Tensor:
    """Average per-sample losses over the batch: plainly, or weighted (e.g. by each sample's element count).

    With ``weights`` equal to each sample's masked element count this reproduces Grad-TTS's normalisation
    (sum of the masked loss over the batch divided by the total mask size). ``weight_total`` replaces the
    denominator: a data-parallel shard passes the global weight sum divided by the number of shards, so that the
    shards' averaged gradients equal those of the whole batch.

    Examples
    --------
    >>> batch_mean(torch.tensor([1.0, 3.0])).item()
    2.0
    >>> batch_mean(torch.tensor([1.0, 3.0]), torch.tensor([3.0, 1.0])).item()
    1.5
    """
    if per_sample.dim() != 1:
        raise ValueError(f"expected one loss per sample (shape [B]), got {list(per_sample.shape)}")
    if weights is None:
        return per_sample.mean()
    weights = weights.to(per_sample.dtype)
    total = weights.sum() if weight_total is None else weight_total.to(per_sample.dtype)
    return (per_sample * weights).sum() / total.clamp(min=torch.finfo(per_sample.dtype).tiny)


def convert_prediction(
    output: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    schedule: NoiseSchedule,
    *,
    source: str,
    target: str,
    mu: torch.Tensor | None = None,
) -> torch.Tensor:
    """Convert a network output between the ``eps``, ``v`` and ``x0`` parameterisations at times ``t``.

    Examples
    --------
    >>> from robust_gen.diffusion.schedules import ContinuousVP
    >>> s, x0, z, t = ContinuousVP(), torch.randn(3, 5), torch.randn(3, 5), torch.tensor([0.2, 0.5, 0.9])
    >>> xt = s.add_noise(x0, z, t)
    >>> torch.allclose(convert_prediction(z, xt, t, s, source="eps", target="x0"), x0, atol=1e-4)
    True
    """
    for name in (source, target):
        if name not in PREDICTIONS:
            raise ValueError(f"unknown prediction type {name!r}; choose one of {PREDICTIONS}")
    if source == target:
        return output
    alpha, std = schedule.alpha_and_std(t, like=x_t)
    # Work on y = x - mu, where the mean-shifted process is the plain VP: y_t = alpha y0 + std z.
    y_t = x_t if mu is None else x_t - mu
    if source == "eps":
        eps, y0 = output, (y_t - std * output) / alpha
    elif source == "x0":
        y0 = output if mu is None else output - mu
        eps = (y_t - alpha * y0) / std
    else:  # v: since alpha^2 + std^2 = 1, y0 = alpha y_t - std v and eps = std y_t + alpha v.
        y0, eps = alpha * y_t - std * output, std * y_t + alpha * output
    if target == "eps":
        return eps
    if target == "x0":
        return y0 if mu is None else y0 + mu
    return alpha * eps - std * y0


class DiffusionObjective:
    """Draw per-sample times, noise the data, run the network and score it with a per-sample loss.

    Parameters
    ----------
    schedule:
        The noise schedule (:mod:`robust_gen.diffusion.schedules`).
    loss:
        A loss object with the call ``loss(pred, target, t=, schedule=, mask=) -> [B]``
        (:mod:`robust_gen.diffusion.losses`).
    prediction:
        What the network predicts: ``"eps"``, ``"v"`` or ``"x0"``.

    Examples
    --------
    >>> from robust_gen.diffusion.losses import L2Loss
    >>> from robust_gen.diffusion.schedules import DiscreteVP
    >>> objective = DiffusionObjective(DiscreteVP("linear", 1000), L2Loss(), prediction="eps")
    >>> model = lambda x_t, t, **kw: torch.zeros_like(x_t)
    >>> out = objective(model, torch.randn(4, 2, 8, 8), generator=torch.Generator().manual_seed(0))
    >>> out.loss.shape, out.t.shape
    (torch.Size([4]), torch.Size([4]))
    """

    def __init__(self, schedule: NoiseSchedule, loss: Callable[..., torch.Tensor], prediction: str = "eps") -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction type {prediction!r}; choose one of {PREDICTIONS}")
        self.schedule, self.loss, self.prediction = schedule, loss, prediction

    def __repr__(self) -> str:
        return f"DiffusionObjective({self.schedule!r}, {self.loss!r}, prediction={self.prediction!r})"

    def target(
        self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, mu: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The regression target for the configured prediction type."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        alpha, std = self.schedule.alpha_and_std(t, like=x0)
        y0 = x0 if mu is None else x0 - mu
        return alpha * noise - std * y0

    def __call__(
        self,
        model: Callable[..., torch.Tensor],
        x0: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        mu: torch.Tensor | None = None,
        model_kwargs: dict | None = None,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | BatchGenerator | None = None,
    ) -> ObjectiveOutput:
        """One training evaluation.

        Parameters
        ----------
        model:
            Called as ``model(x_t, t, **model_kwargs)``; returns the prediction, shaped like ``x0``.
        x0:
            Clean data ``[B, ...]``.
        mask:
            Optional mask broadcastable to ``x0``: padding is neither noised into the loss nor counted. ``x_t`` is
            multiplied by it, as Grad-TTS does, so padded frames hold zeros.
        mu:
            Optional terminal mean (Grad-TTS's encoder output aligned to frames), same shape as ``x0``.
        model_kwargs:
            Conditions passed to the network untouched.
        t, noise:
            Fix the times or the noise (tests, evaluation); drawn from ``generator`` otherwise.
        generator:
            A ``torch.Generator``, or a :class:`~robust_gen.diffusion.randomness.BatchGenerator` so that
            data-parallel processes draw their shard of one global batch's randomness.
        """
        batch = x0.shape[0]
        sharded = isinstance(generator, BatchGenerator)
        if t is None:
            if sharded:
                t = generator.sample_t(self.schedule, batch).to(x0.device)
            else:
                t = self.schedule.sample_t(batch, generator=generator, device=x0.device)
        elif t.shape != (batch,):
            raise ValueError(f"t must have one time per sample (shape [{batch}]), got {list(t.shape)}")
        if noise is None:
            if sharded:
                noise = generator.randn(x0.shape, dtype=x0.dtype).to(x0.device)
            else:
                noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = self.schedule.add_noise(x0, noise, t, mu=mu)
        if mask is not None:
            x_t = x_t * mask
        prediction = model(x_t, t, **(model_kwargs or {}))
        if prediction.shape != x0.shape:
            raise ValueError(
                f"the network returned shape {list(prediction.shape)} for input {list(x0.shape)}; "
                "it must predict a tensor shaped like its input"
            )
        target = self.target(x0, noise, t, mu)
        per_sample = self.loss(prediction, target, t=t, schedule=self.schedule, mask=mask)
        if mask is None:
            weight = torch.full((batch,), x0[0].numel(), dtype=per_sample.dtype, device=x0.device)
        else:
            dims = tuple(range(1, x0.dim()))
            weight = torch.broadcast_to(mask.to(per_sample.dtype), x0.shape).sum(dim=dims)
        return ObjectiveOutput(loss=per_sample, t=t, weight=weight, prediction=prediction.detach())
