"""Model FLOPs of a training step and model FLOP utilisation (MFU) against a GPU's dense bf16 peak.

MFU = (model FLOPs of one step / measured seconds per step) / peak FLOP/s. The model FLOPs are counted once by
``torch.utils.flop_counter.FlopCounterMode``, which counts matrix multiplications, convolutions and attention (the
usual convention for MFU: elementwise work, norms and the optimizer are not counted). The counter has formulas for
the fused CUDA attention kernels (flash, memory-efficient, cuDNN) but not for the fused CPU kernel, so on a CPU
attention is counted with PyTorch's math SDPA backend switched on: the same two batched matrix products, so CPU and
GPU counts agree (the math backend would store every attention matrix, too much memory for big models on a GPU).

The peaks are the vendors' dense (not 2:4-sparse) bf16 tensor-core figures from the NVIDIA datasheets; the
datasheets print the sparse figure, twice these, with an asterisk.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable

__all__ = ["DENSE_BF16_PEAK_TFLOPS", "count_flops", "dense_bf16_peak_tflops", "utilisation"]

#: (pattern searched in ``torch.cuda.get_device_name()``, dense bf16 TFLOP/s, product). First match wins, so the
#: PCIe / NVL variants come before the SXM parts whose names they contain.
DENSE_BF16_PEAK_TFLOPS: tuple[tuple[str, float, str], ...] = (
    (r"H100.*PCIe", 756.0, "H100 PCIe"),
    (r"H100.*NVL", 835.0, "H100 NVL"),
    (r"H200.*NVL", 835.0, "H200 NVL"),
    (r"H100", 989.0, "H100 SXM"),
    (r"H200", 989.0, "H200 SXM"),  # also GH200: the same Hopper die and clocks
    (r"A100", 312.0, "A100"),
    (r"L40S", 362.0, "L40S"),
    (r"\bL4\b", 121.0, "L4"),
    (r"\bA10\b", 125.0, "A10"),
)


def dense_bf16_peak_tflops(device_name: str) -> tuple[float, str] | None:
    """``(TFLOP/s, product)`` of the dense bf16 peak for a CUDA device name, or None when it is not in the table.

    Examples
    --------
    >>> dense_bf16_peak_tflops("NVIDIA H100 80GB HBM3")
    (989.0, 'H100 SXM')
    >>> dense_bf16_peak_tflops("NVIDIA H100 PCIe")
    (756.0, 'H100 PCIe')
    >>> dense_bf16_peak_tflops("NVIDIA L40"), dense_bf16_peak_tflops("NVIDIA L4")
    (None, (121.0, 'L4'))
    """
    for pattern, tflops, product in DENSE_BF16_PEAK_TFLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return tflops, product
    return None


def count_flops(fn: Callable[[], object], *, math_attention: bool = True) -> int:
    """Model FLOPs of everything ``fn()`` runs (forward and, if it calls ``backward``, backward).

    ``math_attention`` runs attention with the math SDPA backend while counting; needed on a CPU (module
    docstring), best left off on a GPU.

    Examples
    --------
    >>> import torch
    >>> layer = torch.nn.Linear(8, 4, bias=False)
    >>> count_flops(lambda: layer(torch.randn(2, 8)))  # one [2, 8] x [8, 4] product: 2 * 2 * 8 * 4
    128
    >>> count_flops(lambda: layer(torch.randn(2, 8)).sum().backward())  # + the weight gradient (input needs none)
    256
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    backend = sdpa_kernel(SDPBackend.MATH) if math_attention else contextlib.nullcontext()
    with backend, FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def utilisation(flops_per_step: float, seconds_per_step: float, peak_tflops: float | None) -> dict:
    """Achieved FLOP/s and, given a peak, the MFU (a fraction; None without a peak).

    Examples
    --------
    >>> utilisation(4e12, 0.01, 989.0)["mfu"]
    0.4044489383215369
    >>> utilisation(2e9, 0.5, None)
    {'flops_per_step': 2000000000.0, 'achieved_flops': 4000000000.0, 'peak_tflops': None, 'mfu': None}
    """
    if seconds_per_step <= 0:
        raise ValueError(f"seconds_per_step must be > 0, got {seconds_per_step}")
    achieved = float(flops_per_step) / seconds_per_step
    mfu = None if not peak_tflops else achieved / (float(peak_tflops) * 1e12)
    return {"flops_per_step": float(flops_per_step), "achieved_flops": achieved, "peak_tflops": peak_tflops,
            "mfu": mfu}
