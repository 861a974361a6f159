"""The pod runner's model of a pod: container and probe state, the errors that hold a pod back."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tts_devcluster.procs import TrackedProcess


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class PodConfigError(Exception):
    """The pod cannot start as specified (CreateContainerConfigError in kubelet terms)."""


class PodWaiting(Exception):
    """Something the pod needs is not there yet (an unbound PVC, a missing ConfigMap): retry."""


@dataclass
class Probe:
    spec: dict
    container: dict
    successes: int = 0
    failures: int = 0
    last: float = 0.0
    ok: bool = False
    started_at: float = field(default_factory=time.monotonic)

    def due(self, t: float) -> bool:
        delay = self.spec.get("initialDelaySeconds", 0)
        period = self.spec.get("periodSeconds", 10)
        return t - self.started_at >= delay and t - self.last >= period


@dataclass
class Container:
    spec: dict
    init: bool = False
    proc: subprocess.Popen | None = None
    tracked: TrackedProcess | None = None
    started_at: str | None = None
    restarts: int = 0
    exit_code: int | None = None
    finished_at: str | None = None
    message: str | None = None
    reason: str | None = None
    waiting: tuple[str, str] | None = None
    backoff_until: float = 0.0
    exit_pending: bool = False
    last_terminated: dict | None = None
    readiness: Probe | None = None
    liveness: Probe | None = None
    startup: Probe | None = None

    @property
    def name(self) -> str:
        return self.spec["name"]

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        if not self.running():
            return False
        if self.startup and not self.startup.ok:
            return False
        return self.readiness.ok if self.readiness else True

    def status(self) -> dict:
        st: dict[str, Any] = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "restartCount": self.restarts,
            "ready": self.ready(),
            "started": self.running() and (self.startup is None or self.startup.ok),
        }
        if self.running():
            st["state"] = {"running": {"startedAt": self.started_at}}
            st["containerID"] = f"local://{self.proc.pid}"  # type: ignore[union-attr]
        elif self.waiting:
            st["state"] = {"waiting": {"reason": self.waiting[0], "message": self.waiting[1]}}
        elif self.exit_code is not None:
            term = {
                "exitCode": self.exit_code,
                "reason": self.reason or ("Completed" if self.exit_code == 0 else "Error"),
                "startedAt": self.started_at,
                "finishedAt": self.finished_at,
            }
            if self.message:
                term["message"] = self.message
            st["state"] = {"terminated": term}
        else:
            st["state"] = {"waiting": {"reason": "ContainerCreating"}}
        if self.last_terminated and (self.running() or self.waiting):
            st["lastState"] = {"terminated": self.last_terminated}
        return st


def with_pod_ip(pod: dict, ip: str) -> dict:
    """``pod`` with the runner's view of its addresses in its status (for env and downward API)."""
    pod = dict(pod)
    pod["status"] = {**(pod.get("status") or {}), "podIP": ip, "hostIP": "127.0.0.1"}
    return pod
