"""Shared fixtures: the session's local control plane, a fresh namespace per test, kubectl.

The cluster is real (etcd, kube-apiserver, controller-manager, scheduler, kwok and the local pod
runner; see docs/local-cluster.md). A live cluster from `make cluster-up` is reused; otherwise the
session starts one and stops it at the end (TTS_KEEP_CLUSTER=1 keeps it).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/cluster" in str(item.fspath) or "tests/e2e" in str(item.fspath):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def dev_cluster() -> Iterator:
    from tts_operator.devcluster.cluster import DevCluster

    cluster = DevCluster(state_dir=ROOT / ".cluster")
    started_here = not cluster.healthy()
    cluster.up(progress=lambda m: print(f"[cluster] {m}"), build=True)
    yield cluster
    if started_here and not os.environ.get("TTS_KEEP_CLUSTER"):
        cluster.down(progress=lambda m: None)


@pytest.fixture(scope="session")
def kubeconfig(dev_cluster) -> str:
    return str(dev_cluster.kubeconfig)


@pytest.fixture(scope="session")
def k8s_api(kubeconfig: str):
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    api = client.ApiClient(cfg)
    yield api
    api.close()


KubectlFn = Callable[..., subprocess.CompletedProcess]


@pytest.fixture(scope="session")
def kubectl(dev_cluster) -> KubectlFn:
    def run(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        out = dev_cluster.kubectl(*args, input=input, check=False)
        if check and out.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({out.returncode}):\n{out.stderr}{out.stdout}"
            )
        return out

    return run


@pytest.fixture
def namespace(k8s_api, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace, deleted (without waiting) after the test."""
    from kubernetes import client

    core = client.CoreV1Api(k8s_api)
    name = f"t-{request.node.name[:40].lower().replace('_', '-').strip('-')}-{uuid.uuid4().hex[:5]}"
    name = "".join(ch if ch.isalnum() or ch == "-" else "-" for ch in name)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name, propagation_policy="Background")
