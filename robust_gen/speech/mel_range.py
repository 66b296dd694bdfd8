"""The per-band range of the training mels, and a check of synthesized mels against it.

A diverged sample shows as log-mel values far above anything in the training data (a value of 6 in a top
band whose training maximum is -2.4: a click of e^8, about 70 dB over the speech). The vocoder turns it into
a burst, and any level normalisation driven by the peak then buries the speech. :class:`MelRange` holds each
band's lowest and highest training value; the speech recipe computes it from the training set and stores it
in the run's config (``mel_range``), so a checkpoint carries it. :meth:`MelRange.check` counts the values
outside the range (plus a margin) and clamps them before vocoding.

Examples
--------
>>> mels = [torch.tensor([[0.0, 1.0], [-2.0, -1.0]]), torch.tensor([[0.5], [-3.0]])]
>>> band_range = MelRange.from_mels(mels)
>>> band_range.low.tolist(), band_range.high.tolist()
([0.0, -3.0], [1.0, -1.0])
>>> clamped, outside = band_range.check(torch.tensor([[9.0, 0.5], [-1.5, -2.0]]), margin=1.0)
>>> clamped.tolist(), outside
([[2.0, 0.5], [-1.5, -2.0]], 1)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

__all__ = ["DEFAULT_MARGIN", "MelRange", "training_mel_range"]

#: Natural-log units above a band's training maximum (or below its minimum) that still count as in range:
#: 1.0 is a factor e (8.7 dB) in magnitude, room for a voice slightly louder than any training frame.
DEFAULT_MARGIN = 1.0


@dataclass(frozen=True)
class MelRange:
    """Per-band lowest and highest log-mel value ``[n_mels]`` of a training set."""

    low: torch.Tensor
    high: torch.Tensor

    def __post_init__(self) -> None:
        if self.low.shape != self.high.shape or self.low.dim() != 1:
            raise ValueError(f"low and high must be [n_mels], got {list(self.low.shape)} and {list(self.high.shape)}")

    @classmethod
    def from_mels(cls, mels: Iterable[torch.Tensor]) -> MelRange:
        """The range of log-mels ``[n_mels, frames]``."""
        low = high = None
        for mel in mels:
            lo, hi = mel.amin(dim=-1).float(), mel.amax(dim=-1).float()
            low = lo if low is None else torch.minimum(low, lo)
            high = hi if high is None else torch.maximum(high, hi)
        if low is None:
            raise ValueError("no mels to take a range from")
        return cls(low, high)

    def to_config(self) -> dict:
        """Plain lists for a YAML config (``mel_range: {low: [...], high: [...]}``)."""
        return {"low": [round(float(v), 4) for v in self.low], "high": [round(float(v), 4) for v in self.high]}

    @classmethod
    def from_config(cls, entry: Mapping | None) -> MelRange | None:
        """Read :meth:`to_config`'s output (None when absent: a run written before ranges were recorded).

        Examples
        --------
        >>> MelRange.from_config({"low": [-11.5, -11.5], "high": [1.1, -2.4]}).high.tolist()
        [1.100000023841858, -2.4000000953674316]
        >>> MelRange.from_config(None) is None
        True
        """
        if entry is None:
            return None
        if "low" not in entry or "high" not in entry:
            raise ValueError(f"mel_range needs 'low' and 'high' lists, got keys {sorted(entry)}")
        return cls(torch.tensor(list(entry["low"]), dtype=torch.float32), torch.tensor(list(entry["high"]), dtype=torch.float32))

    def check(self, mel: torch.Tensor, margin: float = DEFAULT_MARGIN) -> tuple[torch.Tensor, int]:
        """Clamp a log-mel ``[n_mels, frames]`` to the range widened by ``margin``; return it and how many
        values were outside."""
        if mel.shape[0] != self.low.numel():
            raise ValueError(f"mel has {mel.shape[0]} bands, the training range {self.low.numel()}")
        low = (self.low - margin).to(mel)[:, None]
        high = (self.high + margin).to(mel)[:, None]
        outside = int(((mel < low) | (mel > high)).sum())
        return torch.maximum(torch.minimum(mel, high), low), outside

    def excursions(self, mels: Sequence[torch.Tensor], margin: float = DEFAULT_MARGIN) -> dict:
        """How far unclamped log-mels ``[n_mels, frames]`` rise above their bands' maxima (diverged bands are
        clicks; :meth:`check` clamps them): files and values more than ``margin`` above, the largest excess and
        its band (``tools/mel_excursions.py``).

        Examples
        --------
        >>> band_range = MelRange(torch.tensor([-5.0, -5.0]), torch.tensor([0.0, -2.0]))
        >>> row = band_range.excursions([torch.tensor([[0.5, 0.2], [-1.5, 1.0]]), torch.zeros(2, 3) - 3])
        >>> row["files_above"], row["values_above"], row["max_excess"], row["worst_band"]
        (1, 1, 3.0, 1)
        """
        if not mels:
            raise ValueError("no mels to measure")
        excess = [mel.float() - self.high.to(mel.device)[:, None] for mel in mels]
        largest = torch.stack([e.amax(dim=-1) for e in excess]).amax(dim=0)  # per band, over files and frames
        return {
            "files": len(mels),
            "files_above": sum(bool((e > margin).any()) for e in excess),
            "values_above": sum(int((e > margin).sum()) for e in excess),
            "max_excess": round(float(largest.max()), 3),
            "worst_band": int(largest.argmax()),
        }



def training_mel_range(dataset, max_items: int = 512) -> MelRange:
    """The range of the mels of a speech dataset (items with a ``"mel"``), from at most ``max_items`` items
    spread evenly over it (every item of a small corpus; a sample of a large one, widened by the margin of
    :meth:`MelRange.check`).

    Examples
    --------
    >>> items = [{"mel": torch.full((2, 3), float(i))} for i in range(5)]
    >>> training_mel_range(items, max_items=2).high.tolist()
    [4.0, 4.0]
    """
    count = len(dataset)
    if count == 0:
        raise ValueError("the dataset is empty: no mel range")
    indices = sorted({round(i * (count - 1) / max(max_items - 1, 1)) for i in range(min(max_items, count))})
    return MelRange.from_mels(dataset[i]["mel"] for i in indices)
