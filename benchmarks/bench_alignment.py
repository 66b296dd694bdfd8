"""Time monotonic alignment search: plain-Python reference vs numba vs batched torch (CPU, and CUDA if present).

    python benchmarks/bench_alignment.py [--batch 16] [--repeats 5] [--precision float64] [--seed 0]

Each sample draws T_text in [100, 200] and T_mel in [400, 800] (Grad-TTS-sized clips: about 2 to 9 s of 22.05 kHz
audio at hop 256). Scores are the Grad-TTS log prior log N(y | mu_x, I) over 80 mel channels. The numba kernel is
called once before timing, so its compile time (or cache load) is excluded from the table and printed apart.
Every backend's path is checked equal to the reference's before its time is reported.
"""

from __future__ import annotations

from robust_gen.launch import start_process

start_process()  # before torch loads: idle OpenMP threads sleep; a mismatched torch trio exits with the fix

import argparse
import statistics
import time

import numpy as np
import torch

from robust_gen.speech.gradtts.alignment import monotonic_alignment_search

try:
    import numba
except ImportError:  # GPU images may lack numba; the other backends still run
    numba = None


def make_batch(batch: int, seed: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    text_lengths = torch.randint(100, 201, (batch,), generator=generator)
    mel_lengths = torch.randint(400, 801, (batch,), generator=generator)
    t_text, t_mel = int(text_lengths.max()), int(mel_lengths.max())
    mu = torch.randn(batch, 80, t_text, generator=generator)
    # frames roughly follow the tokens, as a partly trained model's would, plus noise
    tokens = (torch.arange(t_mel)[None, :] * text_lengths[:, None] / mel_lengths[:, None]).long()
    tokens = tokens.clamp(max=t_text - 1)
    y = torch.gather(mu, 2, tokens[:, None, :].expand(-1, 80, -1)) + 1.5 * torch.randn(
        batch, 80, t_mel, generator=generator
    )
    log_p = -0.5 * ((mu[:, :, :, None] - y[:, :, None, :]) ** 2).sum(1) - 40 * np.log(2 * np.pi)
    x_mask = torch.arange(t_text)[None, :] < text_lengths[:, None]
    y_mask = torch.arange(t_mel)[None, :] < mel_lengths[:, None]
    return log_p.to(device), x_mask.to(device), y_mask.to(device)


def time_backend(
    inputs: tuple[torch.Tensor, ...], backend: str, precision: str, repeats: int
) -> tuple[float, float, torch.Tensor]:
    timings = []
    path = None
    for _ in range(repeats):
        if inputs[0].is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        path = monotonic_alignment_search(*inputs, backend=backend, precision=precision)
        if inputs[0].is_cuda:
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings), min(timings), path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", default="float64", choices=["float64", "float32"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    cpu_inputs = make_batch(args.batch, args.seed, "cpu")
    text_lengths = cpu_inputs[1].sum(1)
    mel_lengths = cpu_inputs[2].sum(1)
    print(
        f"B={args.batch}, T_text {int(text_lengths.min())}..{int(text_lengths.max())}, "
        f"T_mel {int(mel_lengths.min())}..{int(mel_lengths.max())}, precision {args.precision}, "
        f"torch threads {torch.get_num_threads()}"
        + (f", numba threads {numba.get_num_threads()}" if numba is not None else ", numba not installed")
    )

    reference_time, _, reference_path = time_backend(cpu_inputs, "reference", args.precision, repeats=1)
    rows = [("reference (Python loop)", "cpu", reference_time, reference_time)]
    if numba is not None:
        start = time.perf_counter()
        monotonic_alignment_search(*cpu_inputs, backend="numba", precision=args.precision)
        print(
            f"numba first call (compile or cache load, excluded below): {time.perf_counter() - start:.3f} s"
        )
        seconds, fastest, path = time_backend(cpu_inputs, "numba", args.precision, args.repeats)
        assert torch.equal(path, reference_path), "numba path differs from the reference"
        rows.append(("numba", "cpu", seconds, fastest))
    monotonic_alignment_search(*cpu_inputs, backend="torch", precision=args.precision)  # warm-up
    seconds, fastest, path = time_backend(cpu_inputs, "torch", args.precision, args.repeats)
    assert torch.equal(path, reference_path), "torch CPU path differs from the reference"
    rows.append(("torch", "cpu", seconds, fastest))
    if torch.cuda.is_available():
        cuda_inputs = tuple(t.cuda() for t in cpu_inputs)
        monotonic_alignment_search(*cuda_inputs, backend="torch", precision=args.precision)  # warm-up
        seconds, fastest, path = time_backend(cuda_inputs, "torch", args.precision, args.repeats)
        assert torch.equal(path.cpu(), reference_path), "torch CUDA path differs from the reference"
        rows.append(("torch", torch.cuda.get_device_name(), seconds, fastest))

    print(
        f"\n{'backend':<26}{'device':<28}{'median s':>10}{'min s':>10}{'speed-up (median) vs reference':>32}"
    )
    for name, device, seconds, fastest in rows:
        print(f"{name:<26}{device:<28}{seconds:>10.4f}{fastest:>10.4f}{reference_time / seconds:>31.1f}x")
    print(f"(median of {args.repeats} runs; the reference ran once; all paths equal to the reference)")


if __name__ == "__main__":
    main()
