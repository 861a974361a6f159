"""The runtime's server (``create_app``) on uvicorn in a thread on 127.0.0.1 (a free port), for the
serving tests: started until its model is ready, stopped at the end."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from .processes import free_port
from .waiting import wait_for

#: a tiny random model loading on a busy two-core machine, with margin
READY_TIMEOUT = 180.0


@dataclass
class LiveServer:
    url: str
    settings: Any
    app: Any

    def client(self, token: str | None = None, timeout: float = 120.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    @property
    def state(self) -> Any:
        return self.app.state.tts


@contextmanager
def live_server(settings: Any, token: str | None = None) -> Iterator[LiveServer]:
    """Run ``create_app(settings)`` (``tts_runtime.server.Settings``) on uvicorn in a thread until the
    model is ready."""
    import uvicorn

    from tts_runtime.server import create_app

    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    live = LiveServer(f"http://127.0.0.1:{port}", settings, app)
    try:
        with httpx.Client(base_url=live.url, timeout=5) as c:

            def ready() -> bool:
                if not thread.is_alive():
                    raise AssertionError("the server thread died during start-up")
                try:
                    r = c.get("/readyz")
                except httpx.TransportError:
                    return False
                body = r.json()
                if body.get("phase") == "failed":
                    raise AssertionError(f"the server failed to start: {body.get('error')}")
                return r.status_code == 200

            wait_for(ready, READY_TIMEOUT, "the server to become ready", interval=0.2, retry_on=())
        yield live
    finally:
        server.should_exit = True
        thread.join(timeout=30)
