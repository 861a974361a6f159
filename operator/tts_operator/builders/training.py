"""The children of a TrainingRun, as manifests: ServiceAccount + Role + RoleBinding (status
reporting), the training Job (its pod template carries the run spec: ``run_spec_file``) and the
export Job.

Every child is named after the run (``<run>-train``, ``<run>-export``, ``<run>-trainer``;
api.TRAININGRUN_NAME_MAX keeps them within Kubernetes limits), carries the ``app.kubernetes.io/*``
labels plus ``tts-operator.dev/trainingrun`` and a controller owner reference, so deleting the run
garbage-collects them while the volumes stay.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from tts_contract import uris
from tts_contract.contract import (
    API_GROUP,
    PERMANENT_EXIT_CODES,
    DatasetSpec,
    DevicePolicy,
    Engine,
    Paths,
    RunRef,
    RunSpec,
    SampleSpec,
    TrainingSpec,
)
from tts_operator import api
from tts_operator.builders import common
from tts_operator.builders.common import container_security_context, pod_security_context, scratch_env
from tts_operator.builders.common import mount as _mount
from tts_operator.builders.common import pvc as _pvc
from tts_operator.settings import Settings

RUN_LABEL = f"{API_GROUP}/trainingrun"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
TRAINER_CONTAINER = "trainer"
EXPORT_CONTAINER = "export"
RUN_SPEC_KEY = "run.json"
#: the training pod template's annotation holding the run spec (shown to the trainer as a file)
RUN_SPEC_ANNOTATION = f"{API_GROUP}/run-spec"
TERMINATION_LOG = common.TERMINATION_LOG
#: the init container fetching a base model given as a uri
FETCH_BASE_MODEL = "fetch-base-model"
#: the training pod's first init container with an s3:// export: the version must not exist yet
CHECK_EXPORT = "check-export"
#: in the run's folder: the best checkpoint as a servable model directory (what export reads)
BEST_MODEL_DIR = "model"


@dataclass(frozen=True)
class RunIdentity:
    """What the builders need from a run's metadata."""

    name: str
    namespace: str
    uid: str

    @classmethod
    def of(cls, run: api.TrainingRun) -> RunIdentity:
        return cls(run.metadata.name, run.metadata.namespace or "default", run.metadata.uid or "")


# --- names ---------------------------------------------------------------------------------------


def job_name(run: str) -> str:
    return f"{run}-train"


def export_job_name(run: str) -> str:
    return f"{run}-export"


def trainer_account_name(run: str) -> str:
    return f"{run}-trainer"


def export_version(run: api.TrainingRun) -> str:
    """The version directory the run exports to: spec.export.version, else the run's name."""
    return run.spec.export.version or run.metadata.name


def run_dir(spec_sub_path: str | None, ident: RunIdentity) -> str:
    """The run's folder on the checkpoints volume: ``<subPath>/<namespace>/<name>``."""
    return common.join_path(spec_sub_path, ident.namespace, ident.name)


def checkpoints_uri(run: api.TrainingRun) -> str | None:
    """The run's folder in object storage, ``<checkpoints uri>/<namespace>/<name>`` (None: a volume)."""
    uri = run.spec.checkpoints.uri
    if uri is None:
        return None
    ident = RunIdentity.of(run)
    return str(uris.parse(uri).child(ident.namespace, ident.name))


def _checkpoints_volume(
    run: api.TrainingRun, read_only: bool
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(volume, mount, envFrom) of the run's folder: the claim at the run's folder, or a pod-local
    emptyDir the runtime fills from (and mirrors to) object storage with the checkpoints Secret."""
    checkpoints = run.spec.checkpoints
    if checkpoints.volume is not None:
        ident = RunIdentity.of(run)
        return (
            _pvc("checkpoints", checkpoints.volume.claim_name, read_only=read_only),
            _mount("checkpoints", Paths.CHECKPOINTS, read_only, run_dir(checkpoints.volume.sub_path, ident)),
            {},
        )
    secret = checkpoints.secret_ref.name if checkpoints.secret_ref else None
    return (
        {"name": "checkpoints", "emptyDir": {}},
        _mount("checkpoints", Paths.CHECKPOINTS, read_only),
        common.secret_env(secret),
    )


def export_path(run: api.TrainingRun) -> str:
    """Where the version goes (status.output.path): its path inside the export volume, or its URI
    (``<export uri>/<version>``)."""
    export = run.spec.export
    if export.uri is not None:
        return str(uris.parse(export.uri).child(export_version(run)))
    assert export.volume is not None
    return common.join_path(export.volume.sub_path, export_version(run))


# --- metadata ------------------------------------------------------------------------------------


def labels(ident: RunIdentity, component: str) -> dict[str, str]:
    return common.labels("tts-training", ident.name, component, RUN_LABEL)


def owner_reference(ident: RunIdentity) -> dict[str, Any]:
    return common.owner_reference(api.TRAININGRUN.kind, ident.name, ident.uid)


def _meta(ident: RunIdentity, name: str, component: str) -> dict[str, Any]:
    return common.object_meta(name, ident.namespace, labels(ident, component), owner_reference(ident))


# --- the run spec --------------------------------------------------------------------------------


def run_spec(run: api.TrainingRun) -> RunSpec:
    """The contract's RunSpec for the training pod: paths are the pod's mount points.

    dataset, training and samples are carried field by field (``ApiModel.carry``: same wire names);
    the rest is mapped or set here. tests/unit/test_contract_mapping.py pins the whole mapping.
    """
    spec = run.spec
    ident = RunIdentity.of(run)
    return RunSpec(
        run=RunRef(namespace=ident.namespace, name=ident.name, uid=ident.uid),
        engine=Engine(spec.engine),
        dataset=spec.dataset.carry(DatasetSpec, path=Paths.DATASET),
        training=spec.training.carry(TrainingSpec),
        samples=spec.samples.carry(SampleSpec) if spec.samples else None,
        base_model_path=Paths.BASE_MODEL if spec.base_model is not None else None,
        output_path=Paths.CHECKPOINTS,
        checkpoints_uri=checkpoints_uri(run),
        device_policy=DevicePolicy(spec.device_policy),
        gpus=spec.resources.gpus,
        tensorboard=spec.tensorboard.enabled,
        report_status=True,
    )


def run_spec_file(run: api.TrainingRun) -> common.SpecFile:
    """The run spec as the training pod template carries it (``Paths.RUN_SPEC`` in the pod). The
    spec is immutable (admission) and so is a Job's template: the file never changes under the
    trainer, and a retried pod reads the very spec its first attempt did."""
    spec = run_spec(run).model_dump(by_alias=True, exclude_none=True, mode="json")
    return common.SpecFile(RUN_SPEC_ANNOTATION, RUN_SPEC_KEY, spec)


# --- status reporting: least privilege ----------------------------------------------------------


def trainer_service_account(ident: RunIdentity) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(ident, trainer_account_name(ident.name), "training"),
    }


def trainer_role(ident: RunIdentity) -> dict[str, Any]:
    """get/patch on this run's status only: a compromised pod cannot touch other runs or specs."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(ident, trainer_account_name(ident.name), "training"),
        "rules": [
            {
                "apiGroups": [API_GROUP],
                "resources": [f"{api.TRAININGRUN.plural}/status"],
                "resourceNames": [ident.name],
                "verbs": ["get", "patch"],
            }
        ],
    }


def trainer_role_binding(ident: RunIdentity) -> dict[str, Any]:
    name = trainer_account_name(ident.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(ident, name, "training"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ident.namespace}],
    }


# --- pod pieces shared by both Jobs ---------------------------------------------------------------


def _place(pod_spec: dict[str, Any], spec: api.TrainingRunSpec) -> None:
    common.place_pod(pod_spec, spec.resources, spec.scheduling)


def container_resources(spec: api.TrainingRunSpec, gpu_resource: str, with_gpus: bool) -> dict[str, Any]:
    return common.container_resources(spec.resources, gpu_resource, with_gpus)


# --- the training Job ----------------------------------------------------------------------------


def training_job(run: api.TrainingRun, settings: Settings) -> dict[str, Any]:
    spec = run.spec
    ident = RunIdentity.of(run)
    spec_file = run_spec_file(run)
    ckpt_volume, ckpt_mount, ckpt_env = _checkpoints_volume(run, read_only=False)
    volumes: list[dict[str, Any]] = [
        ckpt_volume,
        spec_file.volume("run-spec"),
        {"name": "scratch", "emptyDir": {}},
    ]
    mounts = [
        ckpt_mount,
        _mount("run-spec", Paths.SPEC_DIR, True),
        _mount("scratch", Paths.SCRATCH, False),
    ]
    inits = _read_locations(spec, settings, volumes, mounts, dataset=True)
    if spec.export.uri is not None:
        inits.insert(0, check_export_container(run, settings))
    assert f"{Paths.SPEC_DIR}/{RUN_SPEC_KEY}" == Paths.RUN_SPEC

    container: dict[str, Any] = {
        "name": TRAINER_CONTAINER,
        "image": settings.runtime_image,
        "command": ["tts-runtime", "train", "--spec", Paths.RUN_SPEC],
        "env": [{"name": Paths.RUN_SPEC_ENV, "value": Paths.RUN_SPEC}, *scratch_env()],
        # checkpoints in object storage: the trainer restores and mirrors its folder itself
        **ckpt_env,
        "volumeMounts": mounts,
        "securityContext": container_security_context(),
        # a crash's last log lines become the failure message in status
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    resources = container_resources(spec, settings.gpu_resource, with_gpus=True)
    if resources:
        container["resources"] = resources

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",  # retries are new pods, counted by the Job (attempts)
        "serviceAccountName": trainer_account_name(ident.name),
        "automountServiceAccountToken": True,
        "securityContext": pod_security_context(),
        **({"initContainers": inits} if inits else {}),
        "containers": [container],
        "volumes": volumes,
        # the trainer checkpoints on SIGTERM: give it time to write one
        "terminationGracePeriodSeconds": 120,
    }
    _place(pod_spec, spec)

    meta = _meta(ident, job_name(ident.name), "training")
    queue = spec.scheduling.queue_name
    if queue:
        meta["labels"][KUEUE_QUEUE_LABEL] = queue
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        # created suspended when Kueue admits it (Kueue unsuspends on admission) or when the run is
        "suspend": bool(spec.suspend or queue),
        "podFailurePolicy": {
            "rules": [
                {
                    # bad input, a failed GPU preflight, an artifact missing, denied or corrupt:
                    # retrying cannot help (any container: the fetchers' codes count too)
                    "action": "FailJob",
                    "onExitCodes": {
                        "operator": "In",
                        "values": sorted(int(c) for c in PERMANENT_EXIT_CODES),
                    },
                },
                # preemption, eviction, node drain: not the run's fault, not counted as an attempt
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]
        },
        "template": {
            "metadata": {"labels": labels(ident, "training"), "annotations": spec_file.annotations()},
            "spec": pod_spec,
        },
    }
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}


def check_export_container(run: api.TrainingRun, settings: Settings) -> dict[str, Any]:
    """``tts-runtime publish --check`` of the version the run will export, before anything is
    fetched or trained: a version that exists (VersionExists), credentials the store refuses
    (AccessDenied) or a store that stays down end the run in seconds instead of after its training.
    It reads one object (HEAD manifest.json); the export's own check and its conditional put still
    guard a version published while the run trains. The export's credentials reach this container
    only, never the trainer."""
    export = run.spec.export
    return {
        "name": CHECK_EXPORT,
        "image": settings.runtime_image,
        "command": ["tts-runtime", "publish", "--check", "--to", export_path(run)],
        "env": scratch_env(),
        **common.secret_env(export.secret_ref.name if export.secret_ref else None),
        "volumeMounts": [_mount("scratch", Paths.SCRATCH, False)],
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


# --- the export Job ------------------------------------------------------------------------------


def _read_locations(
    spec: api.TrainingRunSpec,
    settings: Settings,
    volumes: list[dict[str, Any]],
    mounts: list[dict[str, Any]],
    *,
    dataset: bool,
    base_model_uri: str | None = None,
) -> list[dict[str, Any]]:
    """Adds the base model (and the dataset) to a pod's volumes and mounts; returns the init
    containers fetching those given as a uri (``base_model_uri``: the base model's, pinned)."""
    inits: list[dict[str, Any]] = []
    wanted: list[tuple[str, api.ArtifactLocation | None, str]] = [
        ("base-model", spec.base_model, Paths.BASE_MODEL)
    ]
    if dataset:
        wanted.insert(0, ("dataset", spec.dataset, Paths.DATASET))
    for name, location, path in wanted:
        if location is None:
            continue
        pinned = base_model_uri if name == "base-model" else None
        volume, mount, init = common.location_volume(
            name, location, path, True, settings.runtime_image, pinned
        )
        volumes.append(volume)
        mounts.append(mount)
        if init is not None:
            inits.append(init)
    return inits


def export_command(run: api.TrainingRun) -> list[str]:
    """``tts-runtime export`` of the trainer's best model, its manifest as the termination message.

    The operator mounts no user volume, so the pod hands the manifest back through its
    termination message (read from the pod status; a few hundred bytes per file, well under the
    4 KiB limit for the handful of files a version holds). With an s3:// export the version is
    written to the pod's scratch space, then ``tts-runtime publish`` uploads it (refusing an
    existing version, manifest.json last); the manifest becomes the termination message only
    after the upload.
    """
    ident = RunIdentity.of(run)
    argv = [
        "tts-runtime",
        "export",
        f"{Paths.CHECKPOINTS}/{BEST_MODEL_DIR}",
        Paths.EXPORT,
        "--version",
        export_version(run),
        "--source-run",
        f"{ident.namespace}/{ident.name}",
        "--json",
    ]
    if run.spec.base_model is not None:
        resolved = run.status.resolved_base_model if run.status is not None else None
        argv += ["--base", Paths.BASE_MODEL, "--base-model-source", run.spec.base_model.lineage(resolved)]
    argv += ["--dataset-source", run.spec.dataset.lineage()]
    if run.spec.export.uri is None:
        script = f"set -e; {shlex.join(argv)} > {TERMINATION_LOG}"
    else:
        report = f"{Paths.SCRATCH}/manifest.json"
        publish = [
            "tts-runtime",
            "publish",
            "--from",
            f"{Paths.EXPORT}/{export_version(run)}",
            "--to",
            export_path(run),
        ]
        script = (
            f"set -e; {shlex.join(argv)} > {report}; {shlex.join(publish)}; cat {report} > {TERMINATION_LOG}"
        )
    return ["sh", "-c", script]


def export_job(run: api.TrainingRun, settings: Settings) -> dict[str, Any]:
    spec = run.spec
    ident = RunIdentity.of(run)
    export = spec.export
    ckpt_volume, ckpt_mount, _ = _checkpoints_volume(run, read_only=True)
    volumes: list[dict[str, Any]] = [
        ckpt_volume,
        # an s3:// export is written to the pod first, then uploaded
        _pvc("export", export.volume.claim_name, read_only=False)
        if export.volume is not None
        else {"name": "export", "emptyDir": {}},
        {"name": "scratch", "emptyDir": {}},
    ]
    mounts = [
        ckpt_mount,
        _mount("export", Paths.EXPORT, False, export.volume.sub_path if export.volume is not None else None),
        _mount("scratch", Paths.SCRATCH, False),
    ]
    # the base model the training pod fetched: a hub branch that moved since stays where it was
    resolved = run.status.resolved_base_model if run.status is not None else None
    inits = _read_locations(spec, settings, volumes, mounts, dataset=False, base_model_uri=resolved)
    run_uri = checkpoints_uri(run)
    if run_uri is not None:
        # the best model the trainer wrote, from the run's folder in object storage
        checkpoints = spec.checkpoints
        inits.insert(
            0,
            common.fetch_container(
                "fetch-checkpoints",
                settings.runtime_image,
                str(uris.parse(run_uri).child(BEST_MODEL_DIR)),
                f"{Paths.CHECKPOINTS}/{BEST_MODEL_DIR}",
                [_mount("checkpoints", Paths.CHECKPOINTS, False), _mount("scratch", Paths.SCRATCH, False)],
                secret_name=checkpoints.secret_ref.name if checkpoints.secret_ref else None,
            ),
        )
    container: dict[str, Any] = {
        "name": EXPORT_CONTAINER,
        "image": settings.runtime_image,
        "command": export_command(run),
        "env": scratch_env(),
        **common.secret_env(export.secret_ref.name if export.secret_ref else None),
        "volumeMounts": mounts,
        "securityContext": container_security_context(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    resources = container_resources(spec, settings.gpu_resource, with_gpus=False)
    if resources:
        container["resources"] = resources
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # the export pod needs no API access
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(),
        **({"initContainers": inits} if inits else {}),
        "containers": [container],
        "volumes": volumes,
    }
    # same placement as training (no GPU): ReadWriteOnce volumes are reachable where training ran
    _place(pod_spec, spec)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(ident, export_job_name(ident.name), "export"),
        "spec": {
            # an existing version is never overwritten, so a retry after a half-finished attempt
            # fails loudly rather than silently: one retry covers a lost node
            "backoffLimit": 1,
            "podFailurePolicy": {
                "rules": [
                    {
                        # bad input, the version exists already, an artifact missing, denied or
                        # corrupt: a retry cannot help
                        "action": "FailJob",
                        "onExitCodes": {
                            "operator": "In",
                            "values": sorted(int(c) for c in PERMANENT_EXIT_CODES),
                        },
                    },
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]
            },
            "template": {"metadata": {"labels": labels(ident, "export")}, "spec": pod_spec},
        },
    }


def children(run: api.TrainingRun, settings: Settings) -> list[dict[str, Any]]:
    """What a run needs before its Job can start (independent of one another: created together),
    then the Job, last: a Job whose pods find no ServiceAccount fails to start them."""
    ident = RunIdentity.of(run)
    return [
        trainer_service_account(ident),
        trainer_role(ident),
        trainer_role_binding(ident),
        training_job(run, settings),
    ]
