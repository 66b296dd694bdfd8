"""The recipes' entry wrapper: whole config checked before work, one-line errors, no folder left behind, lock first."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from robust_gen.training.entry import check_added_keys, check_missing, check_objects, check_resume
from robust_gen.training.recipe import CONFIG_ROOT, compose_config

ROOT = Path(__file__).resolve().parents[1]


def _run(args, cwd, timeout=120):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(("overrides", "message"), [
    (["loss=pseudo_huber", "loss.schedule=snrr"], "loss: unknown pseudo-Huber delta schedule 'snrr'"),
    (["corruption=label_flip", "corruption.ratio=1.5"], "corruption: ratio must be a number in [0, 1]"),
])
def test_loss_and_corruption_settings_fail_before_any_work(overrides, message):
    cfg = compose_config("image", overrides=overrides)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_objects(cfg)


def test_added_keys_and_missing_values_are_named():
    roots = [CONFIG_ROOT / "image", CONFIG_ROOT / "shared"]
    check_added_keys(["+experiment=huber_image_paper", "+trainer.extra.tag=x"], roots)
    cfg = compose_config("image", overrides=["data=folder", "data.root=x", "+data.on_bda=skip"])
    with pytest.raises(ValueError, match=r"unknown key data.on_bda .*keys of data: \[.*'on_bad'"):
        check_added_keys(["+data.on_bda=skip"], roots, cfg)
    with pytest.raises(ValueError, match=r"data.root is required here \(data: source=folder\).*data.root=<value>"):
        check_missing(compose_config("image", overrides=["data=folder"]))
    check_missing(compose_config("image", overrides=["corruption=label_flip"]))  # num_classes comes from the data


def test_resuming_with_changed_settings_is_refused_before_anything_is_written(tmp_path):
    cfg = compose_config("image", overrides=["trainer.lr=0.001"])
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (tmp_path / "checkpoints" / "step_00000004").mkdir(parents=True)
    check_resume(compose_config("image", overrides=["trainer.lr=0.001", "trainer.max_steps=9"]), tmp_path)
    # how a study samples and evaluates the trained run is not a training setting
    study = compose_config("image", overrides=["trainer.lr=0.001", "+experiment=slight_label", "finish.sample=true"])
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(study, resolve=True))
    check_resume(compose_config("image", overrides=["trainer.lr=0.001", "+experiment=slight_label",
                                                    "finish.sample=false", "study.sample=['num_images=10']"]), tmp_path)
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    with pytest.raises(ValueError, match=r"loss._target_: .*L2Loss.* -> .*L1Loss.*; trainer.lr: 0.001 -> 0.5"):
        check_resume(compose_config("image", overrides=["trainer.lr=0.5", "loss=l1"]), tmp_path)
    check_resume(compose_config("image", overrides=["trainer.lr=0.5", "trainer.restart=true"]), tmp_path)
    assert not (tmp_path / "checkpoints").exists() and len(list(tmp_path.glob("checkpoints.replaced-*"))) == 1


def test_a_bad_value_prints_one_line_naming_the_key_and_leaves_no_folder(tmp_path):
    done = _run([str(ROOT / "recipes" / "image" / "train.py"), "trainer.max_steps=abc"], tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[0] == "error: trainer.max_steps must be an integer >= 1, got 'abc'" and len(lines) <= 2, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists(), "the run folder Hydra made for a refused command must go"


def test_sampling_a_missing_run_creates_nothing_inside_it(tmp_path):
    done = _run([str(ROOT / "recipes" / "image" / "sample.py"), "run_dir=runs/image/nope"], tmp_path)
    assert done.returncode == 2 and "runs/image/nope/config.yaml is missing" in done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2 and "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists()
    done = _run([str(ROOT / "recipes" / "image" / "sample.py")], tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("error: run_dir is required")


def test_a_refused_second_process_writes_nothing_into_the_run(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from robust_gen.training.run_dir import lock_run
            with lock_run({str(run_dir)!r}):
                print("locked", flush=True)
                time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "config.yaml").write_text("the first process's config\n")
        done = _run([str(ROOT / "recipes" / "image" / "train.py"), f"hydra.run.dir={run_dir}"], tmp_path)
        assert done.returncode == 2 and f"run directory {run_dir} is in use by another process" in done.stderr
        assert (run_dir / ".hydra" / "config.yaml").read_text() == "the first process's config\n"
        assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", ".lock", "train.log"]
    finally:
        holder.kill()
        holder.wait()


def test_objects_needing_values_from_the_data_are_not_refused_early():
    check_objects(compose_config("tts", overrides=["corruption=speaker_mix"]))  # target / contaminant come later
    check_objects(compose_config("image", overrides=["corruption=label_flip"]))  # num_classes comes later


def test_sigterm_during_the_autoencoder_stage_says_so_and_exits_143(tmp_path):
    import signal
    import time

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, str(ROOT / "recipes" / "image" / "train.py"), f"hydra.run.dir={tmp_path / 'run'}",
               "data.limit=24", "data.resolution=16", "autoencoder.train.steps=100000", "autoencoder.train.batch_size=4"]
    victim = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    deadline, seen = time.monotonic() + 120, ""
    while "autoencoder" not in seen and time.monotonic() < deadline:  # its progress bar is on stderr
        seen += victim.stderr.read(64)
    victim.send_signal(signal.SIGTERM)
    rest = victim.communicate(timeout=60)[1]
    assert victim.returncode == 143
    assert "stopped by SIGTERM before training started" in rest and "Traceback" not in rest


@pytest.mark.parametrize("override, message", [
    ("vocoder.padding=zero", "error: vocoder.padding must be one of ['reflect', 'zeros'] or null, got 'zero'"),
    ("vocoder.kind=hifigan", "error: vocoder.kind=hifigan needs vocoder.source: a SpeechBrain hub id or a local "
                             "folder (tools/import_gradtts.py writes one from the authors' hifigan.pt)"),
])  # fmt: skip
def test_a_bad_vocoder_setting_of_the_speech_recipe_is_one_line_before_any_work(tmp_path, override, message):
    done = _run([str(ROOT / "recipes" / "tts" / "train.py"), override], tmp_path)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[0] == message, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "runs").exists()


def test_a_user_error_in_one_job_of_a_multirun_fails_that_job_only(tmp_path):
    tiny = ["data.limit=20", "data.resolution=8", "autoencoder=none", "trainer.batch_size=4", "trainer.progress=false",
            "trainer.tensorboard=false", "trainer.warmup_steps=0", "samples.num_per_class=1", "sampler.num_steps=2",
            "model.backbone.block_out_channels=[8,16]", "model.backbone.attention_head_dim=2",
            "model.backbone.norm_num_groups=4"]  # fmt: skip
    sweep = tmp_path / "sweep"
    done = _run([str(ROOT / "recipes" / "image" / "train.py"), "-m", "trainer.max_steps=0,1", f"hydra.sweep.dir={sweep}",
                 *tiny], tmp_path, timeout=300)  # fmt: skip
    assert done.returncode != 0
    assert "error: trainer.max_steps must be an integer >= 1, got 0" in done.stderr, done.stderr[-2000:]
    finished = [p.parent.name for p in sweep.glob("*/summary.json")]
    assert finished == ["1"]  # job 1, after the refused job 0, still trained
