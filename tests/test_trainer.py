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


# ------------------------------------------------------------------------------- issue 15: no silent restarts
def _stamp(run_dir):
    return {p.name: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").glob("step_*")}


def test_checkpoints_none_of_which_verifies_stop_the_run_instead_of_restarting(tmp_path):
    from robust_gen.training.checkpoint import UnverifiedCheckpointsError

    train(tmp_path, 8)
    for checksums in (tmp_path / "checkpoints").glob("step_*/checksums.json"):
        checksums.unlink()  # every checkpoint now unverifiable
    before = _stamp(tmp_path)
    with pytest.raises(UnverifiedCheckpointsError, match=r"step_00000008.*step_00000004.*trainer.restart=true"):
        train(tmp_path, 12)
    assert _stamp(tmp_path) == before, "the unverifiable checkpoints must not be overwritten"
    trainer = train(tmp_path, 4, restart=True)  # asked for: the old checkpoints move aside, nothing is deleted
    assert trainer.step == 4
    aside = list(tmp_path.glob("checkpoints.replaced-*"))
    assert len(aside) == 1 and sorted(p.name for p in aside[0].glob("step_*")) == sorted(before)
    assert train(tmp_path, 8, restart=True).step == 8  # resumable now: resumed (4 -> 8), not started over again
    assert len(list(tmp_path.glob("checkpoints.replaced-*"))) == 1


def test_newest_checkpoint_without_checksums_is_named_in_a_warning(tmp_path, caplog):
    train(tmp_path, 8)
    (tmp_path / "checkpoints" / "step_00000008" / "checksums.json").unlink()
    with caplog.at_level("WARNING"):
        trainer = train(tmp_path, 8)
    assert trainer.step == 8  # resumed at 4, trained on to 8
    assert any("step_00000008" in r.getMessage() and "newer" in r.getMessage() for r in caplog.records)


def test_keep_checkpoints_below_one_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"trainer.keep_checkpoints must be an integer >= 1"):
        TrainerConfig(keep_checkpoints=0)
    with pytest.raises(ValueError, match="keep_checkpoints"):
        save_checkpoint(tmp_path, 1, tensors={"model": {"w": torch.ones(1)}}, keep=0)


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("max_steps", "abc", "trainer.max_steps must be an integer >= 1, got 'abc'"),
    ("lr", "abc", "trainer.lr must be a finite number > 0, got 'abc'"),
    ("lr", float("inf"), "trainer.lr must be a finite number > 0"),
    ("batch_size", 2.5, "trainer.batch_size must be an integer >= 1, got 2.5"),
    ("log_every", 0, "trainer.log_every must be an integer >= 1, got 0"),
    ("checkpoint_every", -1, "trainer.checkpoint_every must be an integer >= 0"),
    ("ema_decay", 1.5, "trainer.ema_decay must be a finite number >= 0 and <= 1"),
    ("progress", "yes", "trainer.progress must be true or false"),
    ("adam_betas", [0.9], "trainer.adam_betas must be two numbers"),
])
def test_every_trainer_setting_is_type_and_range_checked_naming_the_key(setting, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        TrainerConfig(**{setting: value})


def test_a_changed_hyperparameter_on_resume_is_refused_listing_it(tmp_path):
    train(tmp_path, 4, lr=1e-3)
    state = (tmp_path / "checkpoints" / "step_00000004" / "state.json").read_text()
    with pytest.raises(ValueError, match=r"trainer.lr: 0.001 -> 0.5.*trainer.restart=true"):
        train(tmp_path, 8, lr=0.5)
    assert (tmp_path / "checkpoints" / "step_00000004" / "state.json").read_text() == state
    assert train(tmp_path, 8, lr=1e-3, keep_checkpoints=3).step == 8  # how many checkpoints to keep may change


class _BreakingTask(ToyTask):
    """Weights turn to NaN after ``break_after`` forward calls (as an optimizer step with lr=inf would do)."""

    def __init__(self, break_after):
        super().__init__()
        self.break_after = break_after

    def forward(self, batch, rng):
        if self.calls == self.break_after:
            with torch.no_grad():
                self.net[0].weight.fill_(float("nan"))
        return super().forward(batch, rng)


def test_weights_that_are_no_longer_finite_are_never_saved_as_the_good_state(tmp_path):
    cfg = TrainerConfig(max_steps=50, batch_size=8, checkpoint_every=4, progress=False, tensorboard=False,
                        max_nonfinite_steps=3, lr=0.5)
    with pytest.raises(NonFiniteLossError, match=r"no longer finite.*step_00000004.*Lower trainer.lr \(now 0.5\)"):
        Trainer(_BreakingTask(break_after=6), make_dataset(), cfg, tmp_path).fit()
    for path in find_checkpoints(tmp_path / "checkpoints"):
        ckpt = load_latest_checkpoint(path.parent)
        assert all(torch.isfinite(v).all() for v in ckpt.tensors["model"].values())


def test_a_finished_run_run_again_does_nothing_unless_resample(tmp_path):
    evaluations = []

    def eval_fn(module, step, run_dir):
        evaluations.append(step)
        return {"score": 1.0}

    def run(**overrides):
        torch.manual_seed(0)
        cfg = TrainerConfig(max_steps=4, batch_size=8, checkpoint_every=4, log_every=2, progress=False,
                            tensorboard=False, **overrides)
        return Trainer(ToyTask(), make_dataset(), cfg, tmp_path, eval_fn=eval_fn).fit()

    run()
    lines = (tmp_path / "metrics.jsonl").read_text()
    summary = run()
    assert summary["status"] == "complete" and evaluations == [4]
    assert (tmp_path / "metrics.jsonl").read_text() == lines, "no second eval line"
    run(resample=True)
    assert evaluations == [4, 4]


@pytest.mark.parametrize(("signum", "code"), [(15, 143), (2, 130)])
def test_sigterm_and_sigint_checkpoint_then_stop_with_128_plus_signal(tmp_path, signum, code):
    import os

    from robust_gen.training.interrupt import StopRequested

    class Signalling(ToyTask):
        def forward(self, batch, rng):
            if self.calls == 2:
                os.kill(os.getpid(), signum)  # arrives mid-step: the step ends, then the trainer stops
            return super().forward(batch, rng)

    cfg = TrainerConfig(max_steps=50, batch_size=8, checkpoint_every=100, progress=False, tensorboard=False)
    with pytest.raises(StopRequested) as stopped:
        Trainer(Signalling(), make_dataset(), cfg, tmp_path).fit()
    assert stopped.value.exit_code == code and stopped.value.step == 3
    assert "stopped at step 3" in str(stopped.value)
    assert load_latest_checkpoint(tmp_path / "checkpoints").step == 3
    assert json.loads((tmp_path / "summary.json").read_text())["status"].startswith("stopped")


def test_full_disk_while_writing_optimizer_state_says_no_space_and_where(tmp_path, monkeypatch):
    import collections

    def stream_error(*args, **kwargs):  # what torch.save raises on ENOSPC
        raise RuntimeError("[enforce fail at inline_container.cc:672] . basic_ios::clear: iostream error")

    monkeypatch.setattr("robust_gen.training.checkpoint.torch.save", stream_error)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr("robust_gen.training.checkpoint.shutil.disk_usage", lambda path: usage(10, 10, 0))
    with pytest.raises(OSError, match=f"no space left on the device holding {tmp_path}") as error:
        save_checkpoint(tmp_path, 2, tensors={"model": {"w": torch.zeros(3)}}, objects={"optimizer": {}})
    assert error.value.errno == 28
