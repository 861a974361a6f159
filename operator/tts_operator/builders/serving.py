"""The children of a VoiceModel, as manifests: the Deployment running ``tts-runtime serve`` (its pod
template carries the serve spec: ``serve_spec_file``), its Service, and a PodDisruptionBudget when
there is more than one replica.

All are named after the VoiceModel (``<name>``; api.VOICEMODEL_NAME_MAX keeps pod
names whole), carry the ``app.kubernetes.io/*`` labels plus ``tts-operator.dev/voicemodel`` and a
controller owner reference, so deleting the VoiceModel garbage-collects them.

The version a Deployment runs (its *template version*) is an input, not read from the spec: during a
rollback it is the last good version, and under HotSwap it stays what the pods were started with
while the operator reloads them in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tts_contract import uris
from tts_contract.contract import API_GROUP, Paths, ServerSettings, ServeSpec, VoiceSpec
from tts_operator import api
from tts_operator.builders import common
from tts_operator.settings import Settings

VOICEMODEL_LABEL = f"{API_GROUP}/voicemodel"
#: the model version a pod template runs (label and annotation on the template)
VERSION_LABEL = f"{API_GROUP}/version"
#: what the operator last saw a pod serve (from its /readyz), with the container restart count it
#: saw it at: a restarted container reloads its template version, making the record stale
LOADED_VERSION_ANNOTATION = f"{API_GROUP}/loaded-version"
LOADED_RESTARTS_ANNOTATION = f"{API_GROUP}/loaded-restarts"
#: on the Deployment: the version whose rollout failed and the spec generation it failed under,
#: so a failed version is not retried until the spec changes again
FAILED_VERSION_ANNOTATION = f"{API_GROUP}/failed-version"
FAILED_GENERATION_ANNOTATION = f"{API_GROUP}/failed-generation"
FAILED_REASON_ANNOTATION = f"{API_GROUP}/failed-reason"
#: on the pod template: changed (to the spec generation) when the pods must be replaced although
#: their template version is already the desired one (pods a hot swap left on another version)
RESTART_ANNOTATION = f"{API_GROUP}/restarted-for-generation"

SERVER_CONTAINER = "server"
#: the init container fetching the template's version from a uri source
FETCH_CONTAINER = "fetch-model"
#: under a uri source's prefix: uploaded voices, shared by the replicas
VOICES_PREFIX = "_voices"
SERVE_SPEC_KEY = "serve.json"
#: the pod template's annotation holding the serve spec (shown to the server as a file)
SERVE_SPEC_ANNOTATION = f"{API_GROUP}/serve-spec"
AUTH_TOKEN_FILE = "token"
PORT_NAME = "http"
COMPONENT = "serving"
#: seconds a terminating pod keeps serving so Services and clients stop sending to it first
PRESTOP_SECONDS = 5
#: on top of the longest request: uvicorn's own shutdown and process exit
SHUTDOWN_MARGIN_SECONDS = 15


@dataclass(frozen=True)
class ModelLocation:
    """Where a VoiceModel's version directories live: a claim and the folder in it, or an s3://
    prefix and the Secret to read it with (resolved from ``model.volume`` / ``model.uri``, or from
    a TrainingRun's export)."""

    claim_name: str | None = None
    sub_path: str = ""
    uri: str | None = None
    secret_name: str | None = None

    def version_uri(self, version: str) -> str:
        assert self.uri is not None
        return str(uris.parse(self.uri).child(version))

    def voices_uri(self, ident: Identity) -> str:
        """The shared voice store: ``<prefix>/_voices/<namespace>/<name>`` (never a version: version
        names start with a letter or digit)."""
        assert self.uri is not None
        return str(uris.parse(self.uri).child(VOICES_PREFIX, ident.namespace, ident.name))


@dataclass(frozen=True)
class Identity:
    name: str
    namespace: str
    uid: str

    @classmethod
    def of(cls, vm: api.VoiceModel) -> Identity:
        return cls(vm.metadata.name, vm.metadata.namespace or "default", vm.metadata.uid or "")


# --- names ---------------------------------------------------------------------------------------


def deployment_name(vm: str) -> str:
    return vm


def service_name(vm: str) -> str:
    return vm


def pdb_name(vm: str) -> str:
    return vm


def endpoint(vm: api.VoiceModel) -> str:
    ident = Identity.of(vm)
    return f"http://{service_name(ident.name)}.{ident.namespace}.svc:{vm.spec.server.port}"


# --- metadata ------------------------------------------------------------------------------------


def labels(ident: Identity) -> dict[str, str]:
    return common.labels("tts-serving", ident.name, COMPONENT, VOICEMODEL_LABEL)


def selector(ident: Identity) -> dict[str, str]:
    """The pods of this VoiceModel (stable: a Deployment's selector is immutable)."""
    return {"app.kubernetes.io/instance": ident.name, VOICEMODEL_LABEL: ident.name}


def pod_selector_text(name: str) -> str:
    return f"{VOICEMODEL_LABEL}={name},app.kubernetes.io/component={COMPONENT}"


def _meta(ident: Identity, name: str) -> dict[str, Any]:
    owner = common.owner_reference(api.VOICEMODEL.kind, ident.name, ident.uid)
    return common.object_meta(name, ident.namespace, labels(ident), owner)


# --- the serve spec ------------------------------------------------------------------------------


def request_timeout_seconds() -> float:
    return ServerSettings().request_timeout_seconds


def serve_spec(vm: api.VoiceModel, version: str, location: ModelLocation | None = None) -> ServeSpec:
    """The contract's ServeSpec for the server: paths are the pod's mount points.

    voices and server are carried field by field (``ApiModel.carry``: same wire names); the rest is
    mapped or set here. tests/unit/test_contract_mapping.py pins the whole mapping. A uri source
    gives the pods the prefix to fetch other versions from (a hot swap) and the shared voice store.
    """
    server = vm.spec.server
    uri_source = location is not None and location.uri is not None
    return ServeSpec(
        model_uri=location.uri if location is not None and uri_source else None,
        voices_uri=location.voices_uri(Identity.of(vm)) if location is not None and uri_source else None,
        engine=vm.spec.engine,
        models_root=Paths.MODEL,
        version=version,
        device_policy=vm.spec.device_policy,
        voices=[v.carry(VoiceSpec) for v in vm.spec.voices],
        voices_dir=f"{Paths.SCRATCH}/voices",
        server=server.carry(
            ServerSettings,
            auth_token_file=f"{Paths.AUTH_TOKEN_DIR}/{AUTH_TOKEN_FILE}" if server.auth_secret_ref else None,
        ),
    )


def serve_spec_file(
    vm: api.VoiceModel, version: str, location: ModelLocation | None = None
) -> common.SpecFile:
    """The serve spec of ``version`` as a pod template carries it (``Paths.SERVE_SPEC`` in the
    pod): each pod reads the spec of its own template, so a pod restarted mid-rollout comes back
    as what it was, and a change of voices or server settings rolls the pods (a file they read at
    start would otherwise change under them unread)."""
    spec = serve_spec(vm, version, location).model_dump(by_alias=True, exclude_none=True, mode="json")
    return common.SpecFile(SERVE_SPEC_ANNOTATION, SERVE_SPEC_KEY, spec)


# --- the Deployment ------------------------------------------------------------------------------


def rolling_update(strategy: api.RolloutStrategy) -> dict[str, Any]:
    """Availability and HotSwap (whose fallback is a rolling update) surge one new pod and never
    drop below the ready count; ResourceAware stops one old pod first to free its GPU."""
    if strategy == api.RolloutStrategy.RESOURCE_AWARE:
        return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}


def _probes(port: int) -> dict[str, Any]:
    def get(path: str) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": PORT_NAME}}

    return {
        # the process answers /healthz at once while the model loads in the background; a big
        # model may take minutes, so liveness waits for the first answer rather than a fixed delay
        "startupProbe": {**get("/healthz"), "periodSeconds": 2, "failureThreshold": 150, "timeoutSeconds": 2},
        # ready only when the template's version is loaded, the GPU preflight passed and a warm-up
        # synthesis worked (the runtime's /readyz); checked often so new pods take traffic quickly
        "readinessProbe": {**get("/readyz"), "periodSeconds": 2, "failureThreshold": 2, "timeoutSeconds": 2},
        "livenessProbe": {**get("/healthz"), "periodSeconds": 10, "failureThreshold": 3, "timeoutSeconds": 5},
    }


def pod_template(
    vm: api.VoiceModel, version: str, location: ModelLocation, settings: Settings
) -> dict[str, Any]:
    spec = vm.spec
    ident = Identity.of(vm)
    port = spec.server.port
    spec_file = serve_spec_file(vm, version, location)
    inits: list[dict[str, Any]] = []
    if location.uri is None:
        assert location.claim_name is not None
        volumes: list[dict[str, Any]] = [common.pvc("models", location.claim_name, read_only=True)]
        mounts = [common.mount("models", Paths.MODEL, True, location.sub_path or None)]
    else:
        # the version is fetched into the pod and verified before the server starts; the server
        # may fetch another one there (a hot swap), so the folder stays writable
        volumes = [{"name": "models", "emptyDir": {}}]
        mounts = [common.mount("models", Paths.MODEL, False)]
        inits.append(
            common.fetch_container(
                FETCH_CONTAINER,
                settings.runtime_image,
                location.version_uri(version),
                f"{Paths.MODEL}/{version}",
                [common.mount("models", Paths.MODEL, False), common.mount("scratch", Paths.SCRATCH, False)],
                secret_name=location.secret_name,
                manifest=True,
            )
        )
    volumes += [spec_file.volume("serve-spec"), {"name": "scratch", "emptyDir": {}}]
    mounts += [
        common.mount("serve-spec", Paths.SPEC_DIR, True),
        common.mount("scratch", Paths.SCRATCH, False),
    ]
    auth = spec.server.auth_secret_ref
    if auth is not None:
        volumes.append(
            {
                "name": "auth",
                "secret": {"secretName": auth.name, "items": [{"key": auth.key, "path": AUTH_TOKEN_FILE}]},
            }
        )
        mounts.append(common.mount("auth", Paths.AUTH_TOKEN_DIR, True))
    assert f"{Paths.SPEC_DIR}/{SERVE_SPEC_KEY}" == Paths.SERVE_SPEC
    container: dict[str, Any] = {
        "name": SERVER_CONTAINER,
        "image": settings.runtime_image,
        # --version: the template's version, as its spec file names it too
        "command": ["tts-runtime", "serve", "--spec", Paths.SERVE_SPEC, "--version", version],
        # bind the pod IP: correct everywhere, and required where pods share a network namespace
        "args": ["--host", "$(POD_IP)", "--port", str(port)],
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": Paths.SERVE_SPEC_ENV, "value": Paths.SERVE_SPEC},
            *common.scratch_env(),
        ],
        # a uri source: the server fetches hot-swapped versions and keeps uploaded voices there
        **common.secret_env(location.secret_name if location.uri is not None else None),
        "ports": [{"name": PORT_NAME, "containerPort": port, "protocol": "TCP"}],
        "volumeMounts": mounts,
        "securityContext": common.container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        # keep serving while endpoints drop the pod; then SIGTERM lets in-flight requests finish
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SECONDS}}},
        **_probes(port),
    }
    resources = common.container_resources(spec.resources, settings.gpu_resource, with_gpus=True)
    if resources:
        container["resources"] = resources
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,  # the server needs no API access
        "securityContext": common.pod_security_context(),
        **({"initContainers": inits} if inits else {}),
        "containers": [container],
        "volumes": volumes,
        # longer than the longest request plus the preStop pause: draining never cuts a synthesis
        "terminationGracePeriodSeconds": int(request_timeout_seconds())
        + PRESTOP_SECONDS
        + SHUTDOWN_MARGIN_SECONDS,
    }
    common.place_pod(pod_spec, spec.resources, spec.scheduling)
    # replicas on different nodes where the cluster allows (a node lost takes one replica, not all);
    # ScheduleAnyway: a one-node cluster still runs them all. Counted per ReplicaSet, so a rollout's
    # new pods spread among themselves too.
    pod_spec["topologySpreadConstraints"] = [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector(ident)},
            "matchLabelKeys": ["pod-template-hash"],
        }
    ]
    return {
        "metadata": {
            "labels": {**labels(ident), VERSION_LABEL: version},
            "annotations": {VERSION_LABEL: version, **spec_file.annotations()},
        },
        "spec": pod_spec,
    }


def deployment(
    vm: api.VoiceModel,
    version: str,
    location: ModelLocation,
    settings: Settings,
    *,
    autoscaled: bool = False,
    failed: tuple[str, int, str] | None = None,
    restart: str | None = None,
) -> dict[str, Any]:
    """The serving Deployment running ``version``.

    ``autoscaled``: a HorizontalPodAutoscaler owns the replica count, so it is left out.
    ``failed``: (version, generation, reason) of a failed rollout, kept as annotations.
    ``restart``: the pod template's restart token (a new value rolls every pod, like
    ``kubectl rollout restart``); kept from the Deployment as it is otherwise.
    """
    ident = Identity.of(vm)
    meta = _meta(ident, deployment_name(ident.name))
    meta["annotations"] = {VERSION_LABEL: version}
    if failed is not None:
        meta["annotations"].update(
            {
                FAILED_VERSION_ANNOTATION: failed[0],
                FAILED_GENERATION_ANNOTATION: str(failed[1]),
                FAILED_REASON_ANNOTATION: failed[2][:1024],
            }
        )
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector(ident)},
        "strategy": rolling_update(vm.spec.rollout.strategy),
        "progressDeadlineSeconds": vm.spec.rollout.progress_deadline_seconds,
        "revisionHistoryLimit": 3,
        "template": pod_template(vm, version, location, settings),
    }
    if restart is not None:
        spec["template"]["metadata"].setdefault("annotations", {})[RESTART_ANNOTATION] = restart
    if not autoscaled:
        spec["replicas"] = vm.spec.replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": spec}


def service(vm: api.VoiceModel) -> dict[str, Any]:
    ident = Identity.of(vm)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(ident, service_name(ident.name)),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(ident),
            "ports": [
                {"name": PORT_NAME, "port": vm.spec.server.port, "targetPort": PORT_NAME, "protocol": "TCP"}
            ],
        },
    }


def pod_disruption_budget(vm: api.VoiceModel) -> dict[str, Any] | None:
    """At most one pod drained at a time, for replicas > 1 (with one replica a PDB would block node
    drains forever)."""
    if vm.spec.replicas <= 1:
        return None
    ident = Identity.of(vm)
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(ident, pdb_name(ident.name)),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(ident)}},
    }
