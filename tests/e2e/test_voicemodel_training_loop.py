"""The whole loop: a VoiceModel waiting on a TrainingRun (no pods until it exports), the run trains a
tiny VITS for real, exports it, promotes it Direct, and the VoiceModel serves the trained model."""

# kubernetes models type every field Optional; the tests check presence by using them
# mypy: disable-error-code="union-attr"
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from kubernetes import client

from support.manifests import RTX3090, trained_run_manifest
from support.objects import CustomObjects, wait_for_condition
from support.operator_process import OperatorProcess
from support.voicemodels import VoiceModels, capture, synthesize
from support.waiting import wait_for
from tts_operator import api

pytestmark = pytest.mark.slow


def test_trainingrun_export_direct_promote_serves(
    dev_cluster,
    k8s_api: client.ApiClient,
    namespace: str,
    kubectl,
    run_volumes: dict[str, Path],
    vits_source: Path,
    tts_operator: OperatorProcess,
) -> None:
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.skip("espeak-ng and sox are needed to speak the dataset")
    from support.datasets import make_ljspeech_dataset
    from tts_devcluster.volumes import create_volume

    make_ljspeech_dataset(run_volumes["data"] / "narrator", n_clips=4)
    base = create_volume(dev_cluster, "base", namespace)
    for item in vits_source.iterdir():  # hard links: the same filesystem
        (base / item.name).hardlink_to(item)

    vms = VoiceModels(k8s_api, namespace, kubectl)
    vms.apply(
        {
            "apiVersion": api.API_GROUP_VERSION,
            "kind": "VoiceModel",
            "metadata": {"name": "narrator"},
            "spec": {
                "engine": "vits",
                "model": {"trainingRun": "narrator-ft"},
                "resources": {"gpus": 1, "gpuProduct": RTX3090},
                "devicePolicy": "PreferGPU",
            },
        }
    )
    wait_for_condition(vms, "narrator", "ModelAvailable", 30, status=None, reason="TrainingRunNotFound")
    run = trained_run_manifest(
        "narrator-ft", dataset={"evalSplit": 0.25}, promote={"voiceModel": "narrator", "mode": "Direct"}
    )
    CustomObjects(k8s_api, namespace, "trainingruns").create(run)
    wait_for_condition(vms, "narrator", "ModelAvailable", 30, status=None, reason="TrainingRunNotExported")
    obj = vms.get("narrator")
    capture("pending", obj)
    assert obj["status"]["phase"] == "Pending" and not vms.pods("narrator")
    assert not vms.apps.list_namespaced_deployment(namespace).items

    # training (~1 min on CPU), export, Direct promote (spec.version written by the run's promotion),
    # then the VoiceModel rolls out the exported version
    wait_for(
        lambda: vms.serving("narrator", "narrator-ft"),
        600,
        "the VoiceModel serving the trained version",
        interval=1,
    )
    obj = vms.get("narrator")
    assert (
        obj["spec"]["version"] == "narrator-ft"
    )  # written by the promotion, not by the VoiceModel controller
    (url,) = vms.ready_endpoints("narrator")
    r = synthesize(url)
    assert r.status_code == 200 and r.content[:4] == b"RIFF"
    assert r.headers["x-model-version"] == "narrator-ft"
    info = vms.status("narrator")
    assert info["lastGoodVersion"] == "narrator-ft"
