"""Disentangled control-metadata conditioning (Berrada et al. 2024, arXiv 2411.03177, papers.md §3).

Control metadata (crop coordinates, original size, flip flag, aspect ratio) is embedded on its own, apart from
the semantic condition, and its influence is gated by the noise level: no effect at high noise, full effect
near the data. Each named scalar gets sinusoidal Fourier features of its own (as SDXL embeds its size and crop
values), the features are concatenated and an MLP maps them to ``dim``; the result is multiplied by the gate.

The paper's exact gate is not public, so its shape is a parameter (:class:`NoiseLevelGate`). The input is the
per-sample noise fraction ``u`` in [0, 1] (0 = clean data, 1 = pure noise; e.g. ``t / T`` for a discrete
schedule or ``t`` for a continuous one), and with ``s = clip((u - start) / (end - start), 0, 1)``:

- ``"cosine"`` (default): ``gate = (0.5 * (1 + cos(pi * s))) ** power``, a raised cosine that is flat at both
  ends;
- ``"linear"``: ``gate = (1 - s) ** power``;
- ``"none"``: ``gate = 1`` (no gating).

So the gate is 1 for ``u <= start``, 0 for ``u >= end`` and non-increasing in between.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

GATE_KINDS = ("cosine", "linear", "none")


class NoiseLevelGate(nn.Module):
    """Weight of the control embedding as a function of the noise fraction ``u`` (see the module docstring).

    Parameters
    ----------
    kind : {"cosine", "linear", "none"}
    start, end : float
        The gate falls from 1 at ``u = start`` to 0 at ``u = end``; ``0 <= start < end <= 1``.
    power : float
        Exponent (> 0) applied to the shape; larger values switch the control off earlier.

    Examples
    --------
    >>> gate = NoiseLevelGate()
    >>> [round(g, 3) for g in gate(torch.tensor([0.0, 0.25, 0.5, 1.0])).tolist()]
    [1.0, 0.854, 0.5, 0.0]
    """

    def __init__(
        self, kind: str = "cosine", start: float = 0.0, end: float = 1.0, power: float = 1.0
    ) -> None:
        super().__init__()
        if kind not in GATE_KINDS:
            raise ValueError(f"gate kind must be one of {GATE_KINDS}, got {kind!r}")
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"the gate needs 0 <= start < end <= 1, got start={start!r}, end={end!r}")
        if not power > 0.0:
            raise ValueError(f"the gate's power must be > 0, got {power!r}")
        self.kind, self.start, self.end, self.power = kind, float(start), float(end), float(power)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """Gate ``[B]`` in [0, 1] for noise fractions ``u`` (``[B]``, 0 = clean data, 1 = pure noise)."""
        u = torch.as_tensor(u, dtype=torch.float32)
        if u.ndim != 1:
            raise ValueError(
                f"u must be a 1-D tensor of per-sample noise fractions, got shape {tuple(u.shape)}"
            )
        if u.numel() and (u.min() < 0.0 or u.max() > 1.0):
            raise ValueError(
                f"u must lie in [0, 1] (0 = clean data, 1 = pure noise), got range [{u.min():.4g}, {u.max():.4g}]"
            )
        if self.kind == "none":
            return torch.ones_like(u)
        s = ((u - self.start) / (self.end - self.start)).clamp(0.0, 1.0)
        shape = 0.5 * (1.0 + torch.cos(math.pi * s)) if self.kind == "cosine" else 1.0 - s
        return shape.clamp(0.0, 1.0) ** self.power

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, start={self.start}, end={self.end}, power={self.power}"


class ControlEmbedding(nn.Module):
    """Embeds named control values into a ``dim`` vector, gated by the noise level.

    Parameters
    ----------
    names : sequence of str
        The control values, in order (e.g. ``["crop_top", "crop_left", "orig_height", "orig_width", "flip"]``).
    dim : int
        Output dimension.
    num_frequencies : int
        Sinusoidal frequencies per value; each value gives ``2 * num_frequencies`` features.
    max_period : float
        Longest period of the features, so raw pixel values (hundreds to thousands) stay distinguishable.
    hidden_dim : int, optional
        Width of the MLP's hidden layer (default ``dim``).
    gate : NoiseLevelGate, optional
        Noise-level gate (default: cosine from u = 0 to u = 1). ``NoiseLevelGate("none")`` disables gating.

    Examples
    --------
    >>> embed = ControlEmbedding(["crop_top", "flip"], dim=8)
    >>> controls = {"crop_top": torch.tensor([0.0, 32.0]), "flip": torch.tensor([0.0, 1.0])}
    >>> out = embed(controls, u=torch.tensor([0.0, 1.0]))
    >>> out.shape, bool(out[1].eq(0).all())     # pure noise: gate 0
    (torch.Size([2, 8]), True)
    >>> bool(embed(controls, u=torch.zeros(2), zero=True).eq(0).all())
    True
    """

    def __init__(
        self,
        names: Sequence[str],
        dim: int,
        *,
        num_frequencies: int = 16,
        max_period: float = 10000.0,
        hidden_dim: int | None = None,
        gate: NoiseLevelGate | None = None,
    ) -> None:
        super().__init__()
        self.names = [str(name) for name in names]
        if not self.names or len(set(self.names)) != len(self.names):
            raise ValueError(f"names must be a non-empty list of distinct control names, got {list(names)!r}")
        if dim < 1 or num_frequencies < 1 or max_period <= 1.0:
            raise ValueError(
                f"need dim >= 1, num_frequencies >= 1 and max_period > 1, got {dim}, {num_frequencies}, "
                f"{max_period}"
            )
        self.dim = int(dim)
        exponents = torch.arange(num_frequencies, dtype=torch.float32) / num_frequencies
        self.register_buffer("frequencies", torch.exp(-math.log(max_period) * exponents), persistent=False)
        hidden = int(hidden_dim or dim)
        self.mlp = nn.Sequential(
            nn.Linear(len(self.names) * 2 * num_frequencies, hidden), nn.SiLU(), nn.Linear(hidden, self.dim)
        )
        self.gate = gate if gate is not None else NoiseLevelGate()

    def _values(self, controls: Mapping[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Controls as a float tensor ``[B, len(names)]`` on the module's device."""
        device = self.frequencies.device
        if isinstance(controls, torch.Tensor):
            if controls.ndim != 2 or controls.shape[1] != len(self.names):
                raise ValueError(
                    f"control tensor must have shape [B, {len(self.names)}] (columns {self.names}), "
                    f"got {tuple(controls.shape)}"
                )
            return controls.to(device=device, dtype=torch.float32)
        missing = [name for name in self.names if name not in controls]
        unknown = [name for name in controls if name not in self.names]
        if missing or unknown:
            raise ValueError(
                f"controls must have exactly the keys {self.names}: missing {missing}, unknown {unknown}"
            )
        columns = [torch.as_tensor(controls[name], dtype=torch.float32, device=device) for name in self.names]
        if any(column.ndim != 1 or column.shape != columns[0].shape for column in columns):
            raise ValueError("each control value must be a 1-D tensor [B], all of the same length")
        return torch.stack(columns, dim=1)

    def forward(
        self,
        controls: Mapping[str, torch.Tensor] | torch.Tensor,
        u: torch.Tensor,
        *,
        keep: torch.Tensor | None = None,
        zero: bool = False,
    ) -> torch.Tensor:
        """Gated control embedding ``[B, dim]``.

        Parameters
        ----------
        controls : dict of name -> Tensor [B], or Tensor [B, len(names)]
        u : Tensor [B]
            Per-sample noise fraction (0 = clean data, 1 = pure noise).
        keep : bool Tensor [B], optional
            Condition-dropout mask; rows with False give the zero vector.
        zero : bool
            Zero the control vector for every sample (the "zero control" option).
        """
        values = self._values(controls)
        batch = values.shape[0]
        u = torch.as_tensor(u, device=values.device)
        if u.shape != (batch,):
            raise ValueError(
                f"u must have shape [{batch}] (one noise fraction per sample), got {tuple(u.shape)}"
            )
        if zero:
            return values.new_zeros(batch, self.dim)
        angles = values[:, :, None] * self.frequencies
        features = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(1)
        embedding = self.mlp(features) * self.gate(u).to(values)[:, None]
        if keep is not None:
            if keep.dtype != torch.bool or keep.shape != (batch,):
                raise ValueError(f"keep must be a bool tensor of shape [{batch}], got {tuple(keep.shape)}")
            embedding = torch.where(keep.to(values.device)[:, None], embedding, torch.zeros_like(embedding))
        return embedding
