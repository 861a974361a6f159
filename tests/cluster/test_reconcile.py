"""Each kind's reconcile called directly on the real API server (no operator process, no queue):
what it creates, what it writes to status, what it does not write a second time, and what it does
when a predecessor's pods are in the way."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from support.manifests import trainingrun_manifest, voicemodel_manifest
from support.objects import CustomObjects
from tts_operator import api
from tts_operator.controller.controller import Context, Outcome
from tts_operator.kube.client import Kube
from tts_operator.reconcile import trainingrun, voicemodel
from tts_operator.settings import Settings


def _context(k8s_api: client.ApiClient, triggered: list[tuple[str, str, str]]) -> Context:
    return Context(Kube(k8s_api), Settings(), lambda ns, name, why: triggered.append((ns, name, why)))


def _runs(k8s_api: client.ApiClient, namespace: str) -> CustomObjects:
    return CustomObjects(k8s_api, namespace, api.TRAININGRUN.plural)


def _run(name: str, **spec: Any) -> dict[str, Any]:
    """A run the local cluster needs not run: on the CPU, no GPU (its pod stays Pending: no volumes)."""
    body = trainingrun_manifest(name, devicePolicy="CPU", **spec)
    body["spec"]["resources"] = {"gpus": 0}
    return body


def test_a_trainingrun_reconcile_creates_its_children_and_writes_status_once(
    k8s_api: client.ApiClient, crds, namespace: str
) -> None:
    ctx = _context(k8s_api, [])
    # queued in Kueue (no Kueue here): its Job stays suspended, so nothing moves under the test
    body = _run("direct", scheduling={"queueName": "gpu-training"})
    created = _runs(k8s_api, namespace).create(body)
    # the first reconcile of a new run, from the body its ADDED event carried
    assert trainingrun.reconcile(ctx, namespace, "direct", created) == Outcome("Queued")
    core, rbac = client.CoreV1Api(k8s_api), client.RbacAuthorizationV1Api(k8s_api)
    batch = client.BatchV1Api(k8s_api)
    uid = created["metadata"]["uid"]
    job = batch.read_namespaced_job("direct-train", namespace)
    children = [
        core.read_namespaced_service_account("direct-trainer", namespace),
        rbac.read_namespaced_role("direct-trainer", namespace),
        rbac.read_namespaced_role_binding("direct-trainer", namespace),
        job,
    ]
    for child in children:
        (owner,) = child.metadata.owner_references
        assert owner.uid == uid and owner.controller
    assert job.spec.suspend is True
    run = _runs(k8s_api, namespace).get("direct")
    assert run["status"]["phase"] == "Queued" and run["status"]["jobName"] == "direct-train"
    assert run["status"]["observedGeneration"] == 1
    # a second reconcile finds all of it and writes nothing: not the run, not its Job
    assert trainingrun.reconcile(ctx, namespace, "direct", None) == Outcome("Queued")
    again = _runs(k8s_api, namespace).get("direct")
    assert again["metadata"]["resourceVersion"] == run["metadata"]["resourceVersion"]
    job_again = batch.read_namespaced_job("direct-train", namespace)
    assert job_again.metadata.resource_version == job.metadata.resource_version


def test_a_trainingrun_waits_while_an_earlier_jobs_pods_are_there(
    k8s_api: client.ApiClient, crds, namespace: str
) -> None:
    """Pods of an earlier Job of the run's name (a run deleted and re-created) are still going: the
    reconcile creates no Job, writes no status, and says it must be looked at again."""
    ctx = _context(k8s_api, [])
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {
                "name": "again-old",
                "labels": {
                    "tts-operator.dev/trainingrun": "again",
                    "app.kubernetes.io/component": "training",
                },
            },
            "spec": {
                "nodeSelector": {"test.tts-operator.dev/no-such-node": "true"},
                "containers": [{"name": "c", "image": "busybox"}],
            },
        },
    )
    _runs(k8s_api, namespace).create(_run("again"))
    outcome = trainingrun.reconcile(ctx, namespace, "again", None)
    assert outcome.wait == "1 pod(s) of an earlier Job again-train"
    assert not client.BatchV1Api(k8s_api).list_namespaced_job(namespace).items
    assert not _runs(k8s_api, namespace).get("again").get("status")
    core.delete_namespaced_pod("again-old", namespace, grace_period_seconds=0)


def test_a_voicemodel_reconcile_applies_its_children_and_reports_deploying(
    k8s_api: client.ApiClient, crds, namespace: str
) -> None:
    triggered: list[tuple[str, str, str]] = []
    ctx = _context(k8s_api, triggered)
    body = voicemodel_manifest(
        "direct",
        "v1",
        model={"volume": {"claimName": "models", "subPath": "direct"}},
        replicas=2,
        devicePolicy="CPU",
    )
    body["spec"]["resources"] = {"gpus": 0}
    vms = CustomObjects(k8s_api, namespace, api.VOICEMODEL.plural)
    created = vms.create(body)
    outcome = voicemodel.reconcile(ctx, namespace, "direct", created["metadata"]["uid"])
    assert outcome == Outcome("Deploying")
    apps, policy = client.AppsV1Api(k8s_api), client.PolicyV1Api(k8s_api)
    deployment = apps.read_namespaced_deployment("direct", namespace)
    assert deployment.spec.replicas == 2
    assert deployment.spec.template.metadata.labels["tts-operator.dev/version"] == "v1"
    assert policy.read_namespaced_pod_disruption_budget("direct", namespace).spec.max_unavailable == 1
    status = vms.status("direct")
    assert status["desiredVersion"] == "v1" and status["phase"] == "Deploying"
    # a later reconcile applies the Service before it reports (the first sent it on the lane)
    assert voicemodel.reconcile(ctx, namespace, "direct", None).phase == "Deploying"
    service = client.CoreV1Api(k8s_api).read_namespaced_service("direct", namespace)
    assert service.spec.ports[0].port == 8005
    assert triggered == []  # the lane's apply did not fail
