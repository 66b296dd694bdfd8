"""The shared trainer: exact resume, checkpoint safety, run-directory lock, non-finite steps, metrics."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.utils.data import TensorDataset

from robust_gen.diffusion.losses import PseudoHuberLoss
from robust_gen.diffusion.objective import DiffusionObjective
from robust_gen.diffusion.schedules import DiscreteVP
from robust_gen.training.checkpoint import find_checkpoints, load_latest_checkpoint, save_checkpoint
from robust_gen.training.metrics import read_metrics
from robust_gen.training.run_dir import RunDirLocked, RunLock
from robust_gen.training.trainer import LossTerm, NonFiniteLossError, Trainer, TrainerConfig


class ToyTask(torch.nn.Module):
    """A tiny denoiser on 4-d vectors trained with the scheduled pseudo-Huber objective."""

    def __init__(self, poison_after: int | None = None):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.SiLU(), torch.nn.Linear(16, 4))
        self.objective = DiffusionObjective(DiscreteVP("linear", 100), PseudoHuberLoss(schedule="snr"))
        self.poison_after, self.calls = poison_after, 0

    def denoise(self, x, t):
        return self.net(torch.cat([x, t[:, None].float() / 100], 1))

    def forward(self, batch, rng):
        (x,) = batch
        self.calls += 1
        out = self.objective(self.denoise, x, generator=rng)
        loss = out.loss
        if self.poison_after is not None and self.calls > self.poison_after:
            loss = loss * float("nan")
        return {"diffusion": LossTerm(loss), "t_mean": out.t.float()}


def make_dataset():
    return TensorDataset(torch.randn(50, 4, generator=torch.Generator().manual_seed(0)))


def train(run_dir, max_steps, **overrides):
    torch.manual_seed(0)
    cfg = TrainerConfig(
        max_steps=max_steps, batch_size=8, checkpoint_every=4, log_every=2, progress=False, tensorboard=False,
        **overrides,
    )
    trainer = Trainer(ToyTask(), make_dataset(), cfg, run_dir)
    trainer.fit()
    return trainer


def weights(trainer):
    return {k: v.clone() for k, v in trainer.ema.state_dict().items()} | {
        "model." + k: v.clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()
    }


@pytest.mark.parametrize("stop_at", [3, 6, 7])
def test_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path, stop_at):
    straight = weights(train(tmp_path / "straight", 13))
    train(tmp_path / "resumed", stop_at)
    resumed = weights(train(tmp_path / "resumed", 13))
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key
    rows = read_metrics(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["step"] for r in rows if r["step"] % 2 == 0] == [2, 4, 6, 8, 10, 12]


def test_writes_metrics_summary_and_checkpoints(tmp_path):
    train(tmp_path, 8)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 4, 6, 8]
    assert {"loss", "loss/diffusion", "t_mean", "lr", "grad_norm", "samples_per_s"} <= set(rows[-1])
    assert json.loads((tmp_path / "summary.json").read_text())["step"] == 8
    names = [p.name for p in find_checkpoints(tmp_path / "checkpoints")]
    assert names == ["step_00000008", "step_00000004"]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000008"


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    train(tmp_path, 8)
    newest = tmp_path / "checkpoints" / "step_00000008" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated, as by a full disk
    ckpt = load_latest_checkpoint(tmp_path / "checkpoints")
    assert ckpt.step == 4
    assert "does not match its checksum" in caplog.text
    trainer = train(tmp_path, 10)  # resumes from step 4 and trains on
    assert trainer.step == 10


def test_interrupted_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, tensors={"model": {"w": torch.ones(3)}}, state={})

    def boom(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr("robust_gen.training.checkpoint.torch.save", boom)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(tmp_path, 2, tensors={"model": {"w": torch.zeros(3)}}, objects={"opt": {}}, state={})
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []
    assert load_latest_checkpoint(tmp_path).step == 1


def test_nonfinite_steps_are_skipped_then_the_run_stops_with_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    cfg = TrainerConfig(max_steps=50, batch_size=8, checkpoint_every=100, progress=False, tensorboard=False,
                        max_nonfinite_steps=3)
    trainer = Trainer(ToyTask(poison_after=5), make_dataset(), cfg, tmp_path)
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps"):
        trainer.fit()
    assert trainer.step == 5 and trainer.nonfinite_total == 3
    ckpt = load_latest_checkpoint(tmp_path / "checkpoints")
    assert ckpt.step == 5 and all(torch.isfinite(v).all() for v in ckpt.tensors["model"].values())


def test_second_process_on_the_same_run_dir_is_refused(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from robust_gen.training.run_dir import RunLock
            RunLock({str(tmp_path)!r}).acquire()
            print("locked", flush=True)
            time.sleep(30)
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirLocked, match="in use by another process"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    RunLock(tmp_path).acquire().release()  # the lock dies with its process, even on SIGKILL


def test_bad_trainer_settings_are_named():
    with pytest.raises(ValueError, match="mixed_precision"):
        TrainerConfig(mixed_precision="fp8")
    with pytest.raises(ValueError, match="max_steps"):
        TrainerConfig(max_steps=0)
