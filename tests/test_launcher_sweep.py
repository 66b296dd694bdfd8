"""Sweeps through Hydra launchers: each job trains, samples and evaluates its own run; pre-emption requeues."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from robust_gen.experiments import driver
from robust_gen.experiments.report import collect_runs
from robust_gen.training.metrics import read_metrics
from robust_gen.training.recipe import compose_config, register_resolvers

ROOT = Path(__file__).resolve().parents[1]
register_resolvers()

TINY = [
    "data.limit=40", "data.resolution=8", "autoencoder=none", "trainer.batch_size=4", "trainer.progress=false",
    "trainer.tensorboard=false", "trainer.log_every=1", "trainer.warmup_steps=0", "samples.num_per_class=1",
    "sampler.num_steps=2", "model.backbone.block_out_channels=[8,16]", "model.backbone.attention_head_dim=2",
    "model.backbone.norm_num_groups=4",
]


def _finish_args(tmp: Path) -> list[str]:
    def listed(items: list[str]) -> str:  # a Hydra list override of quoted overrides
        return "[" + ",".join(f"'{item}'" for item in items) + "]"

    sample = ["num_images=10", "sampler.num_steps=2", "guidance_scales=[1.0]"]
    evaluate = ["references.image_size=8", "references.max_images=200", "classifier.image_size=8",
                "classifier.epochs=1", f"classifier.cache_dir={tmp / 'classifiers'}", "metrics.kid_subsets=2",
                "plot=false"]
    return ["finish.sample=true", "finish.evaluate=true", f"finish.sample_args={listed(sample)}",
            f"finish.evaluate_args={listed(evaluate)}"]


def test_a_2x2_grid_through_submitit_local_two_jobs_at_a_time_then_the_report(tmp_path):
    sweep = tmp_path / "sweep"
    command = [
        sys.executable, str(ROOT / "recipes" / "image" / "train.py"), "-m", "hydra/launcher=submitit_local",
        "hydra.sweeper.max_batch_size=2", f"hydra.sweep.dir={sweep}", "corruption=label_flip",
        "corruption.ratio=0,0.1", "loss=l2,pseudo_huber", "trainer.max_steps=2", *TINY, *_finish_args(tmp_path),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    records = collect_runs([sweep])
    assert len(records) == 4
    assert sorted((r["corruption.ratio"], r["loss.method"]) for r in records) == sorted(
        {(r["corruption.ratio"], r["loss.method"]) for r in records})  # four distinct cells
    assert len({(r["corruption.ratio"], r["loss.method"]) for r in records}) == 4
    assert all(isinstance(r.get("eval.best.fid"), float) for r in records)  # evaluated inside each job
    # the report, gathered afterwards from the run directories
    from robust_gen.experiments.report import write_study_report
    from robust_gen.experiments.studies import StudySpec

    spec = StudySpec("custom", by=("corruption.ratio", "loss.method"), x="corruption.ratio",
                     metrics=("eval.best.fid", "eval.best.conditional_accuracy"))
    files = write_study_report(records, spec, tmp_path / "report")
    table = Path(files["md"]).read_text()
    assert "eval.best.fid" in table and table.count("\n|") >= 5  # header + four rows
    assert len(list((sweep / ".submitit").iterdir())) >= 4  # the jobs went through submitit


def _recipe():
    spec = importlib.util.spec_from_file_location("image_train_recipe_launcher", ROOT / "recipes" / "image" /
                                                  "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_preemption_checkpoints_requeues_and_the_rerun_resumes_exactly(tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    train = _recipe().train
    overrides = [*TINY, "trainer.max_steps=4", "trainer.checkpoint_every=100"]
    reference = train(compose_config("image", "train", overrides), tmp_path / "uninterrupted")
    assert reference["step"] == 4

    requeued = []

    def checkpoint_and_try_requeue(signum, frame):  # stands in for submitit's job handler
        requeued.append(signum)
        raise SystemExit(-1)  # submitit exits the process after requeueing

    from robust_gen.image.task import ImageDiffusionTask

    forward = ImageDiffusionTask.forward
    calls = {"n": 0}

    def forward_then_preempt(self, batch, rng):
        calls["n"] += 1
        if calls["n"] == 2:  # SLURM's warning arrives during the second step
            os.kill(os.getpid(), signal.SIGUSR1)
        return forward(self, batch, rng)

    previous = signal.signal(signal.SIGUSR1, checkpoint_and_try_requeue)
    monkeypatch.setattr(ImageDiffusionTask, "forward", forward_then_preempt)
    try:
        with pytest.raises(SystemExit):
            train(compose_config("image", "train", overrides), tmp_path / "preempted")
    finally:
        signal.signal(signal.SIGUSR1, previous)
    monkeypatch.setattr(ImageDiffusionTask, "forward", forward)
    assert requeued == [signal.SIGUSR1]
    run = tmp_path / "preempted"
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    resumed = train(compose_config("image", "train", overrides), run)  # the requeued job
    assert resumed["step"] == 4
    losses = [(r["step"], r["loss"]) for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    expected = [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "uninterrupted" / "metrics.jsonl")
                if "loss" in r]
    assert losses == expected
    torch.set_num_threads(threads)


def test_requeue_only_when_preempted_under_submitit():
    requeued = []
    assert driver.requeue_if_preempted({"signal": None, "requeue": requeued.append}) is False
    assert driver.requeue_if_preempted({"signal": "SIGUSR1", "requeue": None}) is False
    assert driver.requeue_if_preempted({"signal": "SIGUSR1", "requeue": lambda *a: requeued.append(a)}) is True
    assert len(requeued) == 1


def test_a_launcher_job_of_the_conditioning_study_draws_its_centred_and_shifted_crops(tmp_path):
    """Under a launcher each job samples its own run: for Berrada et al.'s study that must be the study's two tags
    (the run's default control and the crop moved to the corner, same seeds and labels), not a plain sample."""
    threads = torch.get_num_threads()
    overrides = ["+experiment=conditioning", *TINY, "trainer.max_steps=2", "trainer.checkpoint_every=100",
                 "data.crop_margin=4", *_finish_args(tmp_path), "finish.evaluate=false"]
    summary = _recipe().train(compose_config("image", "train", overrides), tmp_path / "run")
    torch.set_num_threads(threads)
    samples = tmp_path / "run" / "samples"
    assert sorted(summary["finish"]["samples"]) == [str(samples / "centred"), str(samples / "shifted")]
    assert not list(samples.glob("*_g*"))  # no untagged sample beside them
    controls = {tag: json.loads((samples / tag / "study_control.json").read_text())["control"]
                for tag in ("centred", "shifted")}
    assert controls["shifted"][:2] == [0, 0] and controls["shifted"][2:] == controls["centred"][2:]
    assert controls["centred"][:2] != [0, 0]  # the default control is the centred crop (margin 4: offset 2)
    with np.load(samples / "centred" / "images.npz") as centred, np.load(samples / "shifted" / "images.npz") as moved:
        assert np.array_equal(centred["labels"], moved["labels"])
    again = driver.finish_run(tmp_path / "run", evaluate=False)  # a requeued job redoes nothing
    assert again["samples"] == []
