"""Operational endpoints: health, readiness, info, models, metrics, hot reload."""

from __future__ import annotations

import platform
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from .audio import available_formats
from .metrics import CONTENT_TYPE_LATEST
from .state import OPENAI_MODEL_ALIASES, get_state

#: liveness and readiness: never behind auth (the kubelet sends no token)
health = APIRouter(tags=["health"])
#: everything else operators use
ops = APIRouter(tags=["operations"])


@health.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@health.get("/readyz", summary="Readiness: checksums verified, preflight passed, warm-up done")
async def readyz(request: Request) -> JSONResponse:
    state = get_state(request)
    handle = state.handle
    body: dict[str, Any] = {
        "ready": handle is not None,
        "phase": state.phase,
        "version": handle.version if handle else None,
        "checks": {
            "checksums": handle is not None,
            "preflight": state.device.preflight if state.device else "pending",
            "warmup": handle is not None,
        },
    }
    if state.error:
        body["error"] = state.error
    return JSONResponse(body, status_code=200 if handle is not None else 503)


def _torch_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudaAvailable": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


@ops.get("/info", summary="Version, engine, device, library versions, preflight result, limits")
async def info(request: Request) -> dict[str, Any]:
    state = get_state(request)
    handle = state.handle
    s = state.settings
    return {
        "ready": handle is not None,
        "phase": state.phase,
        "error": state.error,
        "version": handle.version if handle else None,
        "engine": handle.engine.value if handle else (s.engine.value if s.engine else None),
        "device": state.device.as_dict() if state.device else None,
        "sampleRate": handle.sample_rate if handle else None,
        "languages": list(handle.languages) if handle else [],
        "digest": handle.digest if handle else None,
        "timings": handle.timings if handle else {},
        "formats": list(available_formats()),
        "python": platform.python_version(),
        **_torch_info(),
        "limits": {
            "maxConcurrency": s.max_concurrency,
            "maxQueue": s.max_queue,
            "maxTextLength": s.max_text_length,
            "requestTimeoutSeconds": s.request_timeout_seconds,
            "maxUploadBytes": s.max_upload_bytes,
            "maxVoiceSeconds": s.max_voice_seconds,
            "streamChunkChars": s.stream_chunk_chars,
        },
        "load": {"queued": state.scheduler.waiting, "inFlight": state.scheduler.running},
        "auth": s.auth_token_file is not None,
        "lastReload": state.last_reload,
        "reloading": state.reload_step,
        "startedAt": state.started_at,
    }


@ops.get("/v1/models", summary="The served model (OpenAI-compatible list)")
async def list_models(request: Request) -> dict[str, Any]:
    state = get_state(request)
    handle = state.require_handle()
    data = [
        {
            "id": handle.version,
            "object": "model",
            "created": 0,
            "owned_by": "tts-operator",
            "engine": handle.engine,
        }
    ]
    data += [
        {"id": alias, "object": "model", "created": 0, "owned_by": "tts-operator", "alias_of": handle.version}
        for alias in OPENAI_MODEL_ALIASES
    ]
    return {"object": "list", "data": data}


@ops.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    state = get_state(request)
    state.metrics.queue_depth.set(state.scheduler.waiting)
    state.metrics.in_flight.set(state.scheduler.running)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(
        min_length=1, max_length=128, description="A version directory under the models root"
    )


@ops.post("/admin/reload", summary="Load another version beside the current one and switch atomically")
async def reload(body: ReloadRequest, request: Request) -> dict[str, Any]:
    return await get_state(request).reload(body.version)
