"""Speech data at LibriTTS size: parallel mel extraction and compact prepared records."""

from __future__ import annotations

import numpy as np
import torch

from robust_gen.speech.data.audio import save_audio
from robust_gen.speech.data.dataset import DataChecks, TTSDataset, collate_tts, prepare_utterances
from robust_gen.speech.data.mel import MelConfig
from robust_gen.speech.data.mel_cache import MelCache


def _records(folder):
    generator = torch.Generator().manual_seed(0)
    records = []
    for i in range(4):
        save_audio(f"{folder}/u{i}.wav", 0.3 * torch.randn(11025 + 2000 * i, generator=generator), 22050)
        records.append({"path": f"{folder}/u{i}.wav", "text": f"Utterance number {i}.", "speaker": "a"})
    save_audio(f"{folder}/quiet.wav", torch.zeros(22050), 22050)
    records.append({"path": f"{folder}/quiet.wav", "text": "Nothing.", "speaker": "a"})
    records.append({"path": f"{folder}/missing.wav", "text": "Gone.", "speaker": "a"})
    return records


def test_parallel_mel_extraction_prepares_exactly_what_the_serial_path_does(tmp_path):
    records = _records(tmp_path)
    checks = DataChecks(on_bad="skip")
    parallel = prepare_utterances(records, cache=MelCache(tmp_path / "cache_a", MelConfig()), checks=checks,
                                  workers=2)
    serial = prepare_utterances(records, cache=MelCache(tmp_path / "cache_b", MelConfig()), checks=checks)
    assert [s.reason for s in parallel.skipped] == [s.reason for s in serial.skipped]
    assert len(parallel.records) == len(serial.records) == 4
    for a, b in zip(parallel.records, serial.records):
        assert a["tokens"].dtype == np.int16 and np.array_equal(a["tokens"], b["tokens"])
        assert a["num_frames"] == b["num_frames"]
        assert np.array_equal(np.load(a["mel_file"])["mel"], np.load(b["mel_file"])["mel"])
    batch = collate_tts([TTSDataset(parallel.records, {"a": 0})[i] for i in range(2)])
    assert batch["tokens"].dtype == torch.long and batch["mels"].shape[0] == 2
