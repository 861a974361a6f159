"""``tts-runtime serve``: run the synthesis server (FastAPI on uvicorn).

Configured by a ``ServeSpec`` JSON file (what the operator mounts; ``--spec`` or ``$TTS_SERVE_SPEC``)
or, for local use, by ``--model-dir`` (one version directory). Flags override the spec's values.
Ends with the contract's exit codes: 65 when the model cannot be served (bad checksums, missing
directory), 69 when the GPU preflight fails under devicePolicy RequireGPU.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from tts_contract.contract import MANIFEST_NAME, Defaults, DevicePolicy, Engine, ExitCode, Paths, ServeSpec

from .errors import BadInputError, PortInUseError, RuntimeCommandError

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


_NOTHING_TO_SERVE = (
    f"nothing to serve: pass --spec FILE, set ${Paths.SERVE_SPEC_ENV}, or pass --model-dir DIR"
)


def check_model_dir(model_dir: Path) -> None:
    """``BadInputError`` (one line: the path, what is wrong, what to pass) unless ``model_dir`` is
    a readable directory holding a manifest: said at once, before the server starts (the checksums
    are verified by the loader)."""
    what = "a version directory holding manifest.json (what `tts-runtime export` or `demo-model` writes)"
    if not model_dir.exists():
        raise BadInputError(f"--model-dir {model_dir}: no such directory; pass {what}")
    if not model_dir.is_dir():
        raise BadInputError(f"--model-dir {model_dir}: a file, not a directory; pass {what}")
    manifest = model_dir / MANIFEST_NAME
    try:
        with open(manifest, "rb"):
            pass
        os.listdir(model_dir)
    except FileNotFoundError:
        raise BadInputError(f"--model-dir {model_dir}: no {MANIFEST_NAME} in it; pass {what}") from None
    except PermissionError:
        raise BadInputError(
            f"--model-dir {model_dir}: permission denied reading it; run as a user who can read it "
            f"(`ls -ld {model_dir}`)"
        ) from None
    except OSError as e:
        raise BadInputError(f"--model-dir {model_dir}: cannot read {manifest.name}: {e.strerror}") from None


def _read_spec(path: Path) -> ServeSpec:
    """The ServeSpec in ``path``; ``BadInputError`` (one line) when it cannot be read or is not one."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise BadInputError(f"--spec {path}: cannot read it: {e.strerror}") from None
    try:
        return ServeSpec.model_validate_json(text)
    except ValidationError as e:
        raise BadInputError(f"--spec {path}: not a valid ServeSpec ({_first_problem(e)})") from None


def _first_problem(e: ValidationError) -> str:
    """A pydantic error in one line: how many problems, and the first one."""
    first = e.errors()[0]
    where = ".".join(str(x) for x in first["loc"]) or "the input"
    return f"{e.error_count()} problem(s); {where}: {first['msg']}"


def settings_from_args(args: argparse.Namespace) -> Settings:
    from tts_runtime.server.settings import Settings

    overrides: dict[str, object] = {
        field: value for dest, field in _OVERRIDES.items() if (value := getattr(args, dest)) is not None
    }
    if args.model_dir is not None:
        return Settings.from_model_dir(args.model_dir, **overrides)
    if args.spec is None:
        raise BadInputError(_NOTHING_TO_SERVE)
    spec = _read_spec(args.spec)
    if args.version:
        overrides["version"] = args.version
    return Settings.from_serve_spec(spec, **overrides)


def _port(args: argparse.Namespace) -> int:
    if args.port is not None:
        return int(args.port)
    if args.model_dir is None and args.spec is not None:
        return _read_spec(args.spec).server.port
    return Defaults.PORT


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here rather than inside uvicorn: a port another process holds is
    one line (``PortInUseError``) before the model is touched, not a server that starts loading and
    then stops."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise PortInUseError(
                f"port {port} on {host} is already in use (another `tts-runtime serve`?): stop that "
                "process, or pass --port"
            ) from None
        raise RuntimeCommandError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.set_inheritable(True)
    return sock


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
    # what to serve and where, checked before the server's imports (torch: seconds)
    if args.model_dir is not None:
        check_model_dir(args.model_dir)
    elif args.spec is None:
        raise BadInputError(_NOTHING_TO_SERVE)
    port = _port(args)
    sock = bind(args.host, port)
    try:
        settings = settings_from_args(args)
        if settings.auth_token_file is not None and not settings.auth_token_file.is_file():
            raise BadInputError(f"--auth-token-file {settings.auth_token_file}: no such file")
    except ValidationError as e:  # a flag out of its range
        sock.close()
        raise BadInputError(f"invalid settings: {_first_problem(e)}") from None
    except BaseException:
        sock.close()
        raise

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
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
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
    try:
        return run(args)
    except RuntimeCommandError as e:
        logging.getLogger("tts_runtime.serve").error("%s", e)
        return int(e.exit_code)


if __name__ == "__main__":
    sys.exit(main())
