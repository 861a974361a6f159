"""VoiceModels served for real, as the e2e tests and the VoiceModel benchmark see them: the VoiceModel
applied as a manifest with kubectl (what GitOps does), its pods, ready pod IPs from the Service's
EndpointSlices (the dev cluster has no kube-proxy), and a client load that runs through a rollout and
counts failures.
"""

# kubernetes models type every field Optional; the tests check presence by using them
# mypy: disable-error-code="union-attr"
from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from kubernetes import client

from .objects import CustomObjects, conditions

#: where serving pods finish loading a tiny VITS on a busy 2-core machine, with margin
READY_TIMEOUT = 240


class VoiceModels(CustomObjects):
    """The test's view of the cluster: VoiceModels, their children, their ready pods."""

    def __init__(self, k8s_api: client.ApiClient, namespace: str, kubectl: Callable[..., Any]) -> None:
        super().__init__(k8s_api, namespace, "voicemodels")
        self.kubectl = kubectl
        self.core = client.CoreV1Api(k8s_api)
        self.apps = client.AppsV1Api(k8s_api)
        self.policy = client.PolicyV1Api(k8s_api)

    def apply(self, manifest: dict[str, Any]) -> None:
        """``kubectl apply`` of the manifest, as a GitOps tool applies the file from git."""
        self.kubectl("-n", self.ns, "apply", "-f", "-", input=yaml.safe_dump(manifest))

    def serving(self, name: str, version: str) -> bool:
        """Ready, on ``version``, for the current generation (kstatus' notion of done)."""
        obj = self.get(name)
        st = obj.get("status") or {}
        ready = conditions(st).get("Ready") or {}
        return (
            st.get("observedGeneration") == obj["metadata"]["generation"]
            and st.get("servingVersion") == version
            and ready.get("status") == "True"
        )

    def pods(self, name: str) -> list[client.V1Pod]:
        selector = f"tts-operator.dev/voicemodel={name}"
        return [
            p
            for p in self.core.list_namespaced_pod(self.ns, label_selector=selector).items
            if not p.metadata.deletion_timestamp
        ]

    def ready_endpoints(self, service: str) -> list[str]:
        """``http://ip:port`` of every ready endpoint of the Service, as its EndpointSlices would list
        them: the pods its selector matches that are Ready and not terminating.

        Computed here rather than read from the EndpointSlices because the dev cluster's pod IPs are
        loopback addresses (127.1.x.y), which EndpointSlice validation refuses ("may not be in the
        loopback range"): the controller cannot write them (docs/local-cluster.md).
        """
        svc = self.core.read_namespaced_service(service, self.ns)
        selector = ",".join(f"{k}={v}" for k, v in (svc.spec.selector or {}).items())
        port = svc.spec.ports[0]
        urls = []
        for pod in self.core.list_namespaced_pod(self.ns, label_selector=selector).items:
            ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
            if ready and not pod.metadata.deletion_timestamp and pod.status.pod_ip:
                target = next(
                    cp.container_port
                    for c in pod.spec.containers
                    for cp in c.ports or []
                    if cp.name == port.target_port or cp.container_port == port.target_port
                )
                urls.append(f"http://{pod.status.pod_ip}:{target}")
        return sorted(urls)


def synthesize(base_url: str, text: str = "Hello there.", timeout: float = 60) -> httpx.Response:
    return httpx.post(
        f"{base_url}/v1/audio/speech",
        json={"model": "tts-1", "voice": "default", "input": text, "response_format": "wav"},
        timeout=timeout,
    )


@dataclass
class Load:
    """Requests in a loop against the Service's ready endpoints (round robin), as a client behind a
    Service would send them, while recording how many endpoints were ready."""

    models: VoiceModels
    service: str
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    min_ready: int = 1_000
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Load:
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=120)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            urls = self.models.ready_endpoints(self.service)
            self.min_ready = min(self.min_ready, len(urls))
            if not urls:
                self.failures.append("no ready endpoint")
                self._stop.wait(0.2)
                continue
            url = urls[i % len(urls)]
            i += 1
            try:
                r = synthesize(url, "One short sentence.")
                if r.status_code == 200 and r.content[:4] == b"RIFF":
                    self.ok += 1
                    version = r.headers.get("x-model-version", "")
                    if not self.versions or self.versions[-1] != version:
                        self.versions.append(version)
                else:
                    self.failures.append(f"{url}: {r.status_code} {r.text[:200]}")
            except httpx.HTTPError as e:
                self.failures.append(f"{url}: {type(e).__name__}: {e}")


FIXTURES = Path(__file__).resolve().parents[1] / "unit" / "fixtures" / "voicemodel"


def capture(name: str, obj: dict[str, Any]) -> None:
    """Save a real VoiceModel object for the unit tests of the Argo CD health check, when asked
    (``TTS_CAPTURE_FIXTURES=1``): the committed fixtures are objects these tests really produced."""
    if os.environ.get("TTS_CAPTURE_FIXTURES"):
        FIXTURES.mkdir(parents=True, exist_ok=True)
        (FIXTURES / f"{name}.json").write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
