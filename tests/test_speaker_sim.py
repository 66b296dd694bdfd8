"""Speaker similarity: the offline ECAPA model layout, batched embedding, inputs, reports, bad input.

A tiny ECAPA-TDNN (SpeakerModelSpec.tiny) is trained for a few steps on a tiny espeak-ng corpus once per
module and saved in the real layout, so every test goes through SpeechBrain's own loading code.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from robust_gen.speaker import (
    CSV_NAME,
    JSON_NAME,
    SpeakerEmbedder,
    SpeakerModelSpec,
    SpeakerModelUnavailable,
    SpeakerTrainingConfig,
    build_speaker_modules,
    collect_synthesized,
    evaluate_speaker_similarity,
    hyperparams_yaml,
    load_speaker_encoder,
    model_threshold,
    save_speaker_model,
    train_speaker_model,
    training_voices,
)
from robust_gen.speech.data.audio import load_audio, save_audio
from robust_gen.speech.data.corpus import DEFAULT_VOICES, HELD_OUT_VOICES, synthesize_corpus
from robust_gen.speech.data.filelists import read_filelist

REPO = Path(__file__).resolve().parents[1]
VOICES = DEFAULT_VOICES[:3]  # us_m1, gb_m2, rp_m3


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    previous = os.environ.get("ROBUST_GEN_CACHE")
    os.environ["ROBUST_GEN_CACHE"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("ROBUST_GEN_CACHE", None)
    else:
        os.environ["ROBUST_GEN_CACHE"] = previous


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, cache_root):
    root = tmp_path_factory.mktemp("corpus") / "tiny"
    return read_filelist(synthesize_corpus(root, voices=VOICES, utterances_per_voice=4, check_voices=False))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus):
    model_dir = tmp_path_factory.mktemp("models") / "tiny"
    config = SpeakerTrainingConfig(
        steps=3, batch_size=6, crop_seconds=0.5, warmup_steps=1, log_every=1, norm_utterances_per_speaker=2
    )
    result = train_speaker_model(corpus, SpeakerModelSpec.tiny(), config, model_dir=model_dir)
    save_speaker_model(result, model_dir)
    return result, model_dir


@pytest.fixture(scope="module")
def embedder(trained):
    return SpeakerEmbedder(load_speaker_encoder(trained[1]), batch_size=4, progress=False)


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test: offline paths must not even try."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def by_speaker(records):
    groups = {}
    for record in records:
        groups.setdefault(record["speaker"], []).append(Path(record["path"]))
    return groups


def make_run(root: Path, steps_to_files: dict[int, list[tuple[str, Path]]], *, name_speaker=False) -> Path:
    """A speech-recipe run directory: samples/step_XXXXXXX/<speaker>_<i>.wav + samples.jsonl."""
    for step, files in steps_to_files.items():
        folder = root / "samples" / f"step_{step:07d}"
        folder.mkdir(parents=True)
        lines = []
        for index, (speaker, source) in enumerate(files):
            name = f"{speaker}_{index}.wav"
            shutil.copy(source, folder / name)
            entry = {"path": name, "text": "Some text."}
            if not name_speaker:
                entry["speaker"] = speaker
            lines.append(json.dumps(entry))
        (folder / "samples.jsonl").write_text("\n".join(lines) + "\n")
    return root


# ---------------------------------------------------------------------------------------------------
# The saved model directory, through SpeechBrain's own loader.


def test_model_dir_loads_offline_through_from_hparams(trained, corpus, tmp_path, monkeypatch, no_network):
    from speechbrain.inference.speaker import EncoderClassifier

    result, model_dir = trained
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    moved = tmp_path / "moved_model"
    shutil.copytree(model_dir, moved)  # the directory must not depend on where it was written
    before = sorted((p.name, p.is_symlink()) for p in moved.iterdir())
    encoder = EncoderClassifier.from_hparams(source=str(moved), savedir=str(moved))
    assert sorted((p.name, p.is_symlink()) for p in moved.iterdir()) == before  # nothing linked or written
    wav = load_audio(corpus[0]["path"], 16000)[None]
    with torch.no_grad():
        loaded = encoder.encode_batch(wav)
        hparams = result.modules
        expected = hparams["embedding_model"](
            hparams["mean_var_norm"](hparams["compute_features"](wav), torch.ones(1))
        )
    assert loaded.shape == (1, 1, 16)
    torch.testing.assert_close(loaded, expected)  # the trained weights, not a fresh initialization
    _, _, _, labels = encoder.classify_batch(wav)
    assert labels[0] in result.speakers
    assert (moved / "hyperparams.yaml").read_text().count("huggingface") == 0


def test_training_is_reproducible(corpus, trained):
    result, _ = trained
    again = train_speaker_model(
        corpus, result.spec, SpeakerTrainingConfig(**result.facts["config"]), model_dir="x"
    )
    for name in ("embedding_model", "classifier"):
        for key, value in result.modules[name].state_dict().items():
            torch.testing.assert_close(again.modules[name].state_dict()[key], value, rtol=0, atol=0)
    assert result.facts["num_speakers"] == 3 and result.facts["num_utterances"] == 12


def test_load_speaker_encoder_reads_a_moved_dir_without_savedir(trained, tmp_path, no_network):
    moved = tmp_path / "elsewhere"
    shutil.copytree(trained[1], moved)
    encoder = load_speaker_encoder(moved)
    assert sorted(p.name for p in moved.iterdir()) == sorted(p.name for p in trained[1].iterdir())
    assert (
        SpeakerEmbedder(encoder).fingerprint == SpeakerEmbedder(load_speaker_encoder(trained[1])).fingerprint
    )


def test_incomplete_model_dir_is_a_clear_error(trained, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(trained[1], broken)
    (broken / "embedding_model.ckpt").unlink()
    with pytest.raises(SpeakerModelUnavailable, match=r"broken.*recipes/speaker/train.py"):
        load_speaker_encoder(broken)
    (broken / "hyperparams.yaml").unlink()
    with pytest.raises(SpeakerModelUnavailable, match=r"no hyperparams\.yaml"):
        load_speaker_encoder(broken)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_speaker_encoder(tmp_path / "missing" / "model")
    with pytest.raises(ValueError, match=r"CUDA is not available|device must be"):
        load_speaker_encoder(trained[1], device="cuda:7" if not torch.cuda.is_available() else "tpu")


def test_hub_model_offline_fails_fast_naming_the_offline_model(
    tmp_path, monkeypatch, no_network, capsys, cache_root
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SpeakerModelUnavailable) as error:
        load_speaker_encoder("speechbrain/spkrec-ecapa-voxceleb", cache_dir=tmp_path)
    message = str(error.value)
    assert (
        "HF_HUB_OFFLINE" in message and "python recipes/speaker/train.py" in message and "--model" in message
    )
    tool = _load_script(REPO / "tools" / "speaker_sim.py", "speaker_sim_tool")
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--refs", str(tmp_path), "--synth", str(tmp_path), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "recipes/speaker/train.py" in capsys.readouterr().err


def test_unreachable_hub_fails_with_the_offline_alternative(tmp_path, monkeypatch, cache_root):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv(
        "HF_ENDPOINT", "http://127.0.0.1:9"
    )  # the discard port: refused at once, no traffic out
    with pytest.raises(
        SpeakerModelUnavailable, match=r"did not answer within 0\.5 s.*recipes/speaker/train\.py"
    ):
        load_speaker_encoder("speechbrain/spkrec-ecapa-voxceleb", cache_dir=tmp_path, hub_timeout=0.5)


def test_calibrated_threshold_is_read_from_the_model_dir(trained, tmp_path):
    model = tmp_path / "calibrated"
    shutil.copytree(trained[1], model)
    assert model_threshold(model) is None
    (model / "calibration.json").write_text(json.dumps({"threshold": 0.42, "eer": 0.01}))
    assert model_threshold(model) == 0.42
    (model / "calibration.json").write_text("{}")
    with pytest.raises(ValueError, match="calibration"):
        model_threshold(model)


# ---------------------------------------------------------------------------------------------------
# Embedding.


def test_similarity_of_a_file_with_itself_is_one(embedder, corpus, tmp_path):
    file = Path(corpus[0]["path"])  # us_m1_0000.wav
    result = evaluate_speaker_similarity(embedder, [file], [file], out_dir=tmp_path)
    (score,) = result.scores
    assert score.speaker == "us_m1"
    assert score.centroid_similarity == pytest.approx(1.0, abs=1e-5)
    assert score.mean_pairwise_similarity == pytest.approx(1.0, abs=1e-5)


def test_resampling_from_22k_and_stereo_input(embedder, corpus, tmp_path):
    source = Path(corpus[1]["path"])
    assert sf.info(str(source)).samplerate == 22050
    mono22 = load_audio(source, 22050)
    wav = embedder.load(source)
    assert wav.numel() == pytest.approx(mono22.numel() * 16000 / 22050, abs=1)
    import torchaudio.functional

    torch.testing.assert_close(wav, torchaudio.functional.resample(mono22, 22050, 16000), atol=2e-5, rtol=0)
    # A stereo file with the same signal in both channels embeds like the mono one.
    stereo = tmp_path / "us_m1_stereo.wav"
    pcm = (mono22.numpy() * 32768).round().clip(-32768, 32767).astype(np.int16)
    sf.write(str(stereo), np.stack([pcm, pcm], axis=1), 22050, subtype="PCM_16")
    assert sf.info(str(stereo)).channels == 2
    embeddings, skipped = embedder.embed_files([source, stereo])
    assert skipped == []
    cosine = torch.nn.functional.cosine_similarity(embeddings[source], embeddings[stereo], dim=0)
    assert float(cosine) == pytest.approx(1.0, abs=1e-5)
    # One channel silent: the mono mix is half as loud; a sentence-normalized embedding barely changes.
    half = tmp_path / "us_m1_half.wav"
    sf.write(str(half), np.stack([pcm, np.zeros_like(pcm)], axis=1), 22050, subtype="PCM_16")
    torch.testing.assert_close(embedder.load(half), 0.5 * wav, atol=1e-4, rtol=0)


def test_batched_embeddings_match_one_at_a_time(embedder, corpus):
    files = [Path(r["path"]) for r in corpus[:6]]
    batched, _ = embedder.embed_files(files)
    single = SpeakerEmbedder(embedder.encoder, batch_size=1, progress=False)
    alone, _ = single.embed_files(files)
    for file in files:  # a file's embedding does not depend on which files share its batch (issue 17)
        torch.testing.assert_close(batched[file], alone[file], atol=1e-6, rtol=1e-5)


def test_embedding_does_not_depend_on_longer_batch_mates(embedder, corpus):
    short = embedder.load(corpus[0]["path"])
    longer = [torch.cat([short, embedder.load(r["path"])]) for r in corpus[1:4]]
    alone = embedder.embed_waveforms([short])[0]
    in_batch = embedder.embed_waveforms([*longer, short, short.flip(0)])
    torch.testing.assert_close(in_batch[3], alone, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(in_batch[4], alone)  # same length, other audio: its own embedding


def test_reference_embeddings_are_cached_per_model(embedder, corpus, tmp_path, monkeypatch):
    groups = by_speaker(corpus)
    refs = tmp_path / "refs"
    for speaker, files in groups.items():
        (refs / speaker).mkdir(parents=True)
        for file in files[:2]:
            shutil.copy(file, refs / speaker)
    synth = [groups["us_m1"][3]]
    cache_dir = tmp_path / "cache"
    first = evaluate_speaker_similarity(embedder, [refs], synth, cache_dir=cache_dir)
    (cache_file,) = cache_dir.glob("*.safetensors")
    assert cache_file.name.startswith(embedder.fingerprint[:24])
    loads = []
    original = SpeakerEmbedder.load
    monkeypatch.setattr(
        SpeakerEmbedder, "load", lambda self, path: loads.append(Path(path)) or original(self, path)
    )
    second = evaluate_speaker_similarity(embedder, [refs], synth, cache_dir=cache_dir)
    # the reference (us_m1 only: the one synthesized speaker) came from the cache; the synthesized file is
    # read twice (speech-activity check, embedding)
    assert set(loads) == set(synth)
    assert second.scores[0].centroid_similarity == pytest.approx(
        first.scores[0].centroid_similarity, abs=1e-6
    )
    reference = refs / "us_m1" / groups["us_m1"][0].name
    os.utime(reference, ns=(reference.stat().st_atime_ns, reference.stat().st_mtime_ns + 10**9))
    loads.clear()
    evaluate_speaker_similarity(embedder, [refs], synth, cache_dir=cache_dir)
    assert reference in loads  # a touched file is embedded again


# ---------------------------------------------------------------------------------------------------
# Reports.


def test_csv_json_schema_and_threshold_counts(embedder, corpus, tmp_path):
    groups = by_speaker(corpus)
    filelist = tmp_path / "refs.txt"
    filelist.write_text("".join(f"{p}|A sentence.|{s}\n" for s, files in groups.items() for p in files[:2]))
    synth = tmp_path / "synth"
    synth.mkdir()
    for speaker, files in groups.items():
        for index, file in enumerate(files[2:]):
            shutil.copy(file, synth / f"{speaker}_{index}.wav")
    out = tmp_path / "out"
    result = evaluate_speaker_similarity(
        embedder, [filelist], [synth], thresholds=[0.25, 0.5, 0.75], calibrated_threshold=0.6, out_dir=out
    )
    rows = list(csv.DictReader((out / CSV_NAME).open()))
    assert list(rows[0]) == [
        "file",
        "speaker",
        "run",
        "step",
        "centroid_similarity",
        "mean_pairwise_similarity",
        "rms_dbfs",
        "active_share",
        "voiced_share",
        "speech_ok",
    ]
    assert all(r["speech_ok"] == "True" for r in rows)  # real espeak utterances pass the activity check
    assert len(rows) == 6 and {r["speaker"] for r in rows} == {"us_m1", "gb_m2", "rp_m3"}
    summary = json.loads((out / JSON_NAME).read_text())
    for key in ("model", "sample_rate", "metric", "thresholds", "calibrated_threshold", "overall",
                "per_speaker", "per_step", "skipped", "num_skipped", "num_scored", "resilience", "files",
                "activity"):  # fmt: skip
        assert key in summary
    assert summary["thresholds"] == [0.25, 0.5, 0.6, 0.75]
    assert summary["sample_rate"] == 16000 and summary["num_skipped"] == 0 and summary["skipped"] == []
    values = np.array([float(r["centroid_similarity"]) for r in rows])
    assert summary["overall"]["mean"] == pytest.approx(values.mean())
    assert summary["overall"]["std"] == pytest.approx(values.std(ddof=1))
    assert summary["overall"]["below"] == {
        k: int((values < t).sum()) for k, t in (("0.25", 0.25), ("0.5", 0.5), ("0.6", 0.6), ("0.75", 0.75))
    }
    for speaker, stats in summary["per_speaker"].items():
        mine = values[[r["speaker"] == speaker for r in rows]]
        assert stats["count"] == 2 and stats["mean"] == pytest.approx(mine.mean())
    assert "plot" not in result.files and "per_step" not in result.files  # one group, no steps


def test_run_directories_give_a_step_table_plot_and_resilience(embedder, corpus, tmp_path):
    groups = by_speaker(corpus)
    refs = [p for files in groups.values() for p in files[:2]]
    good = [(s, files[2]) for s, files in groups.items()] + [(s, files[3]) for s, files in groups.items()]
    swapped = [("us_m1", groups["gb_m2"][2]), ("gb_m2", groups["rp_m3"][2]), ("rp_m3", groups["us_m1"][2])]
    clean = make_run(tmp_path / "clean", {10: good, 20: good})
    noisy = make_run(tmp_path / "l2", {10: good, 20: swapped + good[3:]}, name_speaker=True)
    out = tmp_path / "out"
    result = evaluate_speaker_similarity(embedder, refs, runs=[noisy], clean_run=clean, out_dir=out)
    table = list(csv.DictReader((out / "per_step.csv").open()))
    assert [(r["run"], r["step"], r["count"]) for r in table] == [
        ("clean", "10", "6"), ("clean", "20", "6"), ("l2", "10", "6"), ("l2", "20", "6")
    ]  # fmt: skip
    assert (out / "similarity_over_steps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    resilience = {row["step"]: row["resilience"] for row in result.resilience}
    assert set(resilience) == {10, 20}
    assert resilience[10] == pytest.approx(0.0, abs=1e-3)  # the same audio as the clean run
    summary = json.loads((out / JSON_NAME).read_text())
    assert summary["clean_run"] == "clean"
    assert summary["overall"]["count"] == 12  # the clean run's samples are the baseline, not counted
    rows = list(csv.reader((out / "resilience.csv").open()))
    assert rows[0] == ["run", "step", "mean", "clean_mean", "resilience"] and len(rows) == 3
    # Also as a plain --synth input: the run directory is recognized, one series per step.
    items, skipped = collect_synthesized([noisy])
    assert {(i.run, i.step) for i in items} == {("l2", 10), ("l2", 20)} and skipped == []
    assert {i.speaker for i in items} == set(groups)  # from the file names: no speaker in samples.jsonl
    with pytest.raises(ValueError, match="no step in common"):
        evaluate_speaker_similarity(
            embedder, refs, runs=[noisy], clean_run=make_run(tmp_path / "c2", {30: good}), out_dir=None
        )


# ---------------------------------------------------------------------------------------------------
# Bad input.


def test_bad_files_are_skipped_counted_and_listed(embedder, corpus, tmp_path):
    groups = by_speaker(corpus)
    refs = tmp_path / "refs"
    for speaker in ("us_m1", "gb_m2"):
        (refs / speaker).mkdir(parents=True)
        shutil.copy(groups[speaker][0], refs / speaker)
    (refs / "rp_m3").mkdir()  # a reference speaker with no files
    synth = tmp_path / "synth"
    synth.mkdir()
    shutil.copy(groups["us_m1"][1], synth / "us_m1_0.wav")
    shutil.copy(groups["gb_m2"][1], synth / "gb_m2_0.wav")
    shutil.copy(groups["rp_m3"][1], synth / "rp_m3_0.wav")  # no reference audio for rp_m3
    (synth / "us_m1_1.wav").write_bytes(b"not audio at all")
    sf.write(str(synth / "us_m1_2.wav"), np.zeros((0,), dtype=np.int16), 22050, subtype="PCM_16")
    save_audio(synth / "gb_m2_1.wav", torch.zeros(22050), 22050)
    save_audio(synth / "gb_m2_2.wav", 0.3 * torch.randn(500), 22050)  # 23 ms
    shutil.copy(groups["us_m1"][2], synth / "nospeaker.wav")
    result = evaluate_speaker_similarity(embedder, [refs], [synth], out_dir=tmp_path / "out")
    assert sorted(Path(s.file).name for s in result.scores) == ["gb_m2_0.wav", "us_m1_0.wav"]
    summary = json.loads((tmp_path / "out" / JSON_NAME).read_text())
    reasons = {Path(entry["file"]).name: entry["reason"] for entry in summary["skipped"]}
    assert summary["num_skipped"] == len(summary["skipped"]) == 7
    assert "cannot decode" in reasons["us_m1_1.wav"]
    assert "empty" in reasons["us_m1_2.wav"]
    assert "silent" in reasons["gb_m2_1.wav"]
    assert "too short" in reasons["gb_m2_2.wav"]
    assert "no usable reference audio for speaker 'rp_m3'" in reasons["rp_m3_0.wav"]
    assert "speaker from the file name" in reasons["nospeaker.wav"]
    assert reasons["rp_m3"] == "reference speaker folder has no audio files"
    assert all(set(entry) == {"file", "reason", "role"} for entry in summary["skipped"])
    with pytest.raises(ValueError, match=r"7 file\(s\) could not be used"):
        evaluate_speaker_similarity(embedder, [refs], [synth], strict=True)


def test_mismatched_speaker_names_are_a_clear_error(embedder, corpus, tmp_path):
    groups = by_speaker(corpus)
    synth = tmp_path / "synth"
    synth.mkdir()
    shutil.copy(groups["us_m1"][0], synth / "alice_0.wav")
    with pytest.raises(ValueError, match=r"no reference audio for any synthesized speaker \['alice'\]"):
        evaluate_speaker_similarity(embedder, [groups["us_m1"][1]], [synth])
    with pytest.raises(FileNotFoundError, match="no file matches"):
        evaluate_speaker_similarity(embedder, [groups["us_m1"][1]], [str(tmp_path / "nothing" / "*.wav")])
    bad_jsonl = tmp_path / "run" / "samples" / "step_0000001"
    bad_jsonl.mkdir(parents=True)
    (bad_jsonl / "samples.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match=r"samples.jsonl, line 1"):
        evaluate_speaker_similarity(embedder, [groups["us_m1"][1]], runs=[tmp_path / "run"])


# ---------------------------------------------------------------------------------------------------
# The recipe and the tool.


def _load_script(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_config_keeps_held_out_voices_unseen():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(REPO / "configs" / "speaker"), version_base="1.3"):
        cfg = compose("train")
    voices = training_voices(cfg.data.extra_voices)
    held = {v.voice.partition("+")[2].lower() for v in HELD_OUT_VOICES}
    assert not held & {v.voice.partition("+")[2].lower() for v in voices}
    assert len(voices) > len(DEFAULT_VOICES)
    hparams = build_speaker_modules(hyperparams_yaml(SpeakerModelSpec(**cfg.model), 10, "/unused"))
    assert 0.5e6 < sum(p.numel() for p in hparams["embedding_model"].parameters()) < 0.8e6  # "small: ~0.7M"


def test_recipe_trains_saves_and_calibrates(corpus, tmp_path, cache_root):
    from hydra import compose, initialize_config_dir

    filelist = tmp_path / "train.txt"
    filelist.write_text("".join(f"{r['path']}|{r['text']}|{r['speaker']}\n" for r in corpus))
    tiny = SpeakerModelSpec.tiny()
    overrides = [
        f"output_dir={tmp_path / 'run'}", f"data.filelist={filelist}", "heldout.utterances_per_voice=2",
        "progress=false", "training.steps=2", "training.batch_size=4", "training.crop_seconds=0.5",
        "training.norm_utterances_per_speaker=1", f"model.n_mels={tiny.n_mels}",
        f"model.channels={list(tiny.channels)}", f"model.kernel_sizes={list(tiny.kernel_sizes)}",
        f"model.dilations={list(tiny.dilations)}", f"model.attention_channels={tiny.attention_channels}",
        f"model.se_channels={tiny.se_channels}", f"model.res2net_scale={tiny.res2net_scale}",
        f"model.lin_neurons={tiny.lin_neurons}",
    ]  # fmt: skip
    recipe = _load_script(REPO / "recipes" / "speaker" / "train.py", "speaker_train_recipe")
    with initialize_config_dir(str(REPO / "configs" / "speaker"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    facts = recipe.train(cfg)
    model_dir = tmp_path / "run" / "model"
    assert Path(facts["model_dir"]) == model_dir
    for name in ("hyperparams.yaml", "embedding_model.ckpt", "mean_var_norm_emb.ckpt", "classifier.ckpt",
                 "label_encoder.txt", "calibration.json", "training.json"):  # fmt: skip
        assert (model_dir / name).is_file(), name
    calibration = json.loads((model_dir / "calibration.json").read_text())
    assert 0.0 <= calibration["eer"] <= 1.0
    assert calibration["speakers"] == sorted(v.speaker for v in HELD_OUT_VOICES)
    assert calibration["num_same_pairs"] == 4 and calibration["num_different_pairs"] == 24
    assert model_threshold(model_dir) == pytest.approx(calibration["threshold"])
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_tool_end_to_end(trained, corpus, tmp_path, capsys):
    groups = by_speaker(corpus)
    synth = tmp_path / "synth"
    synth.mkdir()
    for speaker, files in groups.items():
        shutil.copy(files[3], synth / f"{speaker}_0.wav")
    tool = _load_script(REPO / "tools" / "speaker_sim.py", "speaker_sim_tool")
    out = tmp_path / "out"
    code = tool.main([
        "--model", str(trained[1]), "--refs", str(Path(corpus[0]["path"]).parents[1] / "filelist.txt"),
        "--synth", str(synth / "*.wav"), "--out", str(out), "--thresholds", "0.1,0.9", "--no-cache",
        "--batch-size", "2", "--no-progress",
    ])  # fmt: skip
    assert code == 0
    summary = json.loads((out / JSON_NAME).read_text())
    assert summary["num_scored"] == 3 and summary["thresholds"] == [0.1, 0.9]
    assert "3 samples" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--refs", "x", "--synth", "y", "--thresholds", "high"])
    assert exit_info.value.code == 2


def test_tool_writes_beside_the_run_and_heads_with_the_last_step(trained, corpus, tmp_path, capsys, monkeypatch):
    groups = by_speaker(corpus)
    good = [(s, files[2]) for s, files in groups.items()]
    swapped = [("us_m1", groups["gb_m2"][2]), ("gb_m2", groups["rp_m3"][2]), ("rp_m3", groups["us_m1"][2])]
    run = make_run(tmp_path / "runs" / "l2", {10: swapped, 20: good})  # another voice early, the right one last
    monkeypatch.chdir(tmp_path)  # nothing may land in ./outputs
    tool = _load_script(REPO / "tools" / "speaker_sim.py", "speaker_sim_tool_runs")
    refs = str(Path(corpus[0]["path"]).parents[1] / "filelist.txt")
    assert tool.main(["--model", str(trained[1]), "--refs", refs, "--runs", str(run), "--no-cache",
                      "--no-progress"]) == 0  # fmt: skip
    printed = capsys.readouterr().out.splitlines()
    summary = json.loads((run / "speaker_sim" / JSON_NAME).read_text())
    last, steps = summary["last_step"]["l2"], {row["step"]: row["mean"] for row in summary["per_step"]}
    assert last["step"] == 20 and last["mean"] == steps[20] > steps[10]
    assert printed[0].startswith(f"l2: similarity {last['mean']:.3f}") and "at step 20" in printed[0]
    assert f"trend {steps[10]:.3f} (step 10) -> {steps[20]:.3f} (step 20)" in printed[0]
    assert (run / "speaker_sim" / "similarity_over_steps.png").is_file()
    assert not (tmp_path / "outputs").exists()


def test_one_scored_step_still_gives_a_plot_with_its_value(tmp_path):
    from robust_gen.speaker import headline
    from robust_gen.speaker.reports import SimilarityResult, plot_similarity_over_steps

    rows = [{"run": "l2", "step": 300, "count": 4, "mean": 0.43, "std": 0.05, "below": {}},
            {"run": "huber", "step": 300, "count": 4, "mean": 0.51, "std": 0.04, "below": {}}]
    result = SimilarityResult([], [], {"calibrated_threshold": 0.6, "clean_run": None}, rows)
    assert plot_similarity_over_steps(result, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert headline({"per_step": rows, "clean_run": None})[0].endswith("one step scored, no trend")


def _click_dominated(wav: torch.Tensor) -> torch.Tensor:
    """Speech near -70 dBFS with a full-scale burst in its last 10 ms: what a diverged sample sounds like."""
    quiet = 3e-4 * wav / wav.abs().max()
    quiet[-220:] = torch.linspace(1.0, -1.0, 220)
    return quiet


@pytest.mark.parametrize("mode", ["exclude", "flag"])
def test_files_without_usable_speech_are_excluded_or_flagged_and_counted(embedder, corpus, tmp_path, mode):
    groups = by_speaker(corpus)
    synth = tmp_path / "synth"
    synth.mkdir()
    shutil.copy(groups["us_m1"][1], synth / "us_m1_0.wav")
    save_audio(synth / "us_m1_1.wav", _click_dominated(load_audio(groups["us_m1"][2], 22050)), 22050)
    result = evaluate_speaker_similarity(
        embedder, [groups["us_m1"][0]], [synth], out_dir=tmp_path / "out", activity=mode
    )
    summary = json.loads((tmp_path / "out" / JSON_NAME).read_text())
    assert summary["activity"]["no_speech"] == 1 and summary["activity"]["mode"] == mode
    by_name = {Path(s.file).name: s for s in result.scores}
    assert by_name["us_m1_0.wav"].speech_ok is True and by_name["us_m1_0.wav"].active_share > 0.8
    if mode == "exclude":
        assert list(by_name) == ["us_m1_0.wav"]
        assert "no usable speech" in summary["skipped"][0]["reason"]
    else:
        assert by_name["us_m1_1.wav"].speech_ok is False and by_name["us_m1_1.wav"].active_share < 0.05
        assert summary["overall"]["no_speech"] == 1
    rows = list(csv.DictReader((tmp_path / "out" / CSV_NAME).open()))
    assert {"rms_dbfs", "active_share", "voiced_share", "speech_ok"} <= set(rows[0])


def test_vocoded_real_ceiling_and_identification(embedder, corpus):
    from robust_gen.speaker.ceiling import centroids, identification_accuracy, vocoded_real_ceiling
    from robust_gen.speech.vocoder import GriffinLimVocoder

    groups = by_speaker(corpus)
    vocoder = GriffinLimVocoder(n_iter=4)
    ceiling = vocoded_real_ceiling(embedder, groups["us_m1"][:2], groups["us_m1"][2:], vocoder)
    assert ceiling["count"] == 2 and -1.0 <= ceiling["min"] <= ceiling["mean"] <= 1.0
    with pytest.raises(ValueError, match="must not be references too"):
        vocoded_real_ceiling(embedder, groups["us_m1"][:2], groups["us_m1"][1:], vocoder)
    refs = {s: embedder.embed_waveforms([embedder.load(p) for p in files[:2]]) for s, files in groups.items()}
    middle = centroids(refs)
    assert identification_accuracy(torch.stack(list(middle.values())), list(middle), middle) == 1.0
    swapped = list(middle)[::-1]  # 3 speakers reversed: only the middle one keeps its name
    assert identification_accuracy(torch.stack(list(middle.values())), swapped, middle) == pytest.approx(1 / 3)


# ---------------------------------------------------------------------------------------------------
# Beside the similarity (issue 17): similarity to other speakers, identification, level, the ceiling.


def _filelist(groups, path: Path, per_speaker: slice) -> Path:
    path.write_text("".join(f"{p}|A sentence.|{s}\n" for s, files in groups.items() for p in files[per_speaker]))
    return path


def test_compare_to_and_identification_per_file_and_per_step(embedder, corpus, tmp_path):
    from robust_gen.experiments.report import read_run
    from robust_gen.speaker import centroids, identify

    groups = by_speaker(corpus)
    refs = _filelist(groups, tmp_path / "refs.txt", slice(0, 2))
    # only us_m1 is synthesized: identification must still be among all three reference voices
    run = make_run(tmp_path / "l2", {10: [("us_m1", groups["us_m1"][2]), ("us_m1", groups["gb_m2"][2])],
                                     20: [("us_m1", groups["us_m1"][3])]})  # fmt: skip
    (run / "config.yaml").write_text("trainer:\n  seed: 0\n")
    result = evaluate_speaker_similarity(
        embedder, [refs], runs=[run], out_dir=run / "speaker_sim", compare_to=["gb_m2", "gb_m2"], identify=True,
        activity="flag",
    )  # fmt: skip
    ref_embeddings = {s: embedder.embed_waveforms([embedder.load(p) for p in f[:2]]) for s, f in groups.items()}
    middle = centroids(ref_embeddings)
    for score in result.scores:
        unit = torch.nn.functional.normalize(embedder.embed_waveforms([embedder.load(score.file)]).double(), dim=1)
        assert score.similarity_to == {"gb_m2": pytest.approx(float(unit[0] @ middle["gb_m2"]), abs=1e-5)}
        assert score.identified_as == identify(unit, middle)[0]
    summary = json.loads((run / "speaker_sim" / JSON_NAME).read_text())
    assert summary["identify_among"] == ["gb_m2", "rp_m3", "us_m1"] and summary["compare_to"] == ["gb_m2"]
    assert summary["ceiling"] is None
    for row in summary["per_step"]:
        mine = [s for s in result.scores if s.step == row["step"]]
        assert row["similarity_to"]["gb_m2"] == pytest.approx(np.mean([s.similarity_to["gb_m2"] for s in mine]))
        assert row["identified"] == pytest.approx(np.mean([s.identified_as == "us_m1" for s in mine]))
        assert row["rms_dbfs_median"] < 0 and row["no_speech"] == 0
    rows = list(csv.DictReader((run / "speaker_sim" / CSV_NAME).open()))
    assert {"similarity_to_gb_m2", "identified_as"} <= set(rows[0])
    assert {r["identified_as"] for r in rows} <= set(groups)
    steps = list(csv.DictReader((run / "speaker_sim" / "per_step.csv").open()))
    assert {"similarity_to_gb_m2", "identified"} <= set(steps[0]) and steps[0]["similarity_to_gb_m2"] != ""
    # the study report's keys: the last step's fields, flattened
    record = read_run(run)
    last = summary["last_step"]["l2"]
    assert last["step"] == 20
    assert record["speaker_sim.last.similarity_to.gb_m2"] == pytest.approx(last["similarity_to"]["gb_m2"])
    assert record["speaker_sim.last.identified"] == last["identified"]
    assert record["speaker_sim.last.rms_dbfs_median"] == last["rms_dbfs_median"]
    assert record["speaker_sim.last.no_speech"] == 0


def test_a_file_nearest_another_speakers_centroid_is_not_identified():
    from robust_gen.speaker.inputs import AudioItem
    from robust_gen.speaker.reports import per_step_table
    from robust_gen.speaker.similarity import score_samples

    refs = {"a": torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0]]), "b": torch.tensor([[0.0, 1.0, 0.0]]),
            "c": torch.tensor([[0.0, 0.0, 1.0]])}  # fmt: skip
    items = [AudioItem(Path(f"a_{i}.wav"), "a", "run", 5) for i in range(4)]
    embeddings = {items[0].path: torch.tensor([1.0, 0.05, 0.0]), items[1].path: torch.tensor([0.8, 0.0, 0.3]),
                  items[2].path: torch.tensor([0.3, 0.9, 0.0]),  # labelled a, nearest b
                  items[3].path: torch.tensor([0.1, 0.2, 0.9])}  # labelled a, nearest c  # fmt: skip
    scores, skipped = score_samples(items, embeddings, refs, compare_to=["b"], identify_speaker=True)
    assert skipped == [] and [s.identified_as for s in scores] == ["a", "a", "b", "c"]
    assert scores[2].similarity_to["b"] > scores[2].centroid_similarity  # closer to b than to its own speaker
    (row,) = per_step_table(scores, [0.5])
    assert row["identified"] == 0.5
    assert row["similarity_to"]["b"] == pytest.approx(np.mean([s.similarity_to["b"] for s in scores]))
    # not asked: no field, no key
    plain, _ = score_samples(items, embeddings, refs)
    assert plain[0].similarity_to is None and plain[0].identified_as is None
    assert "identified" not in per_step_table(plain, [0.5])[0]
    with pytest.raises(ValueError, match=r"compare_to speaker\(s\) \['z'\]"):
        score_samples(items, embeddings, refs, compare_to=["z"])


def test_compare_to_speaker_without_references_is_one_clear_error(embedder, corpus, tmp_path):
    groups = by_speaker(corpus)
    refs = tmp_path / "refs"
    for speaker in ("us_m1", "gb_m2"):
        (refs / speaker).mkdir(parents=True)
        shutil.copy(groups[speaker][0], refs / speaker / "0.wav")
    (refs / "rp_m3").mkdir()  # a folder without audio is no reference either
    synth = tmp_path / "synth"
    synth.mkdir()
    shutil.copy(groups["us_m1"][1], synth / "us_m1_0.wav")
    for name in ("nobody", "rp_m3"):
        with pytest.raises(ValueError, match=rf"compare_to speaker '{name}' has no reference audio; reference "
                                             r"speakers found: \['gb_m2', 'us_m1'\]"):  # fmt: skip
            evaluate_speaker_similarity(embedder, [refs], [synth], compare_to=[name])
    with pytest.raises(ValueError, match="identification needs references of at least two speakers"):
        evaluate_speaker_similarity(embedder, [groups["us_m1"][0]], [synth], identify=True)


def test_tool_ceiling_compare_to_identify_and_cache(trained, corpus, tmp_path, capsys, monkeypatch):
    from robust_gen.experiments.report import read_run
    from robust_gen.speaker import ceiling as ceiling_module
    from robust_gen.speaker import vocoded_real_ceiling
    from robust_gen.speech.vocoder import GriffinLimVocoder

    groups = by_speaker(corpus)
    refs = str(Path(corpus[0]["path"]).parents[1] / "filelist.txt")  # 4 utterances per voice
    run = make_run(tmp_path / "l2", {10: [("us_m1", groups["us_m1"][1])], 20: [("us_m1", groups["us_m1"][2])]})
    (run / "config.yaml").write_text("trainer:\n  seed: 0\n")
    tool = _load_script(REPO / "tools" / "speaker_sim.py", "speaker_sim_tool_ceiling")
    args = ["--model", str(trained[1]), "--refs", refs, "--runs", str(run), "--cache-dir", str(tmp_path / "cache"),
            "--no-progress", "--compare-to", "gb_m2", "--identify", "--ceiling", "--ceiling-files", "2"]  # fmt: skip
    assert tool.main(args) == 0
    printed = capsys.readouterr().out
    summary = json.loads((run / "speaker_sim" / JSON_NAME).read_text())
    found = summary["ceiling"]["us_m1"]
    held = sorted(groups["us_m1"])[-2:]
    assert found["count"] == 2 and found["references"] == 2 and found["cached"] is False
    assert found["held_out"] == [p.name for p in held]
    # the recipe's default features and vocoder (configs/tts/train.yaml: Griffin-Lim, 32 iterations)
    embedder = SpeakerEmbedder(load_speaker_encoder(trained[1]), progress=False)
    direct = vocoded_real_ceiling(embedder, sorted(groups["us_m1"])[:2], held, GriffinLimVocoder(n_iter=32))
    assert found["mean"] == pytest.approx(direct["mean"], abs=1e-4)
    assert f"(ceiling {found['mean']:.3f})" in printed and "vocoded-real ceiling of us_m1" in printed
    assert "to gb_m2" in printed and "identified" in printed
    assert summary["per_step"][-1]["similarity_to"].keys() == {"gb_m2"}
    record = read_run(run)
    assert record["speaker_sim.ceiling.mean"] == pytest.approx(found["mean"])
    assert record["speaker_sim.ceiling.us_m1.count"] == 2
    assert "speaker_sim.last.similarity_to.gb_m2" in record and "speaker_sim.last.identified" in record
    # the second scoring of the same references reads the ceiling from the cache
    monkeypatch.setattr(ceiling_module, "vocoded_real_ceiling", lambda *a, **k: pytest.fail("not cached"))
    assert tool.main(args) == 0
    again = json.loads((run / "speaker_sim" / JSON_NAME).read_text())["ceiling"]["us_m1"]
    assert again["cached"] is True and again["mean"] == found["mean"]
    capsys.readouterr()
    # too few references to hold out, an unknown speaker: one line each, exit 2
    for extra, message in ((["--ceiling-files", "4"], "lower the number held out"),
                           (["--compare-to", "nobody"], "compare_to speaker 'nobody' has no reference audio")):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            tool.main([*args, *extra])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert message in error and len(error.strip().splitlines()) == 1


def test_ceiling_cache_key_follows_files_and_vocoder_settings(tmp_path):
    from robust_gen.speaker import CeilingSpec, speaker_ceilings

    for i in range(3):
        save_audio(tmp_path / f"a_{i}.wav", 0.3 * torch.randn(22050), 22050)
    calls = []

    class Constant:
        sample_rate, fingerprint = 16000, "constant"

        def embed_waveforms(self, waves):
            calls.append(len(waves))
            return torch.ones(len(waves), 4)

        def embed_files(self, paths, **kwargs):
            return {Path(p): torch.ones(4) for p in paths}, []

    files = {"a": sorted(tmp_path.glob("*.wav"))}

    def vocoder(mel):
        return torch.zeros(1, mel.shape[-1] * 256)

    def measure(settings, held_out=1):
        calls.clear()
        found = speaker_ceilings(Constant(), files, ["a"], CeilingSpec(vocoder, settings, held_out), cache_dir=tmp_path)
        return found["a"], bool(calls)

    first, measured = measure({"n_iter": 32})
    assert measured and first["cached"] is False and first["mean"] == 1.0
    second, measured = measure({"n_iter": 32})
    assert not measured and second == {**first, "cached": True}  # read from the cache
    assert measure({"n_iter": 8})[1] is True  # other vocoder settings: measured again
    assert measure({"n_iter": 32}, held_out=2)[0]["held_out"] == ["a_1.wav", "a_2.wav"]
    save_audio(files["a"][-1], 0.3 * torch.randn(22050), 22050)  # a replaced file: measured again
    os.utime(files["a"][-1], ns=(0, files["a"][-1].stat().st_mtime_ns + 10**9))
    assert measure({"n_iter": 32})[1] is True
    with pytest.raises(ValueError, match="at least one held-out file"):
        CeilingSpec(vocoder, {}, held_out=0)


def test_the_ceiling_goes_through_the_runs_own_mel_and_vocoder(tmp_path):
    import yaml

    tool = _load_script(REPO / "tools" / "speaker_sim.py", "speaker_sim_tool_run_vocoder")
    default = yaml.safe_load((REPO / "configs" / "tts" / "train.yaml").read_text())
    runs = []
    for name, n_iter in (("a", 8), ("b", 8), ("c", 16)):
        run = tmp_path / name
        run.mkdir()
        config = {"mel": {**default["mel"], "f_max": 7000.0}, "vocoder": {**default["vocoder"], "n_iter": n_iter}}
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        runs.append(str(run))
    bare = tmp_path / "bare"  # a run folder whose config names no vocoder (or none at all) does not count
    bare.mkdir()
    spec = tool.ceiling_spec(1, "cpu", [str(bare), *runs[:2]])
    assert spec.settings["n_iter"] == 8 and spec.mel_config.f_max == 7000.0
    assert tool.ceiling_spec(1, "cpu", [str(bare)]).settings["n_iter"] == default["vocoder"]["n_iter"]
    assert tool.ceiling_spec(1, "cpu").mel_config.f_max == default["mel"]["f_max"]
    with pytest.raises(ValueError, match=rf"--ceiling: {runs[2]} was sampled with other mel or vocoder settings "
                                         rf"than {runs[0]} .*score them in separate calls"):  # fmt: skip
        tool.ceiling_spec(1, "cpu", runs)
