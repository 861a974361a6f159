"""The TrainingRun operator end to end: the real `tts-operator run` against the real control plane.

Pods on `gpu-sim-*` nodes are simulated by kwok (a Job's pod "succeeds" at once and runs nothing),
which proves scheduling, Job handling and status without training; a run asking for more GPUs than
any node has stays Pending with the scheduler's reason.
"""

# kubernetes models type every field Optional; the tests check presence by using them
# mypy: disable-error-code="union-attr"
from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from support.manifests import H100, trainingrun_manifest
from support.objects import CustomObjects, event_reasons, wait_for_condition, wait_for_phase, wait_for_status
from support.operator_process import OperatorProcess
from support.waiting import wait_for

PRIORITY_CLASS = "tts-e2e-training"


def run_body(name: str, gpus: int = 2, **spec: Any) -> dict[str, Any]:
    return trainingrun_manifest(
        name,
        training={"epochs": 3},
        checkpoints={"volume": {"claimName": "ckpt", "subPath": "runs"}},
        resources={"gpus": gpus},
        **spec,
    )


class Cluster:
    def __init__(self, k8s_api: client.ApiClient, namespace: str) -> None:
        self.ns = namespace
        self.k8s_api = k8s_api
        self.runs = CustomObjects(k8s_api, namespace, "trainingruns")
        self.batch = client.BatchV1Api(k8s_api)
        self.core = client.CoreV1Api(k8s_api)

    def report_progress(self, name: str, epoch: int, epochs: int) -> None:
        """What the trainer does: a merge patch of status.progress."""
        self.runs.patch_status(name, {"progress": {"epoch": epoch, "epochs": epochs, "step": epoch * 10}})

    def jobs(self) -> list[client.V1Job]:
        return list(self.batch.list_namespaced_job(self.ns).items)

    def job(self, name: str) -> client.V1Job | None:
        try:
            return self.batch.read_namespaced_job(name, self.ns)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def pods(self, selector: str) -> list[client.V1Pod]:
        return list(self.core.list_namespaced_pod(self.ns, label_selector=selector).items)

    def event_reasons(self, name: str) -> list[str]:
        return event_reasons(self.k8s_api, self.ns, name)


@pytest.fixture
def cluster(k8s_api: client.ApiClient, namespace: str, run_volumes: dict) -> Cluster:
    sched = client.SchedulingV1Api(k8s_api)
    try:
        sched.create_priority_class(
            client.V1PriorityClass(
                metadata=client.V1ObjectMeta(name=PRIORITY_CLASS), value=1000, description="tts-operator e2e"
            )
        )
    except ApiException as e:
        if e.status != 409:
            raise
    return Cluster(k8s_api, namespace)


def test_sim_run_gets_a_gpu_job_then_an_export_job(cluster: Cluster, tts_operator: OperatorProcess) -> None:
    cluster.runs.create(
        run_body(
            "sim",
            gpus=2,
            scheduling={
                "priorityClassName": PRIORITY_CLASS,
                "tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}],
            },
            backoffLimit=2,
            activeDeadlineSeconds=600,
        )
    )
    job = wait_for(lambda: cluster.job("sim-train"), 30, "the training Job")
    pod_spec = job.spec.template.spec
    (container,) = pod_spec.containers
    assert container.resources.limits == {"nvidia.com/gpu": "2"}
    assert pod_spec.node_selector == {"nvidia.com/gpu.product": H100}
    tolerations = {(t.key, t.operator, t.effect) for t in pod_spec.tolerations}
    assert ("nvidia.com/gpu", "Exists", "NoSchedule") in tolerations and (
        "spot",
        "Exists",
        "NoSchedule",
    ) in tolerations
    assert pod_spec.priority_class_name == PRIORITY_CLASS
    assert job.spec.backoff_limit == 2 and job.spec.active_deadline_seconds == 600
    assert pod_spec.security_context.run_as_non_root and container.security_context.read_only_root_filesystem
    (owner,) = job.metadata.owner_references
    assert owner.kind == "TrainingRun" and owner.name == "sim" and owner.controller

    # the scheduler places it on a simulated H100 node; kwok "runs" it to completion at once
    pod = wait_for(
        lambda: next((p for p in cluster.pods("tts-operator.dev/trainingrun=sim") if p.spec.node_name), None),
        30,
        "the training pod bound to a node",
    )
    assert pod.spec.node_name.startswith("gpu-sim-")
    export = wait_for(lambda: cluster.job("sim-export"), 60, "the export Job")
    command = " ".join(export.spec.template.spec.containers[0].command)
    assert "tts-runtime export /data/checkpoints/model /models/export --version sim" in command
    # kwok ran nothing, so no manifest came back: the run says so instead of claiming an export
    status = wait_for_phase(cluster.runs, "sim", "Failed", 60)
    assert status["failure"]["reason"] == "ExportReportMissing"
    assert status["jobName"] == "sim-train" and status["exportJobName"] == "sim-export"
    assert status["observedGeneration"] == 1 and "output" not in status
    wanted = {"JobCreated", "ExportJobCreated", "ExportReportMissing"}  # Events go out beside reconciles
    wait_for(lambda: wanted <= set(cluster.event_reasons("sim")), 30, f"Events {wanted}")
    metrics = tts_operator.metrics()
    assert 'tts_operator_reconciles_total{kind="TrainingRun"}' in metrics
    assert 'tts_operator_objects{kind="TrainingRun",phase="Failed"} 1.0' in metrics

    # terminal phases are sticky: delete both Jobs, make the operator look again, nothing comes back
    for name in ("sim-train", "sim-export"):
        cluster.batch.delete_namespaced_job(name, cluster.ns, propagation_policy="Background")
    wait_for(lambda: not cluster.jobs(), 30, "the Jobs deleted")
    cluster.report_progress("sim", 3, 3)  # an event on the run -> a reconcile
    wait_for_status(cluster.runs, "sim", lambda st: st.get("progressText") == "3/3", 30, "a reconcile")
    assert cluster.jobs() == [] and cluster.runs.status("sim")["phase"] == "Failed"


def test_nine_gpus_report_the_unschedulable_reason(cluster: Cluster, tts_operator: OperatorProcess) -> None:
    cluster.runs.create(run_body("big", gpus=9))

    cond = wait_for_condition(cluster.runs, "big", "Reconciling", 60, status=None, reason="InsufficientGPU")
    message = str(cond.get("message", ""))
    assert message.startswith(f"waiting for 9 × nvidia.com/gpu on {H100}: no node has enough free")  # noqa: RUF001
    assert cluster.runs.status("big")["phase"] == "Pending"
    wait_for(lambda: "InsufficientGPU" in cluster.event_reasons("big"), 30, "the Event")
    # progress reported by the trainer becomes the PROGRESS column
    cluster.report_progress("big", 1, 3)
    wait_for_status(cluster.runs, "big", lambda st: st.get("progressText") == "1/3", 30, "progressText")


def test_operator_restart_never_duplicates_the_job(cluster: Cluster, tts_operator: OperatorProcess) -> None:
    cluster.runs.create(run_body("restart", gpus=9))  # stays Pending: "mid-run" for as long as we like
    job = wait_for(lambda: cluster.job("restart-train"), 30, "the training Job")
    wait_for_phase(cluster.runs, "restart", "Pending", 30)
    tts_operator.stop()
    tts_operator.start()
    cluster.report_progress("restart", 2, 3)
    wait_for_status(
        cluster.runs, "restart", lambda st: st.get("progressText") == "2/3", 30, "the new operator"
    )
    (only,) = cluster.jobs()
    assert only.metadata.uid == job.metadata.uid
    wait_for(lambda: "JobCreated" in cluster.event_reasons("restart"), 30, "JobCreated")
    assert cluster.event_reasons("restart").count("JobCreated") == 1


def test_suspend_and_resume(cluster: Cluster, tts_operator: OperatorProcess) -> None:
    cluster.runs.create(run_body("pause", gpus=9))
    wait_for(lambda: cluster.job("pause-train"), 30, "the training Job")
    cluster.runs.patch_spec("pause", {"suspend": True})
    wait_for(lambda: cluster.job("pause-train").spec.suspend is True, 30, "Job suspended")
    wait_for_phase(cluster.runs, "pause", "Suspended", 30)
    wait_for(lambda: not cluster.pods("tts-operator.dev/trainingrun=pause"), 60, "pods gone")
    cluster.runs.patch_spec("pause", {"suspend": False})
    wait_for(lambda: cluster.job("pause-train").spec.suspend is False, 30, "Job resumed")
    wait_for_phase(cluster.runs, "pause", "Pending", 30)
    assert cluster.runs.status("pause")["observedGeneration"] == 3


def test_kueue_queue_creates_the_job_suspended(cluster: Cluster, tts_operator: OperatorProcess) -> None:
    cluster.runs.create(run_body("queued", scheduling={"queueName": "gpu-training"}))
    job = wait_for(lambda: cluster.job("queued-train"), 30, "the training Job")
    assert job.spec.suspend is True and job.metadata.labels["kueue.x-k8s.io/queue-name"] == "gpu-training"
    wait_for_phase(cluster.runs, "queued", "Queued", 30)
    assert cluster.runs.condition("queued", "Queued")["message"] == "queued in Kueue queue gpu-training"


def test_a_missing_volume_is_named_once_and_shown_by_kubectl_get(
    cluster: Cluster, tts_operator: OperatorProcess, kubectl
) -> None:
    """The scheduler's "persistentvolumeclaim ... not found" becomes VolumeNotFound, naming the claim
    and the field once, with no attempt count; `kubectl get` shows the reason in its own column."""
    cluster.runs.create(run_body("novol", dataset={"volume": {"claimName": "nope-data"}}))
    ready = wait_for_condition(cluster.runs, "novol", "Ready", 60, status="False", reason="VolumeNotFound")
    assert ready["message"] == (
        "PersistentVolumeClaim nope-data (spec.dataset.volume.claimName) does not exist: "
        "create it, or name an existing claim"
    )
    assert cluster.runs.status("novol")["phase"] == "Pending"
    header, row = kubectl("get", "trun", "novol", "-n", cluster.ns).stdout.splitlines()
    assert header.split()[:3] == ["NAME", "PHASE", "REASON"]
    assert row.split()[:3] == ["novol", "Pending", "VolumeNotFound"]


def test_delete_takes_the_job_and_pods_along(cluster: Cluster, tts_operator: OperatorProcess) -> None:
    cluster.runs.create(run_body("gone", gpus=9))
    wait_for(lambda: cluster.job("gone-train"), 30, "the training Job")
    wait_for(lambda: cluster.pods("tts-operator.dev/trainingrun=gone"), 30, "the pod")
    cluster.runs.delete("gone")
    wait_for(lambda: not cluster.jobs(), 60, "the Job garbage-collected")
    wait_for(lambda: not cluster.pods("tts-operator.dev/trainingrun=gone"), 60, "pods gone")
    pvcs = cluster.core.list_namespaced_persistent_volume_claim(cluster.ns).items
    assert {p.metadata.name for p in pvcs} == {"data", "ckpt", "models"}  # volumes stay
