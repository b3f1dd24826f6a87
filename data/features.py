"""Audio file -> raw log-mel spectrogram with the AST front end (Gong et al. 2021, the AST repository's
dataloader: Kaldi fbank, 128 mel bins, 10 ms hop).

The path of one clip (a file, or a file's bytes as a pack holds them: data/packs.py):
  decode (soundfile; torchcodec for other formats if installed) -> float32 in [-1, 1]
  -> mono (mean of channels) -> resample to 16 kHz (torchaudio.functional.resample)
  -> global mean removed -> torchaudio.compliance.kaldi.fbank with AST's parameters
  -> zero-padded at the end, or cut, to the target frame count (1024 frames = 10.24 s).
The result is stored raw: normalisation ((x + 4.27) / (2 * 4.57)) happens at model input.

A file that cannot give a spectrogram raises `AudioError` with a short `reason`
("unreadable", "empty", "too_short", "non_finite") that the ingest report records.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from torchaudio.compliance import kaldi

from data.cli import InputError

__all__ = ["SAMPLE_RATE", "MELS", "FRAMES", "FRAME_SHIFT_MS", "FRAME_LENGTH_MS", "MIN_SECONDS",
           "FBANK", "FEATURES", "AudioError", "store_features", "read_audio", "log_mel", "clip_log_mel"]

SAMPLE_RATE = 16000     # Hz, every clip is resampled to this
MELS = 128              # mel bins
FRAMES = 1024           # target frames (10 ms hop): 10 s clips give 998 and are zero-padded
FRAME_SHIFT_MS = 10.0
FRAME_LENGTH_MS = 25.0  # Kaldi default, 400 samples
MIN_SECONDS = 0.1       # shorter clips are skipped ("too_short")

# The exact keyword arguments of the kaldi.fbank call (AST's), everything else at Kaldi defaults.
FBANK = dict(htk_compat=True, sample_frequency=SAMPLE_RATE, use_energy=False, window_type="hanning",
             num_mel_bins=MELS, dither=0.0, frame_shift=FRAME_SHIFT_MS)

# What the manifest records about the front end (store_features adds the frame count).
FEATURES = {"frontend": "torchaudio.compliance.kaldi.fbank", **FBANK,
            "frame_length": FRAME_LENGTH_MS, "sample_rate": SAMPLE_RATE, "mono": "mean of channels",
            "resample": "torchaudio.functional.resample (sinc, defaults)", "waveform_mean_removed": True,
            "pad": "zeros at the end (log-mel domain), or cut", "normalised": False,
            "mels": MELS, "dtype": "float16"}


class AudioError(InputError):
    """A clip without a usable spectrogram; `reason` is one short word for the report."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def store_features(frames: int = FRAMES) -> dict:
    """The manifest's `features` entry for spectrograms of `frames` frames."""
    return {**FEATURES, "frames": int(frames)}


def _seconds_needed(frames: int) -> float:
    """Audio that the first `frames` frames cover, plus a margin for the resampling filter."""
    return ((frames - 1) * FRAME_SHIFT_MS + FRAME_LENGTH_MS) / 1000.0 + 0.05


def read_audio(source: str | Path | bytes, max_seconds: float | None = None,
               name: str | None = None) -> tuple[np.ndarray, int]:
    """Decode an audio file, a path or the file's bytes: (wave float32 [channels, samples] in
    [-1, 1], sample rate in Hz).

    `max_seconds` stops decoding after that much audio (the rest would be cut anyway).
    Raises AudioError naming the file (`name`, default the path): "unreadable", "empty", or
    "truncated" (fewer samples than its header declares: a file cut short in the copy).
    """
    in_memory = isinstance(source, (bytes, bytearray))
    path = name or str(source if not in_memory else "<bytes>")
    if (len(source) if in_memory else Path(source).stat().st_size) == 0:
        raise AudioError("empty", f"{path}: 0 bytes")
    try:
        with io.BytesIO(source) if in_memory else open(source, "rb") as raw:
            header = _declared_wav_frames(raw)
            with sf.SoundFile(raw) as f:
                declared = (header if f.format == "WAV" else None) or f.frames
                n = f.frames if max_seconds is None else min(f.frames, math.ceil(max_seconds * f.samplerate))
                pcm16 = f.subtype == "PCM_16"  # read as int16 and scaled here: libsndfile's values, faster
                data, rate = f.read(n, dtype="int16" if pcm16 else "float32", always_2d=True), f.samplerate
        if declared > f.frames or len(data) < n:
            held = len(data) if len(data) < n else f.frames
            raise AudioError("truncated", f"{path}: its header says {declared / rate:.3f} s, the file holds "
                                          f"{held / rate:.3f} s of samples")
        wave = np.ascontiguousarray(data.T, dtype=np.float32)
        if pcm16:
            wave *= 1 / 32768
    except sf.SoundFileError as e:
        wave, rate = _read_torchcodec(source, path, e)
    if wave.size == 0:
        raise AudioError("empty", f"{path}: no samples")
    return wave, int(rate)


def _declared_wav_frames(f) -> int | None:
    """The frames a WAV file's header declares (its data chunk's size over the fmt chunk's block
    size), which libsndfile replaces with what the file holds; None if the header is unusual or
    the file is no WAV. `f`: the open binary file, read from its start and left at its start."""
    f.seek(0)
    head = f.read(12)
    block, frames = None, None
    while head[:4] == b"RIFF" and head[8:12] == b"WAVE" and len(chunk := f.read(8)) == 8:
        size = int.from_bytes(chunk[4:], "little")
        if chunk[:4] == b"fmt ":
            block = int.from_bytes(f.read(size)[12:14], "little") or None
            f.seek(size % 2, 1)
        elif chunk[:4] == b"data":
            frames = size // block if block else None
            break
        else:
            f.seek(size + size % 2, 1)
    f.seek(0)
    return frames


def _read_torchcodec(source, path: str, error: Exception) -> tuple[np.ndarray, int]:
    """Formats libsndfile does not read (m4a, ...), if torchcodec is installed (`source`: a
    path or the file's bytes; `path` names it in errors)."""
    try:
        from torchcodec.decoders import AudioDecoder
    except ImportError:
        raise AudioError("unreadable", f"{path}: {error}") from None
    try:
        samples = AudioDecoder(source if isinstance(source, (bytes, bytearray)) else str(source)).get_all_samples()
    except Exception as e:  # noqa: BLE001 - any decoder failure means the same to the report
        raise AudioError("unreadable", f"{path}: {e}") from None
    return samples.data.numpy().astype(np.float32), int(samples.sample_rate)


def log_mel(wave, sample_rate: int, frames: int = FRAMES, name: str = "waveform") -> tuple[np.ndarray, int]:
    """Waveform [channels, samples] (or [samples]) at `sample_rate` Hz -> (log-mel float32
    [frames, MELS], valid frames before padding, <= frames).

    Raises AudioError("too_short" under MIN_SECONDS, "non_finite" for NaN/inf) naming `name`.
    """
    wave = torch.as_tensor(wave, dtype=torch.float32)
    if wave.dim() == 2:
        wave = wave[0] if len(wave) == 1 else wave.mean(0)
    wave = wave[:math.ceil(_seconds_needed(frames) * sample_rate)]  # what the frames cover, as read_audio reads
    if wave.numel() < MIN_SECONDS * sample_rate:
        raise AudioError("too_short", f"{name}: {wave.numel() / sample_rate:.3f} s < {MIN_SECONDS} s")
    if sample_rate != SAMPLE_RATE:
        wave = AF.resample(wave, sample_rate, SAMPLE_RATE)
    mel = kaldi.fbank((wave - wave.mean())[None], **FBANK)
    if not math.isfinite(mel.sum()):  # a NaN or inf sample makes the whole spectrogram NaN
        raise AudioError("non_finite", f"{name}: NaN or inf in the samples or the spectrogram")
    n = min(mel.shape[0], frames)
    out = np.zeros((frames, MELS), dtype=np.float32)
    out[:n] = mel[:n].numpy()
    return out, n


def clip_log_mel(source: str | Path | bytes, frames: int = FRAMES, name: str | None = None) -> tuple[np.ndarray, int]:
    """One audio file (a path, or its bytes named `name`) -> (log-mel float32 [frames, MELS],
    valid frames); decodes only the audio the `frames` frames need. Raises AudioError."""
    wave, rate = read_audio(source, _seconds_needed(frames), name)
    return log_mel(wave, rate, frames, name=name or str(source))
