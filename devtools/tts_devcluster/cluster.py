"""`tts-operator dev cluster up|down|status`: start and stop the local control plane.

Everything listens on 127.0.0.1. State (certificates, etcd data, logs, PID files, volumes, pod
folders, the S3 server's data) lives in ``.cluster/`` of the checkout (``TTS_CLUSTER_DIR``
overrides). ``up`` reuses a healthy running cluster; ``down`` stops exactly the processes ``up``
started, by PID.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from tts_devcluster import s3
from tts_devcluster.nodes import DEV_NODES, KWOK_LABEL_SELECTOR, node_manifest
from tts_devcluster.pki import ensure_pki
from tts_devcluster.procs import ProcessTable, TrackedProcess

# start order; down stops in reverse. SeaweedFS (the S3 server) starts first, beside the control plane
# (it needs none of it: its start overlaps etcd's and the API server's), and stops last, after the
# pods that may use it.
COMPONENTS = (
    s3.PROCESS,
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "pod-runner",
)


def repo_root() -> Path:
    """The checkout this package runs from (the dev cluster is a development tool)."""
    env = os.environ.get("TTS_REPO_ROOT")
    if env:
        return Path(env)
    for start in (Path.cwd(), Path(__file__).resolve()):
        for d in (start, *start.parents):
            if (d / "hack" / "versions.env").exists():
                return d
    raise RuntimeError("cannot find the tts-operator checkout (hack/versions.env); set TTS_REPO_ROOT")


def control_plane_bin(build: bool, progress: Callable[[str], None] = print) -> Path:
    """The versioned cache folder with the binaries; builds them first when ``build`` is set."""
    script = repo_root() / "hack" / "build-control-plane.sh"
    if build:
        progress("building the control plane binaries (first time: long; cached afterwards)")
    action = "all" if build else "print-bin"
    out = subprocess.run(["bash", str(script), action], check=False, stdout=subprocess.PIPE, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        # the script said why on stderr, above this line
        raise RuntimeError(
            f"`bash hack/build-control-plane.sh {action}` failed (exit {out.returncode}): its own "
            "lines above say why; `make setup` installs what the build needs"
        )
    return Path(out.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class Ports:
    etcd: int = 23790
    etcd_peer: int = 23800
    apiserver: int = 16443
    controller_manager: int = 10357
    scheduler: int = 10359

    @classmethod
    def from_env(cls) -> Ports:
        """Defaults shifted by ``TTS_CLUSTER_PORT_OFFSET`` (a second checkout's cluster beside the first)."""
        off = int(os.environ.get("TTS_CLUSTER_PORT_OFFSET", "0"))
        d = cls()
        return cls(
            d.etcd + off, d.etcd_peer + off, d.apiserver + off, d.controller_manager + off, d.scheduler + off
        )

    @property
    def s3_ports(self) -> s3.S3Ports:
        """SeaweedFS's ports: S3 at the API server port + 1890 (18333 by default), the others every
        10 above it, so every cluster (offset or test ports) has its own."""
        return s3.S3Ports.from_base(self.apiserver + s3.PORT_FROM_APISERVER)


class ClusterNotRunning(RuntimeError):
    """The dev cluster is down or half up: the message names what is not running and what to do."""


class PortTaken(RuntimeError):
    """A port the dev cluster needs is held by a process that is not part of it."""


class DevCluster:
    def __init__(self, state_dir: Path | None = None, ports: Ports | None = None) -> None:
        env_dir = os.environ.get("TTS_CLUSTER_DIR")
        self.state = (state_dir or (Path(env_dir) if env_dir else repo_root() / ".cluster")).resolve()
        self.ports = ports or Ports.from_env()
        self.procs = ProcessTable(self.state / "pids")
        self.kubeconfig = self.state / "kubeconfig"
        self.pki = self.state / "pki"
        self.logs = self.state / "logs"

    # --- reading state ------------------------------------------------------------------------

    def processes(self) -> dict[str, TrackedProcess | None]:
        return {name: self.procs.get(name) for name in COMPONENTS}

    def api_ready(self, timeout: float = 2.0) -> bool:
        if not self.kubeconfig.exists():
            return False
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        try:
            url = f"https://127.0.0.1:{self.ports.apiserver}/readyz"
            with urllib.request.urlopen(url, context=ctx, timeout=timeout) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError, ssl.SSLError):
            return False

    def healthy(self) -> bool:
        procs = self.processes()
        return all(p is not None and p.alive() for p in procs.values()) and self.api_ready()

    def down_components(self) -> list[str]:
        """The components that are not running, each as ``name (pid N)`` (its PID file names a
        process that is gone) or ``name`` (no PID file)."""
        return [
            name if p is None else f"{name} (pid {p.pid})"
            for name, p in self.processes().items()
            if p is None or not p.alive()
        ]

    def problem(self) -> str | None:
        """What is wrong with the cluster, in one line with what to do; None when it is healthy."""
        down = self.down_components()
        if len(down) == len(COMPONENTS):
            return f"the dev cluster is not running (state in {self.state}): `make cluster-up` starts it"
        if down:
            return (
                f"the dev cluster is half up: {', '.join(down)} not running. `make cluster-up` "
                "starts a fresh one (the objects and volumes of this one are lost); the logs of what "
                f"died are in {self.logs}"
            )
        if not self.api_ready():
            return (
                f"the dev cluster's processes run but its API server does not answer at "
                f"https://127.0.0.1:{self.ports.apiserver}/readyz (log: {self.logs / 'kube-apiserver.log'}): "
                "`make cluster-down && make cluster-up`"
            )
        return None

    def require_running(self) -> None:
        """``ClusterNotRunning`` (one line: what is down, what to do) unless the cluster is healthy."""
        problem = self.problem()
        if problem is not None:
            raise ClusterNotRunning(problem)

    def s3_endpoint(self) -> s3.S3Endpoint:
        """The S3 server's endpoint and keys; ``s3.S3NotRunning`` (what to do) when it is not running."""
        return s3.endpoint(self.state)

    def status(self) -> dict:
        procs = self.processes()
        return {
            "stateDir": str(self.state),
            "kubeconfig": str(self.kubeconfig),
            "apiserver": f"https://127.0.0.1:{self.ports.apiserver}",
            "apiReady": self.api_ready(),
            "s3": {"url": f"http://127.0.0.1:{self.ports.s3_ports.s3}", "bucket": s3.BUCKET},
            "processes": {
                name: ({"pid": p.pid, "alive": p.alive(), "log": p.log} if p else None)
                for name, p in procs.items()
            },
            "problem": self.problem(),
        }

    # --- up -------------------------------------------------------------------------------------

    def up(self, progress: Callable[[str], None] = print, build: bool = True) -> Path:
        if self.healthy():
            progress(f"reusing the running cluster: KUBECONFIG={self.kubeconfig}")
            return self.kubeconfig
        if any(p and p.alive() for p in self.processes().values()):
            down = self.down_components()
            progress(
                f"the cluster is half up ({', '.join(down) or 'its API server does not answer'}"
                f"{' not running' if down else ''}): stopping the rest and starting a fresh one"
            )
            self.down(progress)
        t0 = time.monotonic()
        bin_dir = control_plane_bin(build=build, progress=progress)
        missing = [
            b
            for b in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
            if not (bin_dir / b).exists()
        ]
        if missing:
            raise RuntimeError(f"control plane binaries missing in {bin_dir}: {missing} (run `make setup`)")
        weed = s3.weed_binary()  # `all` above built it; says what to run when it is missing
        self._check_ports_free()
        # a fresh cluster every time: etcd data, pods, volumes and objects of an old one are meaningless now
        for sub in ("etcd", "pods", "volumes", "runner", "logs", "pids", "s3"):
            shutil.rmtree(self.state / sub, ignore_errors=True)
        self.state.mkdir(parents=True, exist_ok=True)
        ensure_pki(self.pki)
        self._write_kubeconfig()
        p = self.ports
        pki = self.pki
        # SeaweedFS needs nothing of the control plane: it starts now and is waited for at the end
        weed_proc, s3_ep = s3.launch(self.state, p.s3_ports, weed=weed, procs=self.procs)
        print(f"  started {s3.PROCESS} (pid {weed_proc.pid})", file=sys.stderr)
        self._start(
            "etcd",
            [
                str(bin_dir / "etcd"),
                "--name=node0",
                f"--data-dir={self.state / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{p.etcd}",
                f"--advertise-client-urls=http://127.0.0.1:{p.etcd}",
                f"--listen-peer-urls=http://127.0.0.1:{p.etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{p.etcd_peer}",
                f"--initial-cluster=node0=http://127.0.0.1:{p.etcd_peer}",
                "--unsafe-no-fsync=true",
                "--auto-compaction-retention=1",
                "--quota-backend-bytes=2147483648",
                "--listen-metrics-urls=",
            ],
        )
        self._wait(f"etcd on :{p.etcd}", lambda: _http_ok(f"http://127.0.0.1:{p.etcd}/health"), 30)
        self._start(
            "kube-apiserver",
            [
                str(bin_dir / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{p.etcd}",
                "--etcd-prefix=/registry",
                "--bind-address=127.0.0.1",
                f"--secure-port={p.apiserver}",
                "--advertise-address=127.0.0.1",
                f"--tls-cert-file={pki / 'admin.crt'}",
                f"--tls-private-key-file={pki / 'admin.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.key'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--authorization-mode=Node,RBAC",
                f"--proxy-client-cert-file={pki / 'admin.crt'}",
                f"--proxy-client-key-file={pki / 'admin.key'}",
                "--enable-priority-and-fairness=false",
                "--max-requests-inflight=0",
                "--max-mutating-requests-inflight=0",
                "--enable-garbage-collector=true",
                "--event-ttl=1h",
            ],
        )
        self._wait("kube-apiserver /readyz", self.api_ready, 90)
        kc = str(self.kubeconfig)
        self._start(
            "kube-controller-manager",
            [
                str(bin_dir / "kube-controller-manager"),
                f"--kubeconfig={kc}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={p.controller_manager}",
                "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                "--use-service-account-credentials=true",
                "--concurrent-gc-syncs=5",
                "--node-monitor-grace-period=60s",
            ],
        )
        self._start(
            "kube-scheduler",
            [
                str(bin_dir / "kube-scheduler"),
                f"--kubeconfig={kc}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={p.scheduler}",
                "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
            ],
        )
        self._start(
            "kwok",
            [
                str(bin_dir / "kwok"),
                f"--kubeconfig={kc}",
                f"--config={bin_dir.parent / 'kwok-stages.yaml'}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-label-selector={KWOK_LABEL_SELECTOR}",
                "--node-lease-duration-seconds=40",
                "--cidr=10.0.0.0/16",
                "--node-ip=10.0.0.1",
            ],
        )
        self._start(
            "pod-runner",
            [
                sys.executable,
                "-m",
                "tts_devcluster.runner",
                f"--kubeconfig={kc}",
                f"--state-dir={self.state}",
                f"--api-port={p.apiserver}",
            ],
        )
        progress("creating nodes")
        self._apply([node_manifest(n) for n in DEV_NODES])
        self._wait("nodes Ready and schedulable", self._nodes_ready, 90)
        self._wait("the default ServiceAccount", self._default_sa_exists, 60)
        s3.wait_ready(weed_proc, s3_ep)
        self._apply([s3.secret_manifest(s3_ep, s3.SECRET_NAMESPACE)])
        progress(f"cluster up in {time.monotonic() - t0:.1f}s")
        progress(
            f"S3 (SeaweedFS): {s3_ep.url}, bucket {s3_ep.bucket}; admin's keys in Secret "
            f"{s3.SECRET_NAMESPACE}/{s3.SECRET_NAME} (`tts-operator dev s3 env` prints them)"
        )
        progress(f"export KUBECONFIG={self.kubeconfig}")
        return self.kubeconfig

    def _start(self, name: str, argv: list[str]) -> None:
        tp = self.procs.start(name, argv, self.logs / f"{name}.log")
        print(f"  started {name} (pid {tp.pid})", file=sys.stderr)

    def _wait(self, what: str, ok: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ok():
                return
            dead = [p.name for p in self.procs.all() if not p.alive()]
            if dead:
                logs = "\n".join(
                    f"--- {n} (last lines of {self.logs / (n + '.log')}):\n{_tail(self.logs / (n + '.log'))}"
                    for n in dead
                )
                raise RuntimeError(f"waiting for {what}: {', '.join(dead)} exited\n{logs}")
            time.sleep(0.2)
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; logs in {self.logs}")

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        kubectl = control_plane_bin(build=False) / "kubectl"
        return subprocess.run(
            [str(kubectl), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            check=check,
        )

    def _apply(self, objs: list[dict]) -> None:
        docs = yaml.safe_dump_all(objs)
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=docs)

    def _nodes_ready(self) -> bool:
        out = self.kubectl("get", "nodes", "-o", "json", check=False)
        if out.returncode != 0:
            return False
        items = json.loads(out.stdout)["items"]
        if len(items) < len(DEV_NODES):
            return False
        for node in items:
            conds = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
            taints = {t["key"] for t in node.get("spec", {}).get("taints", []) or []}
            if conds.get("Ready") != "True" or "node.kubernetes.io/not-ready" in taints:
                return False
        return True

    def _default_sa_exists(self) -> bool:
        return self.kubectl("-n", "default", "get", "serviceaccount", "default", check=False).returncode == 0

    def _check_ports_free(self) -> None:
        p = self.ports
        for port in (p.etcd, p.etcd_peer, p.apiserver, p.controller_manager, p.scheduler, *p.s3_ports.all()):
            wait_port_free(port)

    def _write_kubeconfig(self) -> None:
        def b64(name: str) -> str:
            return base64.b64encode((self.pki / name).read_bytes()).decode()

        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "tts-dev",
                    "cluster": {
                        "server": f"https://127.0.0.1:{self.ports.apiserver}",
                        "certificate-authority-data": b64("ca.crt"),
                    },
                }
            ],
            "users": [
                {
                    "name": "dev-admin",
                    "user": {
                        "client-certificate-data": b64("admin.crt"),
                        "client-key-data": b64("admin.key"),
                    },
                }
            ],
            "contexts": [{"name": "tts-dev", "context": {"cluster": "tts-dev", "user": "dev-admin"}}],
            "current-context": "tts-dev",
        }
        self.kubeconfig.write_text(yaml.safe_dump(cfg))
        self.kubeconfig.chmod(0o600)

    # --- restart (chaos tests) ------------------------------------------------------------------

    def restart(self, component: str, grace: float = 10.0) -> TrackedProcess:
        """Stop one running component and start it again with the same command line.

        For fault tests: an API server or etcd that goes away and comes back mid-flight. Waits until
        the component answers again (etcd /health, the API server /readyz).
        """
        tp = self.procs.get(component)
        if tp is None or not tp.alive():
            raise RuntimeError(f"{component} is not running")
        argv = [a.decode() for a in Path(f"/proc/{tp.pid}/cmdline").read_bytes().split(b"\0") if a]
        tp.stop(grace=grace)
        new = self.procs.start(component, argv, self.logs / f"{component}.log")
        if component == "etcd":
            self._wait("etcd", lambda: _http_ok(f"http://127.0.0.1:{self.ports.etcd}/health"), 30)
        elif component == "kube-apiserver":
            self._wait("kube-apiserver /readyz", self.api_ready, 90)
        return new

    # --- down -----------------------------------------------------------------------------------

    def down(self, progress: Callable[[str], None] = print) -> list[TrackedProcess]:
        """Stop every process ``up`` started, in reverse order, and return them."""
        stopped = []
        for name in reversed(COMPONENTS):
            tp = self.procs.get(name)
            if tp is None:
                continue
            if tp.alive():
                # the runner needs time to give its pods their grace period
                tp.stop(grace=40.0 if name == "pod-runner" else 10.0)
                progress(f"stopped {name} (pid {tp.pid})")
            stopped.append(tp)
            self.procs.forget(name)
        # pods whose runner died without stopping them
        from tts_devcluster.runner import stop_orphan_pods

        stopped += stop_orphan_pods(self.state)
        left = [p for p in stopped if p.alive()]
        if left:
            raise RuntimeError(f"still running after down: {[(p.name, p.pid) for p in left]}")
        return stopped


#: /proc/net/tcp's state column
_TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


#: how long a port held by closing connections is waited for: an orphaned FIN_WAIT2 socket lives
#: net.ipv4.tcp_fin_timeout (60 s by default), then TIME_WAIT (60 s)
PORT_CLOSING_WAIT_S = 150.0


def wait_port_free(port: int, wait_s: float = PORT_CLOSING_WAIT_S) -> None:
    """Return once 127.0.0.1:``port`` can be bound, else ``PortTaken`` saying what holds it. A port
    held only by the closing connections of a process that just stopped (a cluster brought down a
    moment ago; a listener without SO_REUSEADDR leaves FIN_WAIT2 and TIME_WAIT sockets that block a
    new bind until the kernel drops them) is waited for, up to ``wait_s``; a port a running process
    listens on is refused at once."""
    deadline = time.monotonic() + wait_s
    while not _bindable(port):
        if port_owner(port) is not None or time.monotonic() >= deadline:
            raise PortTaken(_port_taken_message(port, tcp_states(port)))
        time.sleep(0.5)


def _bindable(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _sockets(port: int) -> list[tuple[str, str]]:
    """(state, inode) of every TCP socket whose local port is ``port`` (from /proc)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local address (hex ip:port), remote address, state, ..., inode
            if len(fields) > 9 and int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.append((_TCP_STATES.get(fields[3], fields[3]), fields[9]))
    return found


def tcp_states(port: int) -> set[str]:
    """The states of the TCP sockets on local port ``port`` (LISTEN, FIN_WAIT2, ...)."""
    return {state for state, _ in _sockets(port)}


def port_owner(port: int) -> str | None:
    """``pid N (command)`` of the process listening on TCP ``port`` (from /proc), None when it
    cannot be told (another user's process, not Linux)."""
    inodes = {f"socket:[{inode}]" for state, inode in _sockets(port) if state == "LISTEN"}
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
            for fd in fds:
                if os.readlink(fd) in inodes:
                    return f"pid {proc.name} ({(proc / 'comm').read_text().strip()})"
        except OSError:
            continue
    return None


def _port_taken_message(port: int, states: set[str]) -> str:
    offset = int(os.environ.get("TTS_CLUSTER_PORT_OFFSET", "0") or 0) + 1000
    shift = f"or shift this one's ports with TTS_CLUSTER_PORT_OFFSET={offset}."
    if states and "LISTEN" not in states:
        return (
            f"port 127.0.0.1:{port} is still held by closing connections ({', '.join(sorted(states))}) "
            f"of a process that stopped: try again in a minute, {shift}"
        )
    owner = port_owner(port)
    by = f" by {owner}" if owner else ""
    return (
        f"port 127.0.0.1:{port} is in use{by}: is another dev cluster running (from another checkout, "
        "or one whose state folder was removed)? Stop it with `tts-operator dev cluster down` there, " + shift
    )


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
