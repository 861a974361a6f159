"""``Kube.apply`` on the real API server: a reconcile that changes nothing writes nothing, and an
edit by someone else is still taken back on the next one."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from tts_operator.kube import Kube


def _configmap(namespace: str, value: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "serve", "namespace": namespace, "labels": {"app": "t"}},
        "data": {"version": value},
    }


def test_apply_sends_nothing_when_nothing_changed_and_takes_back_edits(k8s_api, namespace: str) -> None:
    kube = Kube(k8s_api)
    core = client.CoreV1Api(k8s_api)
    sent: list[str] = []
    real_patch = core.patch_namespaced_config_map

    def counting_patch(name: str, *args: Any, **kwargs: Any) -> Any:
        sent.append(name)
        return real_patch(name, *args, **kwargs)

    # the requests still go to the API server; the spy only counts them
    kube.core.patch_namespaced_config_map = counting_patch  # type: ignore[method-assign]

    first = kube.apply(_configmap(namespace, "v1"))
    assert first["data"] == {"version": "v1"} and sent == ["serve"]
    for _ in range(3):  # the resync, pod events: the same object again
        again = kube.apply(_configmap(namespace, "v1"))
        assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert sent == ["serve"], "a no-op apply was sent"

    # someone edits the child: the next reconcile takes the field back
    core.patch_namespaced_config_map("serve", namespace, {"data": {"version": "hand-edited"}})
    restored = kube.apply(_configmap(namespace, "v1"))
    assert restored["data"] == {"version": "v1"} and len(sent) == 2
    assert core.read_namespaced_config_map("serve", namespace).data == {"version": "v1"}

    # a changed object goes out at once
    assert kube.apply(_configmap(namespace, "v2"))["data"] == {"version": "v2"} and len(sent) == 3

    # deleted behind the operator's back: applied again
    core.delete_namespaced_config_map("serve", namespace)
    assert kube.apply(_configmap(namespace, "v2"))["data"] == {"version": "v2"} and len(sent) == 4


def test_delete_of_a_missing_child_is_a_read(k8s_api, namespace: str) -> None:
    kube = Kube(k8s_api)
    assert kube.delete("ConfigMap", namespace, "never-made") is False
    kube.apply(_configmap(namespace, "v1"))
    assert kube.delete("ConfigMap", namespace, "serve") is True
    assert kube.delete("ConfigMap", namespace, "serve") is False


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
    from tts_operator.kube import StaleOwner

    kube = Kube(k8s_api)
    living = _create_run(k8s_api, namespace)

    def child(owner_uid: str) -> dict[str, Any]:
        cm = _configmap(namespace, owner_uid)
        cm["metadata"]["name"] = "narrator-spec"
        cm["metadata"]["ownerReferences"] = [
            {
                "apiVersion": api.API_GROUP_VERSION,
                "kind": "TrainingRun",
                "name": "narrator",
                "uid": owner_uid,
                "controller": True,
            }
        ]
        return cm

    core = client.CoreV1Api(k8s_api)
    # a leftover of a run that no longer exists: replaced by the living run's
    core.create_namespaced_config_map(namespace, child("0000-dead"))
    assert kube.create(child(living), owner_uid=living) is not None
    assert core.read_namespaced_config_map("narrator-spec", namespace).data == {"version": living}
    # a reconcile still holding a uid from before a re-create: it must not take the child away
    with pytest.raises(StaleOwner):
        kube.create(child("1111-stale"), owner_uid="1111-stale")
    assert core.read_namespaced_config_map("narrator-spec", namespace).data == {"version": living}
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
    from tts_operator.kube import StaleOwner

    kube = Kube(k8s_api)
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
