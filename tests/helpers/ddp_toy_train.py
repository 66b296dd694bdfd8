"""Train the toy task of tests/test_trainer.py; run under torchrun to check data-parallel equivalence.

    torchrun --nproc_per_node 2 tests/helpers/ddp_toy_train.py RUN_DIR STEPS [CHECKPOINT_EVERY]

Also the victim of the kill-and-resume tests (tests/test_faults.py).
"""

import sys

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


def main(run_dir: str, steps: int, checkpoint_every: int = 0) -> None:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(48, 4, generator=torch.Generator().manual_seed(0)))
    cfg = TrainerConfig(max_steps=steps, batch_size=8, checkpoint_every=checkpoint_every, progress=False, tensorboard=False, cpu=True)
    Trainer(ToyTask(), data, cfg, run_dir).fit()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0)
