"""Probes and preStop hooks of the local pod runner: httpGet, tcpSocket and exec against a container."""

from __future__ import annotations

import logging
import socket
import subprocess
import time
import urllib.error
import urllib.request

from tts_devcluster import podspec
from tts_devcluster.podstate import Container, Probe

log = logging.getLogger("pod-runner")


def run_probes(c: Container, t: float, ip: str) -> str | None:
    """Run the probes of running container ``c`` that are due at ``t`` (monotonic), updating their
    state; the kind (``liveness``/``startup``) of one that failed for good, meaning a restart."""
    for kind in ("startup", "readiness", "liveness"):
        probe: Probe | None = getattr(c, kind)
        if probe is None or not probe.due(t):
            continue
        if kind != "startup" and c.startup and not c.startup.ok:
            continue
        if kind == "startup" and probe.ok:
            continue
        probe.last = t
        ok = probe_once(c, probe.spec, ip)
        if ok:
            probe.successes += 1
            probe.failures = 0
            if probe.successes >= probe.spec.get("successThreshold", 1):
                probe.ok = True
        else:
            probe.failures += 1
            probe.successes = 0
            if probe.failures >= probe.spec.get("failureThreshold", 3):
                probe.ok = False
                if kind in ("liveness", "startup"):
                    return kind
    return None


def probe_once(c: Container, spec: dict, ip: str) -> bool:
    """One try of probe ``spec`` against container ``c`` of the pod at ``ip``."""
    timeout = spec.get("timeoutSeconds", 1)
    try:
        if "httpGet" in spec:
            h = spec["httpGet"]
            port = podspec.container_port(c.spec, h["port"])
            url = f"http://{h.get('host') or ip}:{port}{h.get('path', '/')}"
            req = urllib.request.Request(
                url, headers={x["name"]: x["value"] for x in h.get("httpHeaders") or []}
            )
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return 200 <= r.status < 400
        if "tcpSocket" in spec:
            port = podspec.container_port(c.spec, spec["tcpSocket"]["port"])
            with socket.create_connection((ip, port), timeout=timeout):
                return True
        if "exec" in spec and c.proc is not None:
            r = subprocess.run(
                ["nsenter", "-t", str(c.proc.pid), "-m", "--", *spec["exec"]["command"]],
                capture_output=True,
                timeout=timeout,
            )
            return r.returncode == 0
    except (OSError, urllib.error.URLError, subprocess.TimeoutExpired, ValueError):
        return False
    return False


def pre_stop(c: Container, ip: str, deadline: float, pod_label: str) -> None:
    """Run the preStop hook of container ``c`` (if any) until ``deadline`` (monotonic) at the latest;
    a failing hook is logged (``pod_label``: ``namespace/name``), never raised."""
    hook = ((c.spec.get("lifecycle") or {}).get("preStop")) or {}
    try:
        if "sleep" in hook:
            end = min(deadline, time.monotonic() + float(hook["sleep"]["seconds"]))
            while time.monotonic() < end and c.running():
                time.sleep(0.1)
        elif "httpGet" in hook:
            h = hook["httpGet"]
            port = podspec.container_port(c.spec, h["port"])
            urllib.request.urlopen(
                f"http://{ip}:{port}{h.get('path', '/')}",
                timeout=max(0.1, deadline - time.monotonic()),
            )
        elif "exec" in hook and c.proc is not None:
            subprocess.run(
                ["nsenter", "-t", str(c.proc.pid), "-m", "--", *hook["exec"]["command"]],
                timeout=max(0.1, deadline - time.monotonic()),
                capture_output=True,
            )
    except (OSError, urllib.error.URLError, subprocess.TimeoutExpired, ValueError) as e:
        log.info("pod %s preStop of %s: %s", pod_label, c.name, e)
