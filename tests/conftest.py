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
from hypothesis import settings as hypothesis_settings

ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ["support.s3"]  # the s3_server fixture: a standalone SeaweedFS

# Property-based tests (Hypothesis, schemathesis) are derandomized unless asked otherwise: the same
# examples every run, so a red run is a product fault that replays, never the luck of a draw.
# HYPOTHESIS_PROFILE=random explores new examples; a failure then prints its seed and a
# @reproduce_failure blob to replay it.
hypothesis_settings.register_profile("derandomized", derandomize=True, print_blob=True)
hypothesis_settings.register_profile("random", print_blob=True)
HYPOTHESIS_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "derandomized")
hypothesis_settings.load_profile(HYPOTHESIS_PROFILE)


def pytest_report_header(config: pytest.Config) -> str:
    how = "the same examples every run" if HYPOTHESIS_PROFILE == "derandomized" else "random examples"
    return f"hypothesis: profile {HYPOTHESIS_PROFILE} ({how}; HYPOTHESIS_PROFILE=random explores)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/cluster" in str(item.fspath) or "tests/e2e" in str(item.fspath):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def dev_cluster() -> Iterator:
    from tts_devcluster.cluster import DevCluster

    cluster = DevCluster()  # .cluster/ of this checkout, or TTS_CLUSTER_DIR
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


CRDS_DIR = ROOT / "crds"


def _served(k8s_api, resource) -> bool:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    try:
        client.CustomObjectsApi(k8s_api).list_cluster_custom_object(
            resource.group, resource.version, resource.plural, limit=1
        )
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return True


@pytest.fixture(scope="session")
def crds(kubectl: KubectlFn, k8s_api) -> list:
    """Apply crds/*.yaml server-side and wait until the kinds are Established and served.

    The CRDs stay installed after the session: deleting a CRD deletes every object of its kind,
    which would pull the floor from under anything else using the cluster.
    """
    from support.waiting import wait_for
    from tts_operator import api

    kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=tts-operator-tests",
        "-f",
        str(CRDS_DIR),
    )
    names = [f"crd/{r.crd_name}" for r in api.RESOURCES]
    kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
    for resource in api.RESOURCES:
        # Established comes a moment before the REST endpoint answers: wait for a list to work
        wait_for(lambda r=resource: _served(k8s_api, r), 30, f"{resource.plural} served by the API")
    return list(api.RESOURCES)


@pytest.fixture
def namespace(dev_cluster, k8s_api, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace, deleted (without waiting) after the test, with the dev volumes made in it
    (their PVs and folders: a model volume is hundreds of MB)."""
    from kubernetes import client

    from tts_devcluster.volumes import delete_volumes

    core = client.CoreV1Api(k8s_api)
    name = f"t-{request.node.name[:40].lower().replace('_', '-').strip('-')}-{uuid.uuid4().hex[:5]}"
    name = "".join(ch if ch.isalnum() or ch == "-" else "-" for ch in name)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name, propagation_policy="Background")
    delete_volumes(dev_cluster, name)


@pytest.fixture
def run_volumes(dev_cluster, namespace: str) -> dict[str, Path]:
    """PVCs `data`, `ckpt`, `models` (folders under .cluster/volumes/<namespace>/)."""
    from tts_devcluster.volumes import create_volume

    return {name: create_volume(dev_cluster, name, namespace) for name in ("data", "ckpt", "models")}
