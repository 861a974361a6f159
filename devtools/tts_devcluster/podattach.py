"""Volume attachment for the local pod runner: a claim whose PersistentVolume allows neither
``ReadWriteMany`` nor ``ReadOnlyMany`` (``ReadWriteOnce``, ``ReadWriteOncePod``) is attached to one
node at a time, as a CSI block volume is.

A pod that needs such a volume while pods on another node use it waits in ContainerCreating, with
the Warning Event ``FailedAttachVolume`` and the message of Kubernetes' attach/detach controller
(``Multi-Attach error for volume "<pv>" Volume is already used by pod(s) a, b``), and starts once
those pods are gone (deleted, or finished: Succeeded or Failed). Pods on one node share the volume.
Holders are the runner's own pods that mounted it and, on the other nodes (kwok's), every pod that
has not finished; a node that was deleted holds nothing (its machine is gone).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tts_devcluster.podstate import PodWaiting, now

if TYPE_CHECKING:
    from tts_devcluster.podworker import PodWorker
    from tts_devcluster.runner import PodRunner

log = logging.getLogger("pod-runner")

#: Kubernetes' IsMultiAttachAllowed: a PV listing one of these may be attached to several nodes
MULTI_ATTACH_MODES = frozenset({"ReadWriteMany", "ReadOnlyMany"})
TERMINAL_PHASES = ("Succeeded", "Failed")
EVENT_REASON = "FailedAttachVolume"
EVENT_SOURCE = "attachdetach-controller"
#: a waiting pod's repeated Event is bumped (count, lastTimestamp) at most this often
EVENT_REPEAT_EVERY = 10.0


@dataclass(frozen=True)
class ClaimVolume:
    """A bound claim's PersistentVolume: its folder, name and access modes."""

    claim: str
    path: Path
    pv: str
    access_modes: tuple[str, ...]

    @property
    def multi_attach(self) -> bool:
        return not self.access_modes or bool(MULTI_ATTACH_MODES & set(self.access_modes))


class MultiAttachError(PodWaiting):
    """The volume is attached to another node: the pod waits (ContainerCreating)."""

    def __init__(self, pv: str, holders: list[str]) -> None:
        self.pv = pv
        super().__init__(
            f'Multi-Attach error for volume "{pv}" Volume is already used by pod(s) {", ".join(holders)}'
        )


def uses_claim(pod: dict, claim: str) -> bool:
    return any(
        (v.get("persistentVolumeClaim") or {}).get("claimName") == claim
        for v in pod["spec"].get("volumes") or []
    )


class Attachments:
    """Which node each single-node volume is attached to, for the runner's pods (one per runner)."""

    def __init__(self, runner: PodRunner) -> None:
        self.runner = runner
        self.lock = threading.Lock()

    def attach(self, worker: PodWorker, volume: ClaimVolume) -> None:
        """Attach ``volume`` to ``worker``'s node for it, or ``MultiAttachError`` naming the pods
        that hold it on another node."""
        if volume.multi_attach:
            return
        node = worker.pod["spec"].get("nodeName")
        with self.lock:  # check and attach at once: two nodes' pods may ask together
            holders = self._holders(worker, volume, node)
            if holders:
                raise MultiAttachError(volume.pv, holders)
            worker.attached.add(volume.pv)

    def _holders(self, worker: PodWorker, volume: ClaimVolume, node: str | None) -> list[str]:
        with self.runner.lock:
            workers = list(self.runner.workers.values())
        names = {
            w.name
            for w in workers
            if w is not worker
            and w.ns == worker.ns
            and volume.pv in w.attached
            and w.pod["spec"].get("nodeName") != node
            and w.phase not in TERMINAL_PHASES
            and not w.lost.is_set()
        }
        # the other nodes' pods (kwok runs them: Running at once, never mounting anything)
        pods = self.runner.get_json("GET", f"/api/v1/namespaces/{worker.ns}/pods").get("items") or []
        for pod in pods:
            where = pod["spec"].get("nodeName")
            if (
                where
                and where != node
                and where not in self.runner.nodes
                and (pod.get("status") or {}).get("phase") not in TERMINAL_PHASES
                and uses_claim(pod, volume.claim)
            ):
                names.add(pod["metadata"]["name"])
        return sorted(names)

    def report(self, worker: PodWorker, error: MultiAttachError) -> None:
        """The Warning Event ``FailedAttachVolume`` on the pod, as the attach/detach controller
        records it (once per message: a repeat bumps its count, every ``EVENT_REPEAT_EVERY`` s)."""
        meta = worker.pod["metadata"]
        message = str(error)
        previous = worker.attach_event
        try:
            if previous is not None and previous[1] == message:
                name, _, count, at = previous
                if time.monotonic() - at < EVENT_REPEAT_EVERY:
                    return
                body = {"count": count + 1, "lastTimestamp": now()}
                self.runner.get_json(
                    "PATCH",
                    f"/api/v1/namespaces/{worker.ns}/events/{name}",
                    body,
                    content_type="application/merge-patch+json",
                )
                worker.attach_event = (name, message, count + 1, time.monotonic())
                return
            name = f"{meta['name']}.{uuid.uuid4().hex[:16]}"
            event = {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": worker.ns},
                "involvedObject": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "namespace": worker.ns,
                    "uid": meta["uid"],
                    "resourceVersion": meta.get("resourceVersion"),
                },
                "reason": EVENT_REASON,
                "message": message,
                "type": "Warning",
                "source": {"component": EVENT_SOURCE},
                "reportingComponent": EVENT_SOURCE,
                "reportingInstance": "",
                "firstTimestamp": now(),
                "lastTimestamp": now(),
                "count": 1,
            }
            self.runner.get_json("POST", f"/api/v1/namespaces/{worker.ns}/events", event)
            worker.attach_event = (name, message, 1, time.monotonic())
        except Exception as e:  # an Event is a courtesy: the pod waits all the same
            log.warning("pod %s/%s: recording %s: %s", worker.ns, worker.name, EVENT_REASON, e)
