"""`tts-operator dev volume create|delete`: a PersistentVolume backed by a folder under
`.cluster/volumes/` and a PersistentVolumeClaim that the real PV controller binds to it (pinned with
`volumeName`)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tts_devcluster.cluster import DevCluster

STORAGE_CLASS = "local-dev"
#: on each PV: the namespace of its claim (PVs are cluster-scoped and outlive the namespace)
NAMESPACE_LABEL = "tts-operator.dev/volume-namespace"
#: the label on every PV and PVC made here
MANAGED = "app.kubernetes.io/managed-by=tts-operator-dev"
#: how long ``create_volume`` waits for the claim to bind
BIND_TIMEOUT = 60
#: the access modes a dev volume can have, with their short names. ReadWriteMany (the default) is a
#: shared folder any pod on any node mounts; ReadWriteOnce and ReadWriteOncePod attach to one node
#: at a time, as a CSI block volume does (podattach.py: the Multi-Attach error), and
#: ReadWriteOncePod to one pod (the scheduler keeps a second one Pending).
ACCESS_MODES = {
    "ReadWriteMany": "RWX",
    "ReadWriteOnce": "RWO",
    "ReadOnlyMany": "ROX",
    "ReadWriteOncePod": "RWOP",
}
DEFAULT_ACCESS_MODE = "ReadWriteMany"


def access_mode(name: str) -> str:
    """``name`` or its short form (RWO, RWX, ROX, RWOP) as the API spells it; ValueError otherwise."""
    for mode, short in ACCESS_MODES.items():
        if name in (mode, short) or name.lower() in (mode.lower(), short.lower()):
            return mode
    choices = ", ".join(f"{m} ({s})" for m, s in ACCESS_MODES.items())
    raise ValueError(f"unknown access mode {name!r}: one of {choices}")


class VolumeError(RuntimeError):
    """A dev volume that cannot be made or removed as asked: the message names the object and what
    to do."""


def pv_name_for(name: str, namespace: str) -> str:
    return f"{namespace}-{name}"[:253]


def volume_manifests(
    name: str, namespace: str, path: Path, size: str = "10Gi", mode: str = DEFAULT_ACCESS_MODE
) -> list[dict]:
    pv_name = pv_name_for(name, namespace)
    # a shared volume's PV offers every mode (a claim may ask for any); another mode's PV offers only
    # it: an RWO PV that also listed RWX would be attachable to several nodes (IsMultiAttachAllowed)
    pv_modes = ["ReadWriteMany", "ReadWriteOnce", "ReadOnlyMany"] if mode == "ReadWriteMany" else [mode]
    key, value = MANAGED.split("=")
    labels = {key: value}
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": pv_name, "labels": {**labels, NAMESPACE_LABEL: namespace}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": pv_modes,
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
            "accessModes": [mode],
            "storageClassName": STORAGE_CLASS,
            "volumeName": pv_name,
            "resources": {"requests": {"storage": size}},
        },
    }
    return [pv, pvc]


def _kubectl(cluster: DevCluster, *args: str, input: str | None = None) -> str:
    """kubectl's stdout; ``VolumeError`` with kubectl's own error line when it fails."""
    out = cluster.kubectl(*args, input=input, check=False)
    if out.returncode != 0:
        lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
        raise VolumeError(f"`kubectl {' '.join(args)}` failed: {lines[-1] if lines else out.returncode}")
    return str(out.stdout)


def _existing(cluster: DevCluster, name: str, namespace: str) -> dict[str, dict[str, Any]]:
    """The namespace, the PV and the PVC of volume ``namespace/name`` that exist, by kind (one
    kubectl call: this runs for every volume a test makes)."""
    out = _kubectl(
        cluster,
        "-n",
        namespace,
        "get",
        f"namespace/{namespace}",
        f"persistentvolume/{pv_name_for(name, namespace)}",
        f"persistentvolumeclaim/{name}",
        "-o",
        "json",
        "--ignore-not-found",
    )
    if not out.strip():
        return {}
    doc = json.loads(out)
    items = doc["items"] if doc.get("kind") == "List" else [doc]
    return {item["kind"]: item for item in items}


def create_volume(
    cluster: DevCluster,
    name: str,
    namespace: str,
    from_dir: Path | None = None,
    size: str = "10Gi",
    progress: Callable[[str], None] = lambda m: None,
    mode: str = DEFAULT_ACCESS_MODE,
) -> Path:
    """Create the volume and return its local folder. A claim this made before is reused (with
    its data); a PV whose claim was deleted (``Released``: its namespace was deleted, say) is bound
    to the new claim, with the data it kept. ``mode``: the access mode (``ACCESS_MODES``; short
    names too). ``VolumeError`` when the namespace does not exist, a claim of that name exists that
    is not a dev volume or has another access mode, or the claim does not bind."""
    try:
        mode = access_mode(mode)
    except ValueError as e:
        raise VolumeError(str(e)) from None
    if from_dir is not None and not from_dir.is_dir():
        raise VolumeError(f"--from {from_dir}: no such directory")
    pv_name = pv_name_for(name, namespace)
    found = _existing(cluster, name, namespace)
    if "Namespace" not in found:
        raise VolumeError(
            f"namespace {namespace} does not exist: create it first (kubectl create namespace {namespace})"
        )
    pvc, pv = found.get("PersistentVolumeClaim"), found.get("PersistentVolume")
    for obj in (found["Namespace"], pvc, pv):
        if obj is not None and obj["metadata"].get("deletionTimestamp"):
            what = f"{obj['kind']} {obj['metadata']['name']}"
            raise VolumeError(f"{what} is being deleted: wait until it is gone, then run this again")
    if pvc is not None and (
        pvc["spec"].get("volumeName") != pv_name or pvc["spec"].get("storageClassName") != STORAGE_CLASS
    ):
        bound = pvc["spec"].get("volumeName") or "no volume yet"
        raise VolumeError(
            f"PersistentVolumeClaim {namespace}/{name} already exists and is not a dev volume (bound to "
            f"{bound}): pick another name, or delete it (kubectl -n {namespace} delete pvc {name})"
        )
    if pvc is not None and (pvc["spec"].get("accessModes") or []) != [mode]:
        has = ", ".join(pvc["spec"].get("accessModes") or []) or "none"
        raise VolumeError(
            f"volume {namespace}/{name} exists with access mode {has}, not {mode} (a claim's modes "
            f"cannot change): `tts-operator dev volume delete {name} -n {namespace}` first"
        )
    path = cluster.state / "volumes" / namespace / name
    if pvc is not None:
        progress(f"volume {namespace}/{name} exists: reusing it and its data ({path})")
    elif pv is not None and ((pv["spec"].get("claimRef") or {}).get("uid")):
        # the claim it was bound to is gone (Released, or about to be): hand it to the new claim
        phase = (pv.get("status") or {}).get("phase", "Released")
        _kubectl(
            cluster,
            "patch",
            f"persistentvolume/{pv_name}",
            "--type=merge",
            "-p",
            json.dumps({"spec": {"claimRef": {"uid": None, "resourceVersion": None}}}),
        )
        progress(
            f"volume {namespace}/{name}: PersistentVolume {pv_name} was {phase} (its claim was deleted): "
            f"bound to the new claim with the data it kept in {path} "
            f"(`tts-operator dev volume delete {name} -n {namespace}` first for an empty one)"
        )
    path.mkdir(parents=True, exist_ok=True)
    if from_dir is not None:
        shutil.copytree(from_dir, path, dirs_exist_ok=True)
    _kubectl(
        cluster,
        "apply",
        "-f",
        "-",
        input=yaml.safe_dump_all(volume_manifests(name, namespace, path, size, mode)),
    )
    waited = cluster.kubectl(
        "-n",
        namespace,
        "wait",
        "--for=jsonpath={.status.phase}=Bound",
        f"pvc/{name}",
        f"--timeout={BIND_TIMEOUT}s",
        check=False,
    )
    if waited.returncode != 0:
        now = _existing(cluster, name, namespace)
        pv_phase = (now.get("PersistentVolume", {}).get("status") or {}).get("phase", "missing")
        problem = cluster.problem()
        raise VolumeError(
            f"PersistentVolumeClaim {namespace}/{name} is not Bound after {BIND_TIMEOUT}s (PersistentVolume "
            f"{pv_name}: {pv_phase}): "
            + (problem or f"`kubectl -n {namespace} describe pvc {name}` says why")
        )
    return path


def delete_volume(cluster: DevCluster, name: str, namespace: str) -> None:
    """Remove volume ``namespace/name``: its claim, its PV and its folder (the data)."""
    # a claim a pod still uses stays until the pod is gone (its pvc-protection finalizer)
    _kubectl(cluster, "-n", namespace, "delete", "pvc", name, "--ignore-not-found", "--timeout=60s")
    _kubectl(cluster, "delete", "pv", pv_name_for(name, namespace), "--ignore-not-found", "--timeout=60s")
    shutil.rmtree(cluster.state / "volumes" / namespace / name, ignore_errors=True)


def delete_volumes(cluster: DevCluster, namespace: str, wait: bool = False) -> int:
    """Remove the volumes ``create_volume`` made for ``namespace``: the PVs (cluster-scoped, left
    behind by a namespace's deletion) and their folders; returns how many PVs there were. Pods still
    using them are being deleted with their namespace; removing a folder under a dying process is
    harmless. ``wait``: return once the PVs are gone (volumes of the same names can then be made at
    once)."""
    if wait:  # the claims first: a PV stays while a claim is bound to it
        _kubectl(
            cluster, "-n", namespace, "delete", "pvc", "-l", MANAGED, "--ignore-not-found", "--timeout=60s"
        )
    waiting = ("--wait=true", "--timeout=60s") if wait else ("--wait=false",)
    out = cluster.kubectl(
        "delete",
        "pv",
        "-l",
        f"{NAMESPACE_LABEL}={namespace}",
        "--ignore-not-found",
        *waiting,
        "-o",
        "name",
        check=False,
    )
    shutil.rmtree(cluster.state / "volumes" / namespace, ignore_errors=True)
    return sum(1 for line in out.stdout.splitlines() if line.strip())
