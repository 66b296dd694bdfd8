"""Grad-TTS (Popov et al. 2021, arXiv 2105.06337): text encoder + duration predictor + diffusion decoder.

:class:`GradTTS` holds the networks and the pieces of the paper's maths that belong to the model:

* the prior ``log N(y_j | mu_i, I)`` of every mel frame under every token (:func:`prior_log_likelihood`), which
  monotonic alignment search (:func:`robust_gen.speech.gradtts.alignment.monotonic_alignment_search`) turns into
  durations;
* the duration loss ``sum((logw - log(1e-8 + d))^2) / sum(x_len)`` and the prior (encoder) loss
  ``sum(0.5 ((y - mu_y)^2 + log 2 pi)) / (sum(mask) * n_feats)`` (paper eqs. 14 and 15), both *per sample* here
  (:func:`duration_loss_per_sample`, :func:`prior_loss_per_sample`): their token / element counts weight the
  batch mean, which then equals the paper's normalisation;
* :meth:`GradTTS.noise_estimate`: the decoder as the noise predictor the core objective and samplers use;
* :meth:`GradTTS.synthesize`: text -> durations -> ``mu_y`` -> reverse diffusion (Euler ODE or SDE) -> mel.

The diffusion loss itself is the core's :class:`~robust_gen.diffusion.objective.DiffusionObjective` on the
continuous VP SDE (:class:`~robust_gen.diffusion.schedules.ContinuousVP`); :mod:`robust_gen.speech.task` wires
the three terms together for the trainer.

Score vs noise: Grad-TTS's decoder outputs the score ``s`` and is trained on ``(s * std + z)^2`` with
``std = sqrt(1 - exp(-B(t)))``. The two parameterisations give the same loss value once ``eps = -s * std``;
``output="score"`` (the default, the paper's network) applies that conversion, ``output="eps"`` lets the network
predict ``eps`` directly (a better-conditioned target for short CPU runs: the score grows like ``1 / std``).

Parameter count (default construction, one speaker, 149 tokens): 14,835,032, the paper's 14.8M and exactly the
authors' released LJSpeech model (text encoder 7.20M of which 0.35M duration predictor, decoder 7.64M). Several
speakers add the 64-d embedding table (64 per speaker) and the decoder's speaker MLP and third input channel:
14,888,680 at 247 speakers, exactly the authors' released LibriTTS model, whose text encoder does NOT see the
speaker (their ``GradTTS`` builds its ``TextEncoder`` without ``n_spks``). ``condition_encoder=True`` (an option,
off by default) also concatenates the speaker embedding to the encoder's tokens, widening its transformer to 256
channels (17.39M for 10 speakers).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from robust_gen.diffusion.samplers import get_sampler
from robust_gen.diffusion.schedules import ContinuousVP
from robust_gen.speech.gradtts.alignment import monotonic_alignment_search
from robust_gen.speech.gradtts.decoder import ScoreUNet, fix_len_compatibility
from robust_gen.speech.gradtts.text_encoder import TextEncoder, sequence_mask

__all__ = [
    "LENGTH_ROUNDINGS",
    "OUTPUTS",
    "GradTTS",
    "duration_loss_per_sample",
    "durations_to_path",
    "prior_log_likelihood",
    "prior_loss_per_sample",
    "synthesis_durations",
]

OUTPUTS = ("score", "eps")
LENGTH_ROUNDINGS = ("scale_total", "per_token")
LOG_2PI = math.log(2 * math.pi)


def prior_log_likelihood(mu_x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``log N(y_j | mu_i, I)`` for every token ``i`` and frame ``j``: ``[B, T_text, T_mel]``.

    Written as ``-0.5 (|y|^2 - 2 mu.y + |mu|^2) - 0.5 F log 2 pi`` so that it is one batched matrix product.

    Examples
    --------
    >>> mu, y = torch.zeros(1, 2, 1), torch.tensor([[[1.0, 3.0], [0.0, 0.0]]])
    >>> (prior_log_likelihood(mu, y)[0, 0] + LOG_2PI).tolist()  # F = 2: -0.5 |y_j|^2 - log 2 pi + log 2 pi
    [-0.5, -4.5]
    """
    n_feats = mu_x.shape[1]
    y_square = (y**2).sum(dim=1, keepdim=True)  # [B, 1, T_mel]
    mu_square = (mu_x**2).sum(dim=1).unsqueeze(-1)  # [B, T_text, 1]
    cross = mu_x.transpose(1, 2) @ y  # [B, T_text, T_mel]
    return -0.5 * (y_square - 2 * cross + mu_square) - 0.5 * n_feats * LOG_2PI


def duration_loss_per_sample(
    log_durations: torch.Tensor, durations: torch.Tensor, x_mask: torch.Tensor
) -> torch.Tensor:
    """Per-sample duration loss ``sum_i (logw_i - log(1e-8 + d_i))^2 / x_len`` over the sample's tokens, ``[B]``.

    Weighted by ``x_len`` in the batch mean this is Grad-TTS's ``sum((logw - logw_)^2) / sum(x_len)``.

    Examples
    --------
    >>> logw = torch.tensor([[[0.0, 1.0, 9.0]]])
    >>> d = torch.tensor([[1.0, 1.0, 0.0]])
    >>> duration_loss_per_sample(logw, d, torch.tensor([[[1.0, 1.0, 0.0]]])).tolist()  # (0 + 1) / 2
    [0.5]
    """
    x_mask = x_mask.reshape(log_durations.shape[0], -1)
    target = torch.log(1e-8 + durations) * x_mask
    squared = (log_durations.reshape(x_mask.shape) * x_mask - target) ** 2
    return squared.sum(dim=1) / x_mask.sum(dim=1).clamp(min=1)


def prior_loss_per_sample(y: torch.Tensor, mu_y: torch.Tensor, y_mask: torch.Tensor) -> torch.Tensor:
    """Per-sample prior loss ``sum(0.5 ((y - mu_y)^2 + log 2 pi) * mask) / (sum(mask) * F)``, ``[B]``.

    Weighted by ``sum(mask) * F`` in the batch mean this is Grad-TTS's encoder loss.

    Examples
    --------
    >>> y, mu = torch.tensor([[[2.0, 5.0]]]), torch.zeros(1, 1, 2)
    >>> (prior_loss_per_sample(y, mu, torch.tensor([[[1.0, 0.0]]])) - 0.5 * LOG_2PI).tolist()  # 0.5 * 2^2
    [2.0]
    """
    n_feats = y.shape[1]
    per_element = 0.5 * ((y - mu_y) ** 2 + LOG_2PI) * y_mask
    return per_element.sum(dim=(1, 2)) / (y_mask.sum(dim=(1, 2)) * n_feats).clamp(min=1)


def durations_to_path(durations: torch.Tensor, t_mel: int) -> torch.Tensor:
    """Hard alignment ``[B, T_text, t_mel]`` from integer durations ``[B, T_text]``: token ``i`` owns frames
    ``[sum(d_<i), sum(d_<=i))``.

    Examples
    --------
    >>> durations_to_path(torch.tensor([[2, 0, 1]]), 4)[0].int().tolist()
    [[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]]
    """
    ends = torch.cumsum(durations, dim=1)
    starts = ends - durations
    frames = torch.arange(t_mel, device=durations.device)[None, None, :]
    return ((frames >= starts[:, :, None]) & (frames < ends[:, :, None])).to(torch.float32)


def synthesis_durations(
    log_durations: torch.Tensor, x_mask: torch.Tensor, length_scale: float = 1.0, rounding: str = "scale_total"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer frames per token ``[B, T_text]`` and mel lengths ``[B]`` from predicted log-durations.

    ``rounding="scale_total"`` (default; the authors' inference): ``w = ceil(exp(logw)) * length_scale``; token
    ``i`` ends at frame ``ceil(sum_{k<=i} w_k)`` and the mel has ``floor(sum w)`` frames, so the total length scales
    by ``length_scale`` and the rounding is spread over the tokens. ``"per_token"``: ``ceil(exp(logw) *
    length_scale)`` per token, which rounds every token up (at 0.91 on a 40-token text: 174 frames where the
    authors' gives 171). With ``length_scale = 1`` both are ``ceil(exp(logw))``.

    Examples
    --------
    >>> logw, mask = torch.log(torch.tensor([[[1.0, 1.0, 1.0, 1.0]]])), torch.ones(1, 1, 4)
    >>> d, n = synthesis_durations(logw, mask, 0.5)
    >>> d.tolist(), n.tolist()  # ends at ceil(0.5), ceil(1.0), ceil(1.5), ceil(2.0); floor(2.0) frames
    ([[1, 0, 1, 0]], [2])
    >>> synthesis_durations(logw, mask, 0.5, "per_token")[0].tolist()
    [[1, 1, 1, 1]]
    """
    if rounding not in LENGTH_ROUNDINGS:
        raise ValueError(f"length rounding must be one of {LENGTH_ROUNDINGS}, got {rounding!r}")
    w = torch.exp(log_durations) * x_mask
    if rounding == "per_token":
        durations = torch.ceil(w * length_scale).squeeze(1).long()
        return durations, durations.sum(dim=1).clamp(min=1)
    scaled = (torch.ceil(w) * length_scale).squeeze(1)
    ends = torch.ceil(torch.cumsum(scaled, dim=1)).long()
    durations = torch.diff(ends, dim=1, prepend=torch.zeros_like(ends[:, :1]))
    return durations, torch.floor(scaled.sum(dim=1)).long().clamp(min=1)


class GradTTS(nn.Module):
    """Grad-TTS: the paper's architecture by default (14.8M parameters with one speaker).

    Parameters
    ----------
    n_vocab:
        Token ids (149: :data:`robust_gen.speech.text.VOCAB_SIZE`).
    n_speakers:
        1 for a single-speaker model; more adds a speaker embedding table.
    n_feats:
        Mel bands (80).
    encoder_channels, encoder_filter_channels, encoder_heads, encoder_layers, encoder_kernel_size,
    encoder_dropout, encoder_window_size, prenet_layers, prenet_kernel_size, prenet_dropout,
    duration_channels:
        Text encoder sizes (Grad-TTS: 192, 768, 2, 6, 3, 0.1, 4, 3, 5, 0.5, 256).
    decoder_dim, decoder_dim_mults, decoder_groups, pe_scale, decoder_attention_heads,
    decoder_attention_head_dim:
        U-Net sizes (Grad-TTS: 64, (1, 2, 4), 8, 1000, 4, 32).
    speaker_dim:
        Speaker embedding width (64), used when ``n_speakers > 1``.
    condition_encoder:
        Multi-speaker only: also concatenate the speaker embedding to the text encoder's tokens (an option the
        authors' ``TextEncoder`` has, but their released multi-speaker model does not use); ``False`` (default)
        gives the speaker to the decoder alone, as the paper describes and the released LibriTTS model does.
    beta_min, beta_max:
        Noise schedule ``beta(t) = beta_min + (beta_max - beta_min) t`` (0.05, 20).
    output:
        ``"score"`` (the paper's network output, converted to noise as ``eps = -s * std``) or ``"eps"``.
    decoder_attention_padding:
        ``"ignore"`` (default: padded frames do not enter the decoder's linear-attention softmax) or
        ``"include"`` (the authors' computation; imported checkpoints run exactly as trained with it).
    decoder_frequency_padding, decoder_frequency_padding_mode:
        Bands added at each edge of the mel's frequency axis inside the decoder, and how (``"replicate"`` /
        ``"reflect"``); 0 (default) is the paper's network and the setting of imported weights. The CPU configs
        use 4 (issue 17; :class:`~robust_gen.speech.gradtts.decoder.ScoreUNet`).
    gradient_checkpointing:
        Recompute the decoder U-Net's activations in the backward pass instead of storing them (training mode
        only; see :class:`~robust_gen.speech.gradtts.decoder.ScoreUNet`): less memory for longer crops or bigger batches.

    Examples
    --------
    >>> model = GradTTS.tiny()
    >>> tokens, lengths = torch.randint(0, 149, (2, 9)), torch.tensor([9, 6])
    >>> mel, mel_lengths = model.synthesize(tokens, lengths, n_timesteps=2, generator=torch.Generator().manual_seed(0))
    >>> mel.shape[:2], bool((mel_lengths >= 1).all())
    (torch.Size([2, 80]), True)
    """

    def __init__(
        self,
        n_vocab: int = 149,
        n_speakers: int = 1,
        n_feats: int = 80,
        *,
        encoder_channels: int = 192,
        encoder_filter_channels: int = 768,
        encoder_heads: int = 2,
        encoder_layers: int = 6,
        encoder_kernel_size: int = 3,
        encoder_dropout: float = 0.1,
        encoder_window_size: int = 4,
        prenet_layers: int = 3,
        prenet_kernel_size: int = 5,
        prenet_dropout: float = 0.5,
        duration_channels: int = 256,
        decoder_dim: int = 64,
        decoder_dim_mults: tuple[int, ...] = (1, 2, 4),
        decoder_groups: int = 8,
        pe_scale: float = 1000.0,
        decoder_attention_heads: int = 4,
        decoder_attention_head_dim: int = 32,
        speaker_dim: int = 64,
        condition_encoder: bool = False,
        beta_min: float = 0.05,
        beta_max: float = 20.0,
        output: str = "score",
        gradient_checkpointing: bool = False,
        decoder_attention_padding: str = "ignore",
        decoder_frequency_padding: int = 0,
        decoder_frequency_padding_mode: str = "replicate",
    ) -> None:
        super().__init__()
        if n_speakers < 1:
            raise ValueError(f"n_speakers must be >= 1, got {n_speakers}")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.n_vocab, self.n_speakers, self.n_feats, self.output = n_vocab, n_speakers, n_feats, output
        multi = n_speakers > 1
        if multi:
            self.speaker_embedding = nn.Embedding(n_speakers, speaker_dim)
        self.encoder = TextEncoder(
            n_vocab,
            n_feats,
            channels=encoder_channels,
            filter_channels=encoder_filter_channels,
            n_heads=encoder_heads,
            n_layers=encoder_layers,
            kernel_size=encoder_kernel_size,
            dropout=encoder_dropout,
            window_size=encoder_window_size,
            prenet_layers=prenet_layers,
            prenet_kernel_size=prenet_kernel_size,
            prenet_dropout=prenet_dropout,
            duration_channels=duration_channels,
            speaker_channels=speaker_dim if multi and condition_encoder else 0,
        )
        self.decoder = ScoreUNet(
            dim=decoder_dim,
            dim_mults=tuple(decoder_dim_mults),
            groups=decoder_groups,
            n_feats=n_feats,
            speaker_dim=speaker_dim if multi else 0,
            pe_scale=pe_scale,
            attention_heads=decoder_attention_heads,
            attention_head_dim=decoder_attention_head_dim,
            gradient_checkpointing=gradient_checkpointing,
            attention_padding=decoder_attention_padding,
            frequency_padding=decoder_frequency_padding,
            frequency_padding_mode=decoder_frequency_padding_mode,
        )
        self.schedule = ContinuousVP(beta_min, beta_max)
        self.frame_multiple = 2**self.decoder.num_downsamplings

    @classmethod
    def tiny(cls, **overrides) -> GradTTS:
        """A few-ten-thousand-parameter model with the same structure, for tests and CPU smoke runs."""
        sizes = dict(
            encoder_channels=32, encoder_filter_channels=64, encoder_layers=1, prenet_layers=1,
            duration_channels=32, decoder_dim=8, decoder_dim_mults=(1, 2, 4), decoder_groups=4, speaker_dim=8,
            decoder_attention_heads=2, decoder_attention_head_dim=8,
        )  # fmt: skip
        return cls(**{**sizes, **overrides})

    # ------------------------------------------------------------------------------------------ pieces
    def speaker_vectors(self, speakers: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """Speaker embeddings ``[B, speaker_dim]`` (None for a single-speaker model)."""
        if self.n_speakers == 1:
            return None
        if speakers is None:
            raise ValueError(f"this model has {self.n_speakers} speakers: pass speaker ids [B]")
        speakers = torch.as_tensor(speakers, device=self.speaker_embedding.weight.device).reshape(-1)
        if speakers.shape != (batch,):
            raise ValueError(f"need one speaker id per sample ({batch}), got shape {list(speakers.shape)}")
        if bool(((speakers < 0) | (speakers >= self.n_speakers)).any()):
            raise ValueError(f"speaker ids must lie in [0, {self.n_speakers}), got {speakers.tolist()}")
        return self.speaker_embedding(speakers)

    def encode(
        self, tokens: torch.Tensor, lengths: torch.Tensor, speaker: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(mu_x [B, F, T_text], log_durations [B, 1, T_text], x_mask [B, 1, T_text])``."""
        return self.encoder(tokens, lengths, speaker)

    def align(
        self, mu_x: torch.Tensor, x_mask: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor
    ) -> torch.Tensor:
        """Monotonic alignment ``[B, T_text, T_mel]`` maximising ``sum log N(y_j | mu_x_i, I)`` (no gradient)."""
        with torch.no_grad():
            log_p = prior_log_likelihood(mu_x.detach().float(), y.float())
            return monotonic_alignment_search(log_p, x_mask, y_mask).to(mu_x.dtype)

    def noise_estimate(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        *,
        mu: torch.Tensor,
        mask: torch.Tensor,
        speaker: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The decoder as a noise predictor ``eps(x_t, t)`` (masked), whatever ``output`` it was built with."""
        raw = self.decoder(x_t, t, mu=mu, mask=mask, speaker=speaker)
        if self.output == "eps":
            return raw
        _, std = self.schedule.alpha_and_std(t, like=x_t)
        return -raw * std  # Grad-TTS: the loss is on s * std + z, i.e. on -eps_hat + z

    # ---------------------------------------------------------------------------------------- inference
    @torch.no_grad()
    def synthesize(
        self,
        tokens: torch.Tensor,
        lengths: torch.Tensor,
        *,
        speakers: torch.Tensor | None = None,
        n_timesteps: int = 10,
        temperature: float = 1.5,
        sampler: str = "euler_ode",
        length_scale: float = 1.0,
        length_rounding: str = "scale_total",
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mel spectrograms ``[B, F, T]`` and their frame counts ``[B]`` for token ids ``[B, T_text]``.

        Reverse diffusion from ``mu_y + z / temperature`` (Grad-TTS eq. 13 with the paper's temperature 1.5)
        with ``n_timesteps`` Euler steps of the probability-flow ODE (``sampler="euler_ode"``) or of the reverse
        SDE (``"euler_sde"``). ``length_scale`` > 1 speaks slower; ``length_rounding`` as in
        :func:`synthesis_durations`. Frames past a mel's length are zero.
        """
        if n_timesteps < 1:
            raise ValueError(f"n_timesteps must be >= 1, got {n_timesteps}")
        if temperature <= 0 or length_scale <= 0:
            raise ValueError(f"temperature and length_scale must be > 0, got {temperature}, {length_scale}")
        device = next(self.parameters()).device
        tokens, lengths = tokens.to(device), lengths.to(device)
        speaker = self.speaker_vectors(speakers, tokens.shape[0])
        mu_x, log_durations, x_mask = self.encode(tokens, lengths, speaker)
        durations, y_lengths = synthesis_durations(log_durations, x_mask, length_scale, length_rounding)
        t_mel = fix_len_compatibility(int(y_lengths.max()), self.decoder.num_downsamplings)
        y_mask = sequence_mask(y_lengths, t_mel).unsqueeze(1).to(mu_x.dtype)
        path = durations_to_path(durations, t_mel).to(mu_x.dtype) * y_mask  # frames past the length belong to none
        mu_y = (mu_x @ path) * y_mask  # [B, F, T_mel]
        noise = torch.randn(mu_y.shape, generator=generator, device=device, dtype=mu_y.dtype)
        start = (mu_y + noise / temperature) * y_mask
        sample = get_sampler(sampler)
        mel = sample(
            self.noise_estimate,
            start,
            self.schedule.sampling_times(n_timesteps, device=device),
            schedule=self.schedule,
            extra_args={"mu": mu_y, "mask": y_mask, "speaker": speaker},
            generator=generator,
            mean=mu_y,
        )
        return mel * y_mask, y_lengths
