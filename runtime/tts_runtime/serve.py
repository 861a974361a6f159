"""``tts-runtime serve``: run the synthesis server (FastAPI on uvicorn).

Configured by a ``ServeSpec`` JSON file (what the operator mounts; ``--spec`` or ``$TTS_SERVE_SPEC``)
or, for local use, by ``--model-dir`` (one version directory). Flags override the spec's values.
Ends with the contract's exit codes: 65 when the model cannot be served (bad checksums, missing
directory), 69 when the GPU preflight fails under devicePolicy RequireGPU.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tts_contract.contract import Defaults, DevicePolicy, Engine, ExitCode, Paths, ServeSpec

if TYPE_CHECKING:  # the server pulls in fastapi and torch: import it only when serving
    from tts_runtime.server.settings import Settings


#: flag dest -> the Settings field it overrides. Settings flattens the ServeSpec (its server settings
#: included) and adds knobs the spec leaves out (stream_chunk_chars); settings_from_args lays every
#: flag given over the spec (or the model directory's defaults) alike
_OVERRIDES: dict[str, str] = {
    "engine": "engine",
    "device_policy": "device_policy",
    "voices_dir": "voices_dir",
    "auth_token_file": "auth_token_file",
    "max_concurrency": "max_concurrency",
    "max_queue": "max_queue",
    "max_text_length": "max_text_length",
    "request_timeout": "request_timeout_seconds",
    "stream_chunk_chars": "stream_chunk_chars",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("what to serve (a spec, or a model directory)")
    source.add_argument(
        "--spec",
        type=Path,
        default=os.environ.get(Paths.SERVE_SPEC_ENV),
        help=f"ServeSpec JSON written by the operator (default: ${Paths.SERVE_SPEC_ENV})",
    )
    source.add_argument("--model-dir", type=Path, help="a version directory holding manifest.json")
    source.add_argument("--version", help="with --spec: serve this version instead of the spec's")
    source.add_argument(
        "--engine", choices=[e.value for e in Engine], help="refuse a model of another engine"
    )
    source.add_argument(
        "--device-policy",
        choices=[p.value for p in DevicePolicy],
        help="RequireGPU, PreferGPU (fall back to CPU) or CPU (default: the spec's, else PreferGPU)",
    )
    source.add_argument("--voices-dir", type=Path, help="where registered voices are kept")

    net = parser.add_argument_group("network")
    net.add_argument("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0)")
    net.add_argument(
        "--port", type=int, default=None, help=f"port (default: the spec's, else {Defaults.PORT})"
    )
    net.add_argument("--auth-token-file", type=Path, help="require 'Authorization: Bearer <file contents>'")

    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--max-concurrency", type=int, help=f"generations at once (default: {Defaults.MAX_CONCURRENCY})"
    )
    limits.add_argument(
        "--max-queue",
        type=int,
        help=f"requests waiting beyond that; more get 429 (default: {Defaults.MAX_QUEUE})",
    )
    limits.add_argument(
        "--max-text-length", type=int, help=f"characters per request (default: {Defaults.MAX_TEXT_LENGTH})"
    )
    limits.add_argument(
        "--request-timeout",
        type=float,
        help=f"seconds per request, queue included (default: {Defaults.REQUEST_TIMEOUT_SECONDS:g})",
    )
    limits.add_argument(
        "--stream-chunk-chars", type=int, help="longest text piece generated at once (default: 200)"
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    from tts_runtime.server.settings import Settings

    overrides: dict[str, object] = {
        field: value for dest, field in _OVERRIDES.items() if (value := getattr(args, dest)) is not None
    }
    if args.model_dir is not None:
        return Settings.from_model_dir(args.model_dir, **overrides)
    if args.spec is None:
        raise ValueError(
            f"nothing to serve: pass --spec FILE, set ${Paths.SERVE_SPEC_ENV}, or pass --model-dir DIR"
        )
    spec = ServeSpec.model_validate_json(Path(args.spec).read_text())
    if args.version:
        overrides["version"] = args.version
    return Settings.from_serve_spec(spec, **overrides)


def _port(args: argparse.Namespace) -> int:
    if args.port is not None:
        return int(args.port)
    if args.model_dir is None and args.spec is not None:
        return ServeSpec.model_validate_json(Path(args.spec).read_text()).server.port
    return Defaults.PORT


def _size_torch_thread_pools(max_concurrency: int) -> None:
    """One intra-op pool per worker thread, and the cores shared between them.

    Every thread that runs torch ops (the loader and warm-up thread, each request worker) gets an
    OpenMP team of its own; with the default team size (all cores) the teams spin against each other
    and, on 2 cores, a tiny VITS request took ~5x longer than the same call in a single thread. So
    unless OMP_NUM_THREADS says otherwise, split the cores across the workers plus the loader.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return
    import torch

    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, cores // (max_concurrency + 1)))


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT. Logging is set up by the caller (``tts_runtime.cli``)."""
    log = logging.getLogger("tts_runtime.serve")
    try:
        settings = settings_from_args(args)
        port = _port(args)
    except (OSError, ValueError) as e:  # pydantic's ValidationError is a ValueError
        log.error("%s", e)
        return ExitCode.BAD_INPUT
    if settings.auth_token_file is not None and not settings.auth_token_file.is_file():
        log.error("auth token file %s does not exist", settings.auth_token_file)
        return ExitCode.BAD_INPUT

    import uvicorn

    from tts_runtime.server import create_app

    _size_torch_thread_pools(settings.max_concurrency)
    exit_code: list[int] = []
    server: uvicorn.Server | None = None

    def on_fatal(code: int) -> None:
        # The model can never be served: end the process so the pod's status says so (CrashLoop with
        # this exit code) instead of sitting unready until a rollout deadline.
        exit_code.append(code)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_fatal=on_fatal)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=port,
        # the runtime's own logging handlers format uvicorn's records too (text or JSON lines)
        log_config=None,
        log_level=str(getattr(args, "log_level", "INFO")).lower(),
        # in-flight generations get this long to finish after SIGTERM (the pod's grace period is longer)
        timeout_graceful_shutdown=25,
    )
    server = uvicorn.Server(config)
    log.info("serving %s from %s on http://%s:%d", settings.version, settings.models_root, args.host, port)
    # uvicorn stops gracefully on SIGTERM, then re-raises the signal under the handler that was in
    # place before it started. A pod asked to stop that drained its requests has succeeded: make that
    # re-raised SIGTERM a no-op so the process exits 0 rather than "killed by SIGTERM".
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if exit_code:
        return exit_code[0]
    return ExitCode.SUCCESS if server.started else ExitCode.FAILURE


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m tts_runtime.serve``); ``tts-runtime serve`` calls ``run``."""
    from tts_runtime.logs import setup_logging

    parser = argparse.ArgumentParser(prog="tts-runtime serve", description=(__doc__ or "").split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument(
        "--log-level", default="INFO", type=str.upper, choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )
    args = parser.parse_args(argv)
    setup_logging("text", args.log_level)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
