"""The Foundation acceptance tests: the control plane schedules, the pod runner really runs pods."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from support.waiting import wait_for
from tts_devcluster.volumes import create_volume

RUNTIME_IMAGE = "ghcr.io/tts-operator/tts-runtime:dev"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def apply(kubectl, ns: str, *objs: dict) -> None:
    kubectl("-n", ns, "apply", "-f", "-", input=yaml.safe_dump_all(objs))


def get(kubectl, ns: str, kind: str, name: str) -> dict:
    return json.loads(kubectl("-n", ns, "get", kind, name, "-o", "json").stdout)


def pod(name: str, command: list[str], **spec) -> dict:
    container = {"name": "main", "image": RUNTIME_IMAGE, "command": command}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 10,
            "containers": [container],
            **spec,
        },
    }


def phase(kubectl, ns: str, name: str) -> str | None:
    return get(kubectl, ns, "pod", name).get("status", {}).get("phase")


def scheduled_cond(kubectl, ns: str, name: str) -> dict | None:
    for c in get(kubectl, ns, "pod", name).get("status", {}).get("conditions") or []:
        if c["type"] == "PodScheduled":
            return c
    return None


# --- the control plane ---------------------------------------------------------------------------


def test_deployment_with_three_replicas_becomes_available(kubectl, namespace):
    deploy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{"name": "main", "image": RUNTIME_IMAGE, "command": ["sleep", "600"]}],
                },
            },
        },
    }
    apply(kubectl, namespace, deploy)
    kubectl("-n", namespace, "wait", "--for=condition=Available", "deploy/web", "--timeout=60s")
    assert get(kubectl, namespace, "deploy", "web")["status"]["availableReplicas"] == 3


def test_job_completes(kubectl, namespace):
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "once"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {"name": "main", "image": RUNTIME_IMAGE, "command": ["sh", "-c", "echo done"]}
                    ],
                }
            },
        },
    }
    apply(kubectl, namespace, job)
    kubectl("-n", namespace, "wait", "--for=condition=Complete", "job/once", "--timeout=60s")


def test_gpu_pod_lands_on_the_requested_product(kubectl, namespace):
    p = pod(
        "h100",
        ["sleep", "600"],
        nodeSelector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        tolerations=[GPU_TOLERATION],
        container={"resources": {"limits": {"nvidia.com/gpu": "2"}}},
    )
    apply(kubectl, namespace, p)
    node = wait_for(lambda: get(kubectl, namespace, "pod", "h100")["spec"].get("nodeName"), 30, "binding")
    assert node.startswith("gpu-sim-")
    wait_for(lambda: phase(kubectl, namespace, "h100") == "Running", 30, "kwok to run the pod")


def test_pod_asking_nine_gpus_stays_pending_unschedulable(kubectl, namespace):
    p = pod("nine", ["sleep", "600"], tolerations=[GPU_TOLERATION],
            container={"resources": {"limits": {"nvidia.com/gpu": "9"}}})  # fmt: skip
    apply(kubectl, namespace, p)
    cond = wait_for(lambda: scheduled_cond(kubectl, namespace, "nine"), 30, "the scheduler's verdict")
    assert cond["status"] == "False" and cond["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in cond["message"]
    assert phase(kubectl, namespace, "nine") == "Pending"


def test_gpu_pod_without_toleration_never_lands_on_a_gpu_node(kubectl, namespace):
    p = pod("notol", ["sleep", "600"], container={"resources": {"limits": {"nvidia.com/gpu": "1"}}})
    apply(kubectl, namespace, p)
    cond = wait_for(lambda: scheduled_cond(kubectl, namespace, "notol"), 30, "the scheduler's verdict")
    assert cond["reason"] == "Unschedulable"
    assert "untolerated taint" in cond["message"] and "nvidia.com/gpu" in cond["message"]
    assert not get(kubectl, namespace, "pod", "notol")["spec"].get("nodeName")


def _list_pods_as(cluster, token: str, ns: str) -> int:
    import ssl
    import urllib.error

    ctx = ssl.create_default_context(cafile=str(cluster.pki / "ca.crt"))
    req = urllib.request.Request(f"https://127.0.0.1:{cluster.ports.apiserver}/api/v1/namespaces/{ns}/pods",
                                 headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_serviceaccount_without_role_is_forbidden(dev_cluster, namespace, k8s_api):
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="nobody"))
    )
    token = core.create_namespaced_service_account_token(
        "nobody", namespace, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
    ).status.token
    assert _list_pods_as(dev_cluster, token, namespace) == 403
    # and with a Role that allows it, the same token may list pods: the 403 above was RBAC, not a broken token
    rbac = client.RbacAuthorizationV1Api(k8s_api)
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "list-pods"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "nobody-list-pods"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "list-pods"},
            "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": namespace}],
        },
    )
    wait_for(lambda: _list_pods_as(dev_cluster, token, namespace) == 200, 10, "RBAC to allow it")


def test_pod_token_is_a_real_serviceaccount_token(kubectl, namespace):
    """The runner projects a TokenRequest token: the pod's own API call is judged by RBAC (403)."""
    script = (
        "import os, ssl, sys, urllib.request, urllib.error\n"
        "d = '/var/run/secrets/kubernetes.io/serviceaccount'\n"
        "token = open(d + '/token').read(); ns = open(d + '/namespace').read()\n"
        "ctx = ssl.create_default_context(cafile=d + '/ca.crt')\n"
        "url = f\"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}\"\n"
        "auth = {'Authorization': 'Bearer ' + token}\n"
        "req = urllib.request.Request(url + f'/api/v1/namespaces/{ns}/secrets', headers=auth)\n"
        "try:\n"
        "    urllib.request.urlopen(req, context=ctx)\n"
        "    sys.exit(10)\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code, e.read().decode()[:300])\n"
        "    sys.exit(0 if e.code == 403 else 11)\n"
    )
    apply(kubectl, namespace, pod("whoami", ["python", "-c", script]))
    wait_for(lambda: phase(kubectl, namespace, "whoami") in ("Succeeded", "Failed"), 30, "the pod to finish")
    st = get(kubectl, namespace, "pod", "whoami")["status"]
    assert st["phase"] == "Succeeded", st["containerStatuses"][0]["state"]


# --- the local pod runner ------------------------------------------------------------------------


@pytest.fixture
def volume(dev_cluster, namespace) -> Path:
    return create_volume(dev_cluster, "data", namespace)


def test_pod_writes_into_a_pvc_and_succeeds(kubectl, namespace, volume):
    p = pod(
        "writer",
        ["sh", "-c", "echo written by $(POD_NAME) > /data/out.txt"],
        nodeSelector={"kubernetes.io/hostname": "cpu-local-0"},
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        container={
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        },
    )
    apply(kubectl, namespace, p)
    wait_for(lambda: phase(kubectl, namespace, "writer") == "Succeeded", 30, "the pod to succeed")
    assert (volume / "out.txt").read_text() == "written by writer\n"


def test_read_only_mount_is_really_read_only(kubectl, namespace, volume):
    (volume / "model.txt").write_text("weights")
    p = pod(
        "reader",
        ["sh", "-c", "cat /m/model.txt && echo x > /m/new.txt"],
        volumes=[{"name": "m", "persistentVolumeClaim": {"claimName": "data", "readOnly": True}}],
        container={"volumeMounts": [{"name": "m", "mountPath": "/m", "readOnly": True}]},
    )
    apply(kubectl, namespace, p)
    wait_for(lambda: phase(kubectl, namespace, "reader") == "Failed", 30, "the write to fail the pod")
    assert not (volume / "new.txt").exists()


def test_failing_command_fails_the_pod_with_its_exit_code(kubectl, namespace):
    p = pod("fails", ["sh", "-c", "echo 'bad dataset' > /dev/termination-log; exit 65"])
    apply(kubectl, namespace, p)
    wait_for(lambda: phase(kubectl, namespace, "fails") == "Failed", 30, "the pod to fail")
    term = get(kubectl, namespace, "pod", "fails")["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 65
    assert term["reason"] == "Error"
    assert term["message"] == "bad dataset"


def test_http_server_pod_becomes_ready_and_answers_at_its_pod_ip(kubectl, namespace):
    p = pod(
        "web",
        ["python", "-m", "http.server", "--bind", "$(POD_IP)", "8080"],
        container={
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
            "workingDir": "/tmp",
        },
    )
    apply(kubectl, namespace, p)
    kubectl("-n", namespace, "wait", "--for=condition=Ready", "pod/web", "--timeout=60s")
    ip = get(kubectl, namespace, "pod", "web")["status"]["podIP"]
    with urllib.request.urlopen(f"http://{ip}:8080/", timeout=5) as r:
        assert r.status == 200


def test_deleted_pod_gets_sigterm(kubectl, namespace, volume):
    script = (
        "import pathlib, signal, sys, time\n"
        "def term(*_):\n"
        "    pathlib.Path('/data/got-sigterm').write_text('yes')\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, term)\n"
        "pathlib.Path('/data/started').write_text('1')\n"
        "time.sleep(600)\n"
    )
    p = pod("graceful", ["python", "-c", script],
            volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
            container={"volumeMounts": [{"name": "data", "mountPath": "/data"}]})  # fmt: skip
    apply(kubectl, namespace, p)
    wait_for(lambda: (volume / "started").exists(), 30, "the process to start")
    kubectl("-n", namespace, "delete", "pod", "graceful", "--wait=true", "--timeout=30s")
    assert (volume / "got-sigterm").read_text() == "yes"


def test_runner_refuses_other_images(kubectl, namespace):
    p = pod("foreign", ["true"], nodeSelector={"kubernetes.io/hostname": "cpu-local-0"})
    p["spec"]["containers"][0]["image"] = "docker.io/library/busybox:latest"
    apply(kubectl, namespace, p)

    def waiting():
        st = get(kubectl, namespace, "pod", "foreign").get("status", {}).get("containerStatuses") or []
        return st and st[0]["state"].get("waiting")

    w = wait_for(waiting, 30, "the runner's verdict")
    assert w["reason"] == "ErrImageNotAllowed"
    assert "busybox" in w["message"]


def test_volume_sources_stay_reachable_under_a_covering_mount(kubectl, namespace, volume, dev_cluster):
    """An emptyDir mounted over the folder that holds the checkout and its volumes (e.g. /tmp) must hide
    neither the other volumes' sources nor the "image" (the venv and the project's code)."""
    (volume / "hello.txt").write_text("still here")
    cover = "/" + dev_cluster.state.parts[1]  # "/work" or "/tmp": the top folder above .cluster/volumes
    p = pod(
        "covered",
        # the venv's python and the project's code live under the covered folder too: the "image" stays
        [
            "python",
            "-c",
            "import tts_runtime, shutil; shutil.copy('/data/hello.txt', '/dev/termination-log')",
        ],
        volumes=[
            {"name": "scratch", "emptyDir": {}},
            {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
        ],
        container={
            "volumeMounts": [{"name": "scratch", "mountPath": cover}, {"name": "data", "mountPath": "/data"}]
        },
    )
    apply(kubectl, namespace, p)
    wait_for(lambda: phase(kubectl, namespace, "covered") in ("Succeeded", "Failed"), 30, "the pod to finish")
    st = get(kubectl, namespace, "pod", "covered")["status"]
    assert st["phase"] == "Succeeded", st["containerStatuses"][0]["state"]
    assert st["containerStatuses"][0]["state"]["terminated"]["message"] == "still here"
