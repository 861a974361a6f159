"""The app factory. No import-time side effects: everything starts in the lifespan.

The model loads in the background after start-up so ``/healthz`` answers during a long load and
``/readyz`` can say what is happening; a load that cannot succeed (bad checksums, a failed GPU
preflight under RequireGPU) reports the reason there and, through ``on_fatal``, ends the process
with the contract's exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from importlib import resources

from fastapi import Depends, FastAPI
from fastapi.responses import HTMLResponse

from .api_ops import health, ops
from .api_speech import router as speech_router
from .api_voices import router as voices_router
from .auth import TokenFile, require_token
from .errors import install_error_handlers
from .middleware import BodyLimitMiddleware, MetricsMiddleware
from .settings import Settings
from .state import ModelLoader, ServerState

log = logging.getLogger(__name__)


def _index_html() -> str:
    return resources.files("tts_runtime").joinpath("static/index.html").read_text(encoding="utf-8")


def create_app(
    settings: Settings,
    *,
    loader: ModelLoader | None = None,
    on_fatal: Callable[[int], None] | None = None,
) -> FastAPI:
    """Build the serving app.

    ``loader(version_dir, device)`` loads a model; the default is ``tts_runtime.models.load_model``.
    ``on_fatal(exit_code)`` is called when the configured version can never be served.
    """
    state = ServerState(settings, loader=loader, on_fatal=on_fatal)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(state.start(), name="load-model")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            state.shutdown()

    app = FastAPI(
        title="tts-runtime",
        summary="Text-to-speech serving: OpenAI-compatible speech, streaming, voices, hot reload.",
        version="1",
        lifespan=lifespan,
    )
    app.state.tts = state
    app.state.tokens = TokenFile(settings.auth_token_file) if settings.auth_token_file else None
    install_error_handlers(app)

    authenticated = [Depends(require_token)]
    app.include_router(health)
    app.include_router(ops, dependencies=authenticated)
    app.include_router(speech_router, dependencies=authenticated)
    app.include_router(voices_router, dependencies=authenticated)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        # A static page with no data in it; the API calls it makes carry the token the user types.
        return HTMLResponse(_index_html())

    # Bodies: a voice upload is the largest thing a client may send; JSON requests are far smaller.
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_upload_bytes + 64 * 1024)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app
