"""Fixed noise levels and fixed noise: the probe under which an audit compares one sample's denoising losses.

A diffusion model's training loss of one sample is a draw over the noise level and the noise; comparing two
conditions of the same sample (its label against another label) with independent draws would drown the
difference in that noise. The audit therefore evaluates every condition at the same few noise levels with the
same noise (the "diffusion classifier" of Li et al. 2023 and Clark & Jaini 2023: the class whose expected
denoising error is lowest), the noise drawn from ``(seed, sample index, level)`` so that a sample's probe does not
depend on the batch it was scored in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from robust_gen.diffusion.schedules import NoiseSchedule

__all__ = ["DEFAULT_LEVELS", "fixed_times", "probe_noise"]

#: Noise levels as fractions of the schedule's time range: the middle of the range, where the condition decides
#: most of the prediction (at the data end every condition denoises alike; at the noise end none is visible).
DEFAULT_LEVELS = (0.1, 0.25, 0.4, 0.55, 0.7)


def fixed_times(schedule: NoiseSchedule, levels: Sequence[float], batch_size: int) -> list[torch.Tensor]:
    """One ``[batch_size]`` time tensor per level (a fraction in [0, 1] of the schedule's time range).

    Examples
    --------
    >>> from robust_gen.diffusion.schedules import DiscreteVP
    >>> [t.tolist() for t in fixed_times(DiscreteVP("linear", 1000), [0.0, 0.5], 2)]
    [[0, 0], [500, 500]]
    """
    start, end = schedule.time_range()
    times = []
    for level in levels:
        if not 0.0 <= float(level) <= 1.0:
            raise ValueError(f"audit noise levels are fractions of the time range in [0, 1], got {level}")
        t = start + (end - start) * float(level)
        t = t.round().to(start.dtype) if not start.is_floating_point() else t
        times.append(torch.full((batch_size,), t.item(), dtype=start.dtype))
    return times


def probe_noise(shape: Sequence[int], ids: Sequence[int], seed: int, level: int) -> torch.Tensor:
    """Gaussian noise ``[len(ids), *shape]``, row ``i`` a function of ``(seed, ids[i], level)`` only.

    Examples
    --------
    >>> a = probe_noise((2, 3), [5, 9], seed=0, level=1)
    >>> b = probe_noise((2, 3), [9], seed=0, level=1)
    >>> a.shape, torch.equal(a[1], b[0])
    (torch.Size([2, 2, 3]), True)
    """
    rows = []
    for index in ids:
        state = np.random.SeedSequence([int(seed), int(index), int(level)]).generate_state(1, dtype=np.uint64)[0]
        generator = torch.Generator().manual_seed(int(state) & 0x7FFFFFFFFFFFFFFF)
        rows.append(torch.randn(tuple(shape), generator=generator))
    return torch.stack(rows) if rows else torch.zeros(0, *shape)
