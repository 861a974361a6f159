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
