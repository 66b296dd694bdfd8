"""The install: the torch trio pinned exactly, the lock in step with pyproject, a clear error on a mismatch."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

import robust_gen.environment as environment
from robust_gen.environment import FAMILY, TorchFamilyMismatch, check_torch_family, family_problems

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from check_latest import version_changes  # noqa: E402
from lock import parse_lock  # noqa: E402


def _dependencies() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [line for lines in project["optional-dependencies"].values() for line in lines]
    return [Requirement(line) for line in project["dependencies"] + extras]


def test_the_torch_family_is_pinned_exactly():
    pins = {req.name: str(req.specifier) for req in _dependencies() if req.name in FAMILY}
    assert set(pins) == set(FAMILY)
    for name, spec in pins.items():
        assert spec.startswith("==") and "*" not in spec, f"{name} must be pinned to one version, not {spec}"


def test_the_lock_satisfies_every_requirement_of_pyproject():
    """A dependency added or narrowed in pyproject without `python tools/lock.py` fails here, not on a user's."""
    locked = parse_lock((ROOT / "constraints.txt").read_text())
    for req in _dependencies():
        name = req.name.lower().replace("_", "-")
        assert name in locked, f"{req.name} is missing from constraints.txt: run python tools/lock.py"
        assert SpecifierSet(str(req.specifier)).contains(locked[name], prereleases=True), (
            f"constraints.txt has {name}=={locked[name]}, pyproject wants {req}: run python tools/lock.py"
        )


def test_the_installed_trio_loads_and_runs():
    import torch
    import torchaudio.functional

    check_torch_family()
    wave = torch.sin(torch.linspace(0, 100, 1600))
    resampled = torchaudio.functional.resample(wave, 16000, 8000)
    assert resampled.shape == (800,)
    assert family_problems(environment.required_versions(), environment.installed_versions()) == []


def test_a_newer_torchaudio_is_named_with_its_fix():
    required = {"torch": "==2.11.0", "torchaudio": "==2.11.0", "torchvision": "==0.26.0"}
    installed = {"torch": "2.11.0+cu130", "torchaudio": "2.11.1", "torchvision": None}
    with pytest.raises(TorchFamilyMismatch) as caught:
        check_torch_family(required=required, installed=installed)
    message = str(caught.value)
    assert "torchaudio 2.11.1 is installed, robust_gen needs torchaudio==2.11.0" in message
    assert "torchvision is not installed" in message
    assert 'pip install "torch==2.11.0" "torchaudio==2.11.0" "torchvision==0.26.0"' in message
    assert "torch 2.11.0" not in message  # a local build label (+cu130) satisfies the pin


def test_a_pair_that_does_not_load_is_explained(monkeypatch):
    """Versions that look right but libraries that do not link: the import error becomes the same message."""

    def broken_import(name, *args, **kwargs):
        raise OSError("libtorchaudio.so: undefined symbol: torch_exception_get_what_without_backtrace")

    monkeypatch.setattr(environment, "_checked", False)
    monkeypatch.setattr(environment.importlib, "import_module", broken_import)
    with pytest.raises(TorchFamilyMismatch) as caught:
        check_torch_family()
    message = str(caught.value)
    assert "undefined symbol" in message and "torchaudio 2.11.0 is installed" in message
    assert "fix: pip install" in message


def _fake_distribution(root: Path, name: str, version: str) -> None:
    info = root / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


@pytest.mark.parametrize("entry", ["recipes/tts/train.py", "recipes/image/train.py", "tools/speaker_sim.py"])
def test_entry_points_stop_with_one_message_on_a_mismatch(tmp_path, entry):
    """Simulate torchaudio 2.11.1 on sys.path ahead of the real one: the entry point exits 2 before importing it."""
    _fake_distribution(tmp_path, "torchaudio", "2.11.1")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    env.pop(environment.SKIP_ENV, None)
    done = subprocess.run([sys.executable, str(ROOT / entry)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "torchaudio 2.11.1 is installed, robust_gen needs torchaudio==2.11.0" in done.stderr
    assert "fix: pip install" in done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == [tmp_path / "torchaudio-2.11.1.dist-info"]  # nothing written


def test_check_latest_lists_what_would_change():
    locked = parse_lock("torch==2.11.0\nnumpy==2.4.6 ; python_full_version < '3.12'\nnumpy==2.5.5 ; x\n")
    assert locked == {"torch": "2.11.0", "numpy": "2.4.6"}
    assert version_changes(locked, {"torch": "2.11.0", "numpy": "2.5.0"}) == [
        {"package": "numpy", "locked": "2.4.6", "latest": "2.5.0"}
    ]


def test_check_latest_dry_run_plans_install_and_tests():
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "check_latest.py"), "--dry-run", "--", "-q"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    planned = done.stdout
    assert "uv pip compile pyproject.toml --all-extras --universal" in planned and "--upgrade" in planned
    assert 'pip install --quiet -e .[dev]' in planned and "-c" not in planned.split("install --quiet -e")[1].split("\n")[0]
    assert "-m pytest -q" in planned
