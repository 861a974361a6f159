"""A ReadWriteOnce model claim for a VoiceModel with two replicas on two nodes: the claim attaches to
one node (the dev cluster's runner behaves like a real CSI), the replica scheduled on the other node
waits with a Multi-Attach error, and the VoiceModel's status names the claim and what to do.

Then a TrainingRun, trained on the other node, exports into that claim: its export pod waits for the
claim the serving replica holds, and the run's status says so (SingleNodeVolume, a Warning Event,
naming the claim, the node and the pod holding it); once serving stops, the export goes through."""

# mypy: disable-error-code="union-attr"
from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client

from support.manifests import trained_run_manifest, voicemodel_manifest
from support.objects import CustomObjects, events, wait_for_condition, wait_for_phase
from support.operator_process import OperatorProcess
from support.voicemodels import VoiceModels
from support.waiting import wait_for
from tts_devcluster.nodes import GPU_TAINT, LOCAL_NODE_LABEL

pytestmark = pytest.mark.slow


def test_rwo_claim_for_two_replicas_on_two_nodes_then_an_export_into_it_are_named(
    dev_cluster,
    k8s_api: client.ApiClient,
    namespace: str,
    kubectl,
    vits_source: Path,
    tts_operator: OperatorProcess,
) -> None:
    from support.datasets import make_ljspeech_dataset
    from support.model_versions import add_version
    from tts_devcluster.volumes import create_volume

    root = create_volume(dev_cluster, "models", namespace, mode="ReadWriteOnce") / "narrator"
    add_version(vits_source, root, "v1")
    vms = VoiceModels(k8s_api, namespace, kubectl)
    manifest = voicemodel_manifest(
        "narrator",
        "v1",
        replicas=2,
        devicePolicy="CPU",
        # both local nodes (the GPU node tolerated), none of the simulated ones
        scheduling={
            "nodeSelector": {LOCAL_NODE_LABEL: "true"},
            "tolerations": [{"key": GPU_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}],
        },
    )
    manifest["spec"]["resources"] = {"gpus": 0}
    vms.apply(manifest)
    cond = wait_for_condition(vms, "narrator", "ModelAvailable", 60, reason="SingleNodeVolume")
    assert "PersistentVolumeClaim models is ReadWriteOnce" in cond["message"], cond
    assert "model.uri" in cond["message"]

    def one_ready_one_waiting() -> bool:
        pods = vms.pods("narrator")
        ready = [
            p
            for p in pods
            if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        ]
        return len(pods) == 2 and len(ready) == 1 and len({p.spec.node_name for p in pods}) == 2

    wait_for(one_ready_one_waiting, 240, "one replica serving, the other waiting on the other node")
    waiting = next(
        p
        for p in vms.pods("narrator")
        if not any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    )
    found = wait_for(
        lambda: events(k8s_api, namespace, waiting.metadata.name, "FailedAttachVolume"),
        60,
        "a FailedAttachVolume Event on the waiting pod",
    )
    assert "Multi-Attach error" in found[0].message
    wait_for(
        lambda: vms.status("narrator").get("readyReplicas") == 1, 60, "status counting the one ready replica"
    )

    # one replica, on one node; a run trained on the other node exports into the same claim
    vms.patch_spec("narrator", {"replicas": 1})
    wait_for(lambda: len(vms.pods("narrator")) == 1, 120, "the waiting replica removed")
    (serving,) = vms.pods("narrator")
    other = next(n for n in ("cpu-local-0", "gpu-local-0") if n != serving.spec.node_name)
    make_ljspeech_dataset(create_volume(dev_cluster, "data", namespace) / "narrator", n_clips=5)
    create_volume(dev_cluster, "ckpt", namespace)
    create_volume(dev_cluster, "base", namespace, vits_source)
    run = trained_run_manifest("narrator-ft")
    run["spec"] |= {
        "resources": {"gpus": 0},
        "devicePolicy": "CPU",
        "scheduling": {
            "nodeSelector": {"kubernetes.io/hostname": other},
            "tolerations": [{"key": GPU_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}],
        },
    }
    runs = CustomObjects(k8s_api, namespace, "trainingruns")
    runs.create(run)
    cond = wait_for_condition(runs, "narrator-ft", "Ready", 400, status=None, reason="SingleNodeVolume")
    assert runs.status("narrator-ft")["phase"] == "Exporting"
    assert (
        f"on node {other} waits for PersistentVolumeClaim models (spec.export.volume.claimName): it is "
        f"ReadWriteOnce and in use on node {serving.spec.node_name} by pod(s) {serving.metadata.name}"
    ) in cond["message"], cond
    warned = wait_for(
        lambda: events(k8s_api, namespace, "narrator-ft", "SingleNodeVolume"), 30, "a SingleNodeVolume Event"
    )
    assert warned[0].type == "Warning"

    # serving stops: the claim detaches from that node and the export goes through
    vms.patch_spec("narrator", {"replicas": 0})
    wait_for_phase(runs, "narrator-ft", "Succeeded", 300)
    assert (root / "narrator-ft" / "manifest.json").is_file()
