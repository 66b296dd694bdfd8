"""Time one image-recipe training step on cached latents vs a loop that runs the VAE encoder every step, and
report its model FLOPs, achieved FLOP/s and model FLOP utilisation (MFU).

    python benchmarks/bench_image_step.py [--batch-size 32] [--steps 20] [--autoencoder tiny|sd] [--resolution 32]
        [--model unet_tiny] [--threads 1] [--device cpu|cuda] [--mixed-precision no|bf16] [--compile]
        [--channels-last] [--peak-tflops T] [--loops both|cached] [--num-images N] [--json out.json]

MFU of the paper-size models on a GPU (the goal is 40 % or more of the dense bf16 peak)::

    python benchmarks/bench_image_step.py --device cuda --model ldm4 --resolution 256 --batch-size 32 \
        --mixed-precision bf16 --channels-last --compile --loops cached --num-images 512
    python benchmarks/bench_image_step.py --device cuda --model dit_xl2 --autoencoder sd --resolution 256 \
        --batch-size 64 --mixed-precision bf16 --compile --loops cached --num-images 512

Both loops train the same denoiser (configs/image/model/<model>.yaml, built by the recipe's own ``build_task``) on
the same batches of sklearn digits with the same task module (posterior sample, condition dropout, diffusion loss,
backward, AdamW step). The cached loop reads latent means / stds from the latent table that the recipe writes
once; the straightforward loop encodes the batch's pixels with the autoencoder at every step, as many diffusers
training scripts do. ``--autoencoder tiny`` is the recipe's trained first stage (random weights here: speed does not
depend on them; factor 4, so 256 px gives LDM-4's 64x64 latents); ``sd`` has Stable Diffusion's VAE architecture
(block_out_channels 128-256-512-512, factor 8, random weights), use it with --resolution 64 or more (256 px gives
DiT-XL/2's 32x32x4 latents).

FLOPs: one step (batch, forward, backward; not the optimizer) is counted once, outside the timing, with
``torch.utils.flop_counter`` (matrix products, convolutions, attention; see ``_flops.py``); the encode-every-step
loop's count includes the encoder. Achieved FLOP/s = FLOPs per step / median step time; MFU = achieved / peak, the
peak from ``--peak-tflops`` or, on a CUDA device, from a table of dense bf16 peaks by device name.
"""

from __future__ import annotations

from robust_gen.launch import start_process

start_process()  # before torch loads: idle OpenMP threads sleep; a mismatched torch trio exits with the fix



import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _flops import count_flops, dense_bf16_peak_tflops, utilisation
from _image_setup import AUTOENCODERS, IMAGE_MODELS, random_autoencoder, random_task

from robust_gen.diffusion.randomness import BatchGenerator
from robust_gen.image.data.dataset import Augmentation, LatentImageDataset
from robust_gen.image.data.imaging import to_model_range
from robust_gen.image.data.latents import LatentTable, encode_images, latent_std
from robust_gen.image.data.sources import load_digits_source
from robust_gen.image.model.denoiser import count_parameters
from robust_gen.training.recipe import compose_config
from robust_gen.training.run_dir import write_json

CACHED, ENCODING = "cached latents", "VAE encode every step"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", "--batch", dest="batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per loop (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (covers torch.compile)")
    parser.add_argument("--model", choices=IMAGE_MODELS, default="unet_tiny", help="configs/image/model/<model>.yaml")
    parser.add_argument("--autoencoder", choices=AUTOENCODERS, default="tiny")
    parser.add_argument("--resolution", type=int, default=32, help="pixels (digits upscaled)")
    parser.add_argument("--num-images", type=int, default=None, help="encode only the first N digits (default all)")
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (the recipe's cpu_threads)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--mixed-precision", choices=["no", "bf16"], default="no", help="bf16: torch.autocast")
    parser.add_argument("--compile", action="store_true", help="torch.compile the denoiser backbone")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode (default, max-autotune, ...)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format for the convs")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak TFLOP/s for the MFU (default: dense bf16 peak of the CUDA device, if known)")
    parser.add_argument("--loops", choices=["both", "cached"], default="both",
                        help="cached: skip the encode-every-step loop (and its ratio)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--batch-size and --steps must be >= 1, --warmup >= 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here; use --device cpu")
    return args


def _memory_format(tensor: torch.Tensor | None, channels_last: bool) -> torch.Tensor | None:
    if tensor is None or not channels_last or tensor.dim() != 4:
        return tensor
    return tensor.contiguous(memory_format=torch.channels_last)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_backward(task, batch: dict, step: int, device: torch.device, precision: str) -> torch.Tensor:
    """The recipe's loss of ``batch`` (under bf16 autocast if asked) and its backward pass."""
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    with autocast:
        loss = task(batch, BatchGenerator(0, step, device=device))["diffusion"].values.mean()
    loss.backward()
    return loss


def count_step_flops(task, make_batch, indices, device: torch.device, precision: str) -> int:
    """Model FLOPs of one step's batch, forward and backward (the gradients are left for the caller to clear)."""
    return count_flops(lambda: forward_backward(task, make_batch(indices), 0, device, precision),
                       math_attention=device.type != "cuda")


def time_loop(task, optimizer, batches, make_batch, device, precision: str) -> list[float]:
    times = []
    for step, indices in enumerate(batches):
        _synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        forward_backward(task, make_batch(indices), step, device, precision)
        optimizer.step()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def resolve_peak(device: torch.device, peak_tflops: float | None) -> tuple[float | None, str]:
    """The peak for the MFU and where it came from."""
    if peak_tflops is not None:
        return peak_tflops, "--peak-tflops"
    if device.type != "cuda":
        return None, "no peak given"
    name = torch.cuda.get_device_name(device)
    found = dense_bf16_peak_tflops(name)
    if found is None:
        return None, f"{name} not in the peak table: pass --peak-tflops"
    return found[0], f"{found[1]} dense bf16"


def run(args: argparse.Namespace) -> dict:
    """Build both loops, count their FLOPs, time them; return the figures."""
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    source = load_digits_source(args.resolution, limit=args.num_images)
    autoencoder = random_autoencoder(args.autoencoder, source.channels, args.resolution).to(device)
    if args.channels_last:
        autoencoder.model.to(memory_format=torch.channels_last)
    start = time.perf_counter()
    mean, std = encode_images(autoencoder, source.images, batch_size=64)
    encode_all = time.perf_counter() - start
    table = LatentTable(mean, std, 1.0 / latent_std(mean, std))
    dataset = LatentImageDataset(source.records, table, Augmentation(args.resolution, 0, autoencoder.factor))
    pixels = to_model_range(source.images)
    labels = torch.tensor([r["label"] for r in source.records])
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, len(dataset), (args.batch,), generator=generator) for _ in range(args.warmup + args.steps)]

    def cached_batch(indices):
        items = [dataset[int(i)] for i in indices]
        return {"latent_mean": _memory_format(torch.stack([x["latent_mean"] for x in items]).to(device), args.channels_last),
                "latent_std": _memory_format(torch.stack([x["latent_std"] for x in items]).to(device), args.channels_last),
                "label": labels[indices].to(device)}

    def encoding_batch(indices):
        latent_mean, latent_sd = autoencoder.encode(_memory_format(pixels[indices].to(device), args.channels_last))
        return {"latent_mean": latent_mean, "latent_std": latent_sd, "label": labels[indices].to(device)}

    cfg = compose_config("image", overrides=[f"model={args.model}"])
    latent_shape = (autoencoder.latent_channels, *([args.resolution // autoencoder.factor] * 2))
    peak, peak_source = resolve_peak(device, args.peak_tflops)
    loops = [(CACHED, cached_batch)] + ([(ENCODING, encoding_batch)] if args.loops == "both" else [])
    results, parameters = {}, 0
    for name, make_batch in loops:
        task = random_task(cfg, latent_shape=latent_shape, num_classes=source.num_classes,
                           scaling_factor=table.scaling_factor).to(device).train()
        parameters = count_parameters(task.denoiser)
        if args.channels_last:
            task.denoiser.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(task.parameters(), lr=1e-4)
        # Counted once on the eager module, before any compilation, and kept out of the timing.
        flops = count_step_flops(task, make_batch, batches[0], device, args.mixed_precision)
        optimizer.zero_grad(set_to_none=True)
        if args.compile:
            task.denoiser.backbone = torch.compile(task.denoiser.backbone, mode=args.compile_mode)
        times = time_loop(task, optimizer, batches, make_batch, device, args.mixed_precision)[args.warmup :]
        seconds = statistics.median(times)
        results[name] = {"seconds_per_step": seconds, "images_per_s": args.batch / seconds,
                         **utilisation(flops, seconds, peak)}
    settings = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
    figures = {
        "settings": {**settings, "threads": torch.get_num_threads(), "torch": torch.__version__,
                     "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"},
        "denoiser_parameters": parameters,
        "latent_shape": list(latent_shape),
        "num_images": len(source.images),
        "encode_all_seconds": encode_all,
        "peak_source": peak_source,
        "loops": results,
    }
    if ENCODING in results:
        figures["ratio_encode_over_cached"] = results[ENCODING]["seconds_per_step"] / results[CACHED]["seconds_per_step"]
    return figures


def _flop_rate(value: float) -> str:
    return f"{value / 1e12:8.2f} TFLOP/s" if value >= 1e12 else f"{value / 1e9:8.2f} GFLOP/s"


def print_report(figures: dict) -> None:
    s = figures["settings"]
    precision = "bf16 autocast" if s["mixed_precision"] == "bf16" else "fp32"
    extras = [x for x, on in (("compiled", s["compile"]), ("channels_last", s["channels_last"])) if on]
    print(f"device {s['device_name']} (threads {s['threads']}), model {s['model']} "
          f"({figures['denoiser_parameters'] / 1e6:.2f}M params, latents {'x'.join(map(str, figures['latent_shape']))}), "
          f"autoencoder {s['autoencoder']} at {s['resolution']}px, batch {s['batch']}, {precision}"
          f"{', ' + ', '.join(extras) if extras else ''}; {s['steps']} timed steps (median)")
    print(f"  one-off encoding of {figures['num_images']} images: {figures['encode_all_seconds']:.2f} s")
    for name, r in figures["loops"].items():
        if r["mfu"] is None:
            mfu = f"MFU: n/a ({figures['peak_source']})"
        else:
            mfu = f"MFU: {100 * r['mfu']:.1f} % of {r['peak_tflops']:g} TFLOP/s ({figures['peak_source']})"
        print(f"  {name:22s} {r['seconds_per_step'] * 1000:9.1f} ms/step {r['images_per_s']:9.1f} img/s "
              f"{r['flops_per_step'] / 1e9:10.2f} GFLOP/step {_flop_rate(r['achieved_flops'])}  {mfu}")
    if "ratio_encode_over_cached" in figures:
        print(f"  ratio (encode every step / cached): {figures['ratio_encode_over_cached']:.2f}x")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    figures = run(args)
    print_report(figures)
    if args.json is not None:
        write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    main()
