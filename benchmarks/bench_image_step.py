"""Time one image-recipe training step on cached latents vs a loop that runs the VAE encoder every step.

    python benchmarks/bench_image_step.py [--batch 32] [--steps 20] [--autoencoder tiny|sd] [--resolution 32]
        [--threads 1] [--device cpu]

Both loops train the same UNet (configs/image/model/unet_tiny.yaml) on the same batches of sklearn digits with the
same task module (posterior sample, condition dropout, diffusion loss, backward, AdamW step). The cached loop reads
latent means / stds from the latent table that the recipe writes once; the straightforward loop encodes the batch's
pixels with the autoencoder at every step, as many diffusers training scripts do. ``--autoencoder tiny`` is the
recipe's trained first stage (random weights here: speed does not depend on them); ``sd`` has Stable Diffusion's
VAE architecture (block_out_channels 128-256-512-512, random weights), use it with --resolution 64 or more.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import AutoencoderKL
from omegaconf import OmegaConf

from robust_gen.diffusion.losses import L2Loss
from robust_gen.diffusion.objective import DiffusionObjective
from robust_gen.diffusion.randomness import BatchGenerator
from robust_gen.diffusion.schedules import DiscreteVP
from robust_gen.image.autoencoder import ImageAutoencoder
from robust_gen.image.conditioners import ClassConditioner
from robust_gen.image.data import Augmentation, LatentImageDataset
from robust_gen.image.denoiser import build_denoiser
from robust_gen.image.imaging import to_model_range
from robust_gen.image.latents import LatentTable, encode_images, latent_std
from robust_gen.image.sources import load_digits_source
from robust_gen.image.task import ImageDiffusionTask
from robust_gen.training.recipe import CONFIG_ROOT

SD_VAE = {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "latent_channels": 4,
          "norm_num_groups": 32}


def make_autoencoder(kind: str, channels: int, size: int) -> ImageAutoencoder:
    if kind == "tiny":
        model_cfg = OmegaConf.to_container(OmegaConf.load(CONFIG_ROOT / "image" / "autoencoder" / "trained.yaml").model)
    else:
        model_cfg = SD_VAE
    blocks = len(model_cfg["block_out_channels"])
    torch.manual_seed(0)
    model = AutoencoderKL(in_channels=channels, out_channels=channels, sample_size=size,
                          down_block_types=["DownEncoderBlock2D"] * blocks, up_block_types=["UpDecoderBlock2D"] * blocks,
                          **model_cfg)
    return ImageAutoencoder(model, "kl", channels)


def make_task(latent_channels: int, latent_size: int, scaling_factor: float) -> ImageDiffusionTask:
    model_cfg = OmegaConf.to_container(OmegaConf.load(CONFIG_ROOT / "image" / "model" / "unet_tiny.yaml"))
    schedule = DiscreteVP("linear", 1000, 0.0015, 0.0195)
    torch.manual_seed(0)
    denoiser = build_denoiser(model_cfg, routing="none", control_cfg={}, schedule=schedule,
                              in_channels=latent_channels, sample_size=latent_size,
                              context_dim=model_cfg["cross_attention_dim"], control_names=[])
    return ImageDiffusionTask(denoiser, ClassConditioner(10, model_cfg["cross_attention_dim"]),
                              DiffusionObjective(schedule, L2Loss(), "eps"), scaling_factor=scaling_factor)


def time_loop(task, optimizer, batches, make_batch, device) -> list[float]:
    times = []
    for step, indices in enumerate(batches):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        batch = make_batch(indices)
        loss = task(batch, BatchGenerator(0, step, device=device))["diffusion"].values.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--autoencoder", choices=["tiny", "sd"], default="tiny")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (the recipe's cpu_threads)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)

    source = load_digits_source(args.resolution)
    autoencoder = make_autoencoder(args.autoencoder, source.channels, args.resolution).to(device)
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
        return {"latent_mean": torch.stack([x["latent_mean"] for x in items]).to(device),
                "latent_std": torch.stack([x["latent_std"] for x in items]).to(device),
                "label": labels[indices].to(device)}

    def encoding_batch(indices):
        latent_mean, latent_sd = autoencoder.encode(pixels[indices].to(device))
        return {"latent_mean": latent_mean, "latent_std": latent_sd, "label": labels[indices].to(device)}

    results = {}
    for name, make_batch in (("cached latents", cached_batch), ("VAE encode every step", encoding_batch)):
        task = make_task(autoencoder.latent_channels, args.resolution // autoencoder.factor, table.scaling_factor)
        task.to(device).train()
        optimizer = torch.optim.AdamW(task.parameters(), lr=1e-4)
        times = time_loop(task, optimizer, batches, make_batch, device)[args.warmup :]
        results[name] = statistics.median(times)
    print(f"device {device} (threads {torch.get_num_threads()}), autoencoder {args.autoencoder} at {args.resolution}px, "
          f"batch {args.batch}, {args.steps} timed steps (median)")
    print(f"  one-off encoding of {len(source.images)} images: {encode_all:.2f} s")
    for name, seconds in results.items():
        print(f"  {name:24s} {seconds * 1000:9.1f} ms/step")
    ratio = results["VAE encode every step"] / results["cached latents"]
    print(f"  ratio (encode every step / cached): {ratio:.2f}x")


if __name__ == "__main__":
    main()
