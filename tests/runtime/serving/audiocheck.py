"""Decode what the server sent with independent decoders (FFmpeg through PyAV, libsndfile) and check it."""

from __future__ import annotations

import io
from typing import Literal

import av
import numpy as np
import soundfile as sf

PCM_RATE = 24000
#: what each format decodes to: Opus always decodes at 48 kHz
AudioFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
FORMATS: tuple[AudioFormat, ...] = ("wav", "pcm", "flac", "mp3", "opus", "aac")


def decode(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    if fmt == "pcm":
        assert len(data) % 2 == 0, "raw 16-bit PCM has an even byte count"
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0, PCM_RATE
    if fmt in ("wav", "flac") and _length_known(data):
        samples, rate = sf.read(io.BytesIO(data), dtype="float32")
        return samples.reshape(-1), int(rate)
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.audio[0]
        frames = [f.to_ndarray().reshape(-1) for f in container.decode(stream)]
        rate = stream.rate
    assert frames, f"{fmt}: no audio frames decoded"
    return np.concatenate(frames).astype(np.float32), int(rate)


def _length_known(data: bytes) -> bool:
    # A streamed WAV or FLAC cannot know its length when its header is sent ("unknown": 0xFFFFFFFF,
    # or 0 samples in FLAC's STREAMINFO). libsndfile wants a length; FFmpeg reads them either way.
    with sf.SoundFile(io.BytesIO(data)) as f:
        return 0 < f.frames < 1 << 32


def check_audio(data: bytes, fmt: str, min_seconds: float = 0.3) -> tuple[np.ndarray, int]:
    """Decode and assert it is real audio: the expected container, some length, finite, not silence."""
    magic = {
        "wav": lambda d: d[:4] == b"RIFF" and d[8:12] == b"WAVE",
        "flac": lambda d: d[:4] == b"fLaC",
        "opus": lambda d: d[:4] == b"OggS" and b"OpusHead" in d[:64],
        "mp3": lambda d: d[:3] == b"ID3" or (d[0] == 0xFF and d[1] & 0xE0 == 0xE0),
        "aac": lambda d: d[0] == 0xFF and d[1] & 0xF6 == 0xF0,  # ADTS sync word
        "pcm": lambda d: True,
    }
    assert data, f"{fmt}: empty body"
    assert magic[fmt](data), f"{fmt}: unexpected header {data[:16]!r}"
    samples, rate = decode(data, fmt)
    expected_rate = 48000 if fmt == "opus" else None
    if expected_rate:
        assert rate == expected_rate
    seconds = len(samples) / rate
    assert seconds >= min_seconds, f"{fmt}: only {seconds:.2f} s of audio"
    assert np.isfinite(samples).all(), f"{fmt}: non-finite samples"
    assert float(np.abs(samples).max()) > 1e-4, f"{fmt}: silence"
    return samples, rate
