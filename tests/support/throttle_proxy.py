"""A slow, throttling HTTPS proxy to put between a client (the operator) and kube-apiserver.

It terminates TLS with a certificate the client trusts (the dev cluster's serving certificate, which
carries ``IP:127.0.0.1``), forwards every request to the API server over its own mutually
authenticated TLS connection, and records each request (time, method, path, watch or not, status).
That record is what a test counts: the client's request rate, its watch reconnects, how soon it
retries a request that got a 429.

While throttled it behaves like an overloaded API server with API Priority and Fairness:

- a share of the requests (watches included) are answered at once with ``429 Too Many Requests``,
  a ``Retry-After`` header and the Status body kube-apiserver sends (``retryAfterSeconds``);
- the others are forwarded after a delay (a slow server);
- optionally the watch streams open at that moment are cut, so the client must reconnect into the
  throttled server.

The proxy runs an aiohttp server on its own event loop in a background thread; ``start``/``stop``
are called from ordinary (synchronous) test code.
"""

from __future__ import annotations

import asyncio
import base64
import random
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

#: hop-by-hop headers (RFC 9110 section 7.6.1) and the ones aiohttp sets itself for the new message
_SKIP_HEADERS = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
#: headers aiohttp's client adds on its own when the request has none
_AUTO_HEADERS = ("Content-Type", "User-Agent", "Accept", "Accept-Encoding")


@dataclass(frozen=True)
class Seen:
    """One request as the proxy saw it."""

    at: float  #: time.monotonic() when it arrived
    method: str
    path: str  #: without the query
    watch: bool
    status: int  #: 429 when the proxy refused it, else the API server's status (502: unreachable)


@dataclass(frozen=True)
class Throttle:
    """How an overloaded API server answers."""

    reject_share: float = 0.5  #: share of requests answered 429 at once
    retry_after: int = 1  #: seconds, in ``Retry-After`` and ``details.retryAfterSeconds``
    delay: float = 0.3  #: seconds added before forwarding each request that is not refused


def _is_watch(request: web.BaseRequest) -> bool:
    return request.query.get("watch", "").lower() in ("true", "1") or "/watch/" in request.path


def _too_many_requests(retry_after: int) -> web.Response:
    # the body kube-apiserver's APF sends: clients read either the header or the details
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Too many requests, please try again later.",
        "reason": "TooManyRequests",
        "details": {"retryAfterSeconds": retry_after},
        "code": 429,
    }
    return web.json_response(body, status=429, headers={"Retry-After": str(retry_after)})


class ThrottleProxy:
    """``ThrottleProxy(upstream, ca, cert, key).start()``; point the client at ``.url``."""

    def __init__(
        self,
        upstream: str,
        ca: Path,
        cert: Path,
        key: Path,
        seed: int = 0,
    ) -> None:
        """``upstream``: the API server's https URL; ``ca``: its CA; ``cert``/``key``: a client
        certificate it accepts. The proxy serves TLS with the same ``cert``/``key`` (the dev
        cluster's admin certificate is both a client and a serving certificate for 127.0.0.1)."""
        self.upstream = upstream.rstrip("/")
        self.ca, self.cert, self.key = ca, cert, key
        self.port = 0
        self._rng = random.Random(seed)  # the same seed refuses the same requests
        self._throttle: Throttle | None = None
        self._seen: list[Seen] = []
        self._lock = threading.Lock()
        self._streams: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # --- control (from the test's thread) -----------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> ThrottleProxy:
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start())
            except BaseException as e:
                failure.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=serve, name="throttle-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise TimeoutError("the throttling proxy did not start in 30 s")
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        self._loop = self._thread = None

    def throttle(self, how: Throttle, cut_watches: bool = True) -> None:
        """Start answering like an overloaded server; ``cut_watches`` ends the open watch streams."""
        with self._lock:
            self._throttle = how
        if cut_watches and self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._cut_streams(), self._loop).result(timeout=10)

    def unthrottle(self) -> None:
        with self._lock:
            self._throttle = None

    def seen(self, since: float | None = None, until: float | None = None) -> list[Seen]:
        """The requests that arrived in [since, until) (monotonic times), oldest first."""
        with self._lock:
            return [
                s for s in self._seen if (since is None or s.at >= since) and (until is None or s.at < until)
            ]

    def write_kubeconfig(self, source: Path, dest: Path) -> Path:
        """``source`` (a kubeconfig of the API server behind the proxy) pointed at the proxy."""
        cfg = yaml.safe_load(source.read_text())
        for cluster in cfg["clusters"]:
            cluster["cluster"]["server"] = self.url
            cluster["cluster"]["certificate-authority-data"] = base64.b64encode(self.ca.read_bytes()).decode()
        dest.write_text(yaml.safe_dump(cfg))
        dest.chmod(0o600)
        return dest

    # --- the server (on the proxy's loop) -----------------------------------------------------------

    async def _start(self) -> None:
        upstream_tls = ssl.create_default_context(cafile=str(self.ca))
        upstream_tls.load_cert_chain(str(self.cert), str(self.key))
        # no pool limit: a watch holds its connection for minutes; the client's own limits apply
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=upstream_tls, limit=0),
            auto_decompress=False,  # pass the API server's bytes through as they are
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )
        serving_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        serving_tls.load_cert_chain(str(self.cert), str(self.key))
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=serving_tls)
        await site.start()
        server = site._server  # aiohttp exposes the bound port only through the asyncio server
        assert server is not None and isinstance(server, asyncio.base_events.Server)
        self.port = int(server.sockets[0].getsockname()[1])

    async def _shutdown(self) -> None:
        await self._cut_streams()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _cut_streams(self) -> None:
        for task in list(self._streams):
            task.cancel()

    def _decide(self) -> tuple[Throttle | None, bool]:
        """The throttle in force for one request (or None) and whether to refuse it."""
        with self._lock:
            how = self._throttle
            return how, how is not None and self._rng.random() < how.reject_share

    def _record(self, request: web.BaseRequest, arrived: float, status: int) -> None:
        with self._lock:
            self._seen.append(Seen(arrived, request.method, request.path, _is_watch(request), status))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        how, refuse = self._decide()
        if how is not None and refuse:
            self._record(request, arrived, 429)
            return _too_many_requests(how.retry_after)
        if how is not None:
            await asyncio.sleep(how.delay)
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIP_HEADERS}
        assert self._session is not None
        try:
            upstream = await self._session.request(
                request.method,
                self.upstream + request.rel_url.raw_path_qs,
                headers=headers,
                data=body or None,
                allow_redirects=False,
                # forward what the client sent, nothing more: aiohttp would label a body without
                # Content-Type as application/octet-stream, which kube-apiserver refuses (415)
                skip_auto_headers=[h for h in _AUTO_HEADERS if h not in request.headers],
            )
        except (aiohttp.ClientError, OSError) as e:
            self._record(request, arrived, 502)
            return web.Response(status=502, text=f"throttle proxy: upstream unreachable: {e}")
        self._record(request, arrived, upstream.status)
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        try:
            return await self._relay(request, upstream)
        finally:
            self._streams.discard(task)
            upstream.release()

    async def _relay(self, request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        """Copy the response as it arrives: a watch is an endless chunked body."""
        out = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers={k: v for k, v in upstream.headers.items() if k.lower() not in _SKIP_HEADERS},
        )
        if upstream.content_length is not None:
            out.content_length = upstream.content_length
        else:
            out.enable_chunked_encoding()
        await out.prepare(request)
        async for chunk in upstream.content.iter_any():
            await out.write(chunk)
        await out.write_eof()
        return out


def per_second(seen: Iterable[Seen], start: float) -> Counter[int]:
    """Requests per whole second since ``start``: {second: count}."""
    return Counter(int(s.at - start) for s in seen)
