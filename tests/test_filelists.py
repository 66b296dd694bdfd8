"""Tests for robust_gen.speech.data.filelists: filelist, LJSpeech and LibriTTS layouts, atomic writing."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robust_gen.speech.data.filelists import read_filelist, read_libritts, read_ljspeech, write_filelist


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_filelist_resolves_relative_paths_and_skips_comments(tmp_path):
    touch(tmp_path / "data" / "s1" / "a.wav")
    outside = touch(tmp_path / "elsewhere" / "b.wav")
    filelist = tmp_path / "data" / "train.txt"
    filelist.write_text(
        "# path|text|speaker\n\n   \ns1/a.wav|Hello, world!|s1\n"
        f"  # indented comment\n{outside}|Numbers like 42 stay.|s2\n"
    )
    records = read_filelist(filelist)
    assert records == [
        {"path": str(tmp_path / "data" / "s1" / "a.wav"), "text": "Hello, world!", "speaker": "s1"},
        {"path": str(outside), "text": "Numbers like 42 stay.", "speaker": "s2"},
    ]
    assert records.skipped == []


def test_paths_resolve_against_the_filelist_folder_not_the_working_directory(tmp_path, monkeypatch):
    touch(tmp_path / "corpus" / "x.wav")
    (tmp_path / "corpus" / "list.txt").write_text("x.wav|Text.|s\n")
    monkeypatch.chdir(tmp_path)
    assert read_filelist("corpus/list.txt")[0]["path"] == str(tmp_path / "corpus" / "x.wav")


@pytest.mark.parametrize(
    "bad_line",
    ["a.wav|only two fields", "a.wav|text|speaker|extra", "a.wav||s1", "|text|s1", "a.wav|text|  "],
)
def test_malformed_line_names_file_and_line(tmp_path, bad_line):
    touch(tmp_path / "a.wav")
    filelist = tmp_path / "bad.txt"
    filelist.write_text(f"# header\na.wav|fine|s1\n{bad_line}\n")
    with pytest.raises(ValueError, match=r"bad\.txt, line 3: expected path\|text\|speaker"):
        read_filelist(filelist)


def test_empty_transcript_under_skip_is_left_out_and_counted_by_the_data_checks(tmp_path):
    import torch

    from robust_gen.speech.data.audio import save_audio
    from robust_gen.speech.data.dataset import DataChecks, prepare_utterances
    from robust_gen.speech.data.mel import MelConfig
    from robust_gen.speech.data.mel_cache import MelCache

    for name in ("a", "b"):
        save_audio(tmp_path / f"{name}.wav", 0.3 * torch.randn(22050, generator=torch.Generator().manual_seed(0)),
                   22050)
    (tmp_path / "l.txt").write_text("a.wav|Hello there.|s1\nb.wav||s1\n")
    with pytest.raises(ValueError, match=r"l\.txt, line 2"):
        read_filelist(tmp_path / "l.txt")  # under "error" it is still named with its line
    records = read_filelist(tmp_path / "l.txt", on_missing="skip")
    prepared = prepare_utterances(records, cache=MelCache(tmp_path / "mels", MelConfig()),
                                  checks=DataChecks(on_bad="skip"))
    assert [r["text"] for r in prepared.records] == ["Hello there."]
    assert len(prepared.skipped) == 1 and prepared.skipped[0].reason.startswith("text yields no symbols")


def test_two_field_lines_with_default_speaker(tmp_path):
    touch(tmp_path / "a.wav")
    (tmp_path / "l.txt").write_text("a.wav|Single speaker.\n")
    assert read_filelist(tmp_path / "l.txt", default_speaker="LJ")[0]["speaker"] == "LJ"


def test_missing_audio_policy(tmp_path):
    touch(tmp_path / "here.wav")
    (tmp_path / "l.txt").write_text("here.wav|a|s\ngone.wav|b|s\nalso_gone.wav|c|s\n")
    with pytest.raises(FileNotFoundError, match=r"l\.txt, line 2: audio file .*gone\.wav does not exist"):
        read_filelist(tmp_path / "l.txt")
    records = read_filelist(tmp_path / "l.txt", on_missing="skip")
    assert [r["text"] for r in records] == ["a"]
    assert records.skipped == [str(tmp_path / "gone.wav"), str(tmp_path / "also_gone.wav")]
    with pytest.raises(ValueError, match="on_missing"):
        read_filelist(tmp_path / "l.txt", on_missing="ignore")


def test_missing_or_binary_filelist(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.txt"):
        read_filelist(tmp_path / "nope.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00\x81 not utf-8")
    with pytest.raises(ValueError, match=r"bin\.txt is not UTF-8"):
        read_filelist(tmp_path / "bin.txt")


def test_ljspeech_layout(tmp_path):
    for utt in ("LJ001-0001", "LJ001-0002"):
        touch(tmp_path / "wavs" / f"{utt}.wav")
    (tmp_path / "metadata.csv").write_text(
        'LJ001-0001|Printing, in the 15th century, "the art".|Printing, in the fifteenth century, "the art".\n'
        "LJ001-0002|No normalized text here.|\n"
        "LJ001-0003|Its audio is missing.|Its audio is missing.\n"
    )
    records = read_ljspeech(tmp_path, on_missing="skip")
    assert [r["text"] for r in records] == [
        'Printing, in the fifteenth century, "the art".',
        "No normalized text here.",
    ]
    assert {r["speaker"] for r in records} == {"LJ"}
    assert records[0]["path"] == str(tmp_path / "wavs" / "LJ001-0001.wav")
    assert records.skipped == [str(tmp_path / "wavs" / "LJ001-0003.wav")]
    with pytest.raises(FileNotFoundError, match=r"metadata\.csv, line 3"):
        read_ljspeech(tmp_path)
    (tmp_path / "metadata.csv").write_text("LJ001-0001\n")
    with pytest.raises(ValueError, match=r"metadata\.csv, line 1"):
        read_ljspeech(tmp_path)


def test_libritts_layout(tmp_path):
    for speaker, chapter, utt, text in [
        ("84", "121123", "84_121123_000008_000000", "Second speaker."),
        ("19", "198", "19_198_000001_000000", "First speaker, later utterance."),
        ("19", "198", "19_198_000000_000000", "First speaker, first utterance."),
        ("19", "227", "19_227_000000_000001", "Its audio is missing."),
    ]:
        folder = tmp_path / speaker / chapter
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{utt}.normalized.txt").write_text(text + "\n")
        (folder / f"{utt}.original.txt").write_text(text.upper())
        if "missing" not in text:
            touch(folder / f"{utt}.wav")
    records = read_libritts(tmp_path, on_missing="skip")
    assert [(r["speaker"], r["text"]) for r in records] == [
        ("19", "First speaker, first utterance."),
        ("19", "First speaker, later utterance."),
        ("84", "Second speaker."),
    ]
    assert Path(records[0]["path"]).name == "19_198_000000_000000.wav"
    assert len(records.skipped) == 1
    with pytest.raises(FileNotFoundError, match=r"19_227_000000_000001\.wav"):
        read_libritts(tmp_path)
    with pytest.raises(ValueError, match="LibriTTS"):
        read_libritts(tmp_path / "84" / "121123")


def test_write_filelist_round_trip_and_atomicity(tmp_path):
    inside = touch(tmp_path / "corpus" / "s1" / "a.wav")
    outside = touch(tmp_path / "other" / "b.wav")
    records = [
        {"path": str(inside), "text": "Inside, relative.", "speaker": "s1"},
        {"path": str(outside), "text": "Outside, absolute?", "speaker": "s2"},
    ]
    target = tmp_path / "corpus" / "list.txt"
    target.write_text("old content\n")
    write_filelist(records, target)
    lines = target.read_text().splitlines()
    assert lines == ["s1/a.wav|Inside, relative.|s1", f"{outside}|Outside, absolute?|s2"]
    assert read_filelist(target) == records
    assert sorted(p.name for p in target.parent.iterdir()) == ["list.txt", "s1"]


def test_write_filelist_rejects_unwritable_records(tmp_path):
    target = tmp_path / "l.txt"
    with pytest.raises(ValueError, match=r"record 0 lacks field\(s\) \['speaker'\]"):
        write_filelist([{"path": "a.wav", "text": "t"}], target)
    with pytest.raises(ValueError, match=r"containing '\|'"):
        write_filelist([{"path": "a.wav", "text": "a|b", "speaker": "s"}], target)
    with pytest.raises(ValueError, match="newline"):
        write_filelist([{"path": "a.wav", "text": "line\nbreak", "speaker": "s"}], target)
    with pytest.raises(ValueError, match="UTF-8 cannot encode"):
        write_filelist([{"path": "a.wav", "text": "lone \ud800 surrogate", "speaker": "s"}], target)
    assert not target.exists()


_FIELD_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="|\r\n"),
    min_size=1,
    max_size=30,
).filter(lambda s: s.strip() == s and s)


@settings(max_examples=40, deadline=None)
@given(texts=st.lists(st.tuples(_FIELD_TEXT, _FIELD_TEXT), min_size=1, max_size=5))
def test_any_safe_text_round_trips(tmp_path_factory, texts):
    folder = tmp_path_factory.mktemp("roundtrip")
    records = []
    for index, (text, speaker) in enumerate(texts):
        audio = touch(folder / f"{index}.wav")
        records.append({"path": str(audio), "text": text, "speaker": speaker})
    write_filelist(records, folder / "list.txt")
    assert read_filelist(folder / "list.txt") == records
