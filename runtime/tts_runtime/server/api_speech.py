"""Speech endpoints: OpenAI's ``POST /v1/audio/speech`` and the native ``POST /v1/audio/stream``.

Streams wait for the first piece of audio before sending headers, so every error a request can
cause (unknown voice, bad language, queue full, a model failure on the first sentence) still comes
back as a JSON error with a 4xx/5xx status rather than as a truncated 200.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from tts_contract.contract import Engine

from .audio import FORMATS, available_formats, encode_whole, stream_encoder
from .engine import Generation, ModelHandle, SynthesisRequest
from .errors import ApiError, bad_request, not_found
from .state import ServerState, get_state

router = APIRouter(tags=["speech"])

AudioFormatName = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]


class VoiceRef(BaseModel):
    """OpenAI's newer voice object form: ``{"id": "..."}``."""

    id: str


class SamplingFields(BaseModel):
    """XTTS sampling settings (ignored by VITS, which samples no tokens)."""

    model_config = ConfigDict(extra="forbid")

    language: str | None = Field(
        default=None, description="Language code, e.g. 'en'; default: the model's first"
    )
    # logits are divided by the temperature and, for repeated tokens, by the penalty: values near zero
    # overflow to inf and the sampler fails (schemathesis found repetition_penalty=5.8e-87 -> a 500)
    temperature: float | None = Field(default=None, ge=0.01, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=1, le=1000)
    repetition_penalty: float | None = Field(
        default=None, ge=1, le=100, description="1 = no penalty; higher discourages repeated audio tokens"
    )
    length_penalty: float | None = Field(default=None, ge=-10, le=10)

    def sampling(self) -> dict[str, Any]:
        fields = ("temperature", "top_p", "top_k", "repetition_penalty", "length_penalty")
        return {k: getattr(self, k) for k in fields if getattr(self, k) is not None}


class SpeechRequest(SamplingFields):
    """OpenAI's speech request, plus ``stream``, ``language`` and sampling settings."""

    model: str = Field(
        min_length=1, description="The served version, its engine, or tts-1 / tts-1-hd / gpt-4o-mini-tts"
    )
    input: str = Field(description="The text to speak")
    voice: str | VoiceRef = Field(
        description="A voice from GET /v1/audio/voices; `default`: the model version's default voice"
    )
    instructions: str | None = Field(default=None, description="Accepted for compatibility; not used")
    response_format: AudioFormatName = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"
    stream: bool = Field(
        default=True,
        description="Send audio as it is generated (chunked), as OpenAI does; false sends one complete file",
    )


class StreamRequest(SamplingFields):
    """The native low-latency stream: one text piece at a time, audio sent as soon as it exists."""

    text: str
    voice: str
    format: AudioFormatName = "pcm"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    chunk_chars: int | None = Field(
        default=None,
        ge=20,
        le=1000,
        description="Longest text piece generated at once (default: the server's)",
    )


def _voice_name(voice: str | VoiceRef) -> str:
    return voice.id if isinstance(voice, VoiceRef) else voice


def prepare(
    state: ServerState,
    handle: ModelHandle,
    *,
    text: str,
    voice: str,
    language: str | None,
    speed: float,
    sampling: dict[str, Any],
    fmt: str,
    chunk_chars: int | None = None,
) -> SynthesisRequest:
    """Check everything about a request that can be checked before spending model time."""
    settings = state.settings
    if not text.strip():
        raise bad_request("empty_input", "the input text is empty", param="input")
    if len(text) > settings.max_text_length:
        raise bad_request(
            "input_too_long",
            f"the input is {len(text)} characters; at most {settings.max_text_length}",
            param="input",
        )
    if fmt not in available_formats():
        raise bad_request(
            "unsupported_format",
            f"format {fmt!r} has no encoder on this server; available: {', '.join(available_formats())}",
            param="response_format",
        )
    if handle.clones_voices:
        resolved = handle.resolve_voice(voice, state.voices)
        if resolved is None:
            known = handle.voice_names(state.voices)
            raise not_found(
                "voice_not_found",
                f"voice {voice!r} is not registered; registered: {', '.join(known) or 'none'} "
                "(register one with POST /v1/audio/voices)",
                param="voice",
            )
        voice = resolved
    elif voice not in handle.builtin_voices:
        raise not_found(
            "voice_not_found",
            f"voice {voice!r} does not exist; this model has: {', '.join(handle.builtin_voices)}",
            param="voice",
        )
    if language is None:
        language = settings.default_language or (handle.languages[0] if handle.languages else None)
    elif handle.languages and language not in handle.languages:
        # "en-US" asks for English: accept a regional tag when the model knows its base language
        base = language.split("-")[0].lower()
        if base not in handle.languages:
            raise bad_request(
                "unsupported_language",
                f"language {language!r} is not supported by this model; "
                f"supported: {', '.join(handle.languages)}",
                param="language",
            )
        language = base
    if handle.engine == Engine.VITS:
        sampling = {}  # VITS has no token sampling: the XTTS settings do not apply
    return SynthesisRequest(
        text=text,
        voice=voice,
        language=language,
        speed=speed,
        sampling=sampling,
        chunk_chars=chunk_chars or settings.stream_chunk_chars,
    )


def _observe(state: ServerState, gen: Generation, streamed: bool) -> None:
    stats = gen.stats
    if stats.first_audio is not None:
        state.metrics.time_to_first_audio.labels(streamed=str(streamed).lower()).observe(
            stats.first_audio - stats.created
        )
    if stats.finished is not None and stats.audio_samples:
        audio_seconds = stats.audio_samples / gen.handle.sample_rate
        state.metrics.audio_seconds.inc(audio_seconds)
        state.metrics.real_time_factor.observe((stats.finished - stats.started) / audio_seconds)


def _headers(gen: Generation) -> dict[str, str]:
    return {
        "X-Model-Version": gen.handle.version,
        "X-Sample-Rate": str(gen.handle.sample_rate),
        "Cache-Control": "no-store",
    }


async def _start(state: ServerState, handle: ModelHandle, request: SynthesisRequest) -> Generation:
    gen = Generation(
        handle,
        request,
        state.voices,
        state.scheduler,
        state.settings.request_timeout_seconds,
        on_piece=state.metrics.pieces.inc,
    )
    await gen.start()
    return gen


async def _whole(state: ServerState, gen: Generation, fmt: str) -> Response:
    audio = await gen.collect()
    _observe(state, gen, streamed=False)
    # Encoding a long text to MP3 takes a while: off the event loop.
    body = await asyncio.to_thread(encode_whole, audio, gen.handle.sample_rate, fmt)
    return Response(body, media_type=FORMATS[fmt].media_type, headers=_headers(gen))


async def _first_and_rest(gen: Generation) -> tuple[np.ndarray | None, AsyncIterator[np.ndarray]]:
    chunks = gen.audio()
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        first = None
    return first, chunks


async def _audio_stream(state: ServerState, gen: Generation, fmt: str) -> Response:
    first, rest = await _first_and_rest(gen)
    encoder = stream_encoder(fmt, gen.handle.sample_rate)

    async def body() -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield encoder.encode(first)
                async for chunk in rest:
                    data = encoder.encode(chunk)
                    if data:
                        yield data
            yield encoder.finish()
            _observe(state, gen, streamed=True)
        finally:
            gen.cancel()  # a disconnect lands here (cancelled or closed generator): stop the worker
            if not gen.completed:
                state.metrics.cancelled.labels(reason="client_gone").inc()

    return StreamingResponse(body(), media_type=FORMATS[fmt].media_type, headers=_headers(gen))


def _sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


async def _sse_stream(state: ServerState, gen: Generation, fmt: str, input_chars: int) -> Response:
    first, rest = await _first_and_rest(gen)
    encoder = stream_encoder(fmt, gen.handle.sample_rate)

    async def body() -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield _sse(
                    {"type": "speech.audio.delta", "audio": base64.b64encode(encoder.encode(first)).decode()}
                )
                try:
                    async for chunk in rest:
                        data = encoder.encode(chunk)
                        if data:
                            yield _sse(
                                {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}
                            )
                except ApiError as e:  # after the 200: the error travels as an event
                    yield _sse({"type": "error", "error": {"code": e.code, "message": e.message}})
                    return
            tail = encoder.finish()
            if tail:
                yield _sse({"type": "speech.audio.delta", "audio": base64.b64encode(tail).decode()})
            _observe(state, gen, streamed=True)
            seconds = gen.stats.audio_samples / gen.handle.sample_rate
            usage = {"input_characters": input_chars, "output_audio_seconds": round(seconds, 3)}
            yield _sse({"type": "speech.audio.done", "usage": usage})
        finally:
            gen.cancel()
            if not gen.completed:
                state.metrics.cancelled.labels(reason="client_gone").inc()

    headers = {**_headers(gen), "X-Accel-Buffering": "no"}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


@router.post(
    "/v1/audio/speech",
    summary="Generate speech (OpenAI-compatible)",
    responses={200: {"content": {f.media_type: {} for f in FORMATS.values()}, "description": "Audio"}},
)
async def create_speech(body: SpeechRequest, request: Request) -> Response:
    state = get_state(request)
    handle = state.require_handle()
    state.check_model_name(body.model, handle)
    synthesis = prepare(
        state,
        handle,
        text=body.input,
        voice=_voice_name(body.voice),
        language=body.language,
        speed=body.speed,
        sampling=body.sampling(),
        fmt=body.response_format,
    )
    gen = await _start(state, handle, synthesis)
    if body.stream_format == "sse":
        return await _sse_stream(state, gen, body.response_format, len(body.input))
    if body.stream:
        return await _audio_stream(state, gen, body.response_format)
    return await _whole(state, gen, body.response_format)


@router.post(
    "/v1/audio/stream",
    summary="Stream speech as it is generated, a sentence at a time",
    responses={200: {"content": {f.media_type: {} for f in FORMATS.values()}, "description": "Audio stream"}},
)
async def stream_speech(body: StreamRequest, request: Request) -> Response:
    state = get_state(request)
    handle = state.require_handle()
    synthesis = prepare(
        state,
        handle,
        text=body.text,
        voice=body.voice,
        language=body.language,
        speed=body.speed,
        sampling=body.sampling(),
        fmt=body.format,
        chunk_chars=body.chunk_chars,
    )
    gen = await _start(state, handle, synthesis)
    return await _audio_stream(state, gen, body.format)
