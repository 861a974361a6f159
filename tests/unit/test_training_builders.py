"""The TrainingRun's children, built from specs (pure functions, no cluster)."""

from __future__ import annotations

import json
import shlex
from typing import Any

import pytest

from tts_contract.contract import PERMANENT_EXIT_CODES, Paths, RunSpec
from tts_operator import api
from tts_operator.builders import training as b
from tts_operator.settings import Settings

SETTINGS = Settings(runtime_image="registry.example/tts-runtime:1.2.3", gpu_resource="nvidia.com/gpu")


def make_run(name: str = "narrator-ft", **spec: Any) -> api.TrainingRun:
    base: dict[str, Any] = {
        "engine": "vits",
        "dataset": {"volume": {"claimName": "datasets", "subPath": "narrator"}, "language": "pt"},
        "training": {"epochs": 3, "batchSize": 4},
        "checkpoints": {"volume": {"claimName": "ckpt", "subPath": "runs"}},
        "export": {"volume": {"claimName": "models", "subPath": "narrator"}},
    }
    base.update(spec)
    return api.TrainingRun.model_validate(
        {"metadata": {"name": name, "namespace": "voices", "uid": "uid-1", "generation": 1}, "spec": base}
    )


def pod_spec(job: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = job["spec"]["template"]["spec"]
    return spec


def test_names_are_deterministic_and_fit_the_label_limit() -> None:
    longest = "a" * api.TRAININGRUN_NAME_MAX
    for name in (b.job_name(longest), b.export_job_name(longest), b.trainer_account_name(longest)):
        assert len(name) <= api.DNS_LABEL_MAX
    job = b.training_job(make_run(), SETTINGS)
    assert job["metadata"]["name"] == "narrator-ft-train"
    assert b.training_job(make_run(), SETTINGS) == job


def test_job_is_owned_by_the_run_and_labelled() -> None:
    job = b.training_job(make_run(), SETTINGS)
    (owner,) = job["metadata"]["ownerReferences"]
    assert owner == {
        "apiVersion": "tts-operator.dev/v1alpha1",
        "kind": "TrainingRun",
        "name": "narrator-ft",
        "uid": "uid-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    for lbls in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert lbls["app.kubernetes.io/managed-by"] == "tts-operator"
        assert lbls[b.RUN_LABEL] == "narrator-ft"


def test_gpu_scheduling_fields() -> None:
    run = make_run(
        resources={"gpus": 8, "gpuProduct": "NVIDIA-H100-80GB-HBM3", "cpu": "8", "memory": "32Gi"},
        scheduling={
            "priorityClassName": "training",
            "nodeSelector": {"zone": "a"},
            "tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}],
        },
    )
    ps = pod_spec(b.training_job(run, Settings(gpu_resource="amd.com/gpu")))
    (c,) = ps["containers"]
    assert c["resources"]["limits"] == {"cpu": "8", "memory": "32Gi", "amd.com/gpu": "8"}
    assert c["resources"]["requests"] == {"cpu": "8", "memory": "32Gi"}
    assert ps["nodeSelector"] == {"zone": "a", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert ps["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Exists", "effect": "NoSchedule"},
    ]
    assert ps["priorityClassName"] == "training"


def test_cpu_run_requests_no_gpu_and_tolerates_no_gpu_taint() -> None:
    ps = pod_spec(b.training_job(make_run(resources={"gpus": 0}, devicePolicy="CPU"), SETTINGS))
    assert "resources" not in ps["containers"][0]
    assert "tolerations" not in ps and "nodeSelector" not in ps


def test_kueue_label_and_job_created_suspended() -> None:
    plain = b.training_job(make_run(), SETTINGS)
    assert b.KUEUE_QUEUE_LABEL not in plain["metadata"]["labels"]
    assert plain["spec"]["suspend"] is False
    queued = b.training_job(make_run(scheduling={"queueName": "gpu-training"}), SETTINGS)
    assert queued["metadata"]["labels"][b.KUEUE_QUEUE_LABEL] == "gpu-training"
    assert queued["spec"]["suspend"] is True
    assert b.training_job(make_run(suspend=True), SETTINGS)["spec"]["suspend"] is True


def test_volumes_and_mounts() -> None:
    run = make_run(engine="xtts", baseModel={"volume": {"claimName": "base", "subPath": "xtts-v2"}})
    ps = pod_spec(b.training_job(run, SETTINGS))
    volumes = {v["name"]: v for v in ps["volumes"]}
    mounts = {m["name"]: m for m in ps["containers"][0]["volumeMounts"]}
    assert volumes["dataset"]["persistentVolumeClaim"] == {"claimName": "datasets", "readOnly": True}
    assert volumes["base-model"]["persistentVolumeClaim"] == {"claimName": "base", "readOnly": True}
    assert volumes["checkpoints"]["persistentVolumeClaim"] == {"claimName": "ckpt", "readOnly": False}
    assert mounts["dataset"] == {
        "name": "dataset",
        "mountPath": Paths.DATASET,
        "readOnly": True,
        "subPath": "narrator",
    }
    assert mounts["base-model"]["readOnly"] and mounts["base-model"]["subPath"] == "xtts-v2"
    assert mounts["checkpoints"] == {
        "name": "checkpoints",
        "mountPath": Paths.CHECKPOINTS,
        "readOnly": False,
        "subPath": "runs/voices/narrator-ft",
    }
    assert mounts["scratch"]["mountPath"] == "/tmp" and volumes["scratch"] == {
        "name": "scratch",
        "emptyDir": {},
    }
    assert f"{mounts['run-spec']['mountPath']}/{b.RUN_SPEC_KEY}" == Paths.RUN_SPEC
    field = "metadata.annotations['tts-operator.dev/run-spec']"
    assert volumes["run-spec"] == {
        "name": "run-spec",
        "downwardAPI": {"items": [{"path": b.RUN_SPEC_KEY, "fieldRef": {"fieldPath": field}}]},
    }


def test_retry_policy_and_deadline() -> None:
    job = b.training_job(make_run(backoffLimit=5, activeDeadlineSeconds=3600), SETTINGS)
    assert job["spec"]["backoffLimit"] == 5
    assert job["spec"]["activeDeadlineSeconds"] == 3600
    assert "activeDeadlineSeconds" not in b.training_job(make_run(), SETTINGS)["spec"]
    fail_job, ignore = job["spec"]["podFailurePolicy"]["rules"]
    assert fail_job["action"] == "FailJob"
    assert set(fail_job["onExitCodes"]["values"]) == {int(c) for c in PERMANENT_EXIT_CODES}
    # every container: the trainer's codes and the fetchers' (an artifact missing, denied, corrupt)
    assert "containerName" not in fail_job["onExitCodes"]
    assert ignore == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    assert pod_spec(job)["restartPolicy"] == "Never"  # podFailurePolicy requires it


def test_restricted_security_context() -> None:
    ps = pod_spec(b.training_job(make_run(), SETTINGS))
    assert ps["securityContext"]["runAsNonRoot"] is True
    assert ps["securityContext"]["runAsUser"] == 1000
    assert ps["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = ps["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    env = {e["name"]: e["value"] for e in ps["containers"][0]["env"]}
    assert env["HOME"].startswith("/tmp")


def test_run_spec_rides_on_the_pod_template_and_round_trips_through_the_contract() -> None:
    run = make_run(
        devicePolicy="PreferGPU",
        resources={"gpus": 2},
        samples={"text": "Olá"},
        dataset={"volume": {"claimName": "d"}, "maxSamples": 10, "evalSplit": 0.2, "language": "pt"},
    )
    template = b.training_job(run, SETTINGS)["spec"]["template"]
    assert "ConfigMap" not in {c["kind"] for c in b.children(run, SETTINGS)}
    spec = RunSpec.model_validate(json.loads(template["metadata"]["annotations"][b.RUN_SPEC_ANNOTATION]))
    assert spec.run.name == "narrator-ft" and spec.run.namespace == "voices" and spec.run.uid == "uid-1"
    assert spec.device_policy.value == "PreferGPU" and spec.gpus == 2
    assert spec.dataset.path == Paths.DATASET and spec.dataset.max_samples == 10
    assert spec.dataset.eval_split == 0.2 and spec.dataset.language == "pt"
    assert spec.training.epochs == 3 and spec.training.batch_size == 4
    assert spec.output_path == Paths.CHECKPOINTS and spec.base_model_path is None
    assert spec.samples is not None and spec.samples.text == "Olá"
    assert spec.report_status is True


def test_trainer_role_is_limited_to_its_own_run_status() -> None:
    ident = b.RunIdentity("narrator-ft", "voices", "uid-1")
    (rule,) = b.trainer_role(ident)["rules"]
    assert rule == {
        "apiGroups": ["tts-operator.dev"],
        "resources": ["trainingruns/status"],
        "resourceNames": ["narrator-ft"],
        "verbs": ["get", "patch"],
    }
    binding = b.trainer_role_binding(ident)
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "narrator-ft-trainer", "namespace": "voices"}
    ]
    assert pod_spec(b.training_job(make_run(), SETTINGS))["serviceAccountName"] == "narrator-ft-trainer"


@pytest.mark.parametrize(("version", "expected"), [(None, "narrator-ft"), ("v7", "v7")])
def test_export_job(version: str | None, expected: str) -> None:
    export = {"volume": {"claimName": "models", "subPath": "narrator"}}
    if version:
        export["version"] = version  # type: ignore[assignment]
    run = make_run(export=export, resources={"gpus": 1, "gpuProduct": "NVIDIA-GeForce-RTX-3090"})
    job = b.export_job(run, SETTINGS)
    assert job["metadata"]["name"] == "narrator-ft-export"
    ps = pod_spec(job)
    (c,) = ps["containers"]
    assert c["image"] == SETTINGS.runtime_image
    assert c["command"][:2] == ["sh", "-c"]
    argv = shlex.split(c["command"][2].split(";", 1)[1].split(">")[0])
    assert argv[:4] == ["tts-runtime", "export", f"{Paths.CHECKPOINTS}/model", Paths.EXPORT]
    assert argv[argv.index("--version") + 1] == expected
    assert argv[argv.index("--source-run") + 1] == "voices/narrator-ft"
    assert c["terminationMessagePath"] == "/dev/termination-log"
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["checkpoints"]["readOnly"] is True and mounts["export"]["readOnly"] is False
    assert mounts["export"]["subPath"] == "narrator"
    assert "resources" not in c  # no GPU for copying files
    assert ps["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-GeForce-RTX-3090"}
    assert b.export_path(run) == f"narrator/{expected}"
