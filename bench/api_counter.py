"""A counting reverse proxy between one client (the operator) and the API server.

``python -m bench.api_counter --kubeconfig K --port P --client-kubeconfig OUT``: listens on plain
HTTP at 127.0.0.1:P, forwards every request to the API server of ``K`` over TLS with ``K``'s
credentials, and writes ``OUT``, a kubeconfig that points a client at the proxy.

Why a proxy: the API server's ``apiserver_request_total`` does not say which client sent a request,
and on the dev cluster kcm, the scheduler, kwok and the pod runner write Leases, Nodes and Pods all
the time. Only the operator talks through this proxy, so what it counts is the operator's traffic.
Responses are streamed chunk by chunk, so watches work as they do direct.

``GET /__counts`` (answered by the proxy, not forwarded) returns the cumulative counts as JSON:
``{"total": n, "writes": n, "byVerb": {"patch voicemodels/status": n, ...}, "secondsByVerb": {...}}``
(``secondsByVerb``: the summed time from the request's arrival to the end of its response, as the
client waits for it, watches left out); a reader diffs two snapshots to count a window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs

WRITE_VERBS = frozenset({"create", "update", "patch", "apply", "delete", "deletecollection"})
#: headers that describe one hop, not the message: the proxy's own connections set them
HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade", "te", "trailer"}
)


def classify(method: str, path: str, query: str, content_type: str = "") -> str:
    """``"<verb> <resource>[/<subresource>]"`` in the API server's own terms (list, watch, apply...)."""
    segments = [s for s in path.split("?")[0].split("/") if s]
    if segments[:1] == ["api"]:
        rest = segments[2:]  # /api/v1/...
    elif segments[:1] == ["apis"]:
        rest = segments[3:]  # /apis/group/version/...
    else:
        return f"{method.lower()} {'/' + '/'.join(segments[:2])}"  # /version, /openapi, /healthz
    if len(rest) >= 3 and rest[0] == "namespaces":
        rest = rest[2:]  # namespaced: drop namespaces/<ns>
    resource = rest[0] if rest else "(discovery)"
    named = len(rest) >= 2
    sub = f"/{rest[2]}" if len(rest) >= 3 else ""
    if method == "GET":
        watch = parse_qs(query).get("watch", [""])[0] in ("true", "1")
        verb = "watch" if watch else ("get" if named else "list")
    elif method == "POST":
        verb = "create"
    elif method == "PUT":
        verb = "update"
    elif method == "PATCH":
        verb = "apply" if "apply-patch" in content_type else "patch"
    elif method == "DELETE":
        verb = "delete" if named else "deletecollection"
    else:
        verb = method.lower()
    return f"{verb} {resource}{sub}"


def is_write(key: str) -> bool:
    return key.split(" ", 1)[0] in WRITE_VERBS


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """Counts in a window: ``after - before`` per key, zeros left out."""
    return {k: n - before.get(k, 0) for k, n in sorted(after.items()) if n - before.get(k, 0)}


async def serve(kubeconfig: str, port: int, client_kubeconfig: Path) -> None:
    import aiohttp
    from aiohttp import web
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    import ssl

    ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
    if cfg.cert_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    upstream = cfg.host.rstrip("/")
    auth = cfg.get_api_key_with_prefix("authorization") or cfg.get_api_key_with_prefix("BearerToken")
    counts: Counter[str] = Counter()
    seconds: Counter[str] = Counter()
    # no pool limit: each watch holds a connection for minutes; no decompression: bytes pass through
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ctx, limit=0),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
    )

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path == "/__counts":
            body = {"total": sum(counts.values()), "writes": sum(n for k, n in counts.items() if is_write(k))}
            waited = {k: round(v, 3) for k, v in sorted(seconds.items())}
            return web.json_response(
                {**body, "byVerb": dict(sorted(counts.items())), "secondsByVerb": waited}
            )
        key = classify(request.method, request.path, request.query_string, request.content_type)
        counts[key] += 1
        started = time.perf_counter()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        if auth:
            headers["Authorization"] = auth
        data = await request.read() if request.body_exists else None
        # the kubernetes client sends some bodies without a Content-Type (the API server takes them as
        # JSON); aiohttp would call them application/octet-stream, which the API server refuses
        skip = () if "Content-Type" in request.headers else ("Content-Type",)
        async with session.request(
            request.method,
            upstream + request.path_qs,
            headers=headers,
            data=data,
            allow_redirects=False,
            skip_auto_headers=skip,
        ) as up:
            response = web.StreamResponse(
                status=up.status,
                reason=up.reason,
                headers={k: v for k, v in up.headers.items() if k.lower() not in HOP_HEADERS},
            )
            await response.prepare(request)
            try:
                async for chunk in up.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except (ConnectionResetError, aiohttp.ClientConnectionError):
                pass  # the client went away (a watch it stopped): nothing to forward to
            if not key.startswith("watch "):
                seconds[key] += time.perf_counter() - started
            return response

    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    client_kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "proxy", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "proxy", "user": {}}],
                "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "proxy"}}],
                "current-context": "proxy",
            }
        )
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await session.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.api_counter", description=__doc__)
    parser.add_argument("--kubeconfig", required=True, help="the API server and credentials to forward to")
    parser.add_argument("--port", type=int, required=True, help="the plain-HTTP port to listen on")
    parser.add_argument(
        "--client-kubeconfig", type=Path, required=True, help="where to write a kubeconfig for the proxy"
    )
    args = parser.parse_args(argv)
    asyncio.run(serve(args.kubeconfig, args.port, args.client_kubeconfig))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
