"""The AST front end against torchaudio's kaldi fbank called directly, on real soundfile files."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
from torchaudio.compliance import kaldi

from data.features import (FEATURES, AudioError, clip_log_mel, log_mel, read_audio, store_features)

AST_FBANK = dict(htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning",
                 num_mel_bins=128, dither=0.0, frame_shift=10)


def noisy_tone(rate: int, seconds: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A 440 Hz tone in noise, float32 [samples, channels] (soundfile's layout), peak < 1."""
    t = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * 440 * t)[:, None] + 0.1 * rng.standard_normal((len(t), channels))
    return (x + 0.05).astype(np.float32)  # with a DC offset, which the front end removes


def direct(samples: np.ndarray, rate: int, frames: int = 1024) -> tuple[np.ndarray, int]:
    """The reference: mean of channels, resample, mean removed, kaldi.fbank, pad/cut."""
    wave = torch.from_numpy(samples).mean(1)
    if rate != 16000:
        wave = AF.resample(wave, rate, 16000)
    mel = kaldi.fbank((wave - wave.mean())[None], **AST_FBANK).numpy()
    n = min(len(mel), frames)
    return np.pad(mel[:n], ((0, frames - n), (0, 0))), n


@pytest.mark.parametrize("rate,channels,seconds,subtype,ext", [
    (16000, 1, 10.0, "PCM_16", "wav"),
    (44100, 2, 10.0, "PCM_16", "flac"),
    (8000, 1, 3.0, "PCM_16", "wav"),
    (48000, 2, 12.0, "PCM_24", "flac"),
])
def test_file_to_log_mel_matches_kaldi_fbank(tmp_path, rate, channels, seconds, subtype, ext):
    path = tmp_path / f"clip.{ext}"
    sf.write(path, noisy_tone(rate, seconds, channels), rate, subtype=subtype)
    samples, _ = sf.read(path, dtype="float32", always_2d=True)
    want, n_want = direct(samples, rate)
    mel, n = clip_log_mel(path)
    assert mel.dtype == np.float32 and mel.shape == (1024, 128)
    assert n == n_want == min(1024, 1 + (int(seconds * 16000) - 400) // 160)
    np.testing.assert_allclose(mel, want, atol=2e-3, rtol=1e-4)  # decode stops after 10.29 s
    assert (mel[n:] == 0).all()


def test_read_audio_layout_and_scale(tmp_path):
    x = np.zeros((1000, 2), np.float32)
    x[:, 0], x[:, 1] = 0.5, np.random.default_rng(0).uniform(-1, 1, 1000)
    x[0, 1] = -1.0
    for subtype, ext in [("PCM_16", "wav"), ("PCM_16", "flac"), ("PCM_24", "flac"), ("FLOAT", "wav")]:
        sf.write(tmp_path / f"s.{ext}", x, 22050, subtype=subtype)
        wave, rate = read_audio(tmp_path / f"s.{ext}")
        assert rate == 22050 and wave.shape == (2, 1000) and wave.dtype == np.float32
        np.testing.assert_allclose(wave[:, 0], [0.5, -1.0], atol=1e-4)
        np.testing.assert_array_equal(wave, sf.read(tmp_path / f"s.{ext}", dtype="float32")[0].T)
    wave, _ = read_audio(tmp_path / "s.wav", max_seconds=0.01)
    assert wave.shape == (2, 221)


def test_log_mel_accepts_mono_vectors_and_pads():
    x = noisy_tone(16000, 0.5)
    mel, n = log_mel(x[:, 0], 16000, frames=64)
    assert mel.shape == (64, 128) and n == 48
    np.testing.assert_array_equal(mel, direct(x, 16000, frames=64)[0])


def _truncated(path: Path, seconds: float = 2.0, kept: float = 0.5) -> None:
    """A 16 kHz PCM WAV whose header says `seconds`, cut after `kept` of its samples."""
    sf.write(path, noisy_tone(16000, seconds), 16000, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - int((seconds - kept) * 16000) * 2])


def test_a_wav_cut_short_is_truncated_not_a_shorter_clip(tmp_path):
    path = tmp_path / "cut.wav"
    _truncated(path)
    for max_seconds in (None, 0.2):  # even when the clip's start would have been enough
        with pytest.raises(AudioError, match=r"cut\.wav: its header says 2\.000 s, the file holds 0\.500 s") as e:
            read_audio(path, max_seconds)
        assert e.value.reason == "truncated"
    sf.write(tmp_path / "whole.wav", noisy_tone(16000, 2.0), 16000, subtype="PCM_16")
    assert read_audio(tmp_path / "whole.wav")[0].shape == (1, 32000)


@pytest.mark.parametrize("make,reason", [
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunkjunk" * 50), "unreadable"),
    (lambda p: sf.write(p, np.zeros((0, 1), np.float32), 16000), "empty"),
    (lambda p: sf.write(p, noisy_tone(16000, 0.05), 16000), "too_short"),
    (lambda p: sf.write(p, np.where(np.arange(16000)[:, None] == 99, np.nan, noisy_tone(16000, 1.0)), 16000,
                        subtype="FLOAT"), "non_finite"),
])
def test_bad_files_raise_with_a_reason(tmp_path, make, reason):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError, match="bad.wav") as e:
        clip_log_mel(path)
    assert e.value.reason == reason


def test_manifest_parameters():
    f = store_features(512)
    assert f["frames"] == 512 and f["mels"] == 128 and f["sample_rate"] == 16000
    assert {k: FEATURES[k] for k in AST_FBANK} == AST_FBANK
