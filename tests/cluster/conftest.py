"""Cluster fixtures: the project's CRDs installed on the real API server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from support.waiting import wait_until

from tts_operator import api

CRDS_DIR = Path(__file__).resolve().parents[2] / "crds"


def _served(k8s_api: client.ApiClient, resource: api.Resource) -> bool:
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
def crds(kubectl: Callable[..., CompletedProcess[str]], k8s_api: client.ApiClient) -> list[api.Resource]:
    """Apply crds/*.yaml server-side and wait until the kinds are Established and served.

    The CRDs stay installed after the session: deleting a CRD deletes every object of its kind,
    which would pull the floor from under anything else using the cluster.
    """
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
        wait_until(
            lambda r=resource: _served(k8s_api, r), timeout=30, message=f"{resource.plural} served by the API"
        )
    return list(api.RESOURCES)
