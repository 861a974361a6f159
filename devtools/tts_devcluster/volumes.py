"""`tts-operator dev volume create`: a PersistentVolume backed by a folder under `.cluster/volumes/`
and a PersistentVolumeClaim that the real PV controller binds to it (pinned with `volumeName`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tts_devcluster.cluster import DevCluster

STORAGE_CLASS = "local-dev"
#: on each PV: the namespace of its claim (PVs are cluster-scoped and outlive the namespace)
NAMESPACE_LABEL = "tts-operator.dev/volume-namespace"


def volume_manifests(name: str, namespace: str, path: Path, size: str = "10Gi") -> list[dict]:
    pv_name = f"{namespace}-{name}"[:253]
    labels = {"app.kubernetes.io/managed-by": "tts-operator-dev"}
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": pv_name, "labels": {**labels, NAMESPACE_LABEL: namespace}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteMany", "ReadWriteOnce", "ReadOnlyMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": STORAGE_CLASS,
            "hostPath": {"path": str(path), "type": "Directory"},
            "claimRef": {"namespace": namespace, "name": name},
        },
    }
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "storageClassName": STORAGE_CLASS,
            "volumeName": pv_name,
            "resources": {"requests": {"storage": size}},
        },
    }
    return [pv, pvc]


def create_volume(
    cluster: DevCluster, name: str, namespace: str, from_dir: Path | None = None, size: str = "10Gi"
) -> Path:
    """Create (or reuse) the volume and return its local folder."""
    path = cluster.state / "volumes" / namespace / name
    path.mkdir(parents=True, exist_ok=True)
    if from_dir is not None:
        shutil.copytree(from_dir, path, dirs_exist_ok=True)
    cluster.kubectl(
        "apply", "-f", "-", input=yaml.safe_dump_all(volume_manifests(name, namespace, path, size))
    )
    cluster.kubectl(
        "-n", namespace, "wait", "--for=jsonpath={.status.phase}=Bound", f"pvc/{name}", "--timeout=60s"
    )
    return path


def delete_volumes(cluster: DevCluster, namespace: str) -> None:
    """Remove the volumes ``create_volume`` made for ``namespace``: the PVs (cluster-scoped, left
    behind by a namespace's deletion) and their folders. Pods still using them are being deleted
    with their namespace; removing a folder under a dying process is harmless."""
    selector = f"{NAMESPACE_LABEL}={namespace}"
    cluster.kubectl("delete", "pv", "-l", selector, "--ignore-not-found", "--wait=false", check=False)
    shutil.rmtree(cluster.state / "volumes" / namespace, ignore_errors=True)
