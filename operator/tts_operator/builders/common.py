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


#: access modes a claim attaches with to one node only (block storage: EBS, Persistent Disk, ...)
SINGLE_NODE_MODES = frozenset({"ReadWriteOnce", "ReadWriteOncePod"})


def attaches_to_one_node(modes: list[str] | None) -> bool:
    """Whether a claim with these access modes can be mounted on one node at a time only."""
    return bool(modes) and set(modes or ()) <= SINGLE_NODE_MODES


def pod_claims(pod: dict[str, Any]) -> list[str]:
    """The PersistentVolumeClaims a pod (a dict, camelCase) mounts."""
    volumes = (pod.get("spec") or {}).get("volumes") or []
    return [v["persistentVolumeClaim"]["claimName"] for v in volumes if v.get("persistentVolumeClaim")]


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


# --- artifact locations --------------------------------------------------------------------------


def secret_env(secret_name: str | None) -> dict[str, Any]:
    """``envFrom`` for a location's credentials: the Secret's keys are the contract's StorageEnv
    variable names. Only the containers that fetch or upload get it; the operator never reads it."""
    return {"envFrom": [{"secretRef": {"name": secret_name}}]} if secret_name else {}


def fetch_container(
    name: str,
    image: str,
    uri: str,
    dest: str,
    mounts: list[dict[str, Any]],
    *,
    secret_name: str | None = None,
    sha256: str | None = None,
    manifest: bool = False,
    result_file: str | None = None,
) -> dict[str, Any]:
    """An init container running ``tts-runtime fetch``: ``uri`` into ``dest`` (a pod-local
    emptyDir), verified (``manifest``: every file against the version's manifest.json; ``sha256``:
    the https download), before the main container starts. It ends with the contract's exit code
    for each failure (ArtifactNotFound, AccessDenied, ChecksumMismatch, StorageUnreachable) and a
    one-line termination message naming the uri, never a secret."""
    command = ["tts-runtime", "fetch", "--from", uri, "--to", dest]
    if sha256:
        command += ["--sha256", sha256]
    if manifest:
        command.append("--manifest")
    if result_file:
        command += ["--result-file", result_file]
    return {
        "name": name,
        "image": image,
        "command": command,
        "env": scratch_env(),
        **secret_env(secret_name),
        "volumeMounts": mounts,
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


#: where a fetcher reports what it fetched (the hub commit a revision resolved to): its
#: termination message, which the operator reads from the pod's status
TERMINATION_LOG = "/dev/termination-log"


def location_volume(
    name: str,
    location: api.ArtifactLocation,
    mount_path: str,
    read_only: bool,
    image: str,
    uri: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """(volume, mount, init container or None) for a read location: a volume is mounted as it is;
    a uri is fetched by an init container ``fetch-<name>`` into an emptyDir mounted at the same path
    (``uri``: instead of the location's, e.g. a hub revision pinned to the commit fetched before).
    A hub fetch reports its resolved commit as its termination message."""
    if location.volume is not None:
        return (
            pvc(name, location.volume.claim_name, read_only),
            mount(name, mount_path, read_only, location.volume.sub_path),
            None,
        )
    assert location.uri is not None
    uri = uri or location.uri
    init = fetch_container(
        f"fetch-{name}",
        image,
        uri,
        mount_path,
        [mount(name, mount_path, False), mount("scratch", Paths.SCRATCH, False)],
        secret_name=location.secret_ref.name if location.secret_ref else None,
        sha256=location.sha256,
        result_file=TERMINATION_LOG if uri.startswith("hf://") else None,
    )
    return {"name": name, "emptyDir": {}}, mount(name, mount_path, read_only), init


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
