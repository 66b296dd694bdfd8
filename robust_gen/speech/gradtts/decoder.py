"""Grad-TTS's decoder: a 2-D U-Net over (mel band x frame) that estimates the noise of ``x_t`` (Popov et al. 2021).

The network sees the mel as a one-channel image ``[B, 1, n_feats, T]`` stacked with ``mu`` (the aligned encoder
output) and, for multi-speaker models, a speaker map (a 64-d speaker embedding mapped to ``n_feats`` values and
repeated over frames): input channels ``(mu, x_t[, speaker])``. Architecture (Grad-TTS appendix / public code):

* sinusoidal embedding of the continuous time ``t`` (scaled by ``pe_scale = 1000``), MLP ``dim -> 4 dim -> dim``;
* down path over ``dim * mults`` (1, 2, 4): two ResNet blocks (conv 3x3, GroupNorm, Mish; time added between
  the two convolutions), residual zero-gated linear attention, strided-conv downsampling (not after the last);
* middle: ResNet, attention, ResNet; up path mirrors the down path with skip connections and transposed convs;
* final conv block and a 1x1 conv to one channel. Two downsamplings, so ``n_feats`` and ``T`` must be multiples
  of 4 (:func:`fix_len_compatibility`).

Output: Grad-TTS's network outputs the score ``s`` and trains ``s * std + z``. Here :class:`ScoreUNet` returns its
raw output and :class:`robust_gen.speech.gradtts.model.GradTTS` converts it to the noise estimate the core objective
and samplers expect (``eps = -s * std`` for ``output="score"``, or the raw output for ``output="eps"``).

One deliberate difference, on by default (``attention_padding="ignore"``): the linear attention's key softmax
ignores padded frames (the original normalises over the padding too), so a mel's estimate does not depend on how
much padding its batch has at that step. It adds no parameters; with no padding it computes exactly the original.
``attention_padding="include"`` computes the original's softmax over every frame, padded or not: the setting for
the authors' released weights run exactly as they were trained (:mod:`robust_gen.speech.gradtts.convert`).

A second option, off by default (``frequency_padding=0``, the original): extend the input by ``p`` bands at both
edges of the frequency axis (copies of the edge band, or a mirror image) before the U-Net and crop the output back
to ``n_feats``. Why: with the convolutions' zero padding the lowest and highest bands see a border that no inner
band sees, and a small decoder learns to answer a deviation there weakly (issue 17: at the CPU scale the push back
towards the data in band 79 was 0.55-0.65 of an inner band's, and the sampler let the top band drift to log-mel
values far above any real one, heard as clicks). With the padding the edge bands are computed like inner ones.
The padded bands carry no loss (they are cropped before it). ``n_feats + 2 p`` must stay divisible by the U-Net's
stride, so ``p`` is a multiple of ``2 ** num_downsamplings / 2``.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "ConvBlock",
    "LinearAttention",
    "ResnetBlock",
    "ScoreUNet",
    "fix_len_compatibility",
    "sinusoidal_time_embedding",
]


def fix_len_compatibility(length: int, num_downsamplings: int = 2) -> int:
    """The smallest length >= ``length`` divisible by ``2 ** num_downsamplings`` (the U-Net's stride).

    Examples
    --------
    >>> fix_len_compatibility(172), fix_len_compatibility(173)
    (172, 176)
    """
    factor = 2**num_downsamplings
    return int(math.ceil(length / factor) * factor)


def sinusoidal_time_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Transformer-style embedding ``[sin(scale t w_k), cos(scale t w_k)]`` of one time per sample, ``[B, dim]``.

    Examples
    --------
    >>> sinusoidal_time_embedding(torch.tensor([0.0, 0.5]), 8).shape
    torch.Size([2, 8])
    """
    if dim % 2 or dim < 4:
        raise ValueError(f"time embedding dim must be an even number >= 4, got {dim}")
    half = dim // 2
    freqs = torch.exp(
        torch.arange(half, device=t.device, dtype=torch.float32) * -(math.log(10000.0) / (half - 1))
    )
    angles = scale * t.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ConvBlock(nn.Module):
    """conv 3x3 -> GroupNorm -> Mish on the masked input; output masked.

    Examples
    --------
    >>> ConvBlock(2, 8, groups=4)(torch.randn(1, 2, 8, 6), torch.ones(1, 1, 1, 6)).shape
    torch.Size([1, 8, 8, 6])
    """

    def __init__(self, dim: int, dim_out: int, groups: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim_out, 3, padding=1)
        self.norm = nn.GroupNorm(groups, dim_out)
        self.act = nn.Mish()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x * mask))) * mask


class ResnetBlock(nn.Module):
    """Two :class:`ConvBlock` with the time embedding added in between, plus a (1x1 when widths differ) skip.

    Examples
    --------
    >>> block = ResnetBlock(2, 8, time_dim=16, groups=4)
    >>> block(torch.randn(3, 2, 8, 6), torch.ones(3, 1, 1, 6), torch.randn(3, 16)).shape
    torch.Size([3, 8, 8, 6])
    """

    def __init__(self, dim: int, dim_out: int, time_dim: int, groups: int = 8) -> None:
        super().__init__()
        self.time_mlp = nn.Sequential(nn.Mish(), nn.Linear(time_dim, dim_out))
        self.block1 = ConvBlock(dim, dim_out, groups)
        self.block2 = ConvBlock(dim_out, dim_out, groups)
        self.skip = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        h = self.block1(x, mask) + self.time_mlp(time)[:, :, None, None]
        h = self.block2(h, mask)
        return h + self.skip(x * mask)


class LinearAttention(nn.Module):
    """Linear attention (Shen et al. 2021) over all (band, frame) positions, behind a zero-initialised gate.

    ``context = softmax_n(k) v^T`` per head, ``out = context^T q``; cost linear in the number of positions. The
    residual connection and the ReZero gate (``x + g * attn(x)``, ``g = 0`` at start) are part of this module.

    Examples
    --------
    >>> x = torch.randn(1, 8, 4, 6)
    >>> torch.equal(LinearAttention(8)(x, torch.ones(1, 1, 1, 6)), x)  # gate 0: identity at start
    True
    """

    PADDING = ("ignore", "include")

    def __init__(self, dim: int, heads: int = 4, head_dim: int = 32, padding: str = "ignore") -> None:
        super().__init__()
        if padding not in self.PADDING:
            raise ValueError(f"attention padding must be one of {self.PADDING}, got {padding!r}")
        self.heads, self.head_dim, self.padding = heads, head_dim, padding
        hidden = heads * head_dim
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, dim, 1)
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        q, k, v = self.to_qkv(x).reshape(batch, 3, self.heads, self.head_dim, height * width).unbind(1)
        if self.padding == "ignore":
            keep = torch.broadcast_to(mask, (batch, 1, height, width)).reshape(batch, 1, 1, height * width) > 0
            k = k.masked_fill(~keep, float("-inf"))
        k = k.softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q).reshape(batch, -1, height, width)
        return x + self.gate * self.to_out(out)


class ScoreUNet(nn.Module):
    """Grad-TTS's score/noise estimator (``GradLogPEstimator2d``).

    Parameters
    ----------
    dim:
        Base width (Grad-TTS: 64).
    dim_mults:
        Width multipliers per resolution (Grad-TTS: (1, 2, 4)); ``len - 1`` downsamplings.
    groups:
        GroupNorm groups (Grad-TTS: 8); must divide ``dim``.
    n_feats:
        Mel bands (80).
    speaker_dim:
        Width of the speaker embedding given to :meth:`forward` (0: single-speaker, two input channels).
    pe_scale:
        Scale of ``t`` in the sinusoidal embedding (Grad-TTS: 1000, for ``t`` in [0, 1]).
    attention_padding:
        ``"ignore"`` (default): the linear attention's softmax skips padded frames; ``"include"``: over every
        frame, as the authors' code (module docstring).
    frequency_padding:
        Bands added at each edge of the frequency axis before the U-Net and cropped after it (module docstring);
        0 (default) is the original network, and the only setting for imported weights.
    frequency_padding_mode:
        ``"replicate"`` (copies of the edge band, default) or ``"reflect"`` (a mirror image of the bands inside).
    gradient_checkpointing:
        In training mode with gradients on, run each resolution level (two ResNet blocks and the attention) under
        activation checkpointing: only the levels' inputs are stored, the rest is recomputed in the backward pass
        (about one more forward pass of compute for a fraction of the activation memory). The attribute of the
        same name can be switched later. Results are unchanged.

    Examples
    --------
    >>> net = ScoreUNet(dim=8, dim_mults=(1, 2), groups=4, n_feats=8)
    >>> x, mu, mask = torch.randn(2, 8, 12), torch.randn(2, 8, 12), torch.ones(2, 1, 12)
    >>> net(x, torch.tensor([0.1, 0.9]), mu=mu, mask=mask).shape
    torch.Size([2, 8, 12])
    """

    FREQUENCY_PADDING_MODES = ("replicate", "reflect")

    def __init__(
        self,
        dim: int = 64,
        dim_mults: tuple[int, ...] = (1, 2, 4),
        groups: int = 8,
        n_feats: int = 80,
        speaker_dim: int = 0,
        pe_scale: float = 1000.0,
        attention_heads: int = 4,
        attention_head_dim: int = 32,
        gradient_checkpointing: bool = False,
        attention_padding: str = "ignore",
        frequency_padding: int = 0,
        frequency_padding_mode: str = "replicate",
    ) -> None:
        super().__init__()
        self.gradient_checkpointing = bool(gradient_checkpointing)
        dim_mults = tuple(int(m) for m in dim_mults)
        if not dim_mults:
            raise ValueError("dim_mults must name at least one resolution")
        self.num_downsamplings = len(dim_mults) - 1
        if n_feats % 2**self.num_downsamplings:
            raise ValueError(f"n_feats={n_feats} must be divisible by 2**{self.num_downsamplings}")
        if dim % groups:
            raise ValueError(f"GroupNorm groups={groups} must divide dim={dim}")
        if frequency_padding < 0 or (n_feats + 2 * frequency_padding) % 2**self.num_downsamplings:
            raise ValueError(
                f"frequency_padding={frequency_padding} must be >= 0 and keep n_feats + 2 * padding divisible by "
                f"{2**self.num_downsamplings} (e.g. {2 ** max(self.num_downsamplings - 1, 0)} or a multiple of it)"
            )
        if frequency_padding_mode not in self.FREQUENCY_PADDING_MODES:
            raise ValueError(
                f"frequency_padding_mode must be one of {self.FREQUENCY_PADDING_MODES}, got {frequency_padding_mode!r}"
            )
        if frequency_padding_mode == "reflect" and frequency_padding >= n_feats:
            raise ValueError(f"reflect padding needs frequency_padding < n_feats={n_feats}, got {frequency_padding}")
        self.frequency_padding, self.frequency_padding_mode = int(frequency_padding), frequency_padding_mode
        self.dim, self.n_feats, self.speaker_dim, self.pe_scale = dim, n_feats, speaker_dim, pe_scale
        if speaker_dim:
            self.speaker_mlp = nn.Sequential(
                nn.Linear(speaker_dim, speaker_dim * 4), nn.Mish(), nn.Linear(speaker_dim * 4, n_feats)
            )
        self.time_mlp = nn.Sequential(nn.Linear(dim, dim * 4), nn.Mish(), nn.Linear(dim * 4, dim))
        widths = [2 + (1 if speaker_dim else 0), *(dim * m for m in dim_mults)]
        stages = list(itertools.pairwise(widths))

        def attention(width: int) -> LinearAttention:
            return LinearAttention(width, attention_heads, attention_head_dim, attention_padding)

        self.downs = nn.ModuleList()
        for index, (width_in, width_out) in enumerate(stages):
            last = index == len(stages) - 1
            self.downs.append(
                nn.ModuleList(
                    [
                        ResnetBlock(width_in, width_out, dim, groups),
                        ResnetBlock(width_out, width_out, dim, groups),
                        attention(width_out),
                        nn.Conv2d(width_out, width_out, 3, 2, 1) if not last else nn.Identity(),
                    ]
                )
            )
        mid = widths[-1]
        self.mid_block1 = ResnetBlock(mid, mid, dim, groups)
        self.mid_attention = attention(mid)
        self.mid_block2 = ResnetBlock(mid, mid, dim, groups)
        self.ups = nn.ModuleList()
        for width_in, width_out in reversed(stages[1:]):
            self.ups.append(
                nn.ModuleList(
                    [
                        ResnetBlock(width_out * 2, width_in, dim, groups),
                        ResnetBlock(width_in, width_in, dim, groups),
                        attention(width_in),
                        nn.ConvTranspose2d(width_in, width_in, 4, 2, 1),
                    ]
                )
            )
        self.final_block = ConvBlock(dim, dim, groups)
        self.final_conv = nn.Conv2d(dim, 1, 1)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        *,
        mu: torch.Tensor,
        mask: torch.Tensor,
        speaker: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw network output ``[B, n_feats, T]`` for ``x_t`` ``[B, n_feats, T]`` at times ``t`` ``[B]``.

        ``mask`` is ``[B, 1, T]``; ``T`` must be a multiple of ``2 ** num_downsamplings``.
        """
        factor = 2**self.num_downsamplings
        if x.shape[-1] % factor:
            raise ValueError(
                f"the decoder needs a frame count divisible by {factor}, got {x.shape[-1]}; pad with "
                "fix_len_compatibility()"
            )
        time = self.time_mlp(sinusoidal_time_embedding(t, self.dim, self.pe_scale).to(x.dtype))
        channels = [mu, x]
        if self.speaker_dim:
            if speaker is None:
                raise ValueError("this decoder is multi-speaker: pass speaker embeddings")
            channels.append(self.speaker_mlp(speaker)[:, :, None].expand(-1, -1, x.shape[-1]))
        h = torch.stack(channels, dim=1)  # [B, 2 or 3, n_feats, T]
        pad = self.frequency_padding
        if pad:  # edge bands computed like inner ones (module docstring); cropped again below
            h = nn.functional.pad(h, (0, 0, pad, pad), mode=self.frequency_padding_mode)
        mask2d = mask.unsqueeze(1)  # [B, 1, 1, T]
        masks, skips = [mask2d], []
        for block1, block2, attn, downsample in self.downs:
            m = masks[-1]
            h = self._level(_resnet_resnet_attention, block1, block2, attn, h, m, time)
            skips.append(h)
            h = downsample(h * m)
            masks.append(m[:, :, :, ::2])
        masks.pop()
        m = masks[-1]
        h = self._level(_resnet_attention_resnet, self.mid_block1, self.mid_attention, self.mid_block2, h, m, time)
        for block1, block2, attn, upsample in self.ups:
            m = masks.pop()
            h = torch.cat([h, skips.pop()], dim=1)
            h = self._level(_resnet_resnet_attention, block1, block2, attn, h, m, time)
            h = upsample(h * m)
        h = self.final_block(h, mask2d)
        out = (self.final_conv(h * mask2d) * mask2d).squeeze(1)
        return out[:, pad : out.shape[1] - pad] if pad else out

    def _level(self, function, *args: torch.Tensor | nn.Module) -> torch.Tensor:
        """``function(*args)``, under activation checkpointing when it is on and a gradient is being taken."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            # Non-reentrant checkpointing (PyTorch's recommended form): correct when some inputs need no gradient
            # (mask, and time under a frozen embedding) and under autocast. The U-Net has no dropout, so the
            # recomputed activations equal the discarded ones and the gradients are unchanged.
            return checkpoint(function, *args, use_reentrant=False)
        return function(*args)


def _resnet_resnet_attention(block1, block2, attention, h, mask, time):
    """A down / up level of the U-Net: two ResNet blocks, then linear attention."""
    return attention(block2(block1(h, mask, time), mask, time), mask)


def _resnet_attention_resnet(block1, attention, block2, h, mask, time):
    """The middle of the U-Net: ResNet block, linear attention, ResNet block."""
    return block2(attention(block1(h, mask, time), mask), mask, time)
