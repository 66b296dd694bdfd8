"""The Grad-TTS training step as a trainer task: one forward gives the three loss terms, per sample.

``GradTTSTask(model, loss, segment_frames).forward(batch, rng)`` (Popov et al. 2021, §3.3 and Algorithm 1):

1. encode the text (``mu_x``, log-durations); align text and mel by monotonic alignment search on
   ``log N(y_j | mu_x_i, I)``;
2. duration term: ``sum_i (logw_i - log(1e-8 + d_i))^2 / x_len`` per sample, weight ``x_len``;
3. crop a random segment of ``segment_frames`` frames per sample (start drawn from ``rng``; the paper's 2-second
   decoder crops) and its aligned ``mu_y``;
4. prior term: ``sum(0.5 ((y - mu_y)^2 + log 2 pi)) / (frames * F)`` per sample, weight ``frames * F``;
5. diffusion term: the core :class:`~robust_gen.diffusion.objective.DiffusionObjective` on
   :class:`~robust_gen.diffusion.schedules.ContinuousVP` with the configured loss (l2 or any pseudo-Huber form
   and delta schedule), ``mu = mu_y``, ``mask = mel mask``, one ``t`` per sample from ``rng``; weight = the
   sample's masked element count.

With these weights the trainer's one weighted batch mean reproduces Grad-TTS's normalisations exactly (each term
is a sum over the batch divided by the batch's token or element count).

Dropout draws from a generator seeded from ``rng`` (:func:`step_seeded_dropout`), so that a resumed run repeats
the uninterrupted run's dropout masks too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from robust_gen.diffusion.objective import DiffusionObjective
from robust_gen.diffusion.randomness import BatchGenerator
from robust_gen.speech.gradtts.decoder import fix_len_compatibility
from robust_gen.speech.gradtts.model import GradTTS, duration_loss_per_sample, prior_loss_per_sample
from robust_gen.speech.gradtts.text_encoder import sequence_mask
from robust_gen.training.trainer import LossTerm

__all__ = ["GradTTSTask", "random_segments", "segment_frames_for", "step_seeded_dropout"]


def segment_frames_for(
    seconds: float | None, sample_rate: int, hop_length: int, frame_multiple: int = 4
) -> int | None:
    """Frames of a decoder crop of ``seconds`` (Grad-TTS: ``fix_len_compatibility(2 * 22050 // 256) = 172``).

    Examples
    --------
    >>> segment_frames_for(2.0, 22050, 256)
    172
    >>> segment_frames_for(None, 22050, 256) is None
    True
    """
    if seconds is None:
        return None
    if seconds <= 0:
        raise ValueError(f"segment_seconds must be > 0 (or null for whole utterances), got {seconds}")
    multiple_log2 = frame_multiple.bit_length() - 1
    return fix_len_compatibility(int(seconds * sample_rate) // hop_length, multiple_log2)


def random_segments(
    y: torch.Tensor,
    path: torch.Tensor,
    y_lengths: torch.Tensor,
    segment_frames: int,
    offsets_uniform: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crop ``segment_frames`` frames of each mel and its alignment, starting at a random frame.

    ``offsets_uniform`` ``[B]`` in [0, 1) picks each start uniformly in ``[0, max(0, length - segment_frames)]``.
    Returns the cropped mels ``[B, F, S]``, alignments ``[B, T_text, S]`` and lengths ``min(length, S)``;
    frames past a short utterance's end are zero.

    Examples
    --------
    >>> y = torch.arange(6.0).reshape(1, 1, 6)
    >>> path = torch.ones(1, 1, 6)
    >>> crop, _, lengths = random_segments(y, path, torch.tensor([6]), 4, torch.tensor([0.99]))
    >>> crop.tolist(), lengths.tolist()
    ([[[2.0, 3.0, 4.0, 5.0]]], [4])
    """
    max_offset = (y_lengths - segment_frames).clamp(min=0)
    offsets = torch.floor(offsets_uniform.to(y.device) * (max_offset + 1).to(torch.float64)).long()
    offsets = torch.minimum(offsets, max_offset)
    cut_lengths = y_lengths.clamp(max=segment_frames)
    frames = offsets[:, None] + torch.arange(segment_frames, device=y.device)[None, :]  # [B, S]
    valid = torch.arange(segment_frames, device=y.device)[None, :] < cut_lengths[:, None]
    frames = torch.where(valid, frames, 0).clamp(max=max(y.shape[-1] - 1, 0))
    keep = valid[:, None, :].to(y.dtype)
    y_cut = torch.gather(y, 2, frames[:, None, :].expand(-1, y.shape[1], -1)) * keep
    path_cut = torch.gather(path, 2, frames[:, None, :].expand(-1, path.shape[1], -1)) * keep.to(path.dtype)
    return y_cut, path_cut, cut_lengths


@contextlib.contextmanager
def step_seeded_dropout(rng: BatchGenerator | torch.Generator | None, device: torch.device) -> Iterator[None]:
    """Run the block with torch's global generators seeded from ``rng`` and restore them afterwards.

    Dropout draws from the global generator, which checkpoints do not hold; seeding it from the step's
    :class:`BatchGenerator` makes the masks a function of ``(seed, step, shard)`` like every other draw.

    Examples
    --------
    >>> def masks(step):
    ...     with step_seeded_dropout(BatchGenerator(0, step=step), torch.device("cpu")):
    ...         return torch.nn.functional.dropout(torch.ones(8), 0.5)
    >>> torch.equal(masks(3), masks(3)), torch.equal(masks(3), masks(4))
    (True, False)
    """
    if rng is None:
        yield
        return
    generator = rng.generator if isinstance(rng, BatchGenerator) else rng
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    if isinstance(rng, BatchGenerator):
        seed += rng.shard_index
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        torch.manual_seed(seed)
        yield


class GradTTSTask(nn.Module):
    """Grad-TTS's three loss terms for the trainer.

    Parameters
    ----------
    model:
        The :class:`~robust_gen.speech.gradtts.model.GradTTS` being trained.
    loss:
        The diffusion term's loss object (``loss(pred, target, t=, schedule=, mask=) -> [B]``), e.g.
        :class:`~robust_gen.diffusion.losses.L2Loss` or :class:`~robust_gen.diffusion.losses.PseudoHuberLoss`.
    segment_frames:
        Decoder crop in frames (a multiple of 4; 172 = 2 s at 22.05 kHz / hop 256); None trains the decoder on
        whole utterances.

    Examples
    --------
    >>> from robust_gen.diffusion.losses import L2Loss
    >>> task = GradTTSTask(GradTTS.tiny(), L2Loss(), segment_frames=8)
    >>> batch = {"tokens": torch.randint(0, 149, (2, 5)), "token_lengths": torch.tensor([5, 3]),
    ...          "mels": torch.randn(2, 80, 12), "mel_lengths": torch.tensor([12, 9]), "speakers": torch.zeros(2).long()}
    >>> terms = task(batch, BatchGenerator(0, step=0))
    >>> sorted(terms), terms["diffusion"].values.shape, terms["diffusion"].weights.tolist()
    (['diffusion', 'duration', 'prior'], torch.Size([2]), [640.0, 640.0])
    """

    def __init__(
        self, model: GradTTS, loss: Callable[..., torch.Tensor], segment_frames: int | None = 172
    ) -> None:
        super().__init__()
        if segment_frames is not None and segment_frames % model.frame_multiple:
            raise ValueError(f"segment_frames={segment_frames} must be a multiple of {model.frame_multiple}")
        self.model = model
        self.segment_frames = segment_frames
        self.objective = DiffusionObjective(model.schedule, loss, prediction="eps")

    def forward(
        self, batch: dict[str, torch.Tensor], rng: BatchGenerator | None = None
    ) -> dict[str, LossTerm]:
        device = next(self.model.parameters()).device
        with step_seeded_dropout(rng, device):
            return self._losses(batch, rng)

    def _losses(self, batch: dict[str, torch.Tensor], rng: BatchGenerator | None) -> dict[str, LossTerm]:
        model = self.model
        tokens, x_lengths = batch["tokens"], batch["token_lengths"]
        y, y_lengths = batch["mels"], batch["mel_lengths"]
        speaker = model.speaker_vectors(batch.get("speakers"), tokens.shape[0])
        mu_x, log_durations, x_mask = model.encode(tokens, x_lengths, speaker)
        y_mask = sequence_mask(y_lengths, y.shape[-1]).unsqueeze(1).to(y.dtype)
        path = model.align(mu_x, x_mask, y, y_mask)  # [B, T_text, T_mel]
        duration = duration_loss_per_sample(log_durations, path.sum(-1), x_mask)

        if self.segment_frames is not None:
            # Crops never need to be longer than the batch's longest mel (rounded up for the U-Net).
            frames = min(
                self.segment_frames,
                fix_len_compatibility(int(y_lengths.max()), model.decoder.num_downsamplings),
            )
            uniform = rng.rand((y.shape[0],)) if rng is not None else torch.rand(y.shape[0])
            y, path, y_lengths = random_segments(y, path, y_lengths, frames, uniform)
        else:
            frames = fix_len_compatibility(y.shape[-1], model.decoder.num_downsamplings)
            y = nn.functional.pad(y, (0, frames - y.shape[-1]))
            path = nn.functional.pad(path, (0, frames - path.shape[-1]))
        y_mask = sequence_mask(y_lengths, frames).unsqueeze(1).to(y.dtype)
        mu_y = mu_x @ path  # [B, F, frames]: each frame takes its token's mean
        prior = prior_loss_per_sample(y, mu_y, y_mask)
        diffusion = self.objective(
            model.noise_estimate,
            y,
            mask=y_mask,
            mu=mu_y,
            model_kwargs={"mu": mu_y, "mask": y_mask, "speaker": speaker},
            generator=rng,
        )
        prior_weights = y_mask.sum(dim=(1, 2)) * y.shape[1]
        return {
            "duration": LossTerm(duration, weights=x_lengths.to(duration.dtype)),
            "prior": LossTerm(prior, weights=prior_weights),
            "diffusion": LossTerm(diffusion.loss, weights=diffusion.weight),
        }
