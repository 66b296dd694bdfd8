"""Grad-TTS's text encoder and duration predictor (Popov et al. 2021, §3 and Appendix; the Glow-TTS encoder).

Shapes follow the original: sequences are ``[B, C, T]`` with a mask ``[B, 1, T]`` (1 on real tokens).

* :class:`ConvPrenet`: 3 convolutions (kernel 5) with channel LayerNorm, ReLU and dropout, then a zero-initialised
  1x1 projection added to the input (so the prenet starts as the identity).
* :class:`RelativeTransformer`: post-norm transformer layers whose self-attention adds learned relative-position
  embeddings to keys and values within a window (Shaw et al. 2018), shared by the heads; positions farther apart
  than the window get no relative term. The feed-forward block is two convolutions (kernel 3).
* :class:`DurationPredictor`: 2 convolutions + projection to one log-duration per token; Grad-TTS feeds it the
  *detached* encoder output, so the duration loss does not shape the encoder.
* :class:`TextEncoder`: embedding (scaled by sqrt(C)) -> prenet -> [speaker embedding concatenated to every token,
  in multi-speaker models that condition the encoder] -> transformer -> 1x1 projection to ``mu`` (80-d).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "ChannelLayerNorm",
    "ConvFeedForward",
    "ConvPrenet",
    "DurationPredictor",
    "RelativeSelfAttention",
    "RelativeTransformer",
    "TextEncoder",
    "sequence_mask",
]


def sequence_mask(lengths: torch.Tensor, max_length: int | None = None) -> torch.Tensor:
    """Boolean prefix mask ``[B, max_length]``: True where position < length.

    Examples
    --------
    >>> sequence_mask(torch.tensor([1, 3]), 4).int().tolist()
    [[1, 0, 0, 0], [1, 1, 1, 0]]
    """
    max_length = int(lengths.max()) if max_length is None else int(max_length)
    return torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of ``[B, C, T]`` (Glow-TTS uses eps 1e-4).

    Examples
    --------
    >>> y = ChannelLayerNorm(4)(torch.randn(2, 4, 7))
    >>> torch.allclose(y.mean(1), torch.zeros(2, 7), atol=1e-5)
    True
    """

    def __init__(self, channels: int, eps: float = 1e-4) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.layer_norm(x.transpose(1, -1), (x.shape[1],), self.gamma, self.beta, self.eps)
        return x.transpose(1, -1)


class ConvPrenet(nn.Module):
    """Residual stack of conv -> channel LayerNorm -> ReLU -> dropout, closed by a zero-initialised 1x1 conv.

    Examples
    --------
    >>> x = torch.randn(2, 8, 5)
    >>> torch.equal(ConvPrenet(8)(x, torch.ones(2, 1, 5)), x)  # the zero projection: identity at start
    True
    """

    def __init__(self, channels: int, n_layers: int = 3, kernel_size: int = 5, dropout: float = 0.5) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"the prenet needs at least one layer, got n_layers={n_layers}")
        self.convs = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2) for _ in range(n_layers)
        )
        self.norms = nn.ModuleList(ChannelLayerNorm(channels) for _ in range(n_layers))
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = x
        for conv, norm in zip(self.convs, self.norms):
            h = self.dropout(torch.relu(norm(conv(h * mask))))
        return (x + self.proj(h)) * mask


class RelativeSelfAttention(nn.Module):
    """Multi-head self-attention with relative position embeddings on keys and values (window ``w``).

    ``logits[i, j] = q_i . (k_j + r^K_{j-i}) / sqrt(d)`` and ``out_i = sum_j p_ij (v_j + r^V_{j-i})``, where
    ``r_{j-i}`` is a learned vector for ``|j - i| <= w`` and zero beyond (as in the Glow-TTS / Grad-TTS code,
    which pads the embedding table with zeros for distant positions). The tables are shared by all heads.

    Examples
    --------
    >>> attn = RelativeSelfAttention(8, n_heads=2, window_size=4)
    >>> attn(torch.randn(2, 8, 6), torch.ones(2, 1, 6)).shape
    torch.Size([2, 8, 6])
    """

    def __init__(self, channels: int, n_heads: int, window_size: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        if channels % n_heads:
            raise ValueError(f"channels={channels} must be divisible by n_heads={n_heads}")
        if window_size < 0:
            raise ValueError(f"window_size must be >= 0, got {window_size}")
        self.n_heads, self.head_dim, self.window = n_heads, channels // n_heads, window_size
        self.to_q, self.to_k, self.to_v = (nn.Conv1d(channels, channels, 1) for _ in range(3))
        self.to_out = nn.Conv1d(channels, channels, 1)
        for conv in (self.to_q, self.to_k, self.to_v):
            nn.init.xavier_uniform_(conv.weight)
        scale = self.head_dim**-0.5
        self.rel_k = nn.Parameter(torch.randn(2 * window_size + 1, self.head_dim) * scale)
        self.rel_v = nn.Parameter(torch.randn(2 * window_size + 1, self.head_dim) * scale)
        self.dropout = nn.Dropout(dropout)

    def _relative_index(self, length: int, device) -> torch.Tensor:
        """``[T, T]`` row in the zero-padded tables: ``j - i + w`` inside the window, ``2w + 1`` (zeros) outside."""
        pos = torch.arange(length, device=device)
        offset = pos[None, :] - pos[:, None]
        return torch.where(offset.abs() <= self.window, offset + self.window, 2 * self.window + 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, channels, length = x.shape
        heads, dim = self.n_heads, self.head_dim

        def split(t: torch.Tensor) -> torch.Tensor:  # [B, C, T] -> [B, H, T, D]
            return t.view(batch, heads, dim, length).transpose(2, 3)

        q = split(self.to_q(x)) / math.sqrt(dim)
        k, v = split(self.to_k(x)), split(self.to_v(x))
        index = self._relative_index(length, x.device)
        zero = torch.zeros(1, dim, device=x.device, dtype=x.dtype)
        rel_k, rel_v = torch.cat([self.rel_k, zero]), torch.cat([self.rel_v, zero])
        logits = q @ k.transpose(-1, -2)
        # q . r_{j-i}: score q against every table row once, then pick each (i, j)'s row.
        rel_logits = (q @ rel_k.T).gather(-1, index.expand(batch, heads, length, length))
        logits = logits + rel_logits
        pair_mask = mask[:, :, :, None] * mask[:, :, None, :]  # [B, 1, T, T]
        logits = logits.masked_fill(pair_mask == 0, -1e4)
        probs = self.dropout(torch.softmax(logits, dim=-1))
        out = probs @ v
        # sum_j p_ij r_{j-i}: add each p_ij into its table row, then mix the rows.
        weights = torch.zeros(batch, heads, length, rel_v.shape[0], device=x.device, dtype=probs.dtype)
        weights.scatter_add_(-1, index.expand(batch, heads, length, length), probs)
        out = out + weights @ rel_v
        out = out.transpose(2, 3).reshape(batch, channels, length)
        return self.to_out(out)


class ConvFeedForward(nn.Module):
    """conv(kernel k) -> ReLU -> dropout -> conv(kernel k), masked before each convolution.

    Examples
    --------
    >>> ConvFeedForward(8, 32)(torch.randn(1, 8, 5), torch.ones(1, 1, 5)).shape
    torch.Size([1, 8, 5])
    """

    def __init__(
        self, channels: int, filter_channels: int, kernel_size: int = 3, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv1d(channels, filter_channels, kernel_size, padding=kernel_size // 2)
        self.conv_out = nn.Conv1d(filter_channels, channels, kernel_size, padding=kernel_size // 2)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.dropout(torch.relu(self.conv_in(x * mask)))
        return self.conv_out(h * mask) * mask


class RelativeTransformer(nn.Module):
    """Post-norm transformer: ``x = norm(x + drop(attn(x)))``, ``x = norm(x + drop(ffn(x)))``, per layer.

    Examples
    --------
    >>> net = RelativeTransformer(8, 16, n_heads=2, n_layers=2)
    >>> mask = torch.tensor([[[1.0, 1.0, 1.0, 0.0]]])
    >>> net(torch.randn(1, 8, 4), mask)[..., 3].abs().sum().item()  # padding stays zero
    0.0
    """

    def __init__(
        self,
        channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int = 3,
        dropout: float = 0.1,
        window_size: int = 4,
    ) -> None:
        super().__init__()
        self.attention = nn.ModuleList(
            RelativeSelfAttention(channels, n_heads, window_size, dropout) for _ in range(n_layers)
        )
        self.norm_attention = nn.ModuleList(ChannelLayerNorm(channels) for _ in range(n_layers))
        self.feed_forward = nn.ModuleList(
            ConvFeedForward(channels, filter_channels, kernel_size, dropout) for _ in range(n_layers)
        )
        self.norm_feed_forward = nn.ModuleList(ChannelLayerNorm(channels) for _ in range(n_layers))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for attn, norm1, ffn, norm2 in zip(
            self.attention, self.norm_attention, self.feed_forward, self.norm_feed_forward
        ):
            x = norm1(x + self.dropout(attn(x, mask)))
            x = norm2(x + self.dropout(ffn(x, mask)))
        return x * mask


class DurationPredictor(nn.Module):
    """Two conv -> ReLU -> LayerNorm -> dropout blocks and a 1x1 projection: one log-duration per token.

    Examples
    --------
    >>> DurationPredictor(8, 16)(torch.randn(2, 8, 5), torch.ones(2, 1, 5)).shape
    torch.Size([2, 1, 5])
    """

    def __init__(
        self, channels: int, filter_channels: int = 256, kernel_size: int = 3, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(channels, filter_channels, kernel_size, padding=kernel_size // 2)
        self.norm1 = ChannelLayerNorm(filter_channels)
        self.conv2 = nn.Conv1d(filter_channels, filter_channels, kernel_size, padding=kernel_size // 2)
        self.norm2 = ChannelLayerNorm(filter_channels)
        self.proj = nn.Conv1d(filter_channels, 1, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.norm1(torch.relu(self.conv1(x * mask))))
        h = self.dropout(self.norm2(torch.relu(self.conv2(h * mask))))
        return self.proj(h * mask) * mask


class TextEncoder(nn.Module):
    """Token ids -> (``mu`` per token ``[B, n_feats, T]``, log-durations ``[B, 1, T]``, mask ``[B, 1, T]``).

    Parameters
    ----------
    n_vocab:
        Number of token ids (149 for the Grad-TTS frontend, :data:`robust_gen.speech.text.VOCAB_SIZE`).
    n_feats:
        Mel bands of ``mu``.
    channels, filter_channels, n_heads, n_layers, kernel_size, dropout, window_size:
        Transformer sizes (Grad-TTS: 192, 768, 2, 6, 3, 0.1, 4).
    prenet_layers, prenet_kernel_size, prenet_dropout:
        Conv prenet (Grad-TTS: 3, 5, 0.5).
    duration_channels, duration_kernel_size:
        Duration predictor width and kernel (Grad-TTS: 256, 3).
    speaker_channels:
        Width of a speaker embedding concatenated to every token after the prenet (0: unconditioned). The
        transformer, the ``mu`` projection and the duration predictor then see ``channels + speaker_channels``.

    Examples
    --------
    >>> enc = TextEncoder(149, 80, channels=16, filter_channels=32, n_layers=1, duration_channels=16)
    >>> mu, logw, mask = enc(torch.randint(0, 149, (2, 7)), torch.tensor([7, 4]))
    >>> mu.shape, logw.shape, mask.sum().item()
    (torch.Size([2, 80, 7]), torch.Size([2, 1, 7]), 11.0)
    """

    def __init__(
        self,
        n_vocab: int,
        n_feats: int = 80,
        *,
        channels: int = 192,
        filter_channels: int = 768,
        n_heads: int = 2,
        n_layers: int = 6,
        kernel_size: int = 3,
        dropout: float = 0.1,
        window_size: int = 4,
        prenet_layers: int = 3,
        prenet_kernel_size: int = 5,
        prenet_dropout: float = 0.5,
        duration_channels: int = 256,
        duration_kernel_size: int = 3,
        speaker_channels: int = 0,
    ) -> None:
        super().__init__()
        self.channels, self.speaker_channels = channels, speaker_channels
        self.embedding = nn.Embedding(n_vocab, channels)
        nn.init.normal_(self.embedding.weight, 0.0, channels**-0.5)
        self.prenet = ConvPrenet(channels, prenet_layers, prenet_kernel_size, prenet_dropout)
        width = channels + speaker_channels
        self.transformer = RelativeTransformer(
            width, filter_channels, n_heads, n_layers, kernel_size, dropout, window_size
        )
        self.proj_mu = nn.Conv1d(width, n_feats, 1)
        self.duration = DurationPredictor(width, duration_channels, duration_kernel_size, dropout)

    def forward(
        self, tokens: torch.Tensor, lengths: torch.Tensor, speaker: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, T] ids, got shape {list(tokens.shape)}")
        x = self.embedding(tokens) * math.sqrt(self.channels)  # [B, T, C]
        x = x.transpose(1, 2)
        mask = sequence_mask(lengths, tokens.shape[1]).unsqueeze(1).to(x.dtype)
        x = self.prenet(x, mask)
        if self.speaker_channels:
            if speaker is None or speaker.shape != (tokens.shape[0], self.speaker_channels):
                raise ValueError(
                    f"this encoder is speaker-conditioned: pass speaker embeddings [B, {self.speaker_channels}]"
                )
            x = torch.cat([x, speaker[:, :, None].expand(-1, -1, x.shape[-1])], dim=1)
        x = self.transformer(x, mask)
        mu = self.proj_mu(x) * mask
        # Grad-TTS stops the duration loss from shaping the text encoder: the predictor sees a detached copy.
        log_durations = self.duration(x.detach(), mask)
        return mu, log_durations, mask
