"""Nothing read from a run folder runs code: the payloads of issue 15, each against the real readers.

Every payload writes a marker file if it runs; each test checks the reader refuses AND the marker is absent.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from robust_gen.training.checkpoint import save_checkpoint
from robust_gen.training.recipe import SAFE_TARGETS, check_targets, load_run_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class _Payload:
    """Unpickling it creates ``marker``: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _payloads(run: Path, marker: Path) -> dict[str, dict]:
    torch.save({"x": _Payload(marker)}, run / "evil.pt")
    (run / "hubconf.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef evil():\n    return None\n")
    return {
        "torch.load re-exported": {"_target_": "torch.nn.modules.module.torch.load", "f": str(run / "evil.pt"),
                                   "weights_only": False},
        "torch.hub.load local": {"_target_": "torch.nn.modules.module.torch.hub.load", "repo_or_dir": str(run),
                                 "model": "evil", "source": "local"},
        "os.system re-exported": {"_target_": "robust_gen.training.recipe.os.system",
                                  "_args_": [f"touch {marker}"]},
        "interpolated target": {"_target_": "${evil}"},
    }


PAYLOADS = ["torch.load re-exported", "torch.hub.load local", "os.system re-exported", "interpolated target"]


def test_the_torch_load_payload_is_live_when_instantiated(tmp_path):
    """Control: without the check, instantiating the config runs the pickle (so the tests below mean something)."""
    from hydra.utils import instantiate

    marker = tmp_path / "ran"
    payload = _payloads(tmp_path, marker)["torch.load re-exported"]
    instantiate(payload)
    assert marker.exists()


@pytest.mark.parametrize("name", PAYLOADS)
def test_image_run_config_payloads_are_refused(tmp_path, name):
    from robust_gen.image.build import load_run

    marker = tmp_path / "ran"
    config = {"evil": "torch.load", "schedule": _payloads(tmp_path, marker)[name], "loss": {"_target_":
              "robust_gen.diffusion.losses.L2Loss"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "image_meta.json").write_text("{}")
    with pytest.raises(ValueError, match="refusing _target_"):
        load_run(tmp_path)
    with pytest.raises(ValueError, match="refusing _target_"):
        load_run_config(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("name", PAYLOADS)
def test_speech_checkpoint_config_payloads_are_refused(tmp_path, name):
    from robust_gen.speech.synthesis import load_trained

    marker = tmp_path / "ran"
    config = {"speaker_ids": {"a": 0}, "model": _payloads(tmp_path, marker)[name]}
    save_checkpoint(tmp_path / "checkpoints", 1, tensors={"model": {"w": torch.zeros(1)},
                    "ema": {"w": torch.zeros(1)}}, config_yaml=yaml.safe_dump(config))
    with pytest.raises(ValueError, match="refusing _target_"):
        load_trained(tmp_path)
    assert not marker.exists()


def test_the_allow_list_is_exact_names_not_prefixes():
    check_targets({"loss": {"_target_": "robust_gen.diffusion.losses.L2Loss"}})
    for target in ("torch.nn.modules.module.torch.load", "robust_gen.diffusion.losses.torch.load",
                   "robust_gen.diffusion.losses.L2Loss.__init__", "torch.nn.Linear", "robust_gen."):
        with pytest.raises(ValueError, match="refusing"):
            check_targets({"x": {"_target_": target}})


def test_every_target_of_the_shipped_configs_is_on_the_allow_list():
    """A config group that gains a class must add it to SAFE_TARGETS, or its runs could not be loaded back."""
    found = set()
    for path in CONFIGS.rglob("*.yaml"):
        for line in path.read_text().splitlines():
            if line.strip().startswith("_target_:"):
                found.add(line.split(":", 1)[1].split("#")[0].strip())
    found.discard("robust_gen.training.entry.RunDirGuard")  # Hydra's own callback, never in a saved run config
    assert found and found <= SAFE_TARGETS, sorted(found - SAFE_TARGETS)


def test_sample_captions_are_a_string_array_and_object_arrays_are_refused_unread(tmp_path):
    from robust_gen.image.eval.samples import load_samples
    from robust_gen.image.sampling import write_samples

    folder = write_samples(tmp_path / "ok", np.zeros((2, 4, 4, 1), np.uint8), [0, 1], ["a cat", "ünïcode"])
    with np.load(folder / "images.npz", allow_pickle=False) as data:
        assert data["captions"].dtype.kind == "U"
    assert load_samples(folder / "images.npz").captions == ["a cat", "ünïcode"]

    marker = tmp_path / "ran"
    crafted = tmp_path / "crafted" / "images.npz"
    crafted.parent.mkdir()
    captions = np.empty(2, dtype=object)
    captions[:] = [_Payload(marker), "b"]
    np.savez(crafted, images=np.zeros((2, 4, 4, 1), np.uint8), labels=np.array([0, 1]), captions=captions)
    assert pickle.dumps(_Payload(marker))  # the file really holds a pickle
    with pytest.raises(ValueError, match=r"object array.*never unpickled"):
        load_samples(crafted)
    assert not marker.exists()


def test_no_reader_of_run_folders_allows_pickle():
    root = Path(__file__).resolve().parents[1]
    offenders = [
        str(path.relative_to(root)) for folder in ("robust_gen", "recipes", "tools")
        for path in (root / folder).rglob("*.py")
        if "allow_pickle=True" in path.read_text() or "weights_only=False" in path.read_text()
    ]
    assert offenders == []
