"""Train the toy task of tests/test_trainer.py; run under torchrun to check data-parallel equivalence.

    torchrun --nproc_per_node 2 tests/helpers/ddp_toy_train.py RUN_DIR STEPS [CHECKPOINT_EVERY] [--fsdp|--fsdp-root]

``--fsdp`` shards the model (trainer.fsdp, each Linear its own unit), ``--fsdp-root`` as one unit owned by the
task itself (tests/test_sharding.py). Also the victim of the kill-and-resume tests (tests/test_faults.py).
"""

import sys

from robust_gen.launch import start_process

start_process(check_torch=False)  # as every entry point: its exit closes the process group

import torch
from torch.utils.data import TensorDataset

from robust_gen.diffusion.losses import PseudoHuberLoss
from robust_gen.diffusion.objective import DiffusionObjective
from robust_gen.diffusion.schedules import DiscreteVP
from robust_gen.training.trainer import LossTerm, Trainer, TrainerConfig


class ToyTask(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.SiLU(), torch.nn.Linear(16, 4))
        self.objective = DiffusionObjective(DiscreteVP("linear", 100), PseudoHuberLoss(schedule="snr"))

    def forward(self, batch, rng):
        (x,) = batch
        out = self.objective(lambda x_t, t: self.net(torch.cat([x_t, t[:, None].float() / 100], 1)), x, generator=rng)
        return {"diffusion": LossTerm(out.loss, weights=torch.ones_like(out.loss))}


def main(run_dir: str, steps: int, checkpoint_every: int = 0, fsdp_wrap: list[str] | None = None) -> None:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(48, 4, generator=torch.Generator().manual_seed(0)))
    fsdp = fsdp_wrap is not None
    sharding = {"fsdp": True, "fsdp_wrap": fsdp_wrap} if fsdp else {}
    cfg = TrainerConfig(
        max_steps=steps, batch_size=8, checkpoint_every=checkpoint_every, progress=False, tensorboard=False, cpu=True,
        **sharding,
    )
    Trainer(ToyTask(), data, cfg, run_dir, eval_fn=_eval if fsdp else None).fit()


def _eval(ema_module, step, run_dir):
    """Records the EMA weights the trainer hands to evaluation (a plain, unsharded module under FSDP)."""
    weight = ema_module.net[0].weight
    return {"eval_weight_sum": float(weight.sum()), "eval_is_plain": float(type(weight) is torch.nn.Parameter)}


if __name__ == "__main__":
    flags = [a for a in sys.argv[1:] if a.startswith("--")]
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    wrap = ["Linear"] if "--fsdp" in flags else [] if "--fsdp-root" in flags else None
    main(args[0], int(args[1]), int(args[2]) if len(args) > 2 else 0, fsdp_wrap=wrap)
