"""``reconcile.ownership`` on the real API server: a child left by a deleted owner is replaced, one
of the owner now living under that name never is; a dead owner's Job is suspended so its pods go
without waiting for the garbage collector, and its name is used again only after a cool-down."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from support.manifests import trainingrun_manifest
from support.objects import CustomObjects
from tts_operator import api
from tts_operator.kube.client import Kube


def _create_run(k8s_api: client.ApiClient, namespace: str) -> str:
    """A suspended TrainingRun "narrator" (no Job, no operator here); its uid."""
    body = trainingrun_manifest("narrator", suspend=True)
    del body["spec"]["resources"]
    run = CustomObjects(k8s_api, namespace, api.TRAININGRUN.plural).create(body)
    return str(run["metadata"]["uid"])


def test_create_replaces_a_dead_owners_child_but_never_a_living_owners(k8s_api, crds, namespace: str) -> None:
    """A child of the same name left by a deleted run is replaced; one that belongs to the run now
    living under that name is not (the caller's uid is the stale one)."""
    import pytest

    from tts_operator.reconcile.ownership import Ownership, StaleOwner

    kube = Ownership(Kube(k8s_api))
    living = _create_run(k8s_api, namespace)

    def child(owner_uid: str) -> dict[str, Any]:
        sa: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {
                "name": "narrator-trainer",
                "namespace": namespace,
                "annotations": {"version": owner_uid},
            },
        }
        sa["metadata"]["ownerReferences"] = [
            {
                "apiVersion": api.API_GROUP_VERSION,
                "kind": "TrainingRun",
                "name": "narrator",
                "uid": owner_uid,
                "controller": True,
            }
        ]
        return sa

    core = client.CoreV1Api(k8s_api)

    def version() -> str:
        return str(
            core.read_namespaced_service_account("narrator-trainer", namespace).metadata.annotations[
                "version"
            ]
        )

    # a leftover of a run that no longer exists: replaced by the living run's
    core.create_namespaced_service_account(namespace, child("0000-dead"))
    assert kube.create(child(living), owner_uid=living) is not None
    assert version() == living
    # a reconcile still holding a uid from before a re-create: it must not take the child away
    with pytest.raises(StaleOwner):
        kube.create(child("1111-stale"), owner_uid="1111-stale")
    assert version() == living
    # and the owner's own child is simply there already
    assert kube.create(child(living), owner_uid=living) is None


HOLD = "test.tts-operator.dev/hold"


def test_a_dead_owners_job_is_suspended_so_its_pods_go_without_the_garbage_collector(
    k8s_api, crds, namespace: str
) -> None:
    """A re-created run waits for the pods of its predecessor's Job; when that Job is still there,
    ``stop_orphaned_job`` suspends it and the Job controller deletes its pods. A Job of the run
    that owns it now, or of the run living under that name, is left alone."""
    import pytest

    from support.waiting import wait_until
    from tts_operator.reconcile.ownership import Ownership, StaleOwner

    kube = Ownership(Kube(k8s_api))
    batch, core = client.BatchV1Api(k8s_api), client.CoreV1Api(k8s_api)
    living = _create_run(k8s_api, namespace)

    def job(name: str, owner_uid: str) -> dict[str, Any]:
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "ownerReferences": [
                    {
                        "apiVersion": api.API_GROUP_VERSION,
                        "kind": "TrainingRun",
                        "name": "narrator",
                        "uid": owner_uid,
                        "controller": True,
                    }
                ],
            },
            "spec": {
                "template": {
                    "metadata": {"labels": {"test": name}},
                    "spec": {
                        "restartPolicy": "Never",
                        # nowhere to run: its pod stays Pending, as a pod the GC has yet to reach
                        "nodeSelector": {"test.tts-operator.dev/no-such-node": "true"},
                        "containers": [{"name": "c", "image": "busybox"}],
                    },
                }
            },
        }

    def pods(name: str) -> list[Any]:
        return core.list_namespaced_pod(namespace, label_selector=f"test={name}").items

    # the garbage collector deletes such a Job too, in its own time: a finalizer holds this one
    # there (as a slow garbage collector would) so the test does not race it
    left = job("left-behind", "0000-dead")
    left["metadata"]["finalizers"] = [HOLD]
    batch.create_namespaced_job(namespace, left)
    try:
        assert kube.stop_orphaned_job(namespace, "left-behind", living) is True
        assert batch.read_namespaced_job("left-behind", namespace).spec.suspend is True
    finally:
        batch.patch_namespaced_job("left-behind", namespace, {"metadata": {"finalizers": None}})
    batch.create_namespaced_job(namespace, job("own", living))
    wait_until(lambda: pods("own"), timeout=60, message="the own Job's pod")
    wait_until(lambda: not pods("left-behind"), timeout=60, message="a suspended Job to have no pods")
    # the owner's own Job, a Job of the run living under that name, and no Job at all: untouched
    assert kube.stop_orphaned_job(namespace, "own", living) is False
    with pytest.raises(StaleOwner):
        kube.stop_orphaned_job(namespace, "own", "1111-stale")
    assert kube.stop_orphaned_job(namespace, "absent", living) is False
    assert not batch.read_namespaced_job("own", namespace).spec.suspend
    assert pods("own")

    # a dead owner's Job in the way of a create is removed, and its name is not used again at once
    # (the Job controller may still hold the old Job's state: a Job made then got no pod)
    # (held by a finalizer too: the garbage collector would otherwise remove it, in its own time,
    # possibly before the create below finds it in the way)
    replaced = job("replaced", "0000-dead")
    replaced["metadata"]["finalizers"] = [HOLD]
    batch.create_namespaced_job(namespace, replaced)
    try:
        with pytest.raises(StaleOwner, match="being removed"):
            kube.create(job("replaced", living), owner_uid=living)
    finally:
        batch.patch_namespaced_job("replaced", namespace, {"metadata": {"finalizers": None}})
    named = "metadata.name=replaced"
    wait_until(
        lambda: not batch.list_namespaced_job(namespace, field_selector=named).items,
        timeout=30,
        message="the dead owner's Job gone",
    )
    with pytest.raises(StaleOwner, match="s ago: created later"):
        kube.create(job("replaced", living), owner_uid=living)  # the name is free, but only just

    def created_after_cool_down() -> bool:
        try:
            return kube.create(job("replaced", living), owner_uid=living) is not None
        except StaleOwner:
            return False

    wait_until(created_after_cool_down, timeout=10, interval=0.5, message="the Job made after the cool-down")
