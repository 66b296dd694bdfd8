"""Per-step, shard-aware randomness: N processes draw exactly what one process would.

Training draws a time, a noise tensor and (in recipes) condition noise for every sample. If each data-parallel
process drew these from its own generator, a run on 2 GPUs would follow a different random path from the same run
on 1 GPU with the same global batch. :class:`BatchGenerator` instead draws for the *global* batch from a generator
seeded by ``(seed, step)`` and returns the rows of this process's shard. Re-seeding per step also makes resuming
exact without saving generator state.

The cost is drawing ``num_shards`` times more random numbers than needed, negligible next to a network's forward
pass.
"""

from __future__ import annotations

import torch

__all__ = ["BatchGenerator"]

_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads (seed, step) pairs over the 64-bit seed space


class BatchGenerator:
    """Randomness for one training step, drawn for the global batch and sliced to this shard.

    Parameters
    ----------
    seed:
        The run's seed.
    step:
        The optimizer step (or any per-call key); the generator is seeded from ``(seed, step)``.
    shard_index, num_shards:
        This process's position among the data-parallel processes (the batch is split in equal contiguous
        shards, as ``accelerate``'s ``split_batches=True`` does).
    device:
        Where to draw.

    Examples
    --------
    >>> whole = BatchGenerator(0, step=5).randn((4, 2))
    >>> half = BatchGenerator(0, step=5, shard_index=1, num_shards=2).randn((2, 2))
    >>> torch.equal(whole[2:], half)
    True
    """

    def __init__(
        self,
        seed: int,
        step: int = 0,
        *,
        shard_index: int = 0,
        num_shards: int = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        if not 0 <= shard_index < num_shards:
            raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index}")
        self.seed, self.step = int(seed), int(step)
        self.shard_index, self.num_shards = shard_index, num_shards
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed((self.seed * _MIX + self.step) % (2**63 - 1))

    def _global_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = tuple(int(s) for s in shape)
        if not shape:
            raise ValueError("shape must have a batch dimension")
        return (shape[0] * self.num_shards, *shape[1:])

    def _shard(self, values: torch.Tensor, local_batch: int) -> torch.Tensor:
        start = self.shard_index * local_batch
        return values[start : start + local_batch]

    def randn(self, shape, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal values, ``shape[0]`` = this shard's batch size."""
        full = torch.randn(self._global_shape(shape), generator=self.generator, device=self.device, dtype=dtype)
        return self._shard(full, shape[0])

    def rand(self, shape, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Uniform values in [0, 1)."""
        full = torch.rand(self._global_shape(shape), generator=self.generator, device=self.device, dtype=dtype)
        return self._shard(full, shape[0])

    def sample_t(self, schedule, batch_size: int) -> torch.Tensor:
        """One training time per sample of this shard, from ``schedule.sample_t``."""
        full = schedule.sample_t(batch_size * self.num_shards, generator=self.generator, device=self.device)
        return self._shard(full, batch_size)
