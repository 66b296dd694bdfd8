"""The Grad-TTS recipe end to end on a tiny espeak corpus: smoke runs, resume, synthesis, vocoders, bad input."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from robust_gen.corruption import NoCorruption
from robust_gen.speech.data.audio import load_audio, save_audio
from robust_gen.speech.data.dataset import (
    BadUtteranceError,
    DataChecks,
    MelCache,
    build_training_set,
    prepare_utterances,
)
from robust_gen.speech.data.mel import MelConfig, MelSpectrogram
from robust_gen.speech.synthesis import load_trained
from robust_gen.speech.vocoder import (
    GriffinLimVocoder,
    SpeechBrainHifiGan,
    build_vocoder,
    write_local_hifigan,
)
from robust_gen.training.checkpoint import load_latest_checkpoint
from robust_gen.training.metrics import read_metrics
from robust_gen.training.recipe import compose_config, register_resolvers

REPO = Path(__file__).resolve().parents[1]
VOICES = "[us_f1,us_m1,gb_f2]"
SMOKE = [
    "model=gradtts_micro",
    f"data.voices={VOICES}",
    "data.utterances_per_voice=4",
    "trainer.max_steps=2",
    "trainer.batch_size=4",
    "trainer.tensorboard=false",
    "trainer.progress=false",
    "segment_seconds=0.25",
    "samples.texts=[Hi there.]",
    "samples.n_timesteps=2",
    "vocoder.n_iter=2",
]
TINY_HIFIGAN = dict(
    in_channels=80, out_channels=1, resblock_type="1", resblock_dilation_sizes=[[1, 3, 5]], resblock_kernel_sizes=[3],
    upsample_kernel_sizes=[16, 16, 4, 4], upsample_initial_channel=16, upsample_factors=[8, 8, 2, 2],
)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"tts_{name}", REPO / "recipes" / "tts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A private cache (corpus + mels) for this module, so tests never touch ~/.cache."""
    folder = tmp_path_factory.mktemp("cache")
    previous = os.environ.get("ROBUST_GEN_CACHE")
    os.environ["ROBUST_GEN_CACHE"] = str(folder)
    register_resolvers()
    yield folder
    if previous is None:
        os.environ.pop("ROBUST_GEN_CACHE", None)
    else:
        os.environ["ROBUST_GEN_CACHE"] = previous


def _compose(name: str = "train", overrides=()):
    return compose_config("tts", name, overrides)


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("train")


@pytest.fixture(scope="module")
def multi_run(cache_dir, recipe, tmp_path_factory):
    """Multi-speaker, l2, no corruption, Griffin-Lim samples: the default recipe at micro size."""
    run_dir = tmp_path_factory.mktemp("multi")
    summary = recipe.train(_compose(overrides=SMOKE), run_dir)
    return run_dir, summary


def check_run_outputs(run_dir: Path, speakers: list[str]) -> list[dict]:
    for name in ("config.yaml", "speakers.json", "corruption_manifest.json", "skipped_utterances.json",
                 "metrics.jsonl", "summary.json"):  # fmt: skip
        assert (run_dir / name).is_file(), name
    checkpoint = load_latest_checkpoint(run_dir / "checkpoints")
    assert checkpoint is not None and checkpoint.step == 2 and "speaker_ids" in checkpoint.config_yaml
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss/diffusion" in r]
    assert rows[-1]["step"] == 2
    assert all(math.isfinite(rows[-1][f"loss/{k}"]) for k in ("duration", "prior", "diffusion"))
    sample_dir = run_dir / "samples" / "step_0000002"
    samples = [json.loads(line) for line in (sample_dir / "samples.jsonl").read_text().splitlines()]
    assert [s["speaker"] for s in samples] == speakers
    for sample in samples:
        wav, rate = sf.read(sample_dir / sample["path"])
        assert rate == 22050 and len(wav) == sample["frames"] * 256 and np.isfinite(wav).all()
        assert (
            sample["path"] == f"{sample['speaker']}_0.wav"
            and (sample_dir / sample["png"]).stat().st_size > 1000
        )
        # level per file (issue 17); the mels are checked against the training range the checkpoint carries
        assert sample["rms_dbfs"] == pytest.approx(20 * np.log10(np.sqrt(np.mean(wav**2))), abs=0.05)
        assert isinstance(sample["mel_out_of_range"], int) and sample["mel_out_of_range"] >= 0
    assert "mel_range" in checkpoint.config_yaml
    return samples


def test_smoke_multi_speaker_l2_griffin_lim(multi_run):
    run_dir, summary = multi_run
    assert summary["step"] == 2
    assert json.loads((run_dir / "speakers.json").read_text()) == {"gb_f2": 0, "us_f1": 1, "us_m1": 2}
    check_run_outputs(run_dir, ["us_f1", "us_m1"])  # the data's target and contaminant
    config = OmegaConf.load(run_dir / "config.yaml")
    assert config.loss._target_.endswith("L2Loss") and config.speaker_ids.us_f1 == 1


def test_smoke_single_speaker_scheduled_huber_speaker_mix_hifigan(cache_dir, recipe, tmp_path):
    vocoder_dir = write_local_hifigan(tmp_path / "hifigan", TINY_HIFIGAN)
    overrides = [*SMOKE, "loss=pseudo_huber", "loss.schedule=snr", "data.single_speaker=true",
                 "corruption=speaker_mix", "corruption.ratio=0.5", "vocoder.kind=hifigan",
                 f"vocoder.source={vocoder_dir}"]  # fmt: skip
    run_dir = tmp_path / "run"
    recipe.train(_compose(overrides=overrides), run_dir)
    assert json.loads((run_dir / "speakers.json").read_text()) == {"us_f1": 0}
    manifest = json.loads((run_dir / "corruption_manifest.json").read_text())
    assert manifest["params"]["target"] == "us_f1" and manifest["params"]["contaminant"] == "us_m1"
    assert len(manifest["changes"]) == 2  # round(0.5 * 4) of the target's 4 utterances replaced
    check_run_outputs(run_dir, ["us_f1"])
    trained = load_trained(run_dir)
    assert trained.model.n_speakers == 1 and trained.step == 2
    one = load_trained(run_dir / "checkpoints" / "step_00000002", use_ema=False)
    assert one.step == 2 and one.speakers == {"us_f1": 0}
    with pytest.raises(FileNotFoundError, match="no valid checkpoint"):
        load_trained(tmp_path)


def test_resume_equals_uninterrupted(cache_dir, recipe, tmp_path):
    overrides = [*SMOKE, "samples.texts=[]", "trainer.log_every=1", "trainer.batch_size=2"]
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    recipe.train(_compose(overrides=[*overrides, "trainer.max_steps=3"]), resumed)
    recipe.train(_compose(overrides=[*overrides, "trainer.max_steps=5"]), resumed)
    recipe.train(_compose(overrides=[*overrides, "trainer.max_steps=5"]), straight)
    a, b = load_latest_checkpoint(resumed / "checkpoints"), load_latest_checkpoint(straight / "checkpoints")
    assert a.step == b.step == 5
    for group in ("model", "ema"):
        for name, tensor in a.tensors[group].items():
            assert torch.equal(tensor, b.tensors[group][name]), f"{group}/{name}"

    def losses(run_dir):
        return [(r["step"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl")]

    assert losses(resumed) == losses(straight) and len(losses(straight)) == 5  # one row per step, same values


def test_hydra_entry_point_and_synthesize_recipe(cache_dir, multi_run, tmp_path, monkeypatch):
    run_dir, _ = multi_run
    synthesize = load_recipe("synthesize")
    texts = tmp_path / "texts.txt"
    texts.write_text("# to say\nGood night.|gb_f2\nSee you soon.\n")
    monkeypatch.setattr(sys, "argv", ["synthesize.py", f"run_dir={run_dir}", f"filelist={texts}",
                                      f"out_dir={tmp_path / 'out'}", "n_timesteps=2", "vocoder.n_iter=2",
                                      "speaker=us_m1"])  # fmt: skip
    synthesize.main()
    rows = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert [(r["text"], r["speaker"], r["path"]) for r in rows] == [
        ("Good night.", "gb_f2", "gb_f2_0.wav"),
        ("See you soon.", "us_m1", "us_m1_0.wav"),
    ]
    cfg = _compose("synthesize", [f"run_dir={run_dir}", "text=Hello.", "speaker=nobody"])
    with pytest.raises(ValueError, match="unknown speaker"):
        synthesize.synthesize(cfg)


def test_train_entry_point_through_hydra(cache_dir, tmp_path, monkeypatch):
    train = load_recipe("train")
    run_dir = tmp_path / "hydra_run"
    monkeypatch.setattr(sys, "argv", ["train.py", *SMOKE, "samples.texts=[]", "corruption=speaker_mix",
                                      "corruption.ratio=0.25", f"hydra.run.dir={run_dir}"])  # fmt: skip
    train.main()
    assert (run_dir / ".hydra" / "overrides.yaml").is_file() and (
        run_dir / "checkpoints" / "latest"
    ).is_file()
    manifest = json.loads((run_dir / "corruption_manifest.json").read_text())
    assert manifest["kind"] == "speaker_contamination" and len(manifest["changes"]) == 1


@pytest.mark.parametrize("model", ["gradtts_micro", "gradtts_tiny", "gradtts_paper"])
@pytest.mark.parametrize("data", ["espeak", "filelist", "ljspeech", "libritts"])
def test_every_config_composes(cache_dir, data, model):
    cfg = _compose(
        overrides=[f"data={data}", f"model={model}", "loss=pseudo_huber", "corruption=speaker_mix"]
    )
    assert cfg.data.source == data and "on_bad" in cfg.data
    assert cfg.model._target_ == "robust_gen.speech.gradtts.model.GradTTS"
    paper = _compose(overrides=["+experiment=paper"])
    assert paper.model.decoder_dim == 64 and paper.segment_seconds == 2.0 and paper.trainer.lr == 1e-4


# -------------------------------------------------------------------------------------------------- vocoders
def test_griffin_lim_inverts_real_speech(multi_run):
    run_dir, _ = multi_run
    trained = load_trained(run_dir)
    clip = next(Path(os.environ["ROBUST_GEN_CACHE"]).glob("corpus/*/us_f1/*.wav"))
    mel = MelSpectrogram(trained.mel_config)(load_audio(clip, 22050))
    assert trained.mel_range.check(mel)[1] == 0  # real speech of a training voice lies in the training range
    wav = build_vocoder("griffin_lim", mel_config=trained.mel_config, n_iter=16)(mel[None])[0]
    assert wav.shape == (mel.shape[-1] * 256,)
    again = MelSpectrogram(trained.mel_config)(wav)
    assert (again - mel).abs().mean() < 1.0  # the reconstruction has the same spectrum (mean |log ratio|)


def test_speechbrain_hifigan_loads_offline_through_from_hparams(tmp_path):
    from speechbrain.lobes.models.HifiGAN import HifiganGenerator

    torch.manual_seed(0)
    saved = HifiganGenerator(**TINY_HIFIGAN).state_dict()
    folder = write_local_hifigan(tmp_path / "vocoder", TINY_HIFIGAN, saved)
    vocoder = SpeechBrainHifiGan(folder, savedir=tmp_path / "save")
    loaded = vocoder.model.hparams.generator.state_dict()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)  # weights came from generator.ckpt
    wav = vocoder(torch.randn(2, 80, 12) - 5)
    assert wav.shape == (2, 12 * 256) and wav.abs().max() <= 1.0
    with pytest.raises(FileNotFoundError, match=r"hyperparams\.yaml"):
        SpeechBrainHifiGan(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"vocoder\.source"):
        build_vocoder("hifigan")


# ------------------------------------------------------------------------------------------------- bad input
def write_wav(path: Path, wav: torch.Tensor) -> str:
    save_audio(path, wav, 22050)
    return str(path)


@pytest.fixture
def bad_filelist(tmp_path):
    """One good utterance and one of each kind of bad input, as a path|text|speaker filelist."""
    torch.manual_seed(0)
    speech = 0.3 * torch.randn(22050)
    (tmp_path / "garbage.wav").write_bytes(b"not a wav file at all")
    cases = {
        "good": (write_wav(tmp_path / "good.wav", speech), "Hello there.", "a"),
        "missing": (str(tmp_path / "missing.wav"), "Hello there.", "a"),
        "unreadable": (str(tmp_path / "garbage.wav"), "Hello there.", "a"),
        "silent": (write_wav(tmp_path / "silent.wav", torch.zeros(22050)), "Hello there.", "a"),
        "too short": (write_wav(tmp_path / "short.wav", speech[:1000]), "Hello there.", "a"),
        "no symbols": (write_wav(tmp_path / "nosym.wav", speech), "~~~", "a"),
        "mel has": (
            write_wav(tmp_path / "fast.wav", speech[:8000]),
            "The quick brown fox jumps over it.",
            "a",
        ),
    }
    return tmp_path, cases


def build(tmp_path: Path, lines, on_bad: str, run_dir: Path):
    filelist = tmp_path / f"list_{on_bad}.txt"
    filelist.write_text("".join("|".join(line) + "\n" for line in lines))
    data = {
        "source": "filelist",
        "path": str(filelist),
        "on_bad": on_bad,
        "cache_dir": str(tmp_path / "mels"),
    }
    return build_training_set(data, mel_config=MelConfig(), corruption=NoCorruption(), run_dir=run_dir)


@pytest.mark.parametrize("case", ["missing", "unreadable", "silent", "too short", "no symbols", "mel has"])
def test_bad_input_raises_a_clear_error(bad_filelist, case):
    tmp_path, cases = bad_filelist
    path = Path(cases[case][0]).name
    error = FileNotFoundError if case == "missing" else BadUtteranceError
    with pytest.raises(error, match=case if case != "missing" else "does not exist") as info:
        build(tmp_path, [cases["good"], cases[case]], "error", tmp_path / "run")
    assert path in str(info.value) and "data.on_bad=skip" in str(info.value)


def test_bad_input_is_skipped_counted_and_listed(bad_filelist, caplog):
    tmp_path, cases = bad_filelist
    run_dir = tmp_path / "run"
    training_set = build(tmp_path, list(cases.values()), "skip", run_dir)
    assert len(training_set.dataset) == 1 and training_set.dataset.records[0]["path"].endswith("good.wav")
    listed = json.loads((run_dir / "skipped_utterances.json").read_text())
    assert listed["count"] == 6 == len(training_set.skipped)
    reasons = " ".join(u["reason"] for u in listed["utterances"])
    for case in ("does not exist", "unreadable", "silent", "too short", "no symbols", "mel has"):
        assert case in reasons
    assert "skipped 6 bad utterance(s)" in caplog.text


def test_unknown_speaker_of_a_resumed_run(bad_filelist):
    tmp_path, cases = bad_filelist
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "speakers.json").write_text('{"b": 0}')  # the model of this run knows speaker "b" only
    with pytest.raises(BadUtteranceError, match="unknown speaker 'a'"):
        build(tmp_path, [cases["good"]], "error", run_dir)


def test_mels_are_cached_once(bad_filelist, monkeypatch):
    tmp_path, cases = bad_filelist
    cache = MelCache(tmp_path / "mels", MelConfig())
    record = {"path": cases["good"][0], "text": "Hello there.", "speaker": "a"}
    first = prepare_utterances([record], cache=cache)

    def fail(*args, **kwargs):
        raise AssertionError("the mel was recomputed")

    monkeypatch.setattr("robust_gen.speech.data.mel_cache.load_audio", fail)
    second = prepare_utterances([record], cache=cache, checks=DataChecks())
    assert first.records[0]["mel_file"] == second.records[0]["mel_file"]
    assert first.records[0]["num_frames"] == second.records[0]["num_frames"] == 86


def test_griffin_lim_rejects_bad_mels():
    with pytest.raises(ValueError, match="log-mels"):
        GriffinLimVocoder(n_iter=2)(torch.zeros(80, 10))


def test_mel_excursions_tool_measures_raw_mels_against_the_runs_range(multi_run, tmp_path, capsys):
    """tools/mel_excursions.py: a run's raw (unclamped) samples against its stored training range; a tightened
    range makes every file count; a run without a range is one clear error."""
    import shutil

    import yaml

    run_dir, _ = multi_run
    spec = importlib.util.spec_from_file_location("mel_excursions", REPO / "tools" / "mel_excursions.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "rows.json"
    assert tool.main([str(run_dir), "--texts", "A short test.", "Another one.", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["files"] == 2 and 0 <= row["files_above"] <= 2 and 0 <= row["worst_band"] < 80
    copy = tmp_path / "tight"
    shutil.copytree(run_dir, copy)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["mel_range"]["high"] = [-50.0] * 80  # nothing real lies below -50: every value is an excursion
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    assert tool.main([str(copy), "--texts", "A short test.", "--out", str(out)]) == 0
    (tight,) = json.loads(out.read_text())
    assert tight["files_above"] == 1 and tight["max_excess"] > 30
    del config["mel_range"]
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as stop:
        tool.main([str(copy), "--texts", "A short test."])
    assert stop.value.code == 2 and "no mel_range in config.yaml" in capsys.readouterr().err
