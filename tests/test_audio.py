"""Tests for robust_gen.speech.data.audio (load/save/silence) and robust_gen.speech.data.mel (HiFi-GAN log-mel)."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from robust_gen.speech.data import audio as audio_module
from robust_gen.speech.data.audio import is_silent, load_audio, peak_db, rms_db, save_audio, to_pcm16
from robust_gen.speech.data.mel import MelConfig, MelSpectrogram, mel_filterbank


def sine(freq: float, sample_rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_frequency(wav: torch.Tensor, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wav.numpy()))
    return float(np.fft.rfftfreq(len(wav), 1 / sample_rate)[spectrum.argmax()])


# --- audio I/O --------------------------------------------------------------------------------------


def test_int16_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    samples = rng.integers(-32768, 32767, size=5000, dtype=np.int16)
    save_audio(tmp_path / "a.wav", samples, 22050)
    loaded = load_audio(tmp_path / "a.wav", 22050)
    assert loaded.dtype == torch.float32 and loaded.shape == (5000,)
    np.testing.assert_array_equal(to_pcm16(loaded), samples)
    info = sf.info(str(tmp_path / "a.wav"))
    assert (info.samplerate, info.channels, info.subtype, info.format) == (22050, 1, "PCM_16", "WAV")


def test_float_audio_is_clipped_to_full_scale(tmp_path):
    save_audio(tmp_path / "loud.wav", torch.tensor([2.0, -2.0, 0.5]), 16000)
    loaded = load_audio(tmp_path / "loud.wav", 16000)
    assert loaded.tolist() == [32767 / 32768, -1.0, 0.5]


def test_stereo_is_averaged_to_mono(tmp_path):
    left, right = sine(300, 16000, 0.5), np.zeros(8000, dtype=np.float32)
    sf.write(str(tmp_path / "stereo.wav"), np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    loaded = load_audio(tmp_path / "stereo.wav", 16000)
    np.testing.assert_allclose(loaded.numpy(), left / 2, atol=1e-7)


@pytest.mark.parametrize("file_rate", [16000, 44100])
def test_resampling_keeps_duration_and_pitch(tmp_path, file_rate):
    sf.write(str(tmp_path / "tone.wav"), sine(440, file_rate, 1.0), file_rate)
    loaded = load_audio(tmp_path / "tone.wav", 22050)
    assert abs(len(loaded) - 22050) <= 1
    assert dominant_frequency(loaded, 22050) == pytest.approx(440, abs=2)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\.wav"):
        load_audio(tmp_path / "nothing.wav", 22050)


def test_undecodable_file_names_the_file(tmp_path):
    (tmp_path / "text.wav").write_text("this is not audio")
    with pytest.raises(ValueError, match=r"cannot decode audio file .*text\.wav"):
        load_audio(tmp_path / "text.wav", 22050)


def test_empty_file_is_an_error(tmp_path):
    sf.write(str(tmp_path / "empty.wav"), np.zeros(0, dtype=np.float32), 22050)
    with pytest.raises(ValueError, match=r"empty\.wav is empty \(0 samples\)"):
        load_audio(tmp_path / "empty.wav", 22050)


def test_non_finite_samples_are_an_error(tmp_path):
    samples = sine(200, 22050, 0.1)
    samples[10] = np.nan
    sf.write(str(tmp_path / "nan.wav"), samples, 22050, subtype="FLOAT")
    with pytest.raises(ValueError, match=r"nan\.wav contains NaN or infinite"):
        load_audio(tmp_path / "nan.wav", 22050)


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="sample_rate"):
        load_audio(tmp_path / "x.wav", 0)
    with pytest.raises(ValueError, match="mono"):
        save_audio(tmp_path / "x.wav", torch.zeros(2, 10), 22050)
    with pytest.raises(ValueError, match="NaN"):
        save_audio(tmp_path / "x.wav", torch.tensor([0.0, float("inf")]), 22050)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_audio(tmp_path / "no" / "x.wav", torch.zeros(10), 22050)
    assert not (tmp_path / "x.wav").exists()


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "keep.wav"
    save_audio(target, torch.full((100,), 0.25), 22050)
    before = target.read_bytes()

    def broken_write(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(audio_module.sf, "write", broken_write)
    with pytest.raises(OSError, match="disk full"):
        save_audio(target, torch.full((100,), -0.25), 22050)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.wav"]


def test_silence_detection():
    assert is_silent(torch.zeros(100))
    assert is_silent(torch.full((22050,), 10 ** (-70 / 20)))  # -70 dBFS
    loud = torch.from_numpy(sine(200, 22050, 0.5, amplitude=0.1))
    assert not is_silent(loud)
    assert is_silent(loud, threshold_db=-10)  # peak is -20 dBFS
    click = torch.zeros(22050 * 10)
    click[0] = 0.1  # a single click in ten seconds: peak -20 dBFS, RMS about -73 dBFS
    assert not is_silent(click, threshold_db=-120) and is_silent(click)
    assert peak_db(torch.zeros(3)) == -np.inf and rms_db(torch.tensor([0.5, -0.5])) == pytest.approx(-6.0206)


# --- mel features -------------------------------------------------------------------------------------


def hifigan_reference_mel(wav: np.ndarray, config: MelConfig) -> np.ndarray:
    """HiFi-GAN's recipe computed independently with numpy and librosa, in float64."""
    pad = (config.n_fft - config.hop_length) // 2
    padded = np.pad(wav.astype(np.float64), (pad, pad), mode="reflect")
    stft = librosa.stft(
        padded, n_fft=config.n_fft, hop_length=config.hop_length, win_length=config.win_length,
        window=np.hanning(config.win_length + 1)[:-1], center=False,
    )  # fmt: skip
    magnitude = np.sqrt(np.abs(stft) ** 2 + config.magnitude_eps)
    basis = librosa.filters.mel(
        sr=config.sample_rate, n_fft=config.n_fft, n_mels=config.n_mels, fmin=config.f_min,
        fmax=config.f_max, dtype=np.float64,
    )  # fmt: skip
    return np.log(np.maximum(basis @ magnitude, config.log_floor))


def test_filterbank_matches_librosa_default():
    config = MelConfig()
    expected = librosa.filters.mel(sr=22050, n_fft=1024, n_mels=80, fmin=0.0, fmax=8000.0)
    np.testing.assert_allclose(mel_filterbank(config).numpy(), expected, rtol=0, atol=1e-6)


def test_log_mel_matches_independent_hifigan_reference():
    config = MelConfig()
    wav = 0.3 * np.random.default_rng(1).standard_normal(256 * 40).astype(np.float32)
    wav[: 256 * 5] = 0.0  # silence exercises the clamp
    ours = MelSpectrogram(config)(torch.from_numpy(wav)).numpy()
    np.testing.assert_allclose(ours, hifigan_reference_mel(wav, config), atol=2e-4)
    assert ours[:, 0].max() == pytest.approx(np.log(1e-5), abs=1e-4)


@pytest.mark.parametrize("frames", [2, 7, 100])
def test_frame_count_is_length_over_hop(frames):
    mel = MelSpectrogram()
    out = mel(torch.randn(3, 256 * frames) * 0.1)
    assert out.shape == (3, 80, frames) and mel.num_frames(256 * frames) == frames
    assert torch.isfinite(out).all() and out.dtype == torch.float32


def test_batch_equals_items_and_buffers_follow_the_module():
    mel = MelSpectrogram(MelConfig(n_mels=64, f_max=11025.0))
    batch = torch.randn(2, 256 * 20) * 0.1
    out = mel(batch)
    torch.testing.assert_close(out[1], mel(batch[1]), atol=1e-5, rtol=0)
    assert out.shape == (2, 64, 20)
    assert mel.state_dict() == {}
    mel64 = mel.to(torch.float64)
    assert mel64.filterbank.dtype == torch.float64 and mel64(batch.double()).dtype == torch.float64


def test_bad_mel_inputs_are_rejected():
    mel = MelSpectrogram()
    with pytest.raises(ValueError, match="too short"):
        mel(torch.zeros(1, 300))
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        mel(torch.zeros(1, 1, 3000))
    with pytest.raises(ValueError, match="floating point"):
        mel(torch.zeros(1, 3000, dtype=torch.int16))
    with pytest.raises(ValueError, match="win_length"):
        MelConfig(win_length=2048)


@pytest.mark.parametrize("file_rate", [16000, 44100])
def test_mel_of_resampled_files(tmp_path, file_rate):
    sf.write(str(tmp_path / "tone.wav"), sine(1000, file_rate, 0.5), file_rate)
    wav = load_audio(tmp_path / "tone.wav", 22050)
    out = MelSpectrogram()(wav.unsqueeze(0))
    assert out.shape == (1, 80, MelSpectrogram().num_frames(len(wav)))
    assert torch.isfinite(out).all()
    # The tone's energy lands in the mel band that contains 1 kHz.
    centers = librosa.mel_frequencies(n_mels=82, fmin=0.0, fmax=8000.0)[1:-1]
    assert abs(centers[int(out[0].mean(dim=1).argmax())] - 1000) < 60
