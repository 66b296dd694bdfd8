"""Fault injection: SIGKILL at random moments, then the same command again, ends where an uninterrupted run ends."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from robust_gen.training.checkpoint import find_checkpoints

HELPER = Path(__file__).parent / "helpers" / "ddp_toy_train.py"
STEPS, EVERY = 60, 3


def _command(run_dir):
    return [sys.executable, str(HELPER), str(run_dir), str(STEPS), str(EVERY)]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _final(run_dir):
    path = run_dir / "checkpoints" / f"step_{STEPS:08d}"
    return {f"{f.stem}/{k}": v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def test_sigkill_at_random_points_then_resume_matches_uninterrupted(tmp_path):
    straight = tmp_path / "straight"
    subprocess.run(_command(straight), env=_env(), check=True, capture_output=True, timeout=120)
    reference = _final(straight)
    rng = random.Random(1234)
    for trial in range(3):
        run_dir = tmp_path / f"killed{trial}"
        victim = subprocess.Popen(_command(run_dir), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not find_checkpoints(run_dir / "checkpoints") and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))  # anywhere: mid-step, mid-checkpoint-write, between steps
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        subprocess.run(_command(run_dir), env=_env(), check=True, capture_output=True, timeout=120)
        resumed = _final(run_dir)
        assert resumed.keys() == reference.keys()
        for key, value in reference.items():
            assert torch.equal(value, resumed[key]), f"trial {trial}: {key} differs after kill and resume"
        assert not list((run_dir / "checkpoints").glob(".tmp-*")), "a temporary checkpoint was left behind"


def _disk_full(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_writing_samples_keeps_the_previous_ones(tmp_path, monkeypatch):
    import numpy as np

    from robust_gen.image.sampling import write_samples

    out = write_samples(tmp_path, np.zeros((2, 4, 4, 1), np.uint8), [0, 1], ["a", "b"])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr("robust_gen.training.run_dir.os.fsync", _disk_full)  # where delayed ENOSPC surfaces
    try:
        write_samples(tmp_path, np.full((2, 4, 4, 1), 255, np.uint8), [1, 0], ["c", "d"])
    except OSError as error:
        assert "No space left on device" in str(error)
    else:
        raise AssertionError("a full disk must not pass silently")
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.rglob("*.tmp")], "a temporary file was left behind"


def test_disk_full_while_writing_speech_samples_and_manifests(tmp_path, monkeypatch):
    from robust_gen.corruption import flip_labels
    from robust_gen.speech.data.audio import save_audio

    save_audio(tmp_path / "a.wav", torch.zeros(100), 22050)
    _, manifest = flip_labels([0, 1, 0, 1], 0.5, 2, seed=0)
    manifest.save(tmp_path / "manifest.json")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr("robust_gen.training.run_dir.os.fsync", _disk_full)
    for write in (lambda: save_audio(tmp_path / "a.wav", torch.ones(100) * 0.5, 22050),
                  lambda: manifest.save(tmp_path / "manifest.json")):
        try:
            write()
        except OSError as error:
            assert "No space left on device" in str(error)
        else:
            raise AssertionError("a full disk must not pass silently")
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
