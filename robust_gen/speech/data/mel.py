"""HiFi-GAN-compatible log-mel spectrograms, the acoustic features of the Grad-TTS speech recipe.

Grad-TTS (Popov et al., 2021) predicts the 80-band log-mel spectrogram that a HiFi-GAN vocoder
(Kong et al., 2020) turns back into a waveform, so both must use the exact same features. HiFi-GAN's
``meldataset.mel_spectrogram`` defines them:

1. reflect-pad ``(n_fft - hop) / 2`` samples on both sides, then a Hann-window STFT with
   ``center=False`` (so a clip of ``k * hop`` samples gives exactly ``k`` frames);
2. magnitude ``sqrt(re^2 + im^2 + 1e-9)`` (the epsilon keeps the gradient finite at zero);
3. a Slaney-scale, Slaney-area-normalized mel filterbank (librosa's default ``librosa.filters.mel``),
   here built with ``torchaudio.functional.melscale_fbanks``;
4. ``log(clamp(x, min=1e-5))`` ("dynamic range compression" with C = 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchaudio.functional
from torch import nn


@dataclass(frozen=True)
class MelConfig:
    """Parameters of :class:`MelSpectrogram`; defaults are HiFi-GAN's LJSpeech ``config_v1``.

    Examples
    --------
    >>> MelConfig().n_mels, MelConfig().hop_length
    (80, 256)
    >>> MelConfig(f_max=20000.0)
    Traceback (most recent call last):
    ...
    ValueError: f_max=20000.0 must lie in (f_min, sample_rate / 2] = (0.0, 11025.0]
    """

    sample_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    n_mels: int = 80
    f_min: float = 0.0
    f_max: float = 8000.0
    magnitude_eps: float = 1e-9  # added to the power before the square root
    log_floor: float = 1e-5  # clamp before the log

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "hop_length", "win_length", "n_mels"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length={self.win_length} must not exceed n_fft={self.n_fft}")
        if self.hop_length > self.n_fft:
            raise ValueError(f"hop_length={self.hop_length} must not exceed n_fft={self.n_fft}")
        if not 0.0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(
                f"f_max={self.f_max} must lie in (f_min, sample_rate / 2] = "
                f"({self.f_min}, {self.sample_rate / 2}]"
            )
        if self.magnitude_eps < 0 or self.log_floor <= 0:
            raise ValueError("magnitude_eps must be >= 0 and log_floor > 0")

    @property
    def padding(self) -> int:
        """Reflect padding on each side, ``(n_fft - hop_length) // 2`` as in HiFi-GAN."""
        return (self.n_fft - self.hop_length) // 2


def mel_filterbank(config: MelConfig) -> torch.Tensor:
    """Slaney mel filterbank ``[n_mels, n_fft // 2 + 1]``, equal to ``librosa.filters.mel`` defaults.

    Examples
    --------
    >>> mel_filterbank(MelConfig()).shape
    torch.Size([80, 513])
    """
    return torchaudio.functional.melscale_fbanks(
        n_freqs=config.n_fft // 2 + 1,
        f_min=config.f_min,
        f_max=config.f_max,
        n_mels=config.n_mels,
        sample_rate=config.sample_rate,
        norm="slaney",
        mel_scale="slaney",
    ).T.contiguous()


class MelSpectrogram(nn.Module):
    """Waveforms ``[B, T]`` (or ``[T]``) -> log-mel spectrograms ``[B, n_mels, frames]`` (or ``[n_mels, frames]``).

    The filterbank and window are non-persistent buffers, so ``.to(device)`` moves them and state
    dicts stay empty. ``frames = T // hop_length`` when ``T`` is a multiple of ``hop_length``.

    Examples
    --------
    >>> mel = MelSpectrogram(MelConfig())
    >>> mel(torch.randn(2, 256 * 50) * 0.1).shape
    torch.Size([2, 80, 50])
    """

    def __init__(self, config: MelConfig | None = None) -> None:
        super().__init__()
        self.config = config or MelConfig()
        self.register_buffer("filterbank", mel_filterbank(self.config), persistent=False)
        self.register_buffer("window", torch.hann_window(self.config.win_length), persistent=False)

    def num_frames(self, num_samples: int) -> int:
        """Number of frames produced for a clip of ``num_samples`` samples.

        Examples
        --------
        >>> MelSpectrogram().num_frames(22050)
        86
        """
        c = self.config
        return (num_samples + 2 * c.padding - c.n_fft) // c.hop_length + 1

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        c = self.config
        if wav.dim() not in (1, 2):
            raise ValueError(f"expected a waveform [T] or a batch [B, T], got shape {tuple(wav.shape)}")
        unbatched = wav.dim() == 1
        batch = wav.unsqueeze(0) if unbatched else wav
        if batch.shape[-1] <= c.padding:
            raise ValueError(
                f"waveform of {batch.shape[-1]} samples is too short: reflect padding needs more than "
                f"{c.padding} samples"
            )
        if not batch.is_floating_point():
            raise ValueError(f"waveform must be floating point, got dtype {batch.dtype}")
        padded = nn.functional.pad(batch.unsqueeze(1), (c.padding, c.padding), mode="reflect").squeeze(1)
        spec = torch.stft(
            padded,
            n_fft=c.n_fft,
            hop_length=c.hop_length,
            win_length=c.win_length,
            window=self.window.to(padded.dtype),
            center=False,
            return_complex=True,
        )
        magnitude = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + c.magnitude_eps)
        mel = torch.matmul(self.filterbank.to(magnitude.dtype), magnitude)
        log_mel = torch.log(torch.clamp(mel, min=c.log_floor))
        return log_mel.squeeze(0) if unbatched else log_mel
