"""Two data-parallel CPU processes (gloo) train the same model as one process with the same global batch."""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

HELPER = Path(__file__).parent / "helpers" / "ddp_toy_train.py"


def test_two_processes_match_one_process(tmp_path, run_child, torchrun_two):
    run_child([sys.executable, HELPER, tmp_path / "one", "10"], cwd=tmp_path)
    torchrun_two([HELPER, tmp_path / "two", "10"], cwd=tmp_path)
    assert json.loads((tmp_path / "one" / "summary.json").read_text())["num_processes"] == 1
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["num_processes"] == 2
    one = load_file(str(tmp_path / "one" / "checkpoints" / "step_00000010" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "checkpoints" / "step_00000010" / "model.safetensors"))
    for name, weight in one.items():
        assert torch.allclose(weight, two[name], atol=1e-6), name
    # and training moved the weights at all (the comparison is not of two untouched initialisations)
    torch.manual_seed(0)
    initial = torch.nn.Linear(5, 16).weight
    assert not torch.allclose(initial, one["net.0.weight"])
