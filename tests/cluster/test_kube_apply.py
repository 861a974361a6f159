"""``Kube`` on the real API server: a reconcile that changes nothing writes nothing, an edit by
someone else is still taken back on the next one, an apply on the background lane is sent once,
and the echo of the operator's own write is told from everyone else's."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from tts_operator.kube.client import Kube


def _service(namespace: str, version: str, name: str = "serve") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app": "t"},
            "annotations": {"version": version},
        },
        "spec": {"selector": {"app": "t"}, "ports": [{"name": "http", "port": 8005}]},
    }


def _version(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["annotations"]["version"])


def _counting(kube: Kube) -> list[str]:
    """The names of the Services ``kube`` patches (the requests still go to the API server)."""
    sent: list[str] = []
    real_patch = kube.core.patch_namespaced_service

    def counting_patch(name: str, *args: Any, **kwargs: Any) -> Any:
        sent.append(name)
        return real_patch(name, *args, **kwargs)

    kube.core.patch_namespaced_service = counting_patch  # type: ignore[method-assign]
    return sent


def test_apply_sends_nothing_when_nothing_changed_and_takes_back_edits(k8s_api, namespace: str) -> None:
    kube = Kube(k8s_api)
    core = client.CoreV1Api(k8s_api)
    sent = _counting(kube)

    first = kube.apply(_service(namespace, "v1"))
    assert _version(first) == "v1" and sent == ["serve"]
    for _ in range(3):  # the resync, pod events: the same object again
        again = kube.apply(_service(namespace, "v1"))
        assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert sent == ["serve"], "a no-op apply was sent"

    # someone edits the child: the next reconcile takes the field back
    core.patch_namespaced_service(
        "serve", namespace, {"metadata": {"annotations": {"version": "hand-edited"}}}
    )
    restored = kube.apply(_service(namespace, "v1"))
    assert _version(restored) == "v1" and len(sent) == 2
    assert core.read_namespaced_service("serve", namespace).metadata.annotations["version"] == "v1"

    # a changed object goes out at once
    assert _version(kube.apply(_service(namespace, "v2"))) == "v2" and len(sent) == 3

    # deleted behind the operator's back: applied again
    core.delete_namespaced_service("serve", namespace)
    assert _version(kube.apply(_service(namespace, "v2"))) == "v2" and len(sent) == 4


def test_an_apply_on_the_background_lane_is_sent_once_and_waited_for(k8s_api, namespace: str) -> None:
    kube = Kube(k8s_api)
    sent = _counting(kube)
    soon = kube.apply_soon(_service(namespace, "v1"))
    # asked again: the same apply while it is on its way, else one that finds nothing to send
    kube.apply_soon(_service(namespace, "v1"))
    # a reconcile's own apply of the same child waits for the lane's, then has nothing to send
    now = kube.apply(_service(namespace, "v1"))
    assert soon.done() and now["metadata"]["uid"] == soon.result()["metadata"]["uid"]
    assert now["metadata"]["resourceVersion"] == soon.result()["metadata"]["resourceVersion"]
    assert sent == ["serve"], "the background apply was sent more than once"

    # a failed lane apply is not raised by the next apply: that one sends it again
    bad = _service(namespace, "v1", name="bad")
    bad["spec"]["ports"][0]["port"] = 0  # invalid: the API server refuses it
    failed = kube.apply_soon(bad)
    assert failed.exception() is not None
    fixed = _service(namespace, "v1", name="bad")
    assert _version(kube.apply(fixed)) == "v1"


def test_the_echo_of_an_own_write_is_told_from_anyone_elses(k8s_api, namespace: str) -> None:
    kube = Kube(k8s_api)
    core = client.CoreV1Api(k8s_api)
    mine = kube.apply(_service(namespace, "v1"))
    assert kube.echoes_own_write("MODIFIED", mine)  # the watch event of that very write
    theirs = core.patch_namespaced_service(
        "serve", namespace, {"metadata": {"annotations": {"by": "someone"}}}, _preload_content=False
    )
    import json

    theirs_body = json.loads(theirs.data)
    assert not kube.echoes_own_write("MODIFIED", theirs_body)
    assert kube.echoes_own_write("MODIFIED", mine)  # still recognised until the next own write
    assert not kube.echoes_own_write("DELETED", mine)  # and forgotten with the object
    assert not kube.echoes_own_write("MODIFIED", mine)


def test_delete_of_a_missing_child_is_a_read(k8s_api, namespace: str) -> None:
    kube = Kube(k8s_api)
    assert kube.delete("Service", namespace, "never-made") is False
    kube.apply(_service(namespace, "v1"))
    assert kube.delete("Service", namespace, "serve") is True
    assert kube.delete("Service", namespace, "serve") is False


def _create_run(k8s_api: client.ApiClient, namespace: str) -> str:
    """A suspended TrainingRun "narrator" (no Job, no operator here); its uid."""
    from tts_operator import api

    run = client.CustomObjectsApi(k8s_api).create_namespaced_custom_object(
        api.API_GROUP,
        api.API_VERSION,
        namespace,
        api.TRAININGRUN.plural,
        {
            "apiVersion": api.API_GROUP_VERSION,
            "kind": "TrainingRun",
            "metadata": {"name": "narrator"},
            "spec": {
                "engine": "vits",
                "dataset": {"volume": {"claimName": "data"}},
                "training": {"epochs": 1},
                "checkpoints": {"volume": {"claimName": "ckpt"}},
                "export": {"volume": {"claimName": "models"}},
                "suspend": True,
            },
        },
    )
    return str(run["metadata"]["uid"])


def test_create_replaces_a_dead_owners_child_but_never_a_living_owners(k8s_api, crds, namespace: str) -> None:
    """A child of the same name left by a deleted run is replaced; one that belongs to the run now
    living under that name is not (the caller's uid is the stale one)."""
    import pytest

    from tts_operator import api
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
    from tts_operator import api
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
    batch.create_namespaced_job(namespace, job("replaced", "0000-dead"))
    with pytest.raises(StaleOwner, match="being removed"):
        kube.create(job("replaced", living), owner_uid=living)
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
