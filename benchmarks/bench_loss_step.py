"""One training step of a small denoiser with scheduled pseudo-Huber vs l2, side by side in one run.

    python benchmarks/bench_loss_step.py [--batch 32] [--size 32] [--repeats 30] [--device cpu]

Both variants run the same network, batch, optimizer and per-sample times; the steps are interleaved so drift of
the machine's load affects both alike. Prints the median step time of each, the ratio, and the cost of the loss
computation alone.
"""

from __future__ import annotations

from robust_gen.launch import start_process

start_process()  # before torch loads: idle OpenMP threads sleep; a mismatched torch trio exits with the fix

import argparse
import statistics
import time

import torch
from diffusers import UNet2DModel

from robust_gen.diffusion.losses import L2Loss, PseudoHuberLoss
from robust_gen.diffusion.objective import DiffusionObjective, batch_mean
from robust_gen.diffusion.randomness import BatchGenerator
from robust_gen.diffusion.schedules import DiscreteVP


def build(size: int, device: str) -> torch.nn.Module:
    return UNet2DModel(
        sample_size=size, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ).to(device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    schedule = DiscreteVP("linear", 1000)
    net = build(args.size, args.device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x0 = torch.randn(args.batch, 4, args.size, args.size, device=args.device)
    losses = {"l2": L2Loss(), "pseudo_huber(snr)": PseudoHuberLoss(form="huber", schedule="snr")}
    objectives = {name: DiffusionObjective(schedule, loss) for name, loss in losses.items()}
    model = lambda x, t: net(x, t).sample  # noqa: E731

    def step(objective, i):
        rng = BatchGenerator(0, i, device=args.device)
        loss = batch_mean(objective(model, x0, generator=rng).loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times = {name: [] for name in objectives}
    for i in range(3):  # warm-up
        for objective in objectives.values():
            step(objective, i)
    for i in range(args.repeats):
        for name, objective in objectives.items():
            sync(args.device)
            start = time.perf_counter()
            step(objective, i)
            sync(args.device)
            times[name].append(time.perf_counter() - start)

    # The loss computation alone, on the same shapes.
    pred, target = torch.randn_like(x0), torch.randn_like(x0)
    t = schedule.sample_t(args.batch, device=args.device)
    loss_only = {}
    for name, loss in losses.items():
        runs = []
        for _ in range(args.repeats):
            p = pred.clone().requires_grad_()
            sync(args.device)
            start = time.perf_counter()
            loss(p, target, t=t, schedule=schedule).mean().backward()
            sync(args.device)
            runs.append(time.perf_counter() - start)
        loss_only[name] = statistics.median(runs)

    base = statistics.median(times["l2"])
    print(f"device={args.device} batch={args.batch} latent=4x{args.size}x{args.size} "
          f"params={sum(p.numel() for p in net.parameters()) / 1e6:.2f}M threads={torch.get_num_threads()}")
    print(f"{'loss':<20}{'step median (ms)':>18}{'ratio vs l2':>14}{'loss fwd+bwd (ms)':>20}")
    for name in objectives:
        med = statistics.median(times[name])
        print(f"{name:<20}{med * 1e3:>18.2f}{med / base:>14.3f}{loss_only[name] * 1e3:>20.3f}")


if __name__ == "__main__":
    main()
