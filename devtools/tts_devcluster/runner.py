"""The local pod runner: a small kubelet for the dev cluster's ``*-local-*`` nodes.

Pods the scheduler binds to those nodes run as local processes in the project's venv: the image is
not pulled (only the configured runtime/operator images are accepted), each container runs in a
private mount namespace with its volumes bind-mounted at their mount paths, and the pod gets a
loopback address (127.1.x.y) as its pod IP. Probes, restart policy, exit codes, SIGTERM then SIGKILL
after the grace period, and the projected ServiceAccount token (TokenRequest API) work as the
kubelet's do. Pod status is reported to the API server; node Ready and Leases are kept fresh.

Limits (documented in docs/local-cluster.md): processes run as the runner's user, no network
namespace (a server must bind its pod IP: use the downward API ``status.podIP``), no image layers,
no resource limits enforced, container logs in ``.cluster/pods/<pod>/<container>.log`` (``kubectl
logs`` needs a kubelet API and does not work).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from tts_operator.devcluster import podspec
from tts_operator.devcluster.nodes import DEV_NODES, node_manifest, ready_conditions
from tts_operator.devcluster.procs import ProcessTable, TrackedProcess

log = logging.getLogger("pod-runner")

SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
#: the longest a deleted node stays away (see PodRunner._node_deleted): pod GC quarantine + period + slack
REREGISTER_AFTER = 120.0
PASS_ENV = ("LANG", "LC_ALL", "TZ", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS")


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


class PodWorker(threading.Thread):
    """Runs one pod from binding to deletion."""

    def __init__(self, runner: PodRunner, pod: dict) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.runner = runner
        self.pod = pod
        self.uid = meta["uid"]
        self.ns, self.name = meta["namespace"], meta["name"]
        self.dir = runner.state / "pods" / f"{self.ns}_{self.name}_{self.uid[:8]}"
        self.deleting = threading.Event()
        self.gone = threading.Event()
        self.lost = threading.Event()  # its node was deleted (see machine_lost)
        self.wake = threading.Event()
        self.ip = runner.allocate_ip(self.uid)
        self.phase = "Pending"
        self.start_time = now()
        self.containers = [Container(c, init=True) for c in pod["spec"].get("initContainers") or []] + [
            Container(c) for c in pod["spec"]["containers"]
        ]
        self.mounts: dict[str, list[dict]] = {}
        self.pod_message: str | None = None
        self.pod_reason: str | None = None
        self._last_status: dict | None = None
        self._transitions: dict[str, str] = {}

    # --- events from the watcher ----------------------------------------------------------------

    def update(self, pod: dict) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp"):
            self.deleting.set()
        self.wake.set()

    def vanished(self) -> None:
        self.gone.set()
        self.deleting.set()
        self.wake.set()

    def machine_lost(self) -> None:
        """The pod's node was deleted: behave as its machine vanished. The processes die at once
        (SIGKILL: no checkpoint on the way out) and nothing more is reported, so the pod object
        stays as it was until the pod garbage collector fails and removes it."""
        self.lost.set()
        for c in self.containers:
            if c.running():
                assert c.proc is not None
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(c.proc.pid, signal.SIGKILL)
        self.wake.set()

    # --- the lifecycle --------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("pod %s/%s: runner error", self.ns, self.name)
            self._kill_all(grace=2)

    def _run(self) -> None:
        refused = [
            c.spec["image"]
            for c in self.containers
            if not podspec.image_allowed(c.spec.get("image", ""), self.runner.allowed_images)
        ]
        if refused:
            msg = (
                f"the local pod runner runs only the tts-operator runtime/operator images (pattern "
                f"{self.runner.allowed_images!r}); refusing {', '.join(refused)}"
            )
            for c in self.containers:
                c.waiting = ("ErrImageNotAllowed", msg)
            self.publish()
            self.deleting.wait()
            self._finish_delete()
            return
        while not self.deleting.is_set():
            try:
                self._prepare_volumes()
                break
            except PodWaiting as e:
                for c in self.containers:
                    c.waiting = ("ContainerCreating", str(e))
                self.publish()
                self.wake.wait(1.0)
                self.wake.clear()
            except PodConfigError as e:
                for c in self.containers:
                    c.waiting = ("CreateContainerConfigError", str(e))
                self.publish()
                self.wake.wait(2.0)
                self.wake.clear()
        policy = self.pod["spec"].get("restartPolicy", "Always")
        for c in (c for c in self.containers if c.init):
            # init containers run to completion; restartPolicy Always means OnFailure for them
            self._start(c)
            self._supervise([c], policy if policy != "Always" else "OnFailure")
            if self.deleting.is_set() or self.phase == "Failed":
                break
        if not self.deleting.is_set() and not self.lost.is_set() and self.phase != "Failed":
            main = [c for c in self.containers if not c.init]
            for c in main:
                self._start(c)
            self.phase = "Running"
            self.publish()
            self._supervise(main, policy)
        self._terminate()
        self._finish_delete()

    def _supervise(self, containers: list[Container], policy: str) -> None:
        """Probe and restart until the containers are done for good, the pod is deleted or its
        machine is lost (nothing restarts there)."""
        while not self.deleting.is_set() and not self.lost.is_set():
            t = time.monotonic()
            for c in containers:
                if c.proc is not None and not c.running() and c.exit_code is None:
                    self._record_exit(c)
                if c.running():
                    self._probe(c, t)
                elif c.exit_pending:
                    c.exit_pending = False
                    if policy == "Always" or (policy == "OnFailure" and c.exit_code != 0):
                        delay = min(2.0 * 2**c.restarts, 30.0)
                        c.backoff_until = t + delay
                        c.waiting = (
                            "CrashLoopBackOff",
                            f"back-off {delay:.0f}s restarting failed container {c.name}",
                        )
                elif c.waiting and c.waiting[0] == "CrashLoopBackOff" and t >= c.backoff_until:
                    c.restarts += 1
                    self._start(c)
            if all(not c.running() and c.exit_code is not None and c.waiting is None for c in containers):
                if not containers[0].init:
                    self.phase = "Succeeded" if all(c.exit_code == 0 for c in containers) else "Failed"
                elif any(c.exit_code for c in containers):
                    self.phase = "Failed"
                self.publish()
                return
            self.publish()
            self.wake.wait(0.25)
            self.wake.clear()

    def _record_exit(self, c: Container) -> None:
        assert c.proc is not None
        code = c.proc.returncode
        c.exit_code = code if code >= 0 else 128 - code  # killed by signal N -> 128+N
        c.finished_at = now()
        c.reason = c.reason or ("Completed" if c.exit_code == 0 else "Error")
        c.message = self._termination_message(c)
        c.exit_pending = True
        log.info("pod %s/%s container %s exited %s", self.ns, self.name, c.name, c.exit_code)

    def _termination_message(self, c: Container) -> str | None:
        msg_file = self.dir / "termination" / c.name
        text = msg_file.read_text(errors="replace").strip() if msg_file.exists() else ""
        if not text and c.exit_code and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            text = "\n".join(self._log_path(c).read_text(errors="replace").splitlines()[-20:])
        return text[-4096:] or None

    def _log_path(self, c: Container) -> Path:
        return self.dir / f"{c.name}.log"

    # --- starting processes -----------------------------------------------------------------------

    def _base_env(self) -> dict[str, str]:
        venv_bin = str(Path(sys.executable).parent)
        env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
        env.update(
            {
                "PATH": f"{venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOSTNAME": self.name,
                "HOME": str(self.dir / "home"),
                "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                "KUBERNETES_SERVICE_PORT": str(self.runner.api_port),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(self.runner.api_port),
            }
        )
        return env

    def _start(self, c: Container) -> None:
        pod = dict(self.pod)
        pod["status"] = {**(pod.get("status") or {}), "podIP": self.ip, "hostIP": "127.0.0.1"}
        try:
            env = podspec.resolve_env(pod, c.spec, self._base_env(), self.runner.lookup_for(self.ns))
        except (ValueError, KeyError) as e:
            c.waiting = ("CreateContainerConfigError", str(e))
            c.exit_code, c.finished_at = 1, now()
            self.publish()
            return
        argv = list(c.spec.get("command") or podspec.default_entrypoint(c.spec["image"]))
        argv += list(c.spec.get("args") or [])
        argv = [podspec.expand(a, env) for a in argv]
        (self.dir / "home").mkdir(parents=True, exist_ok=True)
        term = self.dir / "termination" / c.name
        term.parent.mkdir(parents=True, exist_ok=True)
        term.write_text("")
        mounts = list(self.mounts.get(c.name, []))
        mounts.append(
            {
                "source": str(term),
                "mountPath": c.spec.get("terminationMessagePath", "/dev/termination-log"),
                "readOnly": False,
            }
        )
        spec_file = self.dir / f"{c.name}.start.json"
        spec_file.write_text(
            json.dumps(
                {
                    "mounts": mounts,
                    "argv": argv,
                    "env": env,
                    "workingDir": c.spec.get("workingDir") or "/",
                    "imagePaths": image_paths(),
                }
            )
        )
        out = open(self._log_path(c), "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            c.proc = subprocess.Popen(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "--",
                    sys.executable,
                    "-m",
                    "tts_operator.devcluster.podinit",
                    str(spec_file),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            out.close()
        if c.exit_code is not None:
            c.last_terminated = {
                "exitCode": c.exit_code,
                "reason": c.reason or "Error",
                "startedAt": c.started_at,
                "finishedAt": c.finished_at,
            }
        c.started_at = now()
        c.exit_code = c.finished_at = c.message = c.reason = None
        c.waiting = None
        st = _proc_start_time(c.proc.pid)
        c.tracked = TrackedProcess(
            name=f"{self.ns}/{self.name}/{c.name}",
            pid=c.proc.pid,
            start_time=st or 0,
            log=str(self._log_path(c)),
        )
        self.runner.table.dir.mkdir(parents=True, exist_ok=True)
        (self.runner.table.dir / f"{self.uid}-{c.name}.json").write_text(json.dumps(c.tracked.__dict__))
        for kind in ("readiness", "liveness", "startup"):
            spec = c.spec.get(f"{kind}Probe")
            setattr(c, kind, Probe(spec, c.spec) if spec else None)
        log.info("pod %s/%s container %s started (pid %s): %s", self.ns, self.name, c.name, c.proc.pid, argv)

    # --- probes -------------------------------------------------------------------------------

    def _probe(self, c: Container, t: float) -> None:
        for kind in ("startup", "readiness", "liveness"):
            probe: Probe | None = getattr(c, kind)
            if probe is None or not probe.due(t):
                continue
            if kind != "startup" and c.startup and not c.startup.ok:
                continue
            if kind == "startup" and probe.ok:
                continue
            probe.last = t
            ok = self._probe_once(c, probe.spec)
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
                        log.info(
                            "pod %s/%s container %s failed its %s probe: restarting",
                            self.ns,
                            self.name,
                            c.name,
                            kind,
                        )
                        self._stop_container(c, self._grace())
                        c.reason = "Error"
                        return

    def _probe_once(self, c: Container, spec: dict) -> bool:
        timeout = spec.get("timeoutSeconds", 1)
        try:
            if "httpGet" in spec:
                h = spec["httpGet"]
                port = podspec.container_port(c.spec, h["port"])
                url = f"http://{h.get('host') or self.ip}:{port}{h.get('path', '/')}"
                req = urllib.request.Request(
                    url, headers={x["name"]: x["value"] for x in h.get("httpHeaders") or []}
                )
                with urllib.request.urlopen(req, timeout=timeout) as r:
                    return 200 <= r.status < 400
            if "tcpSocket" in spec:
                port = podspec.container_port(c.spec, spec["tcpSocket"]["port"])
                with socket.create_connection((self.ip, port), timeout=timeout):
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

    # --- stopping -----------------------------------------------------------------------------

    def _grace(self) -> float:
        meta = self.pod["metadata"]
        g = meta.get("deletionGracePeriodSeconds")
        if g is None:
            g = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        return float(g)

    def _pre_stop(self, c: Container, deadline: float) -> None:
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
                    f"http://{self.ip}:{port}{h.get('path', '/')}",
                    timeout=max(0.1, deadline - time.monotonic()),
                )
            elif "exec" in hook and c.proc is not None:
                subprocess.run(
                    ["nsenter", "-t", str(c.proc.pid), "-m", "--", *hook["exec"]["command"]],
                    timeout=max(0.1, deadline - time.monotonic()),
                    capture_output=True,
                )
        except (OSError, urllib.error.URLError, subprocess.TimeoutExpired, ValueError) as e:
            log.info("pod %s/%s preStop of %s: %s", self.ns, self.name, c.name, e)

    def _stop_container(self, c: Container, grace: float) -> None:
        if not c.running():
            return
        deadline = time.monotonic() + grace
        self._pre_stop(c, deadline)
        assert c.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(c.proc.pid, signal.SIGTERM)
        while time.monotonic() < deadline and c.proc.poll() is None:
            time.sleep(0.05)
        if c.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(c.proc.pid, signal.SIGKILL)
            c.proc.wait()
        self._record_exit(c)

    def _terminate(self) -> None:
        running = [c for c in self.containers if c.running()]
        if not running:
            return
        grace = self._grace()
        threads = [threading.Thread(target=self._stop_container, args=(c, grace)) for c in running]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if self.phase == "Running":
            self.phase = (
                "Succeeded" if all(c.exit_code == 0 for c in self.containers if not c.init) else "Failed"
            )
        self.publish()

    def _kill_all(self, grace: float) -> None:
        for c in self.containers:
            self._stop_container(c, grace)

    def _finish_delete(self) -> None:
        """Like the kubelet: once the containers are gone, remove the object for good."""
        if not self.deleting.is_set():
            # finished (Succeeded/Failed) but not deleted: stay until deleted
            self.deleting.wait()
        self._kill_all(grace=0.5)
        for c in self.containers:
            (self.runner.table.dir / f"{self.uid}-{c.name}.json").unlink(missing_ok=True)
        if not self.gone.is_set():
            with contextlib.suppress(ApiException):
                self.runner.core.delete_namespaced_pod(
                    self.name,
                    self.ns,
                    grace_period_seconds=0,
                    body=client.V1DeleteOptions(
                        grace_period_seconds=0, preconditions=client.V1Preconditions(uid=self.uid)
                    ),
                )
        self.runner.forget(self.uid)
        shutil.rmtree(self.dir / "volumes", ignore_errors=True)

    # --- volumes ------------------------------------------------------------------------------

    def _prepare_volumes(self) -> None:
        vols: dict[str, tuple[Path, bool]] = {}
        vdir = self.dir / "volumes"
        for v in self.pod["spec"].get("volumes") or []:
            name = v["name"]
            target = vdir / name
            if "emptyDir" in v:
                target.mkdir(parents=True, exist_ok=True)
                vols[name] = (target, False)
            elif "hostPath" in v:
                vols[name] = (Path(v["hostPath"]["path"]), False)
            elif "persistentVolumeClaim" in v:
                ref = v["persistentVolumeClaim"]
                vols[name] = (self.runner.pvc_path(self.ns, ref["claimName"]), bool(ref.get("readOnly")))
            elif "configMap" in v or "secret" in v:
                kind = "configMap" if "configMap" in v else "secret"
                self._write_keys(target, kind, v[kind], v[kind].get("name") or v[kind].get("secretName"))
                vols[name] = (target, True)
            elif "projected" in v:
                self._write_projected(target, v["projected"])
                vols[name] = (target, True)
            elif "downwardAPI" in v:
                self._write_downward(target, v["downwardAPI"].get("items") or [])
                vols[name] = (target, True)
            else:
                raise PodConfigError(f"volume {name!r}: type not supported by the local pod runner")
        for c in self.containers:
            mounts = []
            for m in c.spec.get("volumeMounts") or []:
                if m["name"] not in vols:
                    raise PodConfigError(f"container {c.name}: volumeMount {m['name']!r} has no volume")
                src, ro = vols[m["name"]]
                sub = m.get("subPath") or ""
                if sub and not podspec.safe_subpath(sub):
                    raise PodConfigError(
                        f"container {c.name}: subPath {sub!r} must be relative and stay inside the volume"
                    )
                path = src / sub if sub else src
                if sub and not path.exists():
                    path.mkdir(parents=True, exist_ok=True)
                mounts.append(
                    {
                        "source": str(path),
                        "mountPath": m["mountPath"],
                        "readOnly": ro or bool(m.get("readOnly")),
                    }
                )
            self.mounts[c.name] = mounts

    def _write_keys(self, target: Path, kind: str, spec: dict, obj_name: str) -> None:
        data = self.runner.lookup_for(self.ns)(kind, obj_name, bool(spec.get("optional")))
        if data is None:
            raise PodWaiting(f"{kind} {obj_name!r} not found")
        target.mkdir(parents=True, exist_ok=True)
        items = spec.get("items") or [{"key": k, "path": k} for k in data]
        for it in items:
            if it["key"] not in data:
                raise PodConfigError(f"{kind} {obj_name!r} has no key {it['key']!r}")
            self._write_file(target, it["path"], data[it["key"]])

    def _write_file(self, target: Path, rel: str, content: str | bytes) -> None:
        if not podspec.safe_subpath(rel):
            raise PodConfigError(f"volume file path {rel!r} must be relative and stay inside the volume")
        p = target / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())

    def _write_downward(self, target: Path, items: list[dict]) -> None:
        target.mkdir(parents=True, exist_ok=True)
        pod = dict(self.pod)
        pod["status"] = {**(pod.get("status") or {}), "podIP": self.ip, "hostIP": "127.0.0.1"}
        for it in items:
            if "fieldRef" in it:
                self._write_file(target, it["path"], podspec.field_ref(pod, it["fieldRef"]["fieldPath"]))

    def _write_projected(self, target: Path, spec: dict) -> None:
        target.mkdir(parents=True, exist_ok=True)
        for src in spec.get("sources") or []:
            if "serviceAccountToken" in src:
                t = src["serviceAccountToken"]
                token = self.runner.request_token(
                    self.pod, t.get("audience"), t.get("expirationSeconds", 3600)
                )
                self._write_file(target, t["path"], token)
            elif "configMap" in src or "secret" in src:
                kind = "configMap" if "configMap" in src else "secret"
                self._write_keys(target, kind, src[kind], src[kind]["name"])
            elif "downwardAPI" in src:
                self._write_downward(target, src["downwardAPI"].get("items") or [])

    # --- status -------------------------------------------------------------------------------

    def _cond(self, ctype: str, ok: bool) -> dict:
        status = "True" if ok else "False"
        key = f"{ctype}={status}"
        if self._transitions.get(ctype, "").split("@")[0] != key:
            self._transitions[ctype] = f"{key}@{now()}"
        return {"type": ctype, "status": status, "lastTransitionTime": self._transitions[ctype].split("@")[1]}

    def publish(self) -> None:
        if self.lost.is_set():
            return  # a vanished machine reports nothing
        main = [c for c in self.containers if not c.init]
        inits = [c for c in self.containers if c.init]
        initialized = all(c.exit_code == 0 and not c.running() for c in inits)
        ready = self.phase == "Running" and all(c.ready() for c in main)
        status: dict[str, Any] = {
            "phase": self.phase,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "startTime": self.start_time,
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
        if self.pod_reason:
            status["reason"], status["message"] = self.pod_reason, self.pod_message
        if status == self._last_status:
            return
        try:
            self.runner.core.patch_namespaced_pod_status(self.name, self.ns, {"status": status})
            self._last_status = status
        except ApiException as e:
            if e.status == 404:
                self.vanished()
            else:
                log.warning("pod %s/%s: status update failed: %s", self.ns, self.name, e.reason)


def image_paths() -> list[str]:
    """What a container image would hold here: the interpreter, the venvs and the project's code.

    The pod's volumes may be mounted over these folders (an emptyDir at /tmp while the checkout lives
    in /tmp); podinit mounts them back on top so the container still finds its "image"."""
    import tts_operator
    import tts_runtime

    found = {sys.prefix, sys.base_prefix, *(p for p in sys.path if p and os.path.isdir(p))}
    found |= {
        str(Path(m.__file__).resolve().parent.parent) for m in (tts_operator, tts_runtime) if m.__file__
    }
    outermost: list[Path] = []
    for path in sorted((Path(p).resolve() for p in found), key=lambda p: len(p.parts)):
        if path != Path("/") and not any(path.is_relative_to(o) for o in outermost):
            outermost.append(path)
    return [str(p) for p in outermost]


def _proc_start_time(pid: int) -> int | None:
    from tts_operator.devcluster.procs import _start_time

    return _start_time(pid)


class PodRunner:
    def __init__(self, kubeconfig: str, state: Path, api_port: int, allowed_images: str) -> None:
        config.load_kube_config(kubeconfig)
        self.api = client.ApiClient()
        self.core = client.CoreV1Api(self.api)
        self.coord = client.CoordinationV1Api(self.api)
        self.state = state
        self.api_port = api_port
        self.allowed_images = allowed_images
        self.nodes = [n.name for n in DEV_NODES if n.local]
        self.table = ProcessTable(state / "runner" / "procs")
        self.workers: dict[str, PodWorker] = {}
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self._next_ip = 1
        self._ips: dict[str, str] = {}
        self._registered: set[str] = set()  # nodes seen in the API (so a 404 means "deleted")
        self._deleted_at: dict[str, float] = {}  # deleted nodes -> when that was noticed

    def allocate_ip(self, uid: str) -> str:
        with self.lock:
            if uid not in self._ips:
                n = self._next_ip
                self._next_ip += 1
                self._ips[uid] = f"127.1.{n // 250}.{n % 250 + 2}"
            return self._ips[uid]

    def forget(self, uid: str) -> None:
        with self.lock:
            self.workers.pop(uid, None)

    # --- API lookups used by workers --------------------------------------------------------------

    def lookup_for(self, ns: str) -> Callable[[str, str, bool], dict[str, str] | None]:
        """A reader of ConfigMap/Secret data in ``ns`` (see podspec.resolve_env)."""

        def data_of(kind: str, name: str, optional: bool) -> dict[str, str] | None:
            try:
                if kind == "configMap":
                    return (
                        self.get_json("GET", f"/api/v1/namespaces/{ns}/configmaps/{name}").get("data") or {}
                    )
                raw = self.get_json("GET", f"/api/v1/namespaces/{ns}/secrets/{name}").get("data") or {}
                return {k: base64.b64decode(v).decode() for k, v in raw.items()}
            except ApiException as e:
                if e.status == 404:
                    if optional:
                        return None
                    raise PodWaiting(f"{kind} {ns}/{name} not found") from None
                raise

        return data_of

    def get_json(self, method: str, path: str, body: dict | None = None) -> dict:
        """A raw API call returning the decoded JSON (no typed models); ApiException on errors."""
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        args = self.api.param_serialize(
            method, path, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        resp = self.api.call_api(*args)
        data = resp.read()
        if resp.status >= 400:
            raise ApiException(http_resp=resp)
        return json.loads(data)

    def pvc_path(self, ns: str, claim: str) -> Path:
        try:
            pvc = self.get_json("GET", f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}")
        except ApiException as e:
            if e.status == 404:
                raise PodWaiting(f"persistentvolumeclaim {claim!r} not found") from None
            raise
        volume = pvc["spec"].get("volumeName")
        if pvc.get("status", {}).get("phase") != "Bound" or not volume:
            raise PodWaiting(f"persistentvolumeclaim {claim!r} is not bound yet")
        pv = self.get_json("GET", f"/api/v1/persistentvolumes/{volume}")["spec"]
        src = (pv.get("hostPath") or pv.get("local") or {}).get("path")
        if not src:
            raise PodConfigError(f"persistentvolume {volume}: only hostPath/local volumes run locally")
        return Path(src)

    def request_token(self, pod: dict, audience: str | None, expiration: int) -> str:
        meta = pod["metadata"]
        sa = pod["spec"].get("serviceAccountName") or "default"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience] if audience else [],
                "expirationSeconds": max(600, int(expiration)),
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        path = f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token"
        return self.get_json("POST", path, body)["status"]["token"]

    # --- nodes --------------------------------------------------------------------------------

    def keep_nodes(self) -> None:
        last_status = 0.0
        while not self.stopping.is_set():
            for node in self.nodes:
                try:
                    node_uid = self.get_json("GET", f"/api/v1/nodes/{node}")["metadata"]["uid"]
                except ApiException as e:
                    # never registered: `cluster up` has yet to create it; registered before: deleted
                    if e.status == 404 and node in self._registered:
                        try:
                            self._node_deleted(node)
                        except Exception as err:  # the API restarting: try again on the next round
                            log.warning("re-registering node %s: %s", node, err)
                    continue
                self._registered.add(node)
                self._deleted_at.pop(node, None)
                self._renew_lease(node, node_uid)
                if time.monotonic() - last_status > 20:
                    self.core.patch_node_status(node, {"status": {"conditions": ready_conditions(now())}})
            if time.monotonic() - last_status > 20:
                last_status = time.monotonic()
            self.stopping.wait(5.0)

    def _node_deleted(self, node: str) -> None:
        """A deleted node is a lost machine: its pods' processes are killed on the spot (see
        ``PodWorker.machine_lost``). Then it is registered again, as a restarted kubelet (or a
        re-provisioned machine) does.

        Not at once: the pods still bound to it are orphans that the pod garbage collector fails and
        deletes (after a 40 s quarantine), which is what makes their controllers replace them; a node
        back under the same name before that would keep them. So: once no pod is bound to the node
        any more, or after ``REREGISTER_AFTER`` seconds in case no pod GC runs."""
        t = time.monotonic()
        if node not in self._deleted_at:
            self._deleted_at[node] = t
            with self.lock:
                lost = [w for w in self.workers.values() if w.pod["spec"].get("nodeName") == node]
            for worker in lost:
                worker.machine_lost()
            log.warning(
                "node %s was deleted: its %d pod(s) killed as with the machine; re-registering it once "
                "the pods are gone",
                node,
                len(lost),
            )
        bound = self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}", limit=1)
        if bound.items and t - self._deleted_at[node] < REREGISTER_AFTER:
            return
        spec = next(n for n in DEV_NODES if n.name == node)
        manifest = node_manifest(spec)
        manifest["status"]["conditions"] = ready_conditions(now())
        try:
            self.get_json("POST", "/api/v1/nodes", manifest)
        except ApiException as e:
            if e.status != 409:  # someone (`cluster up`) registered it meanwhile: fine
                raise
        log.warning("node %s registered again after %.0f s", node, t - self._deleted_at.pop(node))

    def _renew_lease(self, node: str, node_uid: str) -> None:
        body = {
            "metadata": {
                "name": node,
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}],
            },
            "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": now_micro()},
        }
        try:
            self.coord.patch_namespaced_lease(node, "kube-node-lease", body)
        except ApiException as e:
            if e.status == 404:
                with contextlib.suppress(ApiException):
                    self.get_json(
                        "POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", body
                    )

    # --- pods -----------------------------------------------------------------------------------

    def watch_node(self, node: str) -> None:
        rv = None
        while not self.stopping.is_set():
            try:
                if rv is None:
                    pods = self.api.sanitize_for_serialization(
                        self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}")
                    )
                    rv = pods["metadata"]["resourceVersion"]
                    for p in pods["items"]:
                        self.handle("ADDED", p)
                w = watch.Watch()
                for ev in w.stream(
                    self.core.list_pod_for_all_namespaces,
                    field_selector=f"spec.nodeName={node}",
                    resource_version=rv,
                    timeout_seconds=60,
                    _preload_content=False,
                    allow_watch_bookmarks=True,
                ):
                    obj = ev["raw_object"]
                    rv = obj["metadata"].get("resourceVersion", rv)
                    if ev["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        self.handle(ev["type"], obj)
                    if self.stopping.is_set():
                        break
            except ApiException as e:
                if e.status == 410:
                    rv = None
                    continue
                log.warning("watch %s: %s", node, e.reason)
                self.stopping.wait(1.0)
            except Exception as e:  # connection drops while the API server restarts
                log.warning("watch %s: %s", node, e)
                rv = None
                self.stopping.wait(1.0)

    def handle(self, kind: str, pod: dict) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            worker = self.workers.get(uid)
            if worker is None and kind != "DELETED" and not self.stopping.is_set():
                phase = (pod.get("status") or {}).get("phase")
                if phase in ("Succeeded", "Failed") and not pod["metadata"].get("deletionTimestamp"):
                    return  # finished before this runner started
                worker = PodWorker(self, pod)
                self.workers[uid] = worker
                worker.update(pod)
                worker.start()
                return
        if worker is not None:
            if kind == "DELETED":
                worker.vanished()
            else:
                worker.update(pod)

    def run(self) -> None:
        threads = [threading.Thread(target=self.keep_nodes, daemon=True, name="nodes")]
        threads += [
            threading.Thread(target=self.watch_node, args=(n,), daemon=True, name=f"watch-{n}")
            for n in self.nodes
        ]
        for th in threads:
            th.start()
        # a timed wait, so that the signal handler gets to run in this (the main) thread
        while not self.stopping.wait(0.5):
            pass

    def shutdown(self) -> None:
        """Stop every pod's processes (SIGTERM, then SIGKILL after at most 20 s)."""
        self.stopping.set()
        with self.lock:
            workers = list(self.workers.values())
        stoppers = []
        for w in workers:
            for c in w.containers:
                th = threading.Thread(target=w._stop_container, args=(c, min(w._grace(), 20.0)))
                th.start()
                stoppers.append(th)
        for th in stoppers:
            th.join()
        for p in self.table.all():
            p.stop(grace=1.0)
            self.table.forget(p.name)


def stop_orphan_pods(state: Path) -> list[TrackedProcess]:
    """Stop container processes a dead runner left behind (called by `cluster down`)."""
    table = ProcessTable(state / "runner" / "procs")
    stopped = []
    for f in sorted(table.dir.glob("*.json")) if table.dir.exists() else []:
        tp = TrackedProcess(**json.loads(f.read_text()))
        tp.stop(grace=5.0)
        stopped.append(tp)
        f.unlink(missing_ok=True)
    return stopped


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--state-dir", required=True, type=Path)
    ap.add_argument("--api-port", required=True, type=int)
    ap.add_argument(
        "--allowed-images",
        default=os.environ.get("TTS_RUNNER_IMAGES", podspec.DEFAULT_ALLOWED_IMAGES),
        help="regular expression of the images the runner accepts",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s %(message)s")
    runner = PodRunner(args.kubeconfig, args.state_dir, args.api_port, args.allowed_images)

    def on_term(signum: int, frame: object) -> None:
        log.info("signal %s: stopping pods", signum)
        runner.stopping.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    runner.run()
    runner.shutdown()


if __name__ == "__main__":
    main()
