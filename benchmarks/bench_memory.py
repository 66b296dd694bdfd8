"""Peak memory of one training step (forward + backward + AdamW step), gradient checkpointing off vs on.

    python benchmarks/bench_memory.py [--device cpu|cuda] [--configs unet_tiny ldm4 dit_xl2 gradtts_tiny gradtts_paper]
        [--batch-size 4 | --batch-size ldm4=2 dit_xl2=2] [--mixed-precision no|bf16|fp16] [--threads 2]
        [--json results.json]

Every model is built from the repository's config files, the way the recipes build it: the image recipe's task
module (``configs/image/train.yaml`` with ``model=<name>``, :func:`robust_gen.image.build.build_task`) and the
speech recipe's Grad-TTS task (``configs/tts/train.yaml``, ``instantiate(cfg.model)``, :class:`GradTTSTask` with
the paper's 2-s decoder crops = 172 frames), with random weights and random data (memory does not depend on
either). Latent shapes: ``unet_tiny`` 8x8x4 (32-px digits through the recipe's factor-4 autoencoder), ``ldm4``
64x64x3 (256 px, VQ-f4), ``dit_xl2`` 32x32x4 (256 px, KL-f8).

Each (config, checkpointing) pair runs in a fresh subprocess, so one measurement cannot inherit another's caches.
On CUDA the figures come from ``torch.cuda.max_memory_allocated`` minus what was allocated before the step
(weights, batch); on CPU from the process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``
just before the step; ``ru_maxrss`` where that is not possible) minus its resident set after the model, optimizer
and batch were built (the child fixes glibc's mmap threshold and trims the heap first, so memory freed during the
build does not hide the step's growth). Three peaks are reported, all the step's own (over what was held before):

* forward: the activations kept for the backward pass, which gradient checkpointing reduces;
* forward + backward: also the gradients (as large as the weights), allocated while activations are freed; for
  small batches this peak is the gradients alone and checkpointing cannot lower it;
* the whole step: also AdamW's moments, created at the first step (2x the weights). With a CPU's small batches
  this is the largest; with a GPU's batch sizes the activations dominate.

The step time is printed too (the recomputation costs about one more forward pass), but on a shared CPU only the
memory figures are reliable.
"""

from __future__ import annotations

from robust_gen.launch import start_process

start_process()  # before torch loads: idle OpenMP threads sleep; a mismatched torch trio exits with the fix

import argparse
import ctypes
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch

from robust_gen.diffusion.randomness import BatchGenerator
from robust_gen.training.recipe import compose_config
from robust_gen.training.run_dir import write_json


class Case(NamedTuple):
    """One benchmark configuration: which recipe, which model config, what data shape."""

    recipe: str  # "image" | "tts"
    model: str  # the model config group's option
    shape: tuple[int, ...]  # image: latent (C, H, W); tts: (tokens, mel frames, decoder crop frames)


CASES = {
    "unet_tiny": Case("image", "unet_tiny", (4, 8, 8)),
    "ldm4": Case("image", "ldm4", (3, 64, 64)),
    "dit_xl2": Case("image", "dit_xl2", (4, 32, 32)),
    # ~4.6-s utterances (400 frames, 80 tokens with blanks) cropped to Grad-TTS's 2-s decoder segments.
    "gradtts_tiny": Case("tts", "gradtts_tiny", (80, 400, 172)),
    "gradtts_paper": Case("tts", "gradtts_paper", (80, 400, 172)),
}
#: Batch sizes: a CPU's few GB and time budget; on a GPU the papers' per-device sizes (Grad-TTS: 16).
DEFAULT_BATCH = {
    "cpu": {"unet_tiny": 32, "ldm4": 2, "dit_xl2": 2, "gradtts_tiny": 8, "gradtts_paper": 4},
    "cuda": {"unet_tiny": 256, "ldm4": 16, "dit_xl2": 32, "gradtts_tiny": 32, "gradtts_paper": 16},
}


def build_case(case: Case, checkpointing: bool, batch_size: int, device: torch.device):
    """The recipe's task module for ``case`` and one random batch on ``device``."""
    from hydra.utils import instantiate

    overrides = [f"model={case.model}", f"model.gradient_checkpointing={str(checkpointing).lower()}"]
    cfg = compose_config(case.recipe, overrides=overrides)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if case.recipe == "image":
        from robust_gen.image.build import build_task

        meta = {"num_classes": 10, "latent_shape": list(case.shape), "scaling_factor": 1.0}
        task = build_task(cfg, meta)
        batch = {"latent_mean": torch.randn(batch_size, *case.shape, generator=g),
                 "latent_std": torch.full((batch_size, *case.shape), 0.1),
                 "label": torch.randint(0, 10, (batch_size,), generator=g)}
    else:
        from robust_gen.speech.task import GradTTSTask, segment_frames_for

        model = instantiate(cfg.model, n_speakers=1)
        tokens, frames, crop = case.shape
        segment = segment_frames_for(2.0, int(cfg.mel.sample_rate), int(cfg.mel.hop_length), model.frame_multiple)
        assert segment == crop, (segment, crop)
        task = GradTTSTask(model, instantiate(cfg.loss), segment_frames=segment)
        batch = {"tokens": torch.randint(0, model.n_vocab, (batch_size, tokens), generator=g),
                 "token_lengths": torch.full((batch_size,), tokens),
                 "mels": torch.randn(batch_size, int(cfg.mel.n_mels), frames, generator=g) - 5.0,
                 "mel_lengths": torch.full((batch_size,), frames)}
    return task.to(device).train(), {k: v.to(device) for k, v in batch.items()}


def rss_bytes() -> int:
    """The current resident set of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS record (``VmHWM``) to the current RSS; False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes(reset_worked: bool) -> int:
    """The peak resident set since :func:`reset_peak_rss` (or since the process started)."""
    if reset_worked:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def release_free_heap() -> None:
    """Give memory freed during the build back to the system, so the step's growth is measured from live data."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: the figure may then undercount by what the build freed
        pass


def measure(name: str, checkpointing: bool, batch_size: int, device: torch.device, precision: str) -> dict:
    """One training step of ``name`` in this process; returns the figures (run in a fresh process each time)."""
    case = CASES[name]
    task, batch = build_case(case, checkpointing, batch_size, device)
    params = [p for p in task.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda" or None)  # as the trainer
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    import gc

    gc.collect()
    reset_worked = False
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        release_free_heap()
        before = rss_bytes()
        reset_worked = reset_peak_rss()

    def peak() -> int:
        if device.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return peak_rss_bytes(reset_worked)

    start = time.perf_counter()
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        terms = task(batch, BatchGenerator(0, 0, device=device))
        loss = sum(term.values.mean() for term in terms.values())
    forward_peak = peak()
    loss.backward()
    backward_peak = peak()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    step_peak = peak()
    return {"config": name, "checkpointing": checkpointing, "batch": batch_size, "device": device.type,
            "precision": precision, "params": sum(p.numel() for p in params), "before_step": before,
            "forward_peak": max(forward_peak - before, 0), "forward_backward_peak": max(backward_peak - before, 0), "step_peak": max(step_peak - before, 0),
            "peak_reset": reset_worked or device.type == "cuda", "step_s": time.perf_counter() - start,
            "loss": float(loss)}


def run_child(args: argparse.Namespace, name: str, checkpointing: bool, batch_size: int) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    command = [sys.executable, __file__, "--child", name, "--child-checkpointing", str(int(checkpointing)),
               "--child-batch", str(batch_size), "--device", args.device, "--mixed-precision", args.mixed_precision,
               "--threads", str(args.threads)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{name} (checkpointing={checkpointing}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_batch_sizes(values: list[str], names: list[str], device: str) -> dict[str, int]:
    """``["4"]`` (every config) or ``["ldm4=2", "dit_xl2=2"]`` over the device's defaults."""
    sizes = {n: DEFAULT_BATCH[device][n] for n in names}
    for value in values:
        key, _, number = value.rpartition("=")
        if key and key not in CASES:
            raise SystemExit(f"--batch-size {value}: unknown config {key!r}; choose from {sorted(CASES)}")
        if not number.isdigit() or int(number) < 1:
            raise SystemExit(f"--batch-size {value}: the batch size must be a positive integer")
        for n in [key] if key else names:
            sizes[n] = int(number)
    return sizes


def mib(n: float) -> str:
    return f"{n / 2**20:9.0f}"


def print_table(rows: list[dict], device: str) -> None:
    kind = "CUDA max_memory_allocated" if device == "cuda" else "peak RSS minus RSS after build"
    print(f"\nPeak memory of one training step (MiB; {kind}), gradient checkpointing off vs on")
    print(f"{'':31s}{'forward':^27s} {'forward + backward':^27s} {'whole step (+ AdamW)':^27s}")
    print(f"{'config':15s} {'params M':>9s} {'batch':>5s}" + f" {'off':>9s} {'on':>9s} {'on/off':>7s}" * 3
          + f" {'off s':>7s} {'on s':>7s} {'before':>9s}")
    by_name: dict[str, dict[bool, dict]] = {}
    for row in rows:
        by_name.setdefault(row["config"], {})[row["checkpointing"]] = row
    for name, pair in by_name.items():
        off, on = pair[False], pair[True]
        columns = []
        for key in ("forward_peak", "forward_backward_peak", "step_peak"):
            ratio = on[key] / off[key] if off[key] else float("nan")
            columns.append(f"{mib(off[key])} {mib(on[key])} {ratio:7.2f}")
        print(f"{name:15s} {off['params'] / 1e6:9.2f} {off['batch']:5d} {' '.join(columns)}"
              f" {off['step_s']:7.1f} {on['step_s']:7.1f} {mib(off['before_step'])}")
    print("before: memory held before the step (weights and batch; on a CPU the whole process). off s / on s: "
          "seconds of that first step, one-off costs included; indicative only on a shared CPU.")


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark (``argv`` as on the command line); returns one row per (config, checkpointing)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--configs", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--batch-size", nargs="+", default=[], metavar="[CONFIG=]N",
                        help="one size for every config, or CONFIG=N pairs over the device's defaults")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=2, help="CPU intra-op threads")
    parser.add_argument("--json", type=Path, help="also write every measurement to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-checkpointing", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available; use --device cpu")
    torch.set_num_threads(args.threads)
    if args.child:
        result = measure(args.child, bool(args.child_checkpointing), args.child_batch, torch.device(args.device),
                         args.mixed_precision)
        print(json.dumps(result))
        return [result]
    sizes = parse_batch_sizes(args.batch_size, args.configs, args.device)
    rows = []
    for name in args.configs:
        for checkpointing in (False, True):
            row = run_child(args, name, checkpointing, sizes[name])
            rows.append(row)
            print(f"{name:15s} checkpointing={'on ' if checkpointing else 'off'} batch {row['batch']:4d}: peak "
                  f"{row['forward_peak'] / 2**20:.0f} MiB (forward), {row['forward_backward_peak'] / 2**20:.0f} MiB "
                  f"(+backward), {row['step_peak'] / 2**20:.0f} MiB (step), {row['step_s']:.1f} s", flush=True)
    print_table(rows, args.device)
    if args.json:
        write_json(args.json, rows)
        print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    main()
