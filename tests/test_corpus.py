"""Tests for the espeak-ng driver and the embedded offline corpus (robust_gen.speech.data.espeak / corpus)."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import soundfile as sf
import torch

from robust_gen.speech.data import corpus as corpus_module
from robust_gen.speech.data.audio import is_silent, load_audio
from robust_gen.speech.data.corpus import (
    DEFAULT_VOICES,
    HELD_OUT_VOICES,
    SAMPLE_RATE,
    corpus_parameters,
    default_corpus_root,
    generate_sentences,
    read_manifest,
    synthesize_corpus,
    voice_distinctness,
)
from robust_gen.speech.data.espeak import EspeakSynthesizer, VoiceSpec, check_voice_name
from robust_gen.speech.data.filelists import read_filelist

TINY_VOICES = (DEFAULT_VOICES[0], DEFAULT_VOICES[6], DEFAULT_VOICES[2])  # us_m1, gb_f2, rp_m3


@pytest.fixture(scope="module")
def synth() -> EspeakSynthesizer:
    return EspeakSynthesizer.shared()


class CountingSynthesizer:
    """Wraps the real synthesizer; counts calls and can fail at a given call, like an interrupted build."""

    def __init__(self, inner: EspeakSynthesizer, fail_at: int | None = None) -> None:
        self.inner, self.fail_at, self.calls = inner, fail_at, 0
        self.sample_rate, self.version = inner.sample_rate, inner.version

    def synthesize(self, text, voice):
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise KeyboardInterrupt
        return self.inner.synthesize(text, voice)


# --- synthesizer ----------------------------------------------------------------------------------------


def test_synthesis_gives_non_silent_22k_audio(synth):
    wav = synth.synthesize("The garden gate was open at 7 o'clock.", DEFAULT_VOICES[0])
    assert synth.sample_rate == SAMPLE_RATE == 22050
    assert wav.dtype == np.int16 and wav.ndim == 1
    assert 0.8 < len(wav) / synth.sample_rate < 5.0
    assert not is_silent(torch.from_numpy(wav.astype(np.float32) / 32768))


def test_same_voice_same_text_is_deterministic_whatever_came_before(synth):
    voice, text = VoiceSpec("f3", "en+f3"), "Determinism matters for cached corpora."
    first = synth.synthesize(text, voice)
    synth.synthesize("Something else in between, with another voice.", VoiceSpec("m7", "en+m7"))
    again = synth.synthesize(text, voice)
    fresh = EspeakSynthesizer()
    try:
        from_new_instance = fresh.synthesize(text, voice)
    finally:
        fresh.close()
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, from_new_instance)


def test_different_voices_give_different_audio(synth):
    text = "Two voices read the same words."
    a = synth.synthesize(text, DEFAULT_VOICES[0])
    b = synth.synthesize(text, DEFAULT_VOICES[5])
    assert a.shape != b.shape or not np.array_equal(a, b)
    pair = voice_distinctness([DEFAULT_VOICES[0], DEFAULT_VOICES[5]], synthesizer=synth).pairs[0]
    assert pair.reason == "" and pair.f0_semitones > 6  # a male and a female voice


def test_unknown_voices_are_refused_not_silently_replaced(synth):
    with pytest.raises(ValueError, match="no base voice 'en-gb'"):
        check_voice_name("en-gb+f3")  # espeak-ng names that voice "en"; the library would keep the last one
    with pytest.raises(ValueError, match="no variant 'f9'"):
        synth.synthesize("Hello.", VoiceSpec("x", "en+f9"))
    with pytest.raises(ValueError, match="non-empty"):
        synth.synthesize("   ", DEFAULT_VOICES[0])
    with pytest.raises(ValueError, match="pitch=101"):
        VoiceSpec("x", "en", pitch=101)


# --- voice distinctness -----------------------------------------------------------------------------------


def test_distinctness_flags_duplicates_and_near_duplicates(synth):
    voices = [
        VoiceSpec("plain", "en"),
        VoiceSpec("alias", "en", rate=175, pitch=50),  # same settings under another id
        VoiceSpec("nudged", "en+m3", pitch=52),
        VoiceSpec("base_m3", "en+m3"),
        VoiceSpec("female", "en+f2"),
    ]
    report = voice_distinctness(voices, synthesizer=synth)
    reasons = {(p.speaker_a, p.speaker_b): p.reason for p in report.flagged}
    assert reasons[("plain", "alias")] == "identical audio"
    assert reasons[("nudged", "base_m3")].startswith("similar spectra")
    assert set(reasons) == {("plain", "alias"), ("nudged", "base_m3")}
    assert len(report.pairs) == 10 and len(report.profiles) == 5
    with pytest.raises(ValueError, match="plain vs alias: identical audio"):
        report.raise_if_flagged()


def test_default_and_held_out_voices_are_all_distinct(synth):
    voices = DEFAULT_VOICES + HELD_OUT_VOICES
    assert len(DEFAULT_VOICES) >= 8 and len(HELD_OUT_VOICES) >= 3
    assert not {v.speaker for v in DEFAULT_VOICES} & {v.speaker for v in HELD_OUT_VOICES}
    report = voice_distinctness(voices, synthesizer=synth)
    assert report.flagged == []
    assert min(p.mfcc_distance for p in report.pairs) > 8.0
    f0 = {p.speaker: p.median_f0_hz for p in report.profiles}
    assert f0["ny_f3"] > 1.5 * f0["us_m1"]  # the female variants really are higher


# --- sentences -----------------------------------------------------------------------------------------


def test_sentences_are_varied_deterministic_and_per_stream():
    sentences = generate_sentences(300, seed=3, stream="spk")
    assert sentences == generate_sentences(300, seed=3, stream="spk")
    assert sentences[:20] != generate_sentences(20, seed=3, stream="other")
    assert sentences[:20] != generate_sentences(20, seed=4, stream="spk")
    assert all(5 <= len(s.split()) <= 15 for s in sentences)
    assert len(set(sentences)) > 250
    assert any(re.search(r"\d", s) for s in sentences)
    assert {s[-1] for s in sentences} == {".", "?", "!"}
    assert any("," in s for s in sentences)
    with pytest.raises(ValueError, match="count"):
        generate_sentences(-1)


# --- corpus building and caching ---------------------------------------------------------------------------


def test_tiny_corpus_layout_and_filelist(tmp_path, synth):
    root = tmp_path / "tiny"
    filelist = synthesize_corpus(root, voices=TINY_VOICES, utterances_per_voice=2, synthesizer=synth)
    assert filelist == root / "filelist.txt"
    records = read_filelist(filelist)
    assert len(records) == 6 and records.skipped == []
    assert [r["speaker"] for r in records] == ["us_m1", "us_m1", "gb_f2", "gb_f2", "rp_m3", "rp_m3"]
    for line in filelist.read_text().splitlines():
        assert not os.path.isabs(line.split("|")[0])
    for record in records:
        info = sf.info(record["path"])
        assert (info.samplerate, info.channels, info.subtype) == (22050, 1, "PCM_16")
        assert not is_silent(load_audio(record["path"], 22050))
    assert records[0]["text"] == generate_sentences(2, 0, "us_m1")[0]
    manifest = read_manifest(root)
    assert manifest["parameters"] == corpus_parameters(TINY_VOICES, 2, 0)
    assert manifest["num_utterances"] == 6 and manifest["total_seconds"] > 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]  # no build folder left behind


def test_cached_corpus_is_returned_without_synthesis(tmp_path, synth):
    root = tmp_path / "cached"
    synthesize_corpus(root, voices=TINY_VOICES[:2], utterances_per_voice=2, synthesizer=synth)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    counting = CountingSynthesizer(synth)
    filelist = synthesize_corpus(root, voices=TINY_VOICES[:2], utterances_per_voice=2, synthesizer=counting)
    assert counting.calls == 0 and filelist == root / "filelist.txt"
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps


def test_other_parameters_rebuild_the_corpus(tmp_path, synth):
    root = tmp_path / "corpus"
    synthesize_corpus(root, voices=TINY_VOICES[:2], utterances_per_voice=2, synthesizer=synth)
    counting = CountingSynthesizer(synth)
    filelist = synthesize_corpus(
        root, voices=TINY_VOICES[:2], utterances_per_voice=3, seed=1, check_voices=False, synthesizer=counting
    )
    assert counting.calls == 6
    assert len(read_filelist(filelist)) == 6
    assert read_manifest(root)["parameters"]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


def test_interrupted_build_leaves_no_corpus(tmp_path, synth):
    root = tmp_path / "interrupted"
    failing = CountingSynthesizer(synth, fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        synthesize_corpus(root, voices=TINY_VOICES[:2], utterances_per_voice=2, check_voices=False,
                          synthesizer=failing)  # fmt: skip
    assert not root.exists() and list(tmp_path.iterdir()) == []
    # An interrupted rebuild keeps the previous, complete corpus.
    synthesize_corpus(root, voices=TINY_VOICES[:1], utterances_per_voice=2, synthesizer=synth)
    before = read_manifest(root)
    with pytest.raises(KeyboardInterrupt):
        synthesize_corpus(root, voices=TINY_VOICES[:2], utterances_per_voice=2, check_voices=False,
                          synthesizer=CountingSynthesizer(synth, fail_at=2))  # fmt: skip
    assert read_manifest(root) == before and len(read_filelist(root / "filelist.txt")) == 2


def test_stale_build_folders_of_dead_processes_are_removed(tmp_path, synth):
    root = tmp_path / "c"
    stale = tmp_path / ".c.building-999999999-deadbeef"  # no process has this id
    (stale / "us_m1").mkdir(parents=True)
    synthesize_corpus(root, voices=TINY_VOICES[:1], utterances_per_voice=1, synthesizer=synth)
    assert not stale.exists() and (root / "corpus.json").is_file()


def test_duplicate_voices_and_foreign_folders_are_refused(tmp_path, synth):
    twins = (VoiceSpec("one", "en+m3"), VoiceSpec("two", "en+m3"))
    with pytest.raises(ValueError, match="one vs two: identical audio"):
        synthesize_corpus(tmp_path / "twins", voices=twins, utterances_per_voice=1, synthesizer=synth)
    assert not (tmp_path / "twins").exists()
    with pytest.raises(ValueError, match="unique"):
        synthesize_corpus(tmp_path / "x", voices=(twins[0], twins[0]), utterances_per_voice=1)
    with pytest.raises(ValueError, match="utterances_per_voice"):
        synthesize_corpus(tmp_path / "x", voices=twins[:1], utterances_per_voice=0)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(ValueError, match="not a corpus folder"):
        synthesize_corpus(tmp_path / "mine", voices=twins[:1], utterances_per_voice=1, synthesizer=synth)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


def test_default_root_lives_in_the_configured_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUST_GEN_CACHE", str(tmp_path / "cache"))
    root = default_corpus_root(TINY_VOICES, 40, 0)
    assert root.parent == tmp_path / "cache" / "corpus"
    assert root == default_corpus_root(TINY_VOICES, 40, 0) != default_corpus_root(TINY_VOICES, 41, 0)
    assert json.dumps(corpus_parameters(DEFAULT_VOICES, 40, 0))  # serializable as corpus.json
    assert corpus_module.default_cache_dir() == tmp_path / "cache"
