"""Optional bearer-token auth, the token read from a file (a mounted Kubernetes Secret).

The file is re-read when it changes, so a rotated Secret takes effect without a restart. A token file
that is configured but missing or empty refuses every request (fail closed) rather than serving
without auth.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from fastapi import Request

from .errors import ApiError
from .state import get_state


class TokenFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[float, int] | None = None
        self._token: str | None = None

    def token(self) -> str | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        stamp = (st.st_mtime, st.st_size)
        if stamp != self._stamp:
            self._token = self.path.read_text().strip() or None
            self._stamp = stamp
        return self._token


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": 'Bearer realm="tts"'})


async def require_token(request: Request) -> None:
    """FastAPI dependency on every router but the health endpoints."""
    tokens: TokenFile | None = request.app.state.tokens
    if tokens is None:
        return
    expected = tokens.token()
    if expected is None:
        get_state(request).metrics.rejected.labels(reason="auth_unconfigured").inc()
        raise ApiError(
            503,
            "auth_unavailable",
            f"the token file {tokens.path} is missing or empty; refusing all requests",
        )
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise _unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise _unauthorized("invalid bearer token")
