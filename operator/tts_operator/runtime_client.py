"""The operator's HTTP calls to serving pods (``tts-runtime serve``): readiness with the loaded
version, device info, and the hot reload HotSwap uses. Pods are addressed by pod IP, one at a time.

Standard library only (the operator image carries no HTTP client beyond what kubernetes needs).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

#: a reload loads and warms a model: minutes for a big XTTS, seconds for a tiny one
RELOAD_TIMEOUT = 600.0
PROBE_TIMEOUT = 3.0


class RuntimeCallError(Exception):
    """A pod did not answer as expected: ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Pod:
    ip: str
    port: int
    token: str | None = None

    @property
    def base(self) -> str:
        return f"http://{self.ip}:{self.port}"


def _call(
    pod: Pod, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = PROBE_TIMEOUT
) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(pod.base + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if pod.token:
        req.add_header("Authorization", f"Bearer {pod.token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            payload = json.loads(e.read() or b"{}")
        except ValueError:
            payload = {}
        return e.code, payload
    except (OSError, ValueError) as e:  # refused, timed out, reset, not JSON
        raise RuntimeCallError(0, f"{method} {pod.base}{path}: {e}") from e


def loaded_version(pod: Pod) -> str | None:
    """The version the pod serves now (its /readyz), None while it is not ready."""
    status, body = _call(pod, "GET", "/readyz")
    version = body.get("version")
    return str(version) if status == 200 and version else None


def info(pod: Pod) -> dict[str, Any]:
    status, body = _call(pod, "GET", "/info")
    if status != 200:
        raise RuntimeCallError(status, f"/info answered {status}: {_message(body)}")
    return body


def reload(pod: Pod, version: str) -> dict[str, Any]:
    """Ask the pod to load ``version`` beside the current model and switch; raises on failure."""
    status, body = _call(pod, "POST", "/admin/reload", {"version": version}, timeout=RELOAD_TIMEOUT)
    if status != 200:
        raise RuntimeCallError(status, f"reload to {version} answered {status}: {_message(body)}")
    return body


def _message(body: dict[str, Any]) -> str:
    err = body.get("error")
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(body.get("detail") or body)[:500]


def device_info(body: dict[str, Any]) -> dict[str, Any]:
    """status.device from a pod's /info answer."""
    device = body.get("device") or {}
    preflight = device.get("preflight")
    if isinstance(preflight, dict):
        preflight = preflight.get("verdict") or preflight.get("status") or json.dumps(preflight)[:1024]
    out = {
        "gpu": body.get("gpu") or device.get("gpu") or device.get("name"),
        "torch": body.get("torch"),
        "cuda": body.get("cuda"),
        "preflight": str(preflight)[:1024] if preflight is not None else None,
    }
    return {k: v for k, v in out.items() if v}
