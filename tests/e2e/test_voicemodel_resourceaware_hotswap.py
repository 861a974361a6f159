"""Rollouts without a spare GPU: two replicas of four GPUs fill `gpu-local-0` (8 GPUs), so a surge
pod could never schedule. ResourceAware still rolls (it stops a pod first); HotSwap then swaps the
version inside the same pods, with zero failed requests.
"""

# kubernetes models type every field Optional; the tests check presence by using them
# mypy: disable-error-code="union-attr"
from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client

from support.manifests import RTX3090, voicemodel_manifest
from support.objects import events
from support.operator_process import OperatorProcess
from support.voicemodels import READY_TIMEOUT, Load, VoiceModels, synthesize
from support.waiting import wait_for

pytestmark = pytest.mark.slow


def _gpus_requested_on(core: client.CoreV1Api, node: str) -> int:
    pods = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items
    total = 0
    for p in pods:
        if p.status.phase in ("Succeeded", "Failed"):
            continue
        for c in p.spec.containers:
            total += int(((c.resources and c.resources.limits) or {}).get("nvidia.com/gpu", 0))
    return total


def test_resource_aware_on_a_full_node_then_hot_swap(
    k8s_api: client.ApiClient, namespace: str, kubectl, model_versions: Path, tts_operator: OperatorProcess
) -> None:
    vms = VoiceModels(k8s_api, namespace, kubectl)
    spec = {
        "replicas": 2,
        "resources": {"gpus": 4, "gpuProduct": RTX3090},
        "rollout": {"strategy": "ResourceAware", "progressDeadlineSeconds": 180},
    }
    vms.apply(voicemodel_manifest("narrator", "v1", **spec))
    wait_for(lambda: vms.serving("narrator", "v1"), READY_TIMEOUT, "serving v1", interval=0.5)
    assert _gpus_requested_on(vms.core, "gpu-local-0") == 8  # every GPU of the node is in use
    pdb = vms.policy.read_namespaced_pod_disruption_budget("narrator", namespace)
    assert pdb.spec.max_unavailable == 1

    vms.apply(voicemodel_manifest("narrator", "v2", **spec))
    wait_for(lambda: vms.serving("narrator", "v2"), READY_TIMEOUT, "serving v2", interval=0.5)
    pods = vms.pods("narrator")
    assert len(pods) == 2 and {p.metadata.labels["tts-operator.dev/version"] for p in pods} == {"v2"}
    uids = sorted(p.metadata.uid for p in pods)

    # HotSwap: the same pods load v3 beside v2 and switch; the template is not touched
    hot = {**spec, "rollout": {"strategy": "HotSwap", "progressDeadlineSeconds": 180}}
    with Load(vms, "narrator") as load:
        vms.apply(voicemodel_manifest("narrator", "v3", **hot))
        wait_for(lambda: vms.serving("narrator", "v3"), READY_TIMEOUT, "serving v3", interval=0.5)
        wait_for(lambda: load.versions and load.versions[-1] == "v3", 60, "load sees v3")
    assert load.failures == [], load.failures[:5]
    assert load.ok > 0 and "v2" in load.versions
    pods = vms.pods("narrator")
    assert sorted(p.metadata.uid for p in pods) == uids  # same pods
    assert {p.metadata.annotations["tts-operator.dev/loaded-version"] for p in pods} == {"v3"}
    for url in vms.ready_endpoints("narrator"):
        assert synthesize(url).headers["x-model-version"] == "v3"

    def reloaded() -> int:
        return len(events(k8s_api, namespace, "narrator", "Reloaded"))

    # Events go out beside the reconcile: wait for the second, then make sure there is no third
    wait_for(lambda: reloaded() >= 2, 30, "two Reloaded Events")
    assert reloaded() == 2
