"""Data order that is a pure function of (seed, epoch): the same on every process and after every resume."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

__all__ = ["EpochSampler"]


class EpochSampler(Sampler[int]):
    """Yield a permutation of ``range(num_samples)`` drawn from ``(seed, epoch)``, or the identity order.

    Examples
    --------
    >>> s = EpochSampler(5, seed=0)
    >>> s.set_epoch(1); a = list(s)
    >>> s.set_epoch(1); a == list(s)
    True
    >>> sorted(a)
    [0, 1, 2, 3, 4]
    """

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True) -> None:
        if num_samples < 1:
            raise ValueError(f"the dataset is empty (num_samples={num_samples}); check the data configuration")
        self.num_samples, self.seed, self.shuffle = int(num_samples), int(seed), bool(shuffle)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.num_samples))
        rng = np.random.default_rng([self.seed, self.epoch])
        # one int at a time from the int64 permutation: .tolist() made a million Python ints per epoch (~36 MB
        # at ImageNet size) in every process
        return (int(i) for i in rng.permutation(self.num_samples))

    def __len__(self) -> int:
        return self.num_samples
