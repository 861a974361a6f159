"""Chaos tests run on their own throwaway control plane (never the shared dev cluster: they restart
etcd and the API server), on ports no other test or checkout uses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: not the defaults (16443...), not tests/cluster/test_lifecycle.py's, not a TTS_CLUSTER_PORT_OFFSET
#: multiple of them (another checkout's cluster)
CHAOS_PORTS = {
    "etcd": 25791,
    "etcd_peer": 25801,
    "apiserver": 18444,
    "controller_manager": 12358,
    "scheduler": 12360,
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chaos: fault injection on a throwaway control plane (kill, restart, slow)"
    )


@pytest.fixture(scope="module")
def chaos_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    from support.waiting import wait_for
    from tts_devcluster.cluster import DevCluster, Ports
    from tts_operator import api

    cluster = DevCluster(state_dir=tmp_path_factory.mktemp("chaos-cluster"), ports=Ports(**CHAOS_PORTS))
    try:
        cluster.up(progress=lambda m: print(f"[chaos cluster] {m}"), build=False)
        cluster.kubectl(
            "apply", "--server-side", "--field-manager=tts-operator-tests", "-f", str(ROOT / "crds")
        )
        names = [f"crd/{r.crd_name}" for r in api.RESOURCES]
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
        for r in api.RESOURCES:
            wait_for(
                lambda r=r: cluster.kubectl("get", r.plural, "-A", check=False).returncode == 0,
                30,
                f"{r.plural} served",
            )
        yield cluster
    finally:
        cluster.down(progress=lambda m: None)


@pytest.fixture
def chaos_ns(chaos_cluster: Any, request: pytest.FixtureRequest) -> str:
    from tts_devcluster.volumes import create_volume

    ns = request.node.name.replace("_", "-")[:50].strip("-")
    chaos_cluster.kubectl("create", "namespace", ns)
    for claim in ("data", "ckpt", "models"):
        create_volume(chaos_cluster, claim, ns)
    return ns
