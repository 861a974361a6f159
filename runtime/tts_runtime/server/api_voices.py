"""Voices: list, register (multipart reference clips), delete.

Registration validates the clips, stores them, and computes the conditioning latents once on a
worker (so it counts against the concurrency limit like any model work); later requests with the
voice reuse the latents from memory or the voices directory. With a shared voice store
(``voicesUri``) the voice, its latents included, is written there before the answer, and a delete
removes it there: every replica follows within about a second (``shared_voices.py``).

Voices a model version ships (its manifest's ``voices``) are listed with ``source: version``; they
come and go with the version and cannot be deleted. ``default`` names the version's default voice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile

from ..artifacts.store import ArtifactError
from .engine import DEFAULT_VOICE, ModelHandle
from .errors import ApiError, bad_request, not_found
from .state import ServerState, get_state
from .voices import VoiceError, validate_clips, validate_voice_name

router = APIRouter(tags=["voices"])


def _voice_object(state: ServerState, name: str, handle: ModelHandle | None = None) -> dict[str, Any]:
    handle = handle or state.handle
    version_voice = handle.version_voices.get(name) if handle is not None else None
    if version_voice is not None:
        source, created = "version", None
        clips = [{"seconds": round(version_voice.seconds, 3), "sample_rate": version_voice.sample_rate}]
    else:
        record = state.voices.record(name)
        source, created = record.get("source", "upload"), record.get("createdAt")
        clips = [{"seconds": c["seconds"], "sample_rate": c["sampleRate"]} for c in record.get("clips", [])]
    return {
        "id": name,
        "object": "voice",
        "name": name,
        "source": source,
        "created_at": created,
        "clips": clips,
        "default": handle is not None and handle.default_voice == name,
    }


def _store_unavailable(e: ArtifactError) -> ApiError:
    return ApiError(503, "voice_store_unavailable", f"the shared voice store failed: {e}")


def _builtin(name: str) -> dict[str, Any]:
    return {"id": name, "object": "voice", "name": name, "source": "model", "created_at": None, "clips": []}


@router.get("/v1/audio/voices", summary="List the voices requests can use")
async def list_voices(request: Request) -> dict[str, Any]:
    state = get_state(request)
    handle = state.require_handle()
    if handle.clones_voices:
        data = [_voice_object(state, n, handle) for n in handle.voice_names(state.voices)]
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
    shared = state.shared
    async with state.voice_lock:
        taken = (
            state.voices.exists(name)
            or name in handle.version_voices
            or (name == DEFAULT_VOICE and handle.default_voice is not None)
        )
        if not taken and shared is not None:
            try:  # another replica's upload this pod has not copied yet
                taken = await asyncio.to_thread(shared.exists, name)
            except ArtifactError as e:
                raise _store_unavailable(e) from None
        if taken:
            raise ApiError(
                409, "voice_exists", f"voice {name!r} exists; delete it first to replace it", param="name"
            )
        await asyncio.to_thread(state.voices.save, name, decoded, "upload")
    deadline = time.monotonic() + state.settings.request_timeout_seconds
    try:
        await state.scheduler.run(
            lambda: handle.voice_latents(name, state.voices), deadline, state.settings.request_timeout_seconds
        )
        if shared is not None:
            # clips and latents, then voice.json: only then is the voice there for every replica
            async with state.voice_lock:
                await asyncio.to_thread(shared.publish, name)
    except BaseException as e:
        # No latents, no voice: a registration that failed (queue full, deadline, a reference the
        # model cannot condition on, the voice store down) leaves nothing behind, so the client can
        # simply retry.
        state.voices.delete(name)
        handle.latents.pop(name, None)
        if isinstance(e, ArtifactError):
            if shared is not None:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(shared.delete, name)
            raise _store_unavailable(e) from None
        if isinstance(e, ApiError) or not isinstance(e, Exception):
            raise
        raise bad_request(
            "conditioning_failed", f"the model cannot use this reference: {type(e).__name__}: {e}"
        ) from e
    state.metrics.voices.set(len(handle.latents))
    return _voice_object(state, name, handle)


@router.get("/v1/audio/voices/{name}", summary="Describe one voice")
async def get_voice(name: str, request: Request) -> dict[str, Any]:
    state = get_state(request)
    handle = state.require_handle()
    if not handle.clones_voices:
        if name in handle.builtin_voices:
            return _builtin(name)
        raise not_found("voice_not_found", f"voice {name!r} is not registered", param="name")
    resolved = handle.resolve_voice(name, state.voices)
    if resolved is None:
        raise not_found("voice_not_found", f"voice {name!r} is not registered", param="name")
    return _voice_object(state, resolved, handle)


@router.delete("/v1/audio/voices/{name}", summary="Delete a registered voice")
async def delete_voice(name: str, request: Request) -> dict[str, Any]:
    state = get_state(request)
    handle = state.handle
    if handle is not None and name in handle.version_voices:
        raise ApiError(
            409,
            "voice_read_only",
            f"voice {name!r} ships with model version {handle.version}: it cannot be deleted "
            "(a voice of that name in the VoiceModel's spec.voices replaces it)",
            param="name",
        )
    shared = state.shared
    async with state.voice_lock:
        here = state.voices.exists(name)
        stored = False
        if shared is not None and state.voices.source(name) != "spec":
            try:
                stored = await asyncio.to_thread(shared.exists, name)
                if stored:
                    await asyncio.to_thread(shared.delete, name)
            except ArtifactError as e:
                raise _store_unavailable(e) from None
        if not stored and not here:
            raise not_found("voice_not_found", f"voice {name!r} is not registered", param="name")
        if here:
            await asyncio.to_thread(state.voices.delete, name)
    handle = state.handle
    if handle is not None:
        # In-flight requests hold their own reference to the latents; new ones will not find the voice.
        handle.latents.pop(name, None)
        state.metrics.voices.set(len(handle.latents))
    return {"id": name, "object": "voice.deleted", "deleted": True}
