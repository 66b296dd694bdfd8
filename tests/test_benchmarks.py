"""Smoke tests of benchmarks/bench_sampling.py, bench_image_step.py and bench_memory.py: they run on tiny settings
and write figures of the right shape. Timings are never asserted; FLOP counts, which are exact, are."""

from __future__ import annotations

import doctest
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(autouse=True)
def _restore_threads():
    """The benchmarks set torch's thread count (--threads); give the rest of the session its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _load(name: str):
    if str(BENCHMARKS) not in sys.path:  # the scripts import their helpers (_flops, _image_setup) as top-level modules
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("helper", ["_flops", "_image_setup"])
def test_helper_doctests_pass(helper):
    result = doctest.testmod(_load(helper), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_bench_sampling_quick_writes_every_figure(tmp_path, capsys):
    out = tmp_path / "sampling.json"
    figures = _load("bench_sampling").main(["--quick", "--device", "cpu", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(figures))
    image = figures["image"]
    assert image["latent_shape"] == [4, 8, 8] and image["denoiser_parameters"] > 0
    assert [(r["sampler"], r["steps"]) for r in image["results"]] == [("dpm_solver", 3), ("ddim", 3)]
    for row in image["results"]:
        assert row["batched"]["images"] == 4 and row["one_at_a_time"]["images"] == 2
        assert row["batched"]["images_per_s"] > 0 and row["one_at_a_time"]["images_per_s"] > 0 and row["ratio"] > 0
        # guided sampling: one denoiser call per step, both branches stacked (4 images -> batch 8)
        assert row["batched"]["denoiser_calls"] == 3 and row["batched"]["denoiser_batch_sizes"] == [8]
        assert row["one_at_a_time"]["denoiser_batch_sizes"] == [2]
        assert row["cfg_branches_in_one_forward"] is True
    (speech,) = figures["speech"]["results"]
    assert speech["model"] == "gradtts_tiny" and speech["n_timesteps"] == 2
    for mode in ("batched", "one_at_a_time"):
        timing = speech[mode]
        assert timing["utterances"] == 2 and timing["audio_seconds"] > 0
        assert timing["rtf"] >= timing["rtf_text_to_mel"] > 0
    # constant durations: both ways synthesize the same amount of audio
    assert speech["batched"]["audio_seconds"] == pytest.approx(speech["one_at_a_time"]["audio_seconds"])
    printed = capsys.readouterr().out
    assert "one batched forward" in printed and "RTF" in printed


def test_bench_sampling_rejects_bad_arguments():
    bench = _load("bench_sampling")
    for argv in (["--samplers", "euler:10"], ["--samplers", "ddim"], ["--parts", "video"], ["--n-timesteps", "0"]):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)


def test_constant_durations_give_each_token_that_many_frames():
    bench = _load("bench_sampling")
    from robust_gen.speech.gradtts.model import GradTTS

    model = GradTTS.tiny()
    bench.constant_durations(model, 3)
    tokens, lengths = torch.randint(1, 149, (2, 7)), torch.tensor([7, 5])
    _, frames = model.synthesize(tokens, lengths, n_timesteps=1, generator=torch.Generator().manual_seed(0))
    assert frames.tolist() == [21, 15]


@pytest.mark.parametrize("model", ["unet_tiny", "dit_tiny"])
def test_bench_image_step_counts_flops_and_mfu(model, tmp_path, capsys):
    bench = _load("bench_image_step")
    common = ["--model", model, "--steps", "1", "--warmup", "0", "--batch-size", "2", "--num-images", "8",
              "--device", "cpu", "--resolution", "16"]
    figures = bench.main([*common, "--json", str(tmp_path / "step.json")])
    assert json.loads((tmp_path / "step.json").read_text())["loops"].keys() == figures["loops"].keys()
    cached, encoding = figures["loops"]["cached latents"], figures["loops"]["VAE encode every step"]
    for loop in (cached, encoding):
        assert loop["flops_per_step"] > 0 and loop["achieved_flops"] > 0 and loop["mfu"] is None
    assert encoding["flops_per_step"] > cached["flops_per_step"]  # the encoder's convolutions come on top
    assert figures["ratio_encode_over_cached"] > 0
    assert "MFU: n/a (no peak given)" in capsys.readouterr().out

    again = bench.main([*common, "--loops", "cached", "--peak-tflops", "2.0", "--mixed-precision", "bf16"])
    (loop,) = again["loops"].values()
    assert loop["flops_per_step"] == cached["flops_per_step"]  # the count is exact and precision-independent
    assert loop["mfu"] == pytest.approx(loop["achieved_flops"] / 2e12)
    assert "ratio_encode_over_cached" not in again


def test_step_flops_scale_with_the_batch():
    bench = _load("bench_image_step")
    from _image_setup import random_task

    from robust_gen.training.recipe import compose_config

    task = random_task(compose_config("image"), latent_shape=(4, 8, 8)).train()
    counts = []
    for batch in (2, 4):
        def make_batch(indices, b=batch):
            return {"latent_mean": torch.zeros(b, 4, 8, 8), "latent_std": torch.ones(b, 4, 8, 8),
                    "label": torch.zeros(b, dtype=torch.long)}
        counts.append(bench.count_step_flops(task, make_batch, None, torch.device("cpu"), "no"))
    assert counts[0] > 0 and counts[1] == 2 * counts[0]


def test_attention_flops_are_counted_on_the_cpu():
    flops = _load("_flops")
    q = torch.randn(2, 4, 16, 8, requires_grad=True)
    attention = lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()  # noqa: E731
    forward = 2 * (2 * (2 * 4) * 16 * 16 * 8)  # Q K^T and P V: 2 FLOPs per multiply-add, batch x heads = 8
    assert flops.count_flops(attention) == 3 * forward  # backward: four products of the same size
    assert flops.count_flops(attention, math_attention=False) == 0  # the fused CPU kernel has no formula


def test_memory_benchmark_measures_both_settings():
    rows = _load("bench_memory").main(["--configs", "unet_tiny", "--batch-size", "2", "--device", "cpu", "--threads", "1"])
    assert [row["checkpointing"] for row in rows] == [False, True]
    assert all(row["batch"] == 2 and row["forward_peak"] > 0 and row["step_peak"] >= row["forward_peak"] for row in rows)


def test_bench_data_scale_fabricates_what_the_encode_step_would_leave(tmp_path):
    """The 1M row's index and shards are written without image files: training must open them as a finished
    cache (same cache key), never re-encode."""
    from robust_gen.image.data.latents import load_or_encode_shards
    from robust_gen.image.data.sources import load_folder_source
    from robust_gen.image.model.autoencoder import ImageAutoencoder

    bench = _load("bench_data_scale")
    root, index, cache = tmp_path / "images", tmp_path / "index", tmp_path / "latents"
    bench.fabricate(root, index, cache, 250, shard_size=100)
    source = load_folder_source(root, resolution=bench.RESOLUTION, lazy=True, index_dir=index)
    assert len(source.records) == 250 and source.num_classes == bench.CLASSES
    table = load_or_encode_shards(ImageAutoencoder(None, "none", 3), source.images, cache, shard_size=100)
    assert table.mean.shape == (250, 1, 3, bench.RESOLUTION, bench.RESOLUTION)
    assert tuple(table.mean[249, 0].shape) == (3, bench.RESOLUTION, bench.RESOLUTION)
