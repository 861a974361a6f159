"""ReadWriteOnce dev volumes behave like a CSI volume's: one node at a time. A pod on a second node
waits in ContainerCreating with the Warning Event ``FailedAttachVolume`` (Kubernetes' Multi-Attach
error) and starts once the first node's pods are gone; pods on one node share the volume; a
ReadWriteMany volume (the default) is mounted everywhere at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from support.waiting import Pending, wait_for
from tts_devcluster.volumes import create_volume, pv_name_for

ROOT = Path(__file__).resolve().parents[2]
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def pod(name: str, namespace: str, node: str, claim: str, script: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": [GPU_TOLERATION],
            "terminationGracePeriodSeconds": 1,
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": "tts-runtime:dev",
                    "command": ["sh", "-c", script],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }
            ],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
        },
    }


def get_pod(kubectl, namespace: str, name: str) -> dict[str, Any]:
    return json.loads(kubectl("-n", namespace, "get", "pod", name, "-o", "json").stdout)


def running(kubectl, namespace: str, name: str) -> bool | Pending:
    p = get_pod(kubectl, namespace, name)
    phase = p.get("status", {}).get("phase")
    assert phase not in ("Failed", "Succeeded"), f"pod {name} ended: {p.get('status')}"
    return phase == "Running" or Pending(f"{name}: {phase} {_waiting(p)}")


def _waiting(p: dict[str, Any]) -> dict[str, Any]:
    statuses = p.get("status", {}).get("containerStatuses") or [{}]
    return statuses[0].get("state", {}).get("waiting") or {}


def attach_events(kubectl, namespace: str, name: str) -> list[dict[str, Any]]:
    out = kubectl(
        "-n",
        namespace,
        "get",
        "events",
        "--field-selector",
        f"involvedObject.name={name},reason=FailedAttachVolume",
        "-o",
        "json",
    )
    return list(json.loads(out.stdout)["items"])


def test_a_rwo_claim_is_attached_to_one_node_at_a_time(dev_cluster, namespace: str, kubectl) -> None:
    folder = create_volume(dev_cluster, "data", namespace, mode="RWO")
    pv = pv_name_for("data", namespace)
    pvc = json.loads(kubectl("-n", namespace, "get", "pvc", "data", "-o", "json").stdout)
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert json.loads(kubectl("get", "pv", pv, "-o", "json").stdout)["spec"]["accessModes"] == [
        "ReadWriteOnce"
    ]

    hold = "echo from-cpu > /data/note && exec sleep 600"
    for name in ("holder-a", "holder-b"):  # two pods on one node share it
        kubectl("apply", "-f", "-", input=yaml.safe_dump(pod(name, namespace, "cpu-local-0", "data", hold)))
    for name in ("holder-a", "holder-b"):
        wait_for(lambda n=name: running(kubectl, namespace, n), 60, f"{name} running on cpu-local-0")

    reader = pod("reader", namespace, "gpu-local-0", "data", "cat /data/note && exec sleep 600")
    kubectl("apply", "-f", "-", input=yaml.safe_dump(reader))
    message = f'Multi-Attach error for volume "{pv}" Volume is already used by pod(s) holder-a, holder-b'
    (event,) = wait_for(
        lambda: attach_events(kubectl, namespace, "reader"), 30, "the FailedAttachVolume Event"
    )
    assert event["type"] == "Warning" and event["message"] == message, event
    assert (
        event["involvedObject"]["kind"] == "Pod" and event["source"]["component"] == "attachdetach-controller"
    )
    p = get_pod(kubectl, namespace, "reader")
    assert p["status"]["phase"] == "Pending" and p["spec"]["nodeName"] == "gpu-local-0"
    assert _waiting(p) == {"reason": "ContainerCreating", "message": message}
    assert not list((Path(dev_cluster.state) / "pods").glob(f"{namespace}_reader_*/main.log")), "it ran"

    # one holder gone: the other still holds it, and the message says so
    kubectl("-n", namespace, "delete", "pod", "holder-a", "--wait=true", "--timeout=60s")
    wait_for(
        lambda: any(
            e["message"].endswith("used by pod(s) holder-b")
            for e in attach_events(kubectl, namespace, "reader")
        ),
        30,
        "the Event naming holder-b alone",
    )
    assert get_pod(kubectl, namespace, "reader")["status"]["phase"] == "Pending"

    # the first node's pods gone: the volume moves and the pod starts, with the data
    kubectl("-n", namespace, "delete", "pod", "holder-b", "--wait=true", "--timeout=60s")
    wait_for(
        lambda: running(kubectl, namespace, "reader"),
        60,
        "reader running on gpu-local-0 once the holders are gone",
    )
    assert (folder / "note").read_text().strip() == "from-cpu"

    # and now it is the first node that waits
    kubectl("apply", "-f", "-", input=yaml.safe_dump(pod("late", namespace, "cpu-local-0", "data", hold)))
    (late,) = wait_for(lambda: attach_events(kubectl, namespace, "late"), 30, "the Event of the late pod")
    assert late["message"].endswith("Volume is already used by pod(s) reader")


def test_a_finished_pod_releases_the_volume_and_kwok_pods_hold_it(
    dev_cluster, namespace: str, kubectl
) -> None:
    create_volume(dev_cluster, "ckpt", namespace, mode="ReadWriteOnce")
    # a pod that finished (Succeeded) holds nothing, though its object stays
    kubectl(
        "apply",
        "-f",
        "-",
        input=yaml.safe_dump(pod("done", namespace, "cpu-local-0", "ckpt", "echo done > /data/x")),
    )
    wait_for(
        lambda: get_pod(kubectl, namespace, "done")["status"].get("phase") == "Succeeded",
        60,
        "done to succeed",
    )
    kubectl(
        "apply",
        "-f",
        "-",
        input=yaml.safe_dump(pod("next", namespace, "gpu-local-0", "ckpt", "exec sleep 600")),
    )
    wait_for(lambda: running(kubectl, namespace, "next"), 60, "next running on the other node")
    assert attach_events(kubectl, namespace, "next") == []
    kubectl("-n", namespace, "delete", "pod", "next", "--wait=true", "--timeout=60s")

    # a pod on a simulated (kwok) node holds the volume while it has not finished
    kubectl(
        "apply", "-f", "-", input=yaml.safe_dump(pod("sim", namespace, "gpu-sim-0", "ckpt", "exec sleep 600"))
    )
    wait_for(lambda: running(kubectl, namespace, "sim"), 60, "the kwok pod running")
    kubectl(
        "apply",
        "-f",
        "-",
        input=yaml.safe_dump(pod("local", namespace, "cpu-local-0", "ckpt", "exec sleep 600")),
    )
    (event,) = wait_for(
        lambda: attach_events(kubectl, namespace, "local"), 30, "the Event naming the kwok pod"
    )
    assert event["message"].endswith("Volume is already used by pod(s) sim")
    kubectl("-n", namespace, "delete", "pod", "sim", "--wait=true", "--timeout=60s")
    wait_for(lambda: running(kubectl, namespace, "local"), 60, "local running once the kwok pod is gone")


def test_rwx_volumes_are_mounted_on_every_node_at_once(dev_cluster, namespace: str, kubectl) -> None:
    create_volume(dev_cluster, "shared", namespace)  # the default: ReadWriteMany
    pvc = json.loads(kubectl("-n", namespace, "get", "pvc", "shared", "-o", "json").stdout)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for name, node in (("one", "cpu-local-0"), ("two", "gpu-local-0")):
        kubectl(
            "apply", "-f", "-", input=yaml.safe_dump(pod(name, namespace, node, "shared", "exec sleep 600"))
        )
    for name in ("one", "two"):
        wait_for(lambda n=name: running(kubectl, namespace, n), 60, f"{name} running")
    assert attach_events(kubectl, namespace, "two") == []


def cli(cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tts_operator.cli", "dev", "volume", *args],
        cwd=ROOT,
        env={**os.environ, "TTS_CLUSTER_DIR": str(cluster.state)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_dev_volume_create_access_mode(dev_cluster, namespace: str, kubectl) -> None:
    out = cli(dev_cluster, "create", "rwo", "-n", namespace, "--access-mode", "ReadWriteOnce")
    assert out.returncode == 0, out.stderr
    pvc = json.loads(kubectl("-n", namespace, "get", "pvc", "rwo", "-o", "json").stdout)
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"] and pvc["status"]["phase"] == "Bound"
    # again: reused
    assert cli(dev_cluster, "create", "rwo", "-n", namespace, "--access-mode", "rwo").returncode == 0

    out = cli(dev_cluster, "create", "rwo", "-n", namespace, "--access-mode", "RWX")
    assert out.returncode == 1
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "exists with access mode ReadWriteOnce, not ReadWriteMany" in lines[0], (
        out.stderr
    )

    out = cli(dev_cluster, "create", "x", "-n", namespace, "--access-mode", "sometimes")
    assert out.returncode == 1 and "unknown access mode 'sometimes'" in out.stderr
