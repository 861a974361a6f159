"""The local pod runner: a small kubelet for the dev cluster's ``*-local-*`` nodes.

Pods the scheduler binds to those nodes run as local processes in the project's venv: the image is
not pulled (only the configured runtime/operator images are accepted), each container runs in a
private mount namespace with its volumes bind-mounted at their mount paths, and the pod gets a
loopback address (127.1.x.y; a second cluster's on the same machine, with other ports: 127.N.x.y)
as its pod IP. Probes, restart policy, exit codes, SIGTERM then SIGKILL after the grace period, and
the projected ServiceAccount token (TokenRequest API) work as the kubelet's do. Pod status is
reported to the API server; node Ready and Leases are kept fresh.

Limits (documented in docs/local-cluster.md): processes run as the runner's user, no network
namespace (a server must bind its pod IP: use the downward API ``status.podIP``), no image layers,
no resource limits enforced, container logs in ``.cluster/pods/<pod>/<container>.log`` (``kubectl
logs`` needs a kubelet API and does not work).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
from pathlib import Path

from kubernetes import watch
from kubernetes.client.rest import ApiException

from tts_devcluster import podspec
from tts_devcluster.kubeapi import KubeApi
from tts_devcluster.nodekeeper import REREGISTER_AFTER, NodeKeeper
from tts_devcluster.nodes import DEV_NODES
from tts_devcluster.podattach import Attachments
from tts_devcluster.podstate import Container, PodConfigError, PodWaiting, Probe
from tts_devcluster.podvolumes import SA_MOUNT
from tts_devcluster.podworker import PodWorker, image_paths
from tts_devcluster.procs import ProcessTable, TrackedProcess

# The runner's parts: kubeapi.py (API calls), nodekeeper.py (nodes and Leases), podworker.py (one
# pod's life), probes.py, podvolumes.py, podattach.py (single-node volumes), podstatus.py, podstate.py
# (containers, probes, errors).
# The names this module held before that split stay importable from here.
__all__ = [
    "REREGISTER_AFTER",
    "SA_MOUNT",
    "Container",
    "PodConfigError",
    "PodRunner",
    "PodWaiting",
    "PodWorker",
    "Probe",
    "image_paths",
    "main",
    "stop_orphan_pods",
]

log = logging.getLogger("pod-runner")


#: the API server port of a cluster started without TTS_CLUSTER_PORT_OFFSET: its pods get 127.1.x.y
DEFAULT_API_PORT = 16443


def pod_ip_octet(api_port: int) -> int:
    """The second octet of a cluster's pod IPs (127.N.x.y): 1 for the default ports, another one for
    each other cluster (another checkout's, a test's own), so that two clusters on one machine never
    hand out the same pod IP (a server there would find its port taken)."""
    return 1 + (api_port - DEFAULT_API_PORT) % 254


class PodRunner(KubeApi):
    """Watches the pods bound to the ``*-local-*`` nodes and runs each in a ``PodWorker``."""

    def __init__(self, kubeconfig: str, state: Path, api_port: int, allowed_images: str) -> None:
        super().__init__(kubeconfig)
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
        self._ip_prefix = f"127.{pod_ip_octet(api_port)}"
        self.node_keeper = NodeKeeper(self)
        self.attachments = Attachments(self)

    def allocate_ip(self, uid: str) -> str:
        with self.lock:
            if uid not in self._ips:
                n = self._next_ip
                self._next_ip += 1
                self._ips[uid] = f"{self._ip_prefix}.{n // 250}.{n % 250 + 2}"
            return self._ips[uid]

    def forget(self, uid: str) -> None:
        with self.lock:
            self.workers.pop(uid, None)

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
        threads = [threading.Thread(target=self.node_keeper.run, daemon=True, name="nodes")]
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
