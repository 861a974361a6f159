"""One pod's life on the local pod runner: volumes, container processes, restarts, termination.

A ``PodWorker`` thread per pod bound to a ``*-local-*`` node, from binding to deletion; probes are in
probes.py, volumes in podvolumes.py, what the status says in podstatus.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from kubernetes import client
from kubernetes.client.rest import ApiException

from tts_devcluster import podspec
from tts_devcluster.podattach import MultiAttachError
from tts_devcluster.podstate import Container, PodConfigError, PodWaiting, Probe, now, with_pod_ip
from tts_devcluster.podstatus import PodStatusReporter
from tts_devcluster.podvolumes import PodVolumes
from tts_devcluster.probes import pre_stop, run_probes
from tts_devcluster.procs import TrackedProcess

if TYPE_CHECKING:
    from tts_devcluster.runner import PodRunner

log = logging.getLogger("pod-runner")

PASS_ENV = ("LANG", "LC_ALL", "TZ", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS")


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
        #: the single-node volumes (PV names) attached to this pod's node for it (podattach.py)
        self.attached: set[str] = set()
        #: the FailedAttachVolume Event last recorded while waiting: (name, message, count, when)
        self.attach_event: tuple[str, str, int, float] | None = None
        self.pod_message: str | None = None
        self.pod_reason: str | None = None
        self.reporter = PodStatusReporter(runner.core, self.ns, self.name)

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
                self.mounts = PodVolumes(self.runner, self.pod, self.ip).prepare(
                    self.dir / "volumes",
                    self.containers,
                    attach=lambda volume: self.runner.attachments.attach(self, volume),
                )
                break
            except PodWaiting as e:
                for c in self.containers:
                    c.waiting = ("ContainerCreating", str(e))
                if isinstance(e, MultiAttachError):
                    self.runner.attachments.report(self, e)
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
        pod = with_pod_ip(self.pod, self.ip)
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
                    "tts_devcluster.podinit",
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
        failed = run_probes(c, t, self.ip)
        if failed:
            log.info(
                "pod %s/%s container %s failed its %s probe: restarting",
                self.ns,
                self.name,
                c.name,
                failed,
            )
            self._stop_container(c, self._grace())
            c.reason = "Error"

    # --- stopping -----------------------------------------------------------------------------

    def _grace(self) -> float:
        meta = self.pod["metadata"]
        g = meta.get("deletionGracePeriodSeconds")
        if g is None:
            g = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        return float(g)

    def _stop_container(self, c: Container, grace: float) -> None:
        if not c.running():
            return
        deadline = time.monotonic() + grace
        pre_stop(c, self.ip, deadline, f"{self.ns}/{self.name}")
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

    # --- status -------------------------------------------------------------------------------

    def publish(self) -> None:
        if self.lost.is_set():
            return  # a vanished machine reports nothing
        status = self.reporter.build(
            self.phase, self.containers, self.ip, self.start_time, self.pod_reason, self.pod_message
        )
        if not self.reporter.send(status):
            self.vanished()


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
    from tts_devcluster.procs import _start_time

    return _start_time(pid)
