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
