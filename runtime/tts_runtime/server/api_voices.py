"""Voices: list, register (multipart reference clips), delete.

Registration validates the clips, stores them, and computes the conditioning latents once on a
worker (so it counts against the concurrency limit like any model work); later requests with the
voice reuse the latents from memory or the voices directory.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile

from .engine import ModelHandle
from .errors import ApiError, bad_request, not_found
from .state import ServerState, get_state
from .voices import VoiceError, validate_clips, validate_voice_name

router = APIRouter(tags=["voices"])


def _voice_object(state: ServerState, name: str) -> dict[str, Any]:
    record = state.voices.record(name)
    return {
        "id": name,
        "object": "voice",
        "name": name,
        "source": record.get("source", "upload"),
        "created_at": record.get("createdAt"),
        "clips": [{"seconds": c["seconds"], "sample_rate": c["sampleRate"]} for c in record.get("clips", [])],
    }


def _builtin(name: str) -> dict[str, Any]:
    return {"id": name, "object": "voice", "name": name, "source": "model", "created_at": None, "clips": []}


@router.get("/v1/audio/voices", summary="List the voices requests can use")
async def list_voices(request: Request) -> dict[str, Any]:
    state = get_state(request)
    handle = state.require_handle()
    if handle.clones_voices:
        data = [_voice_object(state, n) for n in state.voices.names()]
    else:
        data = [_builtin(n) for n in handle.builtin_voices]
    return {"object": "list", "data": data}


async def _read_upload(request: Request, state: ServerState) -> tuple[str, list[tuple[str, bytes]]]:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(
            415,
            "unsupported_media_type",
            "send multipart/form-data with a 'name' field and one or more 'file' fields",
        )
    settings = state.settings
    try:
        form = await request.form(max_files=settings.max_voice_clips, max_fields=8, max_part_size=64 * 1024)
    except ApiError:
        raise
    except Exception as e:  # multipart errors: too many files, malformed parts
        if getattr(e, "status_code", None) == 413:
            raise
        raise bad_request(
            "invalid_multipart", f"could not read the form: {getattr(e, 'detail', e)}"
        ) from None
    name = form.get("name")
    if not isinstance(name, str) or not name:
        raise bad_request("missing_name", "the form needs a 'name' field", param="name")
    clips: list[tuple[str, bytes]] = []
    for key in ("file", "files", "file[]"):
        for item in form.getlist(key):
            if not isinstance(item, UploadFile):
                raise bad_request("invalid_file", f"'{key}' must be a file upload", param=key)
            clips.append((item.filename or f"clip-{len(clips)}", await item.read()))
    await form.close()
    return name, clips


@router.post("/v1/audio/voices", status_code=201, summary="Register a voice from reference clips")
async def create_voice(request: Request) -> dict[str, Any]:
    state = get_state(request)
    handle: ModelHandle = state.require_handle()
    if not handle.clones_voices:
        raise bad_request(
            "cloning_unsupported", f"{handle.engine.value} models do not clone voices; use XTTS"
        )
    name, clips = await _read_upload(request, state)
    try:
        validate_voice_name(name)
        decoded = await asyncio.to_thread(validate_clips, clips, state.settings)
    except VoiceError as e:
        raise bad_request(
            e.code, e.message, param="name" if e.code == "invalid_voice_name" else "file"
        ) from None
    async with state.voice_lock:
        if state.voices.exists(name):
            raise ApiError(
                409, "voice_exists", f"voice {name!r} exists; delete it first to replace it", param="name"
            )
        await asyncio.to_thread(state.voices.save, name, decoded, "upload")
    deadline = time.monotonic() + state.settings.request_timeout_seconds
    try:
        await state.scheduler.run(
            lambda: handle.voice_latents(name, state.voices), deadline, state.settings.request_timeout_seconds
        )
    except BaseException as e:
        # No latents, no voice: a registration that failed (queue full, deadline, a reference the
        # model cannot condition on) leaves nothing behind, so the client can simply retry.
        state.voices.delete(name)
        handle.latents.pop(name, None)
        if isinstance(e, ApiError) or not isinstance(e, Exception):
            raise
        raise bad_request(
            "conditioning_failed", f"the model cannot use this reference: {type(e).__name__}: {e}"
        ) from e
    state.metrics.voices.set(len(handle.latents))
    return _voice_object(state, name)


@router.get("/v1/audio/voices/{name}", summary="Describe one voice")
async def get_voice(name: str, request: Request) -> dict[str, Any]:
    state = get_state(request)
    handle = state.require_handle()
    if not handle.clones_voices and name in handle.builtin_voices:
        return _builtin(name)
    if not state.voices.exists(name):
        raise not_found("voice_not_found", f"voice {name!r} is not registered", param="name")
    return _voice_object(state, name)


@router.delete("/v1/audio/voices/{name}", summary="Delete a registered voice")
async def delete_voice(name: str, request: Request) -> dict[str, Any]:
    state = get_state(request)
    async with state.voice_lock:
        if not state.voices.exists(name) or not await asyncio.to_thread(state.voices.delete, name):
            raise not_found("voice_not_found", f"voice {name!r} is not registered", param="name")
    handle = state.handle
    if handle is not None:
        # In-flight requests hold their own reference to the latents; new ones will not find the voice.
        handle.latents.pop(name, None)
        state.metrics.voices.set(len(handle.latents))
    return {"id": name, "object": "voice.deleted", "deleted": True}
