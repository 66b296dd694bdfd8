"""Fully sharded training (trainer.fsdp, FSDP2) on 2 CPU processes (gloo) trains the same model as 1 process."""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from robust_gen.training.sharding import (
    full_model_state,
    full_optimizer_state,
    is_sharded,
    load_full_model_state,
    load_full_optimizer_state,
    shard_module,
)
from robust_gen.training.trainer import TrainerConfig

HELPER = Path(__file__).parent / "helpers" / "ddp_toy_train.py"


def _checkpoint(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"step_{step:08d}" / "model.safetensors"))


def _ema(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"step_{step:08d}" / "ema.safetensors"))


def test_two_sharded_processes_match_one_process_and_resume(tmp_path, run_child, torchrun_two):
    run_child([sys.executable, HELPER, tmp_path / "one", "10"], cwd=tmp_path)
    torchrun_two([HELPER, tmp_path / "fsdp", "10", "--fsdp"], cwd=tmp_path)
    # the whole task one unit: its own weights sharded too (the pytree-registered LossTerm outputs matter here)
    torchrun_two([HELPER, tmp_path / "root", "10", "--fsdp-root"], cwd=tmp_path)
    # the same command stopped at step 6 and run again to 10 (resume from a sharded run's checkpoint)
    torchrun_two([HELPER, tmp_path / "resumed", "6", "6", "--fsdp"], cwd=tmp_path)
    torchrun_two([HELPER, tmp_path / "resumed", "10", "6", "--fsdp"], cwd=tmp_path)

    summary = json.loads((tmp_path / "fsdp" / "summary.json").read_text())
    assert summary["num_processes"] == 2
    one, sharded, resumed, root = (_checkpoint(tmp_path / d, 10) for d in ("one", "fsdp", "resumed", "root"))
    assert set(sharded) == set(one)  # full tensors under the plain names: loads into an unsharded model
    for name, weight in one.items():
        assert sharded[name].shape == weight.shape, name
        assert torch.allclose(weight, sharded[name], atol=1e-6), name
        assert torch.allclose(sharded[name], resumed[name], atol=1e-6), name
        assert torch.allclose(weight, root[name], atol=1e-6), name
    ema_one, ema_sharded = _ema(tmp_path / "one", 10), _ema(tmp_path / "fsdp", 10)
    assert set(ema_one) == set(ema_sharded)
    for name, weight in ema_one.items():
        assert torch.allclose(weight.float(), ema_sharded[name].float(), atol=1e-6), name
    # evaluation saw the gathered EMA weights in a plain module on the main process
    records = [json.loads(line) for line in (tmp_path / "fsdp" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/eval_weight_sum" in r]
    assert evals and evals[-1]["eval/eval_is_plain"] == 1.0
    assert evals[-1]["eval/eval_weight_sum"] == pytest.approx(float(ema_sharded["module.net.0.weight"].sum()), abs=1e-5)
    # and training moved the weights (not two untouched initialisations)
    torch.manual_seed(0)
    assert not torch.allclose(torch.nn.Linear(5, 16).weight, one["net.0.weight"])


def test_fsdp_needs_a_distributed_launch():
    with pytest.raises(RuntimeError, match="distributed launch"):
        shard_module(torch.nn.Linear(2, 2), [])


def test_fsdp_settings_are_checked():
    with pytest.raises(ValueError, match="fsdp_wrap"):
        TrainerConfig(fsdp=True, fsdp_wrap="BasicTransformerBlock")  # a list of class names, not one string
    assert TrainerConfig(fsdp=True, fsdp_wrap=("BasicTransformerBlock",)).fsdp_wrap == ["BasicTransformerBlock"]


def test_unsharded_modules_use_plain_state_dicts():
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.1)
    net(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    assert not is_sharded(net)
    state, opt_state = full_model_state(net), full_optimizer_state(net, optimizer)
    assert set(opt_state["state"]) == {0, 1}  # torch's own format: resumes of older checkpoints keep working
    other = torch.nn.Linear(3, 2)
    other_optimizer = torch.optim.AdamW(other.parameters(), lr=0.1)
    load_full_model_state(other, state)
    load_full_optimizer_state(other, other_optimizer, opt_state)
    assert torch.equal(other.weight, net.weight)
    assert torch.equal(other_optimizer.state_dict()["state"][0]["exp_avg"], opt_state["state"][0]["exp_avg"])


@pytest.mark.parametrize("name", ["multi_gpu", "multi_node"])
def test_accelerate_launch_configs_parse(name):
    from accelerate.commands.config.config_args import load_config_from_file

    path = Path(__file__).parents[1] / "configs" / "accelerate" / f"{name}.yaml"
    config = load_config_from_file(str(path))
    assert config.distributed_type.value == "MULTI_GPU"
    assert config.mixed_precision == "no"  # precision is the recipe's trainer.mixed_precision, not the launcher's
