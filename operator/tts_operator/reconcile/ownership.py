"""Whose a child is: the rules for children named after their owner (a run deleted and re-created
under the same name finds its predecessor's children in the way), and the creates that follow them.

The decisions are pure (``verdict``); ``Ownership`` carries them out with the API client's plain
create/read/delete, and remembers the one fact they need across reconciles (when a Job name was
freed).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

from tts_operator import api
from tts_operator.controller.driver import Waiting
from tts_operator.kube.client import Kube

log = logging.getLogger(__name__)

#: how long after removing a deleted owner's Job a Job of that name is made again
JOB_NAME_COOL_DOWN = 2.0


class StaleOwner(Waiting):
    """A child of the given name is not (yet) the caller's to create: it belongs to the object now
    living under the owner's name (the caller's view is out of date), or it is a Job of a deleted
    owner still being removed. Either way: re-read and reconcile again a moment later."""


def controller_refs(obj: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [
        r for r in ((obj or {}).get("metadata") or {}).get("ownerReferences") or [] if r.get("controller")
    ]


def controlled_by(obj: dict[str, Any] | None, uid: str | None) -> bool:
    return any(r.get("uid") == uid for r in controller_refs(obj))


class Verdict(enum.Enum):
    OURS = "ours"  # the owner's own child: nothing to do
    ORPHANED = "orphaned"  # left by an owner that is gone: replace it
    STALE = "stale"  # its owner is the object living under that name now: the caller is stale


def verdict(existing: dict[str, Any], owner_uid: str, living: dict[str, str | None]) -> Verdict:
    """What a child found under the name ``owner_uid``'s would have is to that owner. ``living``:
    for each of the child's controller references, the uid of the object now living under the
    name it gives (None: none lives there); an owner of a kind this operator does not manage is
    never taken as gone (never replace what is not ours)."""
    refs = controller_refs(existing)
    if owner_uid in {r.get("uid") for r in refs}:
        return Verdict.OURS
    for ref in refs:
        uid = living.get(str(ref.get("uid")), ref.get("uid"))
        if uid is not None and uid == ref.get("uid"):
            return Verdict.STALE
    return Verdict.ORPHANED


class Ownership:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        #: (namespace, name) -> when this process removed a Job of a deleted owner under that name
        self._jobs_removed: dict[tuple[str, str], float] = {}

    def _living(self, existing: dict[str, Any]) -> dict[str, str | None]:
        """For each controller reference of ``existing``: the uid living under its owner's name."""
        kinds = {r.kind: r for r in api.RESOURCES}
        out: dict[str, str | None] = {}
        namespace = existing["metadata"]["namespace"]
        for ref in controller_refs(existing):
            resource = kinds.get(ref.get("kind", ""))
            if resource is None:
                continue  # not a kind of ours: taken as living (``verdict``'s default)
            owner = self.kube.get_object(resource, namespace, ref.get("name", ""))
            out[str(ref.get("uid"))] = owner["metadata"].get("uid") if owner is not None else None
        return out

    def _judge(self, existing: dict[str, Any], owner_uid: str) -> Verdict:
        found = verdict(existing, owner_uid, self._living(existing))
        if found is Verdict.STALE:
            meta, owner = existing["metadata"], controller_refs(existing)[0]
            raise StaleOwner(
                f"{existing.get('kind', 'child')} {meta['namespace']}/{meta['name']} belongs to the "
                f"current {owner.get('kind')} {owner.get('name')}, not to {owner_uid}: that owner is gone"
            )
        return found

    def create(self, obj: dict[str, Any], owner_uid: str | None = None) -> dict[str, Any] | None:
        """Create ``obj``; None when it already exists and is ``owner_uid``'s (or no owner is given).

        One left behind by an earlier owner of the same name (a run deleted and re-created before
        the garbage collector reached its children, say while the API server restarted) is deleted
        and created again. But only when that other owner is really gone: when it is the object now
        living under that name, it is ``owner_uid`` that is stale (the run was re-created while
        this reconcile ran), and replacing would take the new run's children away; ``StaleOwner``
        is raised instead. A Job name so freed is used again only after ``JOB_NAME_COOL_DOWN``.
        """
        meta = obj["metadata"]
        ns, name, kind = meta["namespace"], meta["name"], obj["kind"]
        removed = self._jobs_removed.get((ns, name)) if kind == "Job" else None
        if removed is not None:
            # an event can bring the retry back within milliseconds, before the Job controller
            # has let go of the old Job: seen in the kill -9 chaos test (a Job with no pod)
            ago = time.monotonic() - removed
            if ago < JOB_NAME_COOL_DOWN:
                raise StaleOwner(
                    f"Job {ns}/{name} of a deleted owner was removed {ago:.1f} s ago: created later"
                )
            del self._jobs_removed[(ns, name)]
        for _ in range(3):
            made = self.kube.create(obj)
            if made is not None:
                return made
            if owner_uid is None:
                return None
            existing = self.kube.read_child(kind, ns, name)
            if existing is None:
                continue  # gone meanwhile: create again
            if self._judge(existing, owner_uid) is Verdict.OURS:
                return None
            refs = existing["metadata"].get("ownerReferences") or []
            log.warning("%s %s/%s belongs to another owner (%s): replacing it", kind, ns, name, refs)
            self.kube.delete_child(kind, ns, name)
            if kind == "Job":
                # not at once: the Job controller keeps per-name state (pods it expects, pods it
                # still counts) and a new Job under the old one's name made in the same instant can
                # get no pod for minutes; a retry after the cool-down finds the name free
                self._jobs_removed[(ns, name)] = time.monotonic()
                raise StaleOwner(f"Job {ns}/{name} of a deleted owner is being removed: created on retry")
        raise RuntimeError(f"{kind} {ns}/{name} keeps existing with another owner")

    def create_all(
        self, objs: Sequence[dict[str, Any]], owner_uid: str | None = None
    ) -> list[dict[str, Any] | None]:
        """``create`` of each of ``objs`` at once (they must not depend on one another); the
        results in order. The first failure is raised once every create has finished."""
        futures = self.kube.concurrently([partial(self.create, obj, owner_uid) for obj in objs])
        return [f.result() for f in futures]

    def stop_orphaned_job(self, namespace: str, name: str, owner_uid: str) -> bool:
        """Suspend the Job ``name`` when an owner that is gone left it (not ``owner_uid``'s): the
        Job controller then deletes its pods at once. The garbage collector would too, in time, but
        after a control-plane restart it was seen to leave such Jobs and their pods for minutes,
        while a re-created run waited for them. True when it did; ``StaleOwner`` when the Job is
        the living owner's and ``owner_uid`` the stale one."""
        job = self.kube.get_job(namespace, name)
        if job is None or self._judge(job, owner_uid) is Verdict.OURS:
            return False
        if not (job.get("spec") or {}).get("suspend"):
            log.warning("Job %s/%s of an owner that is gone still has pods: suspending it", namespace, name)
            self.kube.set_job_suspend(namespace, name, True)
        return True
