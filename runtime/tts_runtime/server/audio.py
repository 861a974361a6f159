"""Audio in and out: encoders for every response format, and decoding of uploaded reference clips.

No hand-written codecs: WAV and FLAC files go through libsndfile (``soundfile``); MP3, Opus and AAC,
and every streamed container, through FFmpeg's libraries (PyAV). Encoders are incremental so a
stream can send each sentence as soon as it is generated; PyAV's resampler is stateful, so chunk
boundaries do not click.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from functools import cache
from typing import Protocol

import av
import numpy as np
import soundfile as sf

#: OpenAI documents ``pcm`` as raw 24 kHz 16-bit little-endian mono; clients rely on it
PCM_RATE = 24000


@dataclass(frozen=True)
class AudioFormat:
    name: str
    media_type: str
    #: PyAV container and codec for incremental encoding (None: written by hand-free helpers below)
    container: str | None = None
    codec: str | None = None
    #: sample rates the codec accepts (None: any)
    rates: tuple[int, ...] | None = None


FORMATS: dict[str, AudioFormat] = {
    "wav": AudioFormat("wav", "audio/wav"),
    "pcm": AudioFormat("pcm", "audio/pcm"),
    "flac": AudioFormat("flac", "audio/flac", "flac", "flac"),
    "mp3": AudioFormat(
        "mp3",
        "audio/mpeg",
        "mp3",
        "libmp3lame",
        (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000),
    ),
    # OpenAI's "opus" is Ogg Opus
    "opus": AudioFormat("opus", "audio/ogg", "ogg", "libopus", (8000, 12000, 16000, 24000, 48000)),
    # raw AAC in ADTS frames: streamable, and what browsers and ffmpeg play as .aac
    "aac": AudioFormat(
        "aac",
        "audio/aac",
        "adts",
        "aac",
        (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000),
    ),
}


@cache
def available_formats() -> tuple[str, ...]:
    """The formats this host can encode (an FFmpeg build may lack an encoder)."""
    names = []
    for fmt in FORMATS.values():
        if fmt.codec is not None:
            try:
                av.codec.Codec(fmt.codec, "w")
            except Exception:  # av raises UnknownCodecError or ValueError depending on version
                continue
        names.append(fmt.name)
    return tuple(names)


def _to_int16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")


class StreamEncoder(Protocol):
    def encode(self, samples: np.ndarray) -> bytes: ...

    def finish(self) -> bytes: ...


class WavStreamEncoder:
    """16-bit PCM WAV whose header says "length unknown" (0xFFFFFFFF), as streamed WAV must."""

    def __init__(self, sample_rate: int) -> None:
        self._header: bytes | None = _wav_header(sample_rate, data_size=0xFFFFFFFF - 36)

    def encode(self, samples: np.ndarray) -> bytes:
        head, self._header = self._header or b"", None
        return head + _to_int16(samples).tobytes()

    def finish(self) -> bytes:
        head, self._header = self._header or b"", None
        return head


def _wav_header(sample_rate: int, data_size: int) -> bytes:
    return (
        b"RIFF"
        + struct.pack("<I", data_size + 36)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", data_size)
    )


class _Sink:
    """A write-only, non-seekable file for PyAV: the muxer output is taken as it is produced."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def write(self, data: bytes) -> int:
        self.buffer += data
        return len(data)

    def take(self) -> bytes:
        out = bytes(self.buffer)
        self.buffer.clear()
        return out


class AvStreamEncoder:
    """Incremental encoding through PyAV: any container/codec pair, mono, float input."""

    def __init__(self, fmt: AudioFormat, sample_rate: int) -> None:
        assert fmt.container and fmt.codec
        self._rate = sample_rate
        out_rate = (
            sample_rate if fmt.rates is None or sample_rate in fmt.rates else _nearest(fmt.rates, sample_rate)
        )
        self._sink = _Sink()
        # Ogg buffers a second of audio per page by default: 20 ms pages let a stream start at once.
        options = {"page_duration": "20000"} if fmt.container == "ogg" else {}
        self._container = av.open(self._sink, mode="w", format=fmt.container, options=options)
        self._stream: av.AudioStream = self._container.add_stream(  # type: ignore[assignment]
            fmt.codec, rate=out_rate, layout="mono"
        )
        # The codec context resamples and re-frames what it is given; converting the rate here
        # keeps the frames' timestamps in the output rate.
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=out_rate)
        self._closed = False

    def encode(self, samples: np.ndarray) -> bytes:
        if len(samples) == 0:
            return self._sink.take()
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, dtype=np.float32)[None, :], format="flt", layout="mono"
        )
        frame.sample_rate = self._rate
        for resampled in self._resampler.resample(frame):
            for packet in self._stream.encode(resampled):
                self._container.mux(packet)
        return self._sink.take()

    def finish(self) -> bytes:
        if self._closed:
            return b""
        self._closed = True
        for resampled in self._resampler.resample(None):
            for packet in self._stream.encode(resampled):
                self._container.mux(packet)
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return self._sink.take()


class PcmStreamEncoder:
    """Raw 16-bit little-endian mono at 24 kHz (resampled statefully when the model differs)."""

    def __init__(self, sample_rate: int) -> None:
        self._rate = sample_rate
        self._resampler = (
            None if sample_rate == PCM_RATE else av.AudioResampler(format="s16", layout="mono", rate=PCM_RATE)
        )

    def encode(self, samples: np.ndarray) -> bytes:
        if self._resampler is None:
            return _to_int16(samples).tobytes()
        if len(samples) == 0:
            return b""
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, dtype=np.float32)[None, :], format="flt", layout="mono"
        )
        frame.sample_rate = self._rate
        return b"".join(f.to_ndarray().astype("<i2").tobytes() for f in self._resampler.resample(frame))

    def finish(self) -> bytes:
        if self._resampler is None:
            return b""
        return b"".join(f.to_ndarray().astype("<i2").tobytes() for f in self._resampler.resample(None))


def stream_encoder(fmt: str, sample_rate: int) -> StreamEncoder:
    if fmt == "wav":
        return WavStreamEncoder(sample_rate)
    if fmt == "pcm":
        return PcmStreamEncoder(sample_rate)
    return AvStreamEncoder(FORMATS[fmt], sample_rate)


def encode_whole(samples: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """A complete file. WAV and FLAC carry their real lengths (libsndfile seeks back to write them)."""
    if fmt in ("wav", "flac"):
        buf = io.BytesIO()
        subtype = "PCM_16"
        sf.write(buf, np.clip(samples, -1.0, 1.0), sample_rate, format=fmt.upper(), subtype=subtype)
        return buf.getvalue()
    encoder = stream_encoder(fmt, sample_rate)
    return encoder.encode(samples) + encoder.finish()


def _nearest(rates: tuple[int, ...], rate: int) -> int:
    higher = [r for r in rates if r >= rate]
    return min(higher) if higher else max(rates)


# --- decoding uploads ---------------------------------------------------------------------------


class AudioDecodeError(ValueError):
    pass


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """Decode any clip libsndfile or FFmpeg reads into float32 mono samples and its sample rate."""
    if not data:
        raise AudioDecodeError("the file is empty")
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        return samples.mean(axis=1), int(rate)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        pass  # not a format libsndfile knows (mp3 before libsndfile 1.1, m4a, webm...): try FFmpeg
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise AudioDecodeError("the file holds no audio stream")
            stream = container.streams.audio[0]
            rate = stream.rate or stream.codec_context.sample_rate
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            chunks = [
                out.to_ndarray().reshape(-1)
                for frame in container.decode(stream)
                for out in resampler.resample(frame)
            ]
            chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    except AudioDecodeError:
        raise
    except Exception as e:  # FFmpeg's errors are many (InvalidDataError, EOFError, ...): all "unreadable"
        raise AudioDecodeError(f"not a readable audio file ({type(e).__name__}: {e})") from None
    if not chunks or not rate:
        raise AudioDecodeError("the file decodes to no audio samples")
    return np.concatenate(chunks).astype(np.float32), int(rate)
