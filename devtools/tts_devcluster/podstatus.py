"""A pod's status as the local pod runner reports it to the API server: phase, conditions, containers."""

from __future__ import annotations

import logging
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from tts_devcluster.podstate import Container, now

log = logging.getLogger("pod-runner")


class PodStatusReporter:
    """Builds one pod's status and patches it in when it changed; keeps the conditions' transition
    times."""

    def __init__(self, core: client.CoreV1Api, ns: str, name: str) -> None:
        self.core = core
        self.ns, self.name = ns, name
        self._last_status: dict | None = None
        self._transitions: dict[str, str] = {}

    def _cond(self, ctype: str, ok: bool) -> dict:
        status = "True" if ok else "False"
        key = f"{ctype}={status}"
        if self._transitions.get(ctype, "").split("@")[0] != key:
            self._transitions[ctype] = f"{key}@{now()}"
        return {"type": ctype, "status": status, "lastTransitionTime": self._transitions[ctype].split("@")[1]}

    def build(
        self,
        phase: str,
        containers: list[Container],
        ip: str,
        start_time: str,
        reason: str | None,
        message: str | None,
    ) -> dict[str, Any]:
        main = [c for c in containers if not c.init]
        inits = [c for c in containers if c.init]
        initialized = all(c.exit_code == 0 and not c.running() for c in inits)
        ready = phase == "Running" and all(c.ready() for c in main)
        status: dict[str, Any] = {
            "phase": phase,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": start_time,
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                self._cond("PodReadyToStartContainers", True),
                self._cond("Initialized", initialized),
                self._cond("ContainersReady", ready),
                self._cond("Ready", ready),
            ],
            "containerStatuses": [c.status() for c in main],
        }
        if inits:
            status["initContainerStatuses"] = [c.status() for c in inits]
        if reason:
            status["reason"], status["message"] = reason, message
        return status

    def send(self, status: dict[str, Any]) -> bool:
        """Patch ``status`` in unless it was the last one sent; False if the pod is gone (404)."""
        if status == self._last_status:
            return True
        try:
            self.core.patch_namespaced_pod_status(self.name, self.ns, {"status": status})
            self._last_status = status
        except ApiException as e:
            if e.status == 404:
                return False
            log.warning("pod %s/%s: status update failed: %s", self.ns, self.name, e.reason)
        return True
