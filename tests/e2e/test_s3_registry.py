"""Artifacts in object storage, end to end on the dev cluster's real S3 server (SeaweedFS).

A VoiceModel waits for its TrainingRun (no pods until it exports); the run, whose base model comes
from a private hub repository (``hf://...@main``, a local hub look-alike that ``HF_ENDPOINT`` points
huggingface_hub at) and whose dataset and export are ``s3://``, trains a tiny VITS for real (the
branch resolved to its commit in status, the hub token seen by the hub on every request), publishes
an immutable version (manifest.json last, the pinned commit in its lineage) and promotes it Direct;
the VoiceModel serves it from the bucket with two replicas on two nodes and no model PVC. Then what
must not work does not, each with a named reason and nothing lost: a second run exporting to the
same version is refused (VersionExists) before it trains, and the published objects are unchanged;
a version the run never exported touches no pod (ArtifactNotFound); a byte flipped in a published
file fails the rollout (ChecksumMismatch) and the old version keeps serving.
"""

# kubernetes models type every field Optional; the tests check presence by using them
# mypy: disable-error-code="union-attr"
from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from support.hub_server import HubServer
from support.manifests import trained_run_manifest
from support.objects import CustomObjects, wait_for_condition, wait_for_phase
from support.operator_process import OperatorProcess
from support.voicemodels import VoiceModels, synthesize
from support.waiting import wait_for
from tts_devcluster import s3
from tts_devcluster.nodes import GPU_TAINT, LOCAL_NODE_LABEL

pytestmark = pytest.mark.slow

SECRET = "tts-s3"
HUB_SECRET = "hf-token"
HF_TOKEN = "hf_E2eTokenThatMustReachTheFetcher0123"
HUB_REPO = "coqui/vits-tiny"


def _objects(s3c: Any, bucket: str, prefix: str) -> dict[str, str]:
    """key -> ETag under ``prefix/``."""
    pages = s3c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/")
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents") or []}


def _run(name: str, root: str, **extra: Any) -> dict[str, Any]:
    run = trained_run_manifest(name, dataset={"evalSplit": 0.25}, **extra)
    spec = run["spec"]
    ref = {"secretRef": {"name": SECRET}}
    spec["baseModel"] = {"uri": f"hf://{HUB_REPO}@main", "secretRef": {"name": HUB_SECRET}}
    spec["dataset"] = {"uri": f"{root}/datasets/narrator", "evalSplit": 0.25, **ref}
    spec["export"] = {"uri": f"{root}/models/narrator", "version": "narrator-ft", **ref}
    return run


def test_train_publish_and_serve_from_s3_with_nothing_lost(
    dev_cluster,
    k8s_api: client.ApiClient,
    namespace: str,
    kubectl,
    run_volumes: dict[str, Path],
    vits_source: Path,
    tts_operator: OperatorProcess,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.fail("espeak-ng and sox are needed to speak the dataset (make setup installs them)")
    from support.datasets import make_ljspeech_dataset

    endpoint = dev_cluster.s3_endpoint()
    s3c = s3.boto3_client(endpoint)
    prefix = f"e2e-{uuid.uuid4().hex[:8]}"
    root = f"s3://{endpoint.bucket}/{prefix}"
    kubectl("apply", "-f", "-", input=json.dumps(s3.secret_manifest(endpoint, namespace, SECRET)))
    make_ljspeech_dataset(tmp_path / "narrator", n_clips=4)
    s3.copy(s3c, str(tmp_path / "narrator"), f"{root}/datasets/narrator")
    hub = HubServer().start()
    request.addfinalizer(hub.stop)
    repo = hub.add_repo(HUB_REPO, vits_source, private=True, token=HF_TOKEN)
    hub_secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": HUB_SECRET},
        "stringData": {"HF_TOKEN": HF_TOKEN, "HF_ENDPOINT": hub.url},
    }
    kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(hub_secret))

    vms = VoiceModels(k8s_api, namespace, kubectl)
    vms.apply(
        {
            "apiVersion": "tts-operator.dev/v1alpha1",
            "kind": "VoiceModel",
            "metadata": {"name": "narrator"},
            "spec": {
                "engine": "vits",
                "model": {"trainingRun": "narrator-ft"},
                "replicas": 2,
                "resources": {"gpus": 0},
                "devicePolicy": "CPU",
                # both local nodes (the GPU node tolerated), none of the simulated ones
                "scheduling": {
                    "nodeSelector": {LOCAL_NODE_LABEL: "true"},
                    "tolerations": [{"key": GPU_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}],
                },
                "rollout": {"progressDeadlineSeconds": 300},
            },
        }
    )
    # no run yet, then a run that has not exported: the VoiceModel waits with no pods
    wait_for_condition(vms, "narrator", "ModelAvailable", 30, status=None, reason="TrainingRunNotFound")
    runs = CustomObjects(k8s_api, namespace, "trainingruns")
    runs.create(_run("narrator-ft", root, promote={"voiceModel": "narrator", "mode": "Direct"}))
    wait_for_condition(vms, "narrator", "ModelAvailable", 30, status=None, reason="TrainingRunNotExported")
    assert vms.get("narrator")["status"]["phase"] == "Pending" and not vms.pods("narrator")
    assert not vms.apps.list_namespaced_deployment(namespace).items

    # trained on gpu-local-0 with no dataset or base-model PVC, published, promoted, served
    wait_for(
        lambda: vms.serving("narrator", "narrator-ft"), 600, "the VoiceModel serving the trained version"
    )
    # spec.version was written by the run's Direct promotion, not by the VoiceModel controller
    assert vms.get("narrator")["spec"]["version"] == "narrator-ft"
    assert vms.status("narrator")["lastGoodVersion"] == "narrator-ft"
    output = runs.status("narrator-ft")["output"]
    assert output["path"] == f"{root}/models/narrator/narrator-ft"
    published = _objects(s3c, endpoint.bucket, f"{prefix}/models/narrator/narrator-ft")
    assert f"{prefix}/models/narrator/narrator-ft/manifest.json" in published and len(published) > 2
    train_pod = (
        client.CoreV1Api(k8s_api)
        .list_namespaced_pod(
            namespace,
            label_selector="tts-operator.dev/trainingrun=narrator-ft,app.kubernetes.io/component=training",
        )
        .items[0]
    )
    claims = {
        v.persistent_volume_claim.claim_name for v in train_pod.spec.volumes if v.persistent_volume_claim
    }
    assert claims == {"ckpt"}, f"only the checkpoints are on a volume; got {claims}"
    # the hub branch resolved to its commit, recorded in status and in the version's lineage; the
    # token reached the hub on every request (and nothing else did)
    pinned = f"hf://{HUB_REPO}@{repo.commit}"
    assert runs.status("narrator-ft")["resolvedBaseModel"] == pinned
    manifest = json.loads(
        s3c.get_object(Bucket=endpoint.bucket, Key=f"{prefix}/models/narrator/narrator-ft/manifest.json")[
            "Body"
        ].read()
    )
    assert manifest["source"]["baseModel"] == pinned, manifest["source"]
    assert manifest["source"]["dataset"] == f"{root}/datasets/narrator", manifest["source"]
    assert hub.authorizations() == {f"Bearer {HF_TOKEN}"}

    # two replicas on two nodes, each with its own verified copy from the bucket: no model PVC
    pods = vms.pods("narrator")
    assert len(pods) == 2
    assert {p.spec.node_name for p in pods} == {"cpu-local-0", "gpu-local-0"}
    for pod in pods:
        assert not any(v.persistent_volume_claim for v in pod.spec.volumes)
        (fetch,) = pod.status.init_container_statuses
        assert fetch.state.terminated.exit_code == 0
    for url in vms.ready_endpoints("narrator"):
        r = synthesize(url)
        assert r.status_code == 200 and r.headers["x-model-version"] == "narrator-ft"

    # a second run exporting the same version: refused by name before it fetches or trains anything
    # (its pod's first init container checks the version), the published objects untouched
    runs.create(_run("narrator-ft-again", root))
    failed = wait_for_phase(runs, "narrator-ft-again", "Failed", 300)
    assert failed["failure"]["reason"] == "VersionExists", failed["failure"]
    assert f"{root}/models/narrator/narrator-ft" in failed["failure"]["message"]
    assert "progress" not in failed, failed  # no epoch started
    (again_pod,) = (
        client.CoreV1Api(k8s_api)
        .list_namespaced_pod(namespace, label_selector="tts-operator.dev/trainingrun=narrator-ft-again")
        .items
    )
    inits = {c.name: c.state for c in again_pod.status.init_container_statuses}
    assert inits["check-export"].terminated.exit_code == 73
    assert not any(s.terminated or s.running for name, s in inits.items() if name != "check-export")
    assert _objects(s3c, endpoint.bucket, f"{prefix}/models/narrator/narrator-ft") == published

    # a version the run never exported: ModelAvailable says so and no pod is replaced
    before = sorted(p.metadata.name for p in vms.pods("narrator"))
    vms.patch_spec("narrator", {"version": "no-such-version"})
    cond = wait_for_condition(
        vms, "narrator", "ModelAvailable", 60, status="False", reason="ArtifactNotFound"
    )
    assert "no-such-version" in cond["message"] and "narrator-ft" in cond["message"]
    assert sorted(p.metadata.name for p in vms.pods("narrator")) == before

    # a byte flipped in a published file: the new pods refuse it by name, the old ones keep serving
    broken = f"{prefix}/models/narrator/v-broken"
    for key in published:
        name = key.rsplit("/", 1)[-1]
        body = s3c.get_object(Bucket=endpoint.bucket, Key=key)["Body"].read()
        if name.endswith(".pth"):
            body = bytes([body[0] ^ 1]) + body[1:]
        s3c.put_object(Bucket=endpoint.bucket, Key=f"{broken}/{name}", Body=body)
    vms.patch_spec(
        "narrator",
        {
            "model": {"trainingRun": None, "uri": f"{root}/models/narrator", "secretRef": {"name": SECRET}},
            "version": "v-broken",
        },
    )
    degraded = wait_for_condition(vms, "narrator", "Degraded", 300, reason="ChecksumMismatch")
    assert "v-broken" in degraded["message"] and degraded["message"].endswith("; serving narrator-ft"), (
        degraded
    )
    wait_for(lambda: _rolled_back(vms), 300, "rolled back to narrator-ft on both replicas")
    for url in vms.ready_endpoints("narrator"):
        assert synthesize(url).headers["x-model-version"] == "narrator-ft"


def _rolled_back(vms: VoiceModels) -> bool:
    st = vms.status("narrator")
    pods = vms.pods("narrator")
    return (
        vms.condition("narrator", "RolledOut").get("reason") == "RolledBack"
        and st.get("servingVersion") == "narrator-ft"
        and len(pods) == 2
        and all(p.metadata.labels["tts-operator.dev/version"] == "narrator-ft" for p in pods)
    )
