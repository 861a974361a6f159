"""The encoders and the reference-clip decoder, on synthetic signals (no model: fast)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from tts_runtime.server.audio import (
    AudioDecodeError,
    available_formats,
    decode_audio,
    encode_whole,
    stream_encoder,
)

from .audiocheck import FORMATS, AudioFormat, check_audio, decode


def _sine(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_every_format_has_an_encoder_here() -> None:
    assert set(available_formats()) == set(FORMATS)


@pytest.mark.parametrize("rate", [22050, 24000])
@pytest.mark.parametrize("fmt", FORMATS)
def test_whole_and_streamed_encodings_decode_to_the_same_length(fmt: AudioFormat, rate: int) -> None:
    audio = _sine(1.5, rate)
    whole = encode_whole(audio, rate, fmt)
    encoder = stream_encoder(fmt, rate)
    streamed = b"".join(encoder.encode(part) for part in np.array_split(audio, 5)) + encoder.finish()
    for data in (whole, streamed):
        samples, out_rate = check_audio(data, fmt)
        # codecs pad by a frame or two; resampling (pcm at 24 kHz, opus at 48 kHz) keeps the duration
        assert abs(len(samples) / out_rate - 1.5) < 0.1, (fmt, len(samples) / out_rate)


def test_pcm_is_resampled_to_24khz_without_clicks_between_chunks() -> None:
    audio = _sine(1.0, 22050)
    encoder = stream_encoder("pcm", 22050)
    data = b"".join(encoder.encode(part) for part in np.array_split(audio, 7)) + encoder.finish()
    samples, rate = decode(data, "pcm")
    assert rate == 24000
    # a 220 Hz sine moves at most 2*pi*220/24000*0.4 per sample: a chunk seam would jump further
    assert np.max(np.abs(np.diff(samples[100:-100]))) < 0.03


def test_decode_audio_reads_wav_and_mp3_and_mixes_to_mono() -> None:
    stereo = np.stack([_sine(1.0, 16000), _sine(1.0, 16000)], axis=1)
    buf = io.BytesIO()
    sf.write(buf, stereo, 16000, format="WAV")
    samples, rate = decode_audio(buf.getvalue())
    assert rate == 16000 and samples.ndim == 1 and len(samples) == 16000
    mp3 = encode_whole(_sine(1.0, 24000), 24000, "mp3")
    samples, rate = decode_audio(mp3)
    assert rate == 24000 and abs(len(samples) / rate - 1.0) < 0.1


@pytest.mark.parametrize(
    "data", [b"", b"hello, not audio", b"RIFF\x00\x00\x00\x00WAVEjunk", bytes(range(256)) * 10]
)
def test_decode_audio_rejects_what_is_not_audio(data: bytes) -> None:
    with pytest.raises(AudioDecodeError):
        decode_audio(data)
