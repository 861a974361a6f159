"""Operator settings: command-line flags with environment fallbacks (``TTS_OPERATOR_*``).

Flags win over the environment, the environment over the defaults, so a Helm chart can set env vars
and a developer can still override one setting on the command line.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Literal

DEFAULT_RUNTIME_IMAGE = "ghcr.io/tts-operator/tts-runtime:0.1.0"
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_METRICS_PORT = 9090

#: our own names for kopf's bookkeeping (kopf's defaults live under kopf.zalando.org)
FINALIZER = "tts-operator.dev/finalizer"
ANNOTATION_PREFIX = "tts-operator.dev"
MANAGED_BY = "tts-operator"
#: server-side filter for the children we watch: every Job/Pod in the cluster otherwise
MANAGED_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"

LogFormat = Literal["text", "json"]


@dataclass(frozen=True)
class Settings:
    #: namespaces to watch; empty = the whole cluster
    namespaces: tuple[str, ...] = ()
    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    gpu_resource: str = DEFAULT_GPU_RESOURCE
    log_format: LogFormat = "text"
    #: 0 disables the metrics endpoint
    metrics_port: int = DEFAULT_METRICS_PORT
    kubeconfig: str | None = None
    verbose: bool = False
    #: kopf's liveness endpoint (e.g. http://0.0.0.0:8080/healthz) for the pod's livenessProbe; None = off
    liveness: str | None = None


def _env(name: str) -> str | None:
    value = os.environ.get(f"TTS_OPERATOR_{name}")
    return value if value else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="watch only this namespace (repeatable; env TTS_OPERATOR_NAMESPACES, comma-separated). "
        "Default: all namespaces",
    )
    parser.add_argument(
        "--runtime-image",
        help=f"image of the training and export Jobs (env TTS_OPERATOR_RUNTIME_IMAGE; default "
        f"{DEFAULT_RUNTIME_IMAGE})",
    )
    parser.add_argument(
        "--gpu-resource",
        help=f"extended resource name GPUs are requested as (env TTS_OPERATOR_GPU_RESOURCE; default "
        f"{DEFAULT_GPU_RESOURCE})",
    )
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="log lines for people or one JSON object per line (env TTS_OPERATOR_LOG_FORMAT; default text)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        help=f"port of the Prometheus /metrics endpoint, 0 to disable (env TTS_OPERATOR_METRICS_PORT; "
        f"default {DEFAULT_METRICS_PORT})",
    )
    parser.add_argument(
        "--liveness",
        metavar="URL",
        help="serve kopf's liveness probe at URL, e.g. http://0.0.0.0:8080/healthz (env "
        "TTS_OPERATOR_LIVENESS; default off)",
    )
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, then in-cluster)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def from_args(args: argparse.Namespace) -> Settings:
    """Settings from parsed flags, falling back to the environment. Raises ValueError on bad values."""
    namespaces = tuple(args.namespaces or [])
    if not namespaces and _env("NAMESPACES"):
        namespaces = tuple(ns.strip() for ns in (_env("NAMESPACES") or "").split(",") if ns.strip())
    log_format = args.log_format or _env("LOG_FORMAT") or "text"
    if log_format not in ("text", "json"):
        raise ValueError(f"TTS_OPERATOR_LOG_FORMAT must be text or json, got {log_format!r}")
    port_text = args.metrics_port if args.metrics_port is not None else _env("METRICS_PORT")
    try:
        metrics_port = int(port_text) if port_text is not None else DEFAULT_METRICS_PORT
    except ValueError as e:
        raise ValueError(f"TTS_OPERATOR_METRICS_PORT must be a port number, got {port_text!r}") from e
    if not 0 <= metrics_port <= 65535:
        raise ValueError(f"metrics port must be 0..65535, got {metrics_port}")
    gpu_resource = args.gpu_resource or _env("GPU_RESOURCE") or DEFAULT_GPU_RESOURCE
    if "/" not in gpu_resource:
        raise ValueError(
            f"the GPU resource must be an extended resource name like nvidia.com/gpu: {gpu_resource!r}"
        )
    return Settings(
        namespaces=namespaces,
        runtime_image=args.runtime_image or _env("RUNTIME_IMAGE") or DEFAULT_RUNTIME_IMAGE,
        gpu_resource=gpu_resource,
        log_format=log_format,  # type: ignore[arg-type]
        metrics_port=metrics_port,
        kubeconfig=args.kubeconfig or os.environ.get("KUBECONFIG") or None,
        verbose=args.verbose,
        liveness=getattr(args, "liveness", None) or _env("LIVENESS"),
    )
