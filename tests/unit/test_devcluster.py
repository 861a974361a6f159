"""Pure parts of the dev cluster: node builders, the pod runner's Kubernetes semantics, the port
check before `cluster up`."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time

import pytest

from tts_devcluster import podspec
from tts_devcluster.nodes import DEV_NODES, node_manifest

POD = {
    "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"app": "tts"}},
    "spec": {"nodeName": "gpu-local-0", "serviceAccountName": "sa"},
    "status": {"podIP": "127.1.0.2"},
}


def test_dev_nodes_match_the_foundation_layout():
    nodes = {n.name: node_manifest(n) for n in DEV_NODES}
    assert set(nodes) == {"cpu-local-0", "gpu-local-0", "gpu-sim-0", "gpu-sim-1"}
    assert nodes["cpu-local-0"]["spec"] == {}
    for name, product in (("gpu-local-0", "NVIDIA-GeForce-RTX-3090"), ("gpu-sim-0", "NVIDIA-H100-80GB-HBM3")):
        n = nodes[name]
        assert n["status"]["allocatable"]["nvidia.com/gpu"] == "8"
        assert n["metadata"]["labels"]["nvidia.com/gpu.product"] == product
        assert n["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    # kwok manages only the simulated nodes; the runner owns the local ones
    assert nodes["gpu-sim-1"]["metadata"]["labels"]["type"] == "kwok"
    assert "type" not in nodes["gpu-local-0"]["metadata"]["labels"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("$(A)-x", "1-x"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("no vars", "no vars"),
        ("$(A)$(B)", "12"),
    ],
)
def test_expand_follows_kubernetes_rules(value, expected):
    assert podspec.expand(value, {"A": "1", "B": "2"}) == expected


def test_resolve_env_order_refs_and_expansion():
    container = {
        "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
        "env": [
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "URL", "value": "http://$(IP):8005"},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "t"}}},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "none", "key": "t", "optional": True}}},
            {
                "name": "MEM",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
            },
        ],
        "resources": {"limits": {"memory": "2Gi"}},
    }
    data = {("configMap", "cm"): {"A": "a"}, ("secret", "s"): {"t": "tok"}}
    env = podspec.resolve_env(
        POD, container, {"PATH": "/bin"}, lambda kind, name, opt: data.get((kind, name))
    )
    expected = {"PATH": "/bin", "CM_A": "a", "IP": "127.1.0.2", "URL": "http://127.1.0.2:8005", "APP": "tts"}
    assert env == {**expected, "TOKEN": "tok", "MEM": "2048"}


def test_missing_required_key_is_an_error():
    container = {"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "nope"}}}]}
    with pytest.raises(ValueError, match="no key 'nope'"):
        podspec.resolve_env(POD, container, {}, lambda *a: {"other": "1"})


def test_named_probe_ports_and_images():
    c = {"name": "srv", "ports": [{"name": "http", "containerPort": 8005}]}
    assert podspec.container_port(c, "http") == 8005
    assert podspec.container_port(c, 9000) == 9000
    with pytest.raises(ValueError, match="no port named"):
        podspec.container_port(c, "grpc")
    assert podspec.image_allowed("ghcr.io/tts-operator/tts-runtime:0.1.0")
    assert podspec.image_allowed("tts-operator:dev")
    assert not podspec.image_allowed("busybox")
    assert not podspec.image_allowed("evil/tts-runtime-but-not:1")
    assert podspec.default_entrypoint("ghcr.io/x/tts-operator:1") == ["tts-operator"]
    assert podspec.default_entrypoint("ghcr.io/x/tts-runtime:1") == ["tts-runtime"]


@pytest.mark.parametrize(
    ("sub", "ok"), [("a/b", True), ("../x", False), ("/etc", False), ("a/../../b", False)]
)
def test_subpaths_stay_inside_the_volume(sub, ok):
    assert podspec.safe_subpath(sub) is ok


# --- ports held by the closing connections of a stopped cluster ----------------------------------


def _closing_port() -> tuple[int, socket.socket]:
    """A port held only by a FIN_WAIT2 socket, as a server without SO_REUSEADDR leaves it when it
    stops while a client still holds a connection: a new bind fails, nothing listens. The client
    is returned: closing it releases the port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client_side = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    server.close()
    accepted.close()
    from support.waiting import wait_for
    from tts_devcluster.cluster import tcp_states

    wait_for(lambda: tcp_states(port) == {"FIN_WAIT2"}, 5, "the closed side in FIN_WAIT2")
    return port, client_side


def _reset(client_side: socket.socket) -> None:
    """Close with a reset, not a FIN: the closing socket goes at once instead of into TIME_WAIT
    (which blocks a bind for another minute)."""
    if client_side.fileno() != -1:
        client_side.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client_side.close()


def test_a_port_held_by_closing_connections_is_waited_for() -> None:
    from tts_devcluster.cluster import wait_port_free

    port, client_side = _closing_port()
    released = threading.Event()

    def release() -> None:
        _reset(client_side)
        released.set()

    timer = threading.Timer(1.0, release)
    timer.start()
    try:
        wait_port_free(port, wait_s=30)
        assert released.is_set()  # it returned because the port was freed, not before
    finally:
        timer.cancel()
        _reset(client_side)


def test_a_port_still_closing_after_the_wait_says_so() -> None:
    from tts_devcluster.cluster import PortTaken, wait_port_free

    port, client_side = _closing_port()
    try:
        with pytest.raises(PortTaken) as e:
            wait_port_free(port, wait_s=0.6)
        assert f"port 127.0.0.1:{port} is still held by closing connections (FIN_WAIT2)" in str(e.value)
        assert "try again in a minute" in str(e.value)
    finally:
        _reset(client_side)


def test_a_port_a_process_listens_on_is_refused_at_once() -> None:
    from tts_devcluster.cluster import PortTaken, wait_port_free

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(PortTaken) as e:
            wait_port_free(port, wait_s=30)
        assert time.monotonic() - started < 5, "a listener that runs is not waited for"
        assert f"is in use by pid {os.getpid()}" in str(e.value)
