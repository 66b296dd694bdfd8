"""Time monotonic alignment search: plain-Python reference vs numba vs batched torch (CPU, and CUDA if present).

    python benchmarks/bench_alignment.py [--batch 16] [--repeats 5] [--precision float64] [--seed 0]

Each sample draws T_text in [100, 200] and T_mel in [400, 800] (Grad-TTS-sized clips: about 2 to 9 s of 22.05 kHz
audio at hop 256). Scores are the Grad-TTS log prior log N(y | mu_x, I) over 80 mel channels. The numba kernel is
called once before timing, so its compile time (or cache load) is excluded from the table and printed apart.
Every backend's path is checked equal to the reference's before its time is reported.

    python benchmarks/bench_alignment.py --authors [--authors-dir DIR] [--json out.json]

``--authors`` compares the whole call of :func:`monotonic_alignment_search` with the Grad-TTS authors'
``maximum_path`` (their wrapper: mask multiply, float32 copy, int32 path, Cython kernel) on ONE CPU thread, batch
16, at three clip sizes. Their Cython extension is built from ``--authors-dir`` (a checkout's
``Grad-TTS/model/monotonic_align``, e.g. ``git clone https://github.com/huawei-noah/Speech-Backbones``) when Cython
is installed; without Cython (or the folder) that row is skipped with a message. A numba port of their algorithm
(column order, float32 in place, ``max_neg_val=-1e9``, written here from the algorithm, not their code) is always
timed beside it and labelled as such: it stands in for the Cython kernel, not for it.
"""

from __future__ import annotations

from robust_gen.launch import start_process

start_process()  # before torch loads: idle OpenMP threads sleep; a mismatched torch trio exits with the fix

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from robust_gen.speech.gradtts.alignment import monotonic_alignment_search
from robust_gen.training.run_dir import write_json

try:
    import numba
except ImportError:  # GPU images may lack numba; the other backends still run
    numba = None


def make_batch(
    batch: int, seed: int, device: str, text_range: tuple[int, int] = (100, 200), mel_range: tuple[int, int] = (400, 800)
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    text_lengths = torch.randint(text_range[0], text_range[1] + 1, (batch,), generator=generator)
    mel_lengths = torch.randint(mel_range[0], mel_range[1] + 1, (batch,), generator=generator)
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


#: (T_text range, T_mel range) of the three sizes of the comparison with the authors' code.
AUTHOR_SIZES = (((20, 40), (80, 160)), ((56, 80), (200, 367)), ((100, 200), (400, 800)))

if numba is not None:

    @numba.njit(cache=True, nogil=True)
    def _authors_port_each(path, value, t_x, t_y, max_neg_val):  # pragma: no cover - compiled
        # The algorithm of the authors' Cython maximum_path_each (Glow-TTS), ported: column order, in place on
        # the float32 values, -1e9 for forbidden moves, then backtracking on the accumulated values.
        index = t_x - 1
        for y in range(t_y):
            for x in range(max(0, t_x + y - t_y), min(t_x, y + 1)):
                v_cur = max_neg_val if x == y else value[x, y - 1]
                if x == 0:
                    v_prev = np.float32(0.0) if y == 0 else max_neg_val
                else:
                    v_prev = value[x - 1, y - 1]
                value[x, y] = max(v_cur, v_prev) + value[x, y]
        for y in range(t_y - 1, -1, -1):
            path[index, y] = 1
            if index != 0 and (index == y or value[index, y - 1] < value[index - 1, y - 1]):
                index = index - 1

    @numba.njit(cache=True, parallel=True)
    def _authors_port_batch(paths, values, t_xs, t_ys):  # pragma: no cover - compiled
        for i in numba.prange(values.shape[0]):
            _authors_port_each(paths[i], values[i], t_xs[i], t_ys[i], np.float32(-1e9))


def authors_call(kernel, value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The authors' ``maximum_path`` wrapper around ``kernel(paths, values, t_xs, t_ys)`` (same steps, our code)."""
    value = value * mask
    device, dtype = value.device, value.dtype
    value = value.data.cpu().numpy().astype(np.float32)
    path = np.zeros_like(value).astype(np.int32)
    mask = mask.data.cpu().numpy()
    t_x_max = mask.sum(1)[:, 0].astype(np.int32)
    t_y_max = mask.sum(2)[:, 0].astype(np.int32)
    kernel(path, value, t_x_max, t_y_max)
    return torch.from_numpy(path).to(device=device, dtype=dtype)


def build_authors_cython(folder: str | None):
    """The authors' compiled ``maximum_path_c``, or ``(None, why not)``: needs Cython and their core.pyx."""
    try:
        import Cython  # noqa: F401
    except ImportError:
        return None, "Cython is not installed (pip install cython): the authors' extension cannot be built"
    if folder is None or not (Path(folder) / "core.pyx").is_file():
        return None, (f"no core.pyx in --authors-dir {folder!r}: point it at Speech-Backbones/Grad-TTS/model/"
                      "monotonic_align")
    import importlib.util
    import shutil
    import subprocess
    import sys
    import tempfile

    build = Path(tempfile.mkdtemp(prefix="authors_mas_"))
    shutil.copy(Path(folder) / "core.pyx", build / "core.pyx")
    setup = ("from setuptools import setup\nfrom Cython.Build import cythonize\nimport numpy\n"
             "setup(name='core', ext_modules=cythonize('core.pyx'), include_dirs=[numpy.get_include()])\n")
    (build / "setup.py").write_text(setup)
    done = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=build, capture_output=True,
                          text=True)
    built = sorted(build.glob("core*.so")) + sorted(build.glob("core*.pyd"))
    if done.returncode or not built:
        return None, f"building the authors' extension failed: {done.stderr[-500:]}"
    spec = importlib.util.spec_from_file_location("core", built[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.maximum_path_c, ""


def compare_with_authors(args: argparse.Namespace) -> dict:
    """Whole-call times (one thread, batch ``args.batch``) of ours vs the authors' wrapper, at three sizes."""
    torch.set_num_threads(1)
    if numba is not None:
        numba.set_num_threads(1)
    cython_kernel, why = build_authors_cython(args.authors_dir)
    if cython_kernel is None:
        print(f"authors' Cython maximum_path: SKIPPED ({why})")
    results = {"batch": args.batch, "threads": 1, "repeats": args.repeats, "cython": why or "built", "sizes": []}
    for (text_range, mel_range) in AUTHOR_SIZES:
        log_p, x_mask, y_mask = make_batch(args.batch, args.seed, "cpu", text_range, mel_range)
        log_p = log_p.float()  # Grad-TTS computes its log prior in float32
        attn_mask = (x_mask[:, :, None] & y_mask[:, None, :]).float()
        ours = {}
        for precision in ("float64", "float32"):
            monotonic_alignment_search(log_p, x_mask, y_mask, precision=precision)  # compile / cache load
            ours[precision], _, path = time_backend((log_p, x_mask, y_mask), "auto", precision, args.repeats)
        row = {"text": list(text_range), "mel": list(mel_range), "ours_float64_s": ours["float64"],
               "ours_float32_s": ours["float32"]}
        kernels = {}
        if numba is not None:
            kernels["numba_port_of_authors_algorithm"] = _authors_port_batch
        if cython_kernel is not None:
            kernels["authors_cython"] = cython_kernel
        for name, kernel in kernels.items():
            theirs = authors_call(kernel, log_p, attn_mask)  # warm-up, and the path to compare
            timings = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                theirs = authors_call(kernel, log_p, attn_mask)
                timings.append(time.perf_counter() - start)
            row[f"{name}_s"] = statistics.median(timings)
            row[f"{name}_same_path_as_ours_float32"] = bool(torch.equal(theirs, path))
        results["sizes"].append(row)
        line = f"T_text {text_range}, T_mel {mel_range}: ours {ours['float64'] * 1e3:.2f} ms (float64), " \
               f"{ours['float32'] * 1e3:.2f} ms (float32)"
        for name in kernels:
            line += f"; {name} {row[name + '_s'] * 1e3:.2f} ms (ratio ours64/theirs " \
                    f"{ours['float64'] / row[name + '_s']:.2f})"
        print(line)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", default="float64", choices=["float64", "float32"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--authors", action="store_true", help="compare with the Grad-TTS authors' maximum_path")
    parser.add_argument("--authors-dir", default=None, help="Speech-Backbones/Grad-TTS/model/monotonic_align")
    parser.add_argument("--json", default=None, help="write the --authors comparison here")
    args = parser.parse_args()
    if args.authors:
        results = compare_with_authors(args)
        if args.json:
            write_json(args.json, results)
        return

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
