"""Pod and metadata pieces every child builder shares: labels, owner references, the restricted
security context, scratch space for a read-only root filesystem, volumes, and GPU scheduling.

Both kinds (TrainingRun and VoiceModel) describe resources and scheduling with the same API models
(``api.Resources``, ``api.Scheduling``), so one function per concept serves both.
"""

from __future__ import annotations

import json
from typing import Any

from tts_contract.contract import Paths
from tts_operator import api
from tts_operator.settings import MANAGED_BY

GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
#: the taint GPU nodes carry (NVIDIA's GPU operator and the dev cluster); its key is fixed by
#: convention even when GPUs are requested under another resource name
GPU_TAINT_KEY = "nvidia.com/gpu"
#: uid/gid of the runtime image's unprivileged user
RUNTIME_UID = 1000


# --- metadata ------------------------------------------------------------------------------------


def labels(app: str, instance: str, component: str, owner_label: str) -> dict[str, str]:
    """The ``app.kubernetes.io/*`` set plus ``owner_label`` (e.g. tts-operator.dev/voicemodel) = instance."""
    return {
        "app.kubernetes.io/name": app,
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        owner_label: instance,
    }


def owner_reference(kind: str, name: str, uid: str) -> dict[str, Any]:
    """A controller reference: deleting the parent garbage-collects the child."""
    return {
        "apiVersion": api.API_GROUP_VERSION,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(
    name: str, namespace: str, child_labels: dict[str, str], owner: dict[str, Any]
) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": child_labels, "ownerReferences": [owner]}


# --- security ------------------------------------------------------------------------------------


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUNTIME_UID,
        "runAsGroup": RUNTIME_UID,
        # volumes become group-writable for the unprivileged user
        "fsGroup": RUNTIME_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
    }


def scratch_env() -> list[dict[str, str]]:
    """With a read-only root filesystem every library that caches to $HOME must look in /tmp."""
    return [
        {"name": "HOME", "value": Paths.SCRATCH},
        {"name": "XDG_CACHE_HOME", "value": f"{Paths.SCRATCH}/.cache"},
        {"name": "MPLCONFIGDIR", "value": f"{Paths.SCRATCH}/.matplotlib"},
        {"name": "NUMBA_CACHE_DIR", "value": f"{Paths.SCRATCH}/.numba"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]


# --- volumes -------------------------------------------------------------------------------------


def pvc(name: str, claim: str, read_only: bool) -> dict[str, Any]:
    return {"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}


def mount(name: str, path: str, read_only: bool, sub_path: str | None = None) -> dict[str, Any]:
    m: dict[str, Any] = {"name": name, "mountPath": path, "readOnly": read_only}
    if sub_path:
        m["subPath"] = sub_path
    return m


class SpecFile:
    """A pod's spec file (the contract's RunSpec or ServeSpec, as JSON) carried by the pod template
    itself: an annotation holds the JSON and a downward-API volume shows it to the container as
    ``<volume's mount point>/<file>``. No ConfigMap to create, read or keep in step: a pod always
    reads the spec of its own template (a Job's template is immutable; a Deployment's pods change
    with it), and a spec change rolls the pods that read it. Annotations hold up to 256 KiB in all;
    a spec is a few KiB."""

    def __init__(self, annotation: str, file: str, spec: dict[str, Any]) -> None:
        self.annotation, self.file = annotation, file
        self.text = json.dumps(spec, indent=2, sort_keys=True) + "\n"

    def annotations(self) -> dict[str, str]:
        """For the pod template's ``metadata.annotations``."""
        return {self.annotation: self.text}

    def volume(self, name: str) -> dict[str, Any]:
        item = {"path": self.file, "fieldRef": {"fieldPath": f"metadata.annotations['{self.annotation}']"}}
        return {"name": name, "downwardAPI": {"items": [item]}}


def join_path(*parts: str | None) -> str:
    """Slash-joined path segments, empty ones dropped ("" for none): subPaths never start with '/'."""
    segments = [s for p in parts for s in (p or "").strip("/").split("/") if s]
    return "/".join(segments)


# --- GPU scheduling ------------------------------------------------------------------------------


def node_selector(resources: api.Resources, scheduling: api.Scheduling) -> dict[str, str]:
    selector = dict(scheduling.node_selector)
    if resources.gpu_product:
        selector[GPU_PRODUCT_LABEL] = resources.gpu_product
    return selector


def tolerations(scheduling: api.Scheduling, gpu_toleration: bool) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = []
    if gpu_toleration:
        result.append({"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"})
    result.extend(t.wire() for t in scheduling.tolerations)
    return result


def container_resources(resources: api.Resources, gpu_resource: str, with_gpus: bool) -> dict[str, Any]:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if resources.cpu:
        requests["cpu"] = limits["cpu"] = resources.cpu
    if resources.memory:
        requests["memory"] = limits["memory"] = resources.memory
    if with_gpus and resources.gpus > 0:
        # extended resources: the limit is the request (the scheduler copies it)
        limits[gpu_resource] = str(resources.gpus)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def place_pod(pod_spec: dict[str, Any], resources: api.Resources, scheduling: api.Scheduling) -> None:
    """Add nodeSelector (gpuProduct), tolerations (the GPU taint when GPUs are asked for) and the
    priority class to ``pod_spec``; empty ones are left out so manifests stay minimal."""
    selector = node_selector(resources, scheduling)
    if selector:
        pod_spec["nodeSelector"] = selector
    tols = tolerations(scheduling, gpu_toleration=resources.gpus > 0)
    if tols:
        pod_spec["tolerations"] = tols
    if scheduling.priority_class_name:
        pod_spec["priorityClassName"] = scheduling.priority_class_name
