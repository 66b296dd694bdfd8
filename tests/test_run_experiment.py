"""tools/run_experiment.py: every study (CPU and paper scale) composes and plans its commands (dry run)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _driver():
    spec = importlib.util.spec_from_file_location("run_experiment", ROOT / "tools" / "run_experiment.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("scale", ["cpu", "paper"])
@pytest.mark.parametrize("study", ["slight_label", "slight_caption", "huber_image", "huber_speech", "conditioning"])
def test_dry_run_plans_the_training_sweeps(study, scale, capsys):
    driver = _driver()
    assert driver.main([study, "--scale", scale, "--dry-run", "--", "trainer.max_steps=3"]) == 0
    printed = capsys.readouterr().out
    from robust_gen.experiments.studies import STUDIES

    recipe, overlays = STUDIES[study].recipe, STUDIES[study].overlays
    for overlay in overlays:
        suffix = "_paper" if scale == "paper" else ""
        assert f"recipes/{recipe}/train.py -m +experiment={overlay}{suffix}" in printed
    assert "trainer.max_steps=3" in printed
    # only the CPU-scale image studies share one small autoencoder between their runs
    assert ("_shared_autoencoder" in printed) == (recipe == "image" and scale == "cpu")


def test_unknown_study_is_refused(capsys):
    with pytest.raises(SystemExit):
        _driver().main(["no_such_study", "--dry-run"])
    assert "invalid choice" in capsys.readouterr().err


def test_overlays_trains_only_the_chosen_part_of_a_study(capsys):
    driver = _driver()
    assert driver.main(["huber_image", "--dry-run", "--overlays", "huber_image_delta", "huber_image", "--",
                        "trainer.max_steps=3"]) == 0
    printed = capsys.readouterr().out
    trained = [line.split("+experiment=")[1].split()[0] for line in printed.splitlines() if "+experiment=" in line]
    assert trained == ["huber_image", "huber_image_delta"]  # the study's order, schedules left out
    with pytest.raises(SystemExit, match="huber_image has no overlay huber_imagee; its overlays: huber_image, "):
        driver.main(["huber_image", "--dry-run", "--overlays", "huber_imagee"])
