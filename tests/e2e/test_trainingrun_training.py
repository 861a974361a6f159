"""A TrainingRun trained for real: the operator's Job runs the real trainer on `gpu-local-0` (the local
pod runner runs it as a process, on the CPU: devicePolicy PreferGPU), progress reaches status, a
killed pod's retry resumes from its checkpoint, and the export Job writes a version that verifies.
All in a namespace that enforces the `restricted` Pod Security Standard; the trainer's ServiceAccount
token, with which it reports progress, shows up in none of the pods' logs, the operator's log, the
run's status or its Events.
"""

# kubernetes models type every field Optional; the tests check presence by using them
# mypy: disable-error-code="union-attr"
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from support.manifests import trained_run_manifest
from support.objects import CustomObjects, event_reasons, wait_for_status
from support.operator_process import OperatorProcess
from support.secrets import leaks, pod_tokens
from support.waiting import wait_for
from tts_contract.contract import ModelManifest, verify_manifest

pytestmark = pytest.mark.slow


@pytest.fixture
def base_and_dataset(dev_cluster, namespace: str, run_volumes: dict[str, Path], tmp_path: Path) -> None:
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.skip("espeak-ng and sox are needed to speak the dataset")
    from support.datasets import make_ljspeech_dataset
    from tts_devcluster.volumes import create_volume
    from tts_runtime.demo_model import make_demo_model

    make_ljspeech_dataset(run_volumes["data"] / "narrator", n_clips=6)
    base = make_demo_model(tmp_path / "xtts-base", "xtts", seed=0)
    create_volume(dev_cluster, "base", namespace, base)


def test_real_training_progress_kill_resume_export(
    dev_cluster,
    k8s_api: client.ApiClient,
    namespace: str,
    restricted: str,
    run_volumes: dict[str, Path],
    base_and_dataset: None,
    tts_operator: OperatorProcess,
) -> None:
    runs = CustomObjects(k8s_api, namespace, "trainingruns")
    core = client.CoreV1Api(k8s_api)
    body = trained_run_manifest(
        "narrator-ft",
        engine="xtts",
        training={"epochs": 3, "batchSize": 2, "keepCheckpoints": 2, "learningRate": 1e-4},
        checkpoints={"volume": {"claimName": "ckpt", "subPath": "runs"}},
        backoffLimit=2,
    )
    runs.create(body)

    def status() -> dict[str, Any]:
        return runs.status("narrator-ft")

    def training_pods() -> list[client.V1Pod]:
        selector = "tts-operator.dev/trainingrun=narrator-ft,app.kubernetes.io/component=training"
        return list(core.list_namespaced_pod(namespace, label_selector=selector).items)

    seen_epochs: list[int] = []

    def progress_epoch(at_least: int) -> bool:
        st = status()
        assert st.get("phase") != "Failed", st.get("failure")
        epoch = (st.get("progress") or {}).get("epoch", 0)
        if not seen_epochs or seen_epochs[-1] != epoch:
            seen_epochs.append(epoch)
        return epoch >= at_least and st.get("phase") == "Running"

    # the pod runs on the local GPU node and reports progress into status through its ServiceAccount
    wait_for(lambda: progress_epoch(1), 400, "epoch 1 reported in status", interval=1)
    (first,) = [p for p in training_pods() if p.status.phase == "Running"]
    assert first.spec.node_name == "gpu-local-0"
    assert status()["progressText"].endswith("/3")

    # kill the training pod mid-run: the trainer checkpoints on SIGTERM, the Job's retry resumes
    core.delete_namespaced_pod(str(first.metadata.name), namespace)
    wait_for(
        lambda: any(
            p.metadata.name != first.metadata.name and p.status.phase == "Running" for p in training_pods()
        ),
        120,
        "the retry pod running",
        interval=1,
    )

    def finished(st: dict[str, Any]) -> bool:
        epoch = (st.get("progress") or {}).get("epoch", 0)
        if not seen_epochs or seen_epochs[-1] != epoch:
            seen_epochs.append(epoch)
        return st.get("phase") == "Succeeded"

    st = wait_for_status(runs, "narrator-ft", finished, 600, "phase Succeeded", interval=1, failed="Failed")
    progress = st["progress"]
    assert progress["epoch"] == 3 and progress["epochs"] == 3 and st["progressText"] == "3/3"
    assert progress["attempt"] >= 2 and progress["resumedFromEpoch"] >= 1, (
        progress
    )  # resumed, not from scratch
    assert len(set(seen_epochs)) >= 3, seen_epochs  # progress advanced epoch by epoch
    assert st["best"]["path"] and st["checkpoints"]

    output = st["output"]
    assert output["version"] == "narrator-ft" and output["path"] == "narrator/narrator-ft"
    version_dir = run_volumes["models"] / "narrator" / "narrator-ft"
    assert verify_manifest(version_dir) == []
    manifest = ModelManifest.load(version_dir)
    assert manifest.digest == output["sha256"] and manifest.engine.value == "xtts"
    assert manifest.source.training_run == "narrator-ft" and manifest.source.namespace == namespace
    conditions = {c["type"]: c for c in st["conditions"]}
    assert conditions["Exported"]["status"] == "True" and conditions["Ready"]["status"] == "True"
    # checkpoints stay on the volume, in the run's own folder
    assert (run_volumes["ckpt"] / "runs" / namespace / "narrator-ft" / "progress.json").is_file()

    wait_for(
        lambda: "ModelExported" in event_reasons(k8s_api, namespace, "narrator-ft"),
        30,
        "the ModelExported Event",
    )

    # progress came only from the trainer's own PATCH with its projected token: nowhere else
    tokens, texts = pod_tokens(dev_cluster.state, namespace)
    texts["operator log"] = tts_operator.log()
    texts["status"] = json.dumps(runs.get("narrator-ft"))
    texts["events"] = "\n".join(
        f"{e.reason} {e.message}" for e in core.list_namespaced_event(namespace).items
    )
    for token in tokens:
        assert leaks(token, texts) == []
