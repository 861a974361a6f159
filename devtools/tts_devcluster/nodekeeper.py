"""The local nodes' side of the pod runner: Ready condition, Leases, and deleted nodes as lost machines."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING

from kubernetes.client.rest import ApiException

from tts_devcluster.nodes import DEV_NODES, node_manifest, ready_conditions
from tts_devcluster.podstate import now, now_micro

if TYPE_CHECKING:
    from tts_devcluster.runner import PodRunner

log = logging.getLogger("pod-runner")

#: the longest a deleted node stays away (see NodeKeeper._node_deleted): pod GC quarantine + period + slack
REREGISTER_AFTER = 120.0


class NodeKeeper:
    """Keeps the runner's Node objects Ready and their Leases renewed, as a kubelet does."""

    def __init__(self, runner: PodRunner) -> None:
        self.runner = runner
        self._registered: set[str] = set()  # nodes seen in the API (so a 404 means "deleted")
        self._deleted_at: dict[str, float] = {}  # deleted nodes -> when that was noticed

    def run(self) -> None:
        last_status = 0.0
        while not self.runner.stopping.is_set():
            for node in self.runner.nodes:
                try:
                    node_uid = self.runner.get_json("GET", f"/api/v1/nodes/{node}")["metadata"]["uid"]
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
                    self.runner.core.patch_node_status(
                        node, {"status": {"conditions": ready_conditions(now())}}
                    )
            if time.monotonic() - last_status > 20:
                last_status = time.monotonic()
            self.runner.stopping.wait(5.0)

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
            with self.runner.lock:
                lost = [w for w in self.runner.workers.values() if w.pod["spec"].get("nodeName") == node]
            for worker in lost:
                worker.machine_lost()
            log.warning(
                "node %s was deleted: its %d pod(s) killed as with the machine; re-registering it once "
                "the pods are gone",
                node,
                len(lost),
            )
        bound = self.runner.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}", limit=1)
        if bound.items and t - self._deleted_at[node] < REREGISTER_AFTER:
            return
        spec = next(n for n in DEV_NODES if n.name == node)
        manifest = node_manifest(spec)
        manifest["status"]["conditions"] = ready_conditions(now())
        try:
            self.runner.get_json("POST", "/api/v1/nodes", manifest)
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
            self.runner.coord.patch_namespaced_lease(node, "kube-node-lease", body)
        except ApiException as e:
            if e.status == 404:
                with contextlib.suppress(ApiException):
                    self.runner.get_json(
                        "POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", body
                    )
