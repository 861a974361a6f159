"""Errors as JSON: ``{"error": {"code", "message", "type", "param"}}`` for every failure.

The shape is OpenAI's (``type`` and ``param`` included), so the OpenAI SDKs raise their usual
exceptions with our message. Every exception path of the app ends here: nothing a client sends may
take the process down or answer with an HTML page.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with an HTTP status, a stable machine-readable code and a message for humans."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}


def bad_request(code: str, message: str, param: str | None = None) -> ApiError:
    return ApiError(400, code, message, param=param)


def not_found(code: str, message: str, param: str | None = None) -> ApiError:
    return ApiError(404, code, message, param=param)


def overloaded(retry_after: int) -> ApiError:
    return ApiError(
        429,
        "overloaded",
        f"the server is at capacity (all workers busy and the queue full); retry in {retry_after} s",
        headers={"Retry-After": str(retry_after)},
    )


def not_ready(message: str) -> ApiError:
    return ApiError(503, "not_ready", message, headers={"Retry-After": "5"})


_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error"}


def error_body(status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"code": code, "message": message, "type": kind, "param": param}}


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(
        error_body(error.status, error.code, error.message, error.param),
        status_code=error.status,
        headers=error.headers,
    )


def _describe_validation(exc: RequestValidationError) -> tuple[str, str | None]:
    parts = []
    param = None
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "")
            return f"the request body is not valid JSON ({detail})", None
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        where = ".".join(loc)
        param = param or where or None
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "; ".join(parts) or "invalid request", param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _describe_validation(exc)
        return error_response(ApiError(400, "invalid_request", message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        code = codes.get(exc.status_code, f"http_{exc.status_code}")
        headers = dict(exc.headers or {})
        return error_response(ApiError(exc.status_code, code, str(exc.detail), headers=headers))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug or a model failure: log it with the traceback, answer 500, keep serving.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(ApiError(500, "internal_error", f"{type(exc).__name__}: {exc}"))
