"""HotSwap falls back to a rolling update when a pod cannot reload the new version.

The failure is real, not injected: a volume mount with a subPath pins the folder the pod started
with (the kubelet, and the local pod runner, bind-mount the resolved folder). When the model folder
is published by an atomic swap (a complete new folder renamed over the old one), running pods keep
seeing the old folder, so a version that exists only in the new one cannot be loaded by them
("model version ... not found"), while a pod started after the swap can load it. One of the two
pods is replaced after the swap, so exactly one pod cannot reload: the operator must post
``HotSwapFailed``, change the pod template (a rolling update that surges one pod at a time) and
end up serving the new version, with a client load seeing no failed request throughout.

Then HotSwap goes on from the new template, and back to the template's own version: the pods were
swapped away from it, so they must be reloaded although the template already names it.
"""

# kubernetes models type every field Optional; the tests check presence by using them
# mypy: disable-error-code="union-attr,index,operator,arg-type,type-var"
from __future__ import annotations

import os
from pathlib import Path

import pytest
from kubernetes import client

from support.manifests import voicemodel_manifest
from support.model_versions import add_version
from support.objects import events
from support.operator_process import OperatorProcess
from support.voicemodels import READY_TIMEOUT, Load, VoiceModels, synthesize
from support.waiting import wait_for

pytestmark = pytest.mark.slow

VERSION_LABEL = "tts-operator.dev/version"
LOADED = "tts-operator.dev/loaded-version"


def _publish_by_swap(vits_source: Path, folder: Path, new_version: str) -> Path:
    """A complete copy of ``folder`` (hard links) plus ``new_version``, renamed over ``folder``.
    Returns where the old folder went: the running pods still see it through their mounts."""
    staging = folder.with_name(folder.name + ".next")
    staging.mkdir()
    for version_dir in folder.iterdir():
        (staging / version_dir.name).mkdir()
        for item in version_dir.iterdir():
            os.link(item, staging / version_dir.name / item.name)
    add_version(vits_source, staging, new_version)
    previous = folder.with_name(folder.name + ".prev")
    os.rename(folder, previous)
    os.rename(staging, folder)
    return previous


def _events(vms: VoiceModels, reason: str) -> list[client.CoreV1Event]:
    return events(vms.k8s_api, vms.ns, "narrator", reason)


def test_hot_swap_falls_back_to_a_rolling_update(
    k8s_api: client.ApiClient,
    namespace: str,
    kubectl,
    model_versions: Path,
    vits_source: Path,
    tts_operator: OperatorProcess,
) -> None:
    vms = VoiceModels(k8s_api, namespace, kubectl)
    spec = {"replicas": 2, "rollout": {"strategy": "HotSwap", "progressDeadlineSeconds": 240}}
    vms.apply(voicemodel_manifest("narrator", "v1", **spec))
    wait_for(lambda: vms.serving("narrator", "v1"), READY_TIMEOUT, "serving v1", interval=0.5)
    old_pods = vms.pods("narrator")
    assert len(old_pods) == 2

    previous = _publish_by_swap(vits_source, model_versions, "v5")
    assert not (previous / "v5").exists() and (model_versions / "v5").is_dir()

    # replace one pod: its successor mounts the swapped folder and can load v5; the other cannot
    replaced = old_pods[0]
    vms.core.delete_namespaced_pod(replaced.metadata.name, namespace)

    def replaced_and_settled() -> bool:
        pods = vms.pods("narrator")
        return (
            len(pods) == 2
            and replaced.metadata.uid not in {p.metadata.uid for p in pods}
            and len(vms.ready_endpoints("narrator")) == 2
            and vms.serving("narrator", "v1")
        )

    wait_for(replaced_and_settled, READY_TIMEOUT, "a replaced pod, ready", interval=0.5)
    pods = vms.pods("narrator")
    (stale,) = [p for p in pods if p.metadata.uid == old_pods[1].metadata.uid]
    (fresh,) = [p for p in pods if p.metadata.uid != old_pods[1].metadata.uid]
    deployment = vms.apps.read_namespaced_deployment("narrator", namespace)
    generation = deployment.metadata.generation
    assert deployment.spec.template.metadata.labels[VERSION_LABEL] == "v1"
    assert _events(vms, "HotSwapFailed") == []

    with Load(vms, "narrator") as load:
        vms.apply(voicemodel_manifest("narrator", "v5", **spec))
        wait_for(lambda: _events(vms, "HotSwapFailed"), 120, "a HotSwapFailed Event", interval=0.5)
        # two pods to start one after the other (a surge of one): twice a pod's start-up
        rollout = READY_TIMEOUT * 2
        wait_for(lambda: vms.serving("narrator", "v5"), rollout, "serving v5", interval=0.5)
        wait_for(lambda: load.versions and load.versions[-1] == "v5", 60, "load sees v5")

    # the stale pod could not reload: a Warning that names it and why
    wait_for(lambda: _events(vms, "HotSwapFailed"), 30, "the HotSwapFailed Event")
    (failed,) = _events(vms, "HotSwapFailed")
    assert failed.type == "Warning"
    assert stale.metadata.name in failed.message and "v5" in failed.message
    assert "not found" in failed.message and "rolling update" in failed.message
    # pods are reloaded in name order: the fresh pod was reloaded first only if its name sorts first
    reloaded_first = fresh.metadata.name < stale.metadata.name
    assert len(_events(vms, "Reloaded")) == (1 if reloaded_first else 0)

    # the fallback is a rolling update: the template names v5 and every pod is a new one
    deployment = vms.apps.read_namespaced_deployment("narrator", namespace)
    assert deployment.metadata.generation > generation
    assert deployment.spec.template.metadata.labels[VERSION_LABEL] == "v5"
    pods = vms.pods("narrator")
    assert len(pods) == 2
    assert not {p.metadata.uid for p in pods} & {stale.metadata.uid, fresh.metadata.uid}
    assert {p.metadata.labels[VERSION_LABEL] for p in pods} == {"v5"}
    assert {p.metadata.annotations[LOADED] for p in pods} == {"v5"}
    for url in vms.ready_endpoints("narrator"):
        assert synthesize(url).headers["x-model-version"] == "v5"

    st = vms.status("narrator")
    assert st["servingVersion"] == st["lastGoodVersion"] == st["desiredVersion"] == "v5"
    assert vms.condition("narrator", "Degraded")["status"] == "False"
    assert _events(vms, "RolloutFailed") == []

    # requests kept succeeding through the failed swap and the rolling update
    assert load.failures == [], load.failures[:5]
    assert load.ok > 0 and load.versions[0] == "v1"

    # HotSwap goes on from the new template (v5): the same pods load v3 in place; then back to v5,
    # the template's own version, which they must reload as well although the template says v5
    uids = sorted(p.metadata.uid for p in pods)
    for version in ("v3", "v5"):
        vms.apply(voicemodel_manifest("narrator", version, **spec))
        wait_for(lambda v=version: vms.serving("narrator", v), 120, f"serving {version}", interval=0.5)
        pods = vms.pods("narrator")
        assert sorted(p.metadata.uid for p in pods) == uids
        assert {p.metadata.annotations[LOADED] for p in pods} == {version}
        for url in vms.ready_endpoints("narrator"):
            assert synthesize(url).headers["x-model-version"] == version
    deployment = vms.apps.read_namespaced_deployment("narrator", namespace)
    assert deployment.spec.template.metadata.labels[VERSION_LABEL] == "v5"
    reloads = (1 if reloaded_first else 0) + 4
    wait_for(lambda: len(_events(vms, "Reloaded")) >= reloads, 30, f"{reloads} Reloaded Events")
    assert len(_events(vms, "Reloaded")) == reloads
