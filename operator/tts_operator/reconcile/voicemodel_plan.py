"""What a VoiceModel's reconcile must do and say (pure: no I/O), derived from what exists: its
source (a TrainingRun's export or a volume), its Deployment and the Deployment's pods.

Level, not edge: ``resolve_source`` says where the versions live and which one is desired;
``plan`` says which version the Deployment must run (the desired one, the last good one after a
failed rollout, or the current one while HotSwap reloads pods in place); ``derive`` says what status
should read. Two facts cannot be observed again later, so they are remembered: the last good version
(in status) and a failed rollout (as annotations on the Deployment, which the operator owns; the
user's spec is never written).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tts_contract.contract import ARTIFACT_REASONS, PERMANENT_EXIT_CODES, ExitCode
from tts_operator import api
from tts_operator.api import ConditionType, RolloutStrategy, VoiceModelPhase
from tts_operator.builders import serving as builders
from tts_operator.builders.common import attaches_to_one_node, join_path
from tts_operator.reconcile.conditions import Cond

Phase = VoiceModelPhase

#: exit codes that fail a rollout at once: retrying the same version cannot help (the server's,
#: and the fetcher's for a uri source: the version missing, corrupt or denied)
PERMANENT_EXITS: dict[int, str] = {
    int(ExitCode.BAD_INPUT): "BadModel",
    int(ExitCode.PREFLIGHT_FAILED): "PreflightFailed",
    **{int(code): reason for code, reason in ARTIFACT_REASONS.items() if code in PERMANENT_EXIT_CODES},
}


# --- the model source ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where the versions are and which one the spec asks for; ``location`` None: not available."""

    location: builders.ModelLocation | None
    version: str | None
    available: Cond


def resolve_source(vm: api.VoiceModel, training_run: dict[str, Any] | None) -> Source:
    """``training_run``: the TrainingRun named by ``model.trainingRun`` (None: not found)."""
    model = vm.spec.model
    ctype = ConditionType.MODEL_AVAILABLE
    if model.volume is not None:
        version = vm.spec.version or ""
        location = builders.ModelLocation(model.volume.claim_name, join_path(model.volume.sub_path))
        where = f"{model.volume.claim_name}/{join_path(model.volume.sub_path, version)}"
        return Source(location, version, Cond(ctype, True, "VolumeSource", f"version {version} from {where}"))
    if model.uri is not None:
        version = vm.spec.version or ""
        secret = model.secret_ref.name if model.secret_ref else None
        location = builders.ModelLocation(uri=model.uri, secret_name=secret)
        where = location.version_uri(version)
        return Source(location, version, Cond(ctype, True, "UriSource", f"version {version} from {where}"))
    run_name = model.training_run or ""
    if training_run is None:
        msg = f"TrainingRun {run_name} not found"
        return Source(None, vm.spec.version, Cond(ctype, False, "TrainingRunNotFound", msg))
    output = (training_run.get("status") or {}).get("output") or {}
    if not output.get("version") or not output.get("path"):
        phase = (training_run.get("status") or {}).get("phase") or "Pending"
        msg = f"TrainingRun {run_name} has not exported a model yet (phase {phase})"
        return Source(None, vm.spec.version, Cond(ctype, False, "TrainingRunNotExported", msg))
    export = (training_run.get("spec") or {}).get("export") or {}
    exported = str(output["version"])
    version = vm.spec.version or exported
    path = str(output["path"])
    if export.get("uri"):
        # status.output.path is "<export uri>/<version>"
        secret = (export.get("secretRef") or {}).get("name")
        location = builders.ModelLocation(uri=str(export["uri"]), secret_name=secret)
        where = path
    else:
        claim = str((export.get("volume") or {}).get("claimName"))
        # status.output.path is "<export subPath>/<version>": the versions live in its parent folder
        location = builders.ModelLocation(claim, "/".join(path.strip("/").split("/")[:-1]))
        where = f"{claim}/{path}"
    if version != exported:
        # a run exports one version: any other is not its to vouch for, and rolling pods onto it
        # would only end in a failed rollout
        msg = (
            f"version {version} was not exported by TrainingRun {run_name}: it exported {exported} "
            f"to {where}; set spec.version to {exported}, or point model at the source of {version}"
        )
        return Source(None, version, Cond(ctype, False, "ArtifactNotFound", msg))
    msg = f"version {version} exported by TrainingRun {run_name} to {where}"
    return Source(location, version, Cond(ctype, True, "TrainingRunExported", msg))


def single_node_claim(vm: api.VoiceModel, source: Source) -> str | None:
    """The claim to look up when replicas may land on several nodes and read it (None: no need)."""
    location = source.location
    if vm.spec.replicas <= 1 or location is None or location.claim_name is None:
        return None
    return location.claim_name


def with_access_modes(source: Source, claim: str, modes: list[str] | None) -> Source:
    """``source``, its ModelAvailable condition warning when ``claim`` attaches to one node only:
    replicas scheduled elsewhere wait for it (a Multi-Attach error) and never become ready."""
    if not modes or not attaches_to_one_node(modes):
        return source
    cond = source.available
    warning = (
        f"{cond.message}; PersistentVolumeClaim {claim} is {'/'.join(modes)}: it attaches to one node, "
        "so replicas on other nodes wait for it (Multi-Attach error): use a ReadWriteMany or ReadOnlyMany "
        "claim, or serve from object storage (model.uri)"
    )
    return Source(source.location, source.version, Cond(cond.type, cond.status, "SingleNodeVolume", warning))


# --- pods ----------------------------------------------------------------------------------------


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("metadata") or {}


def _container_status(pod: dict[str, Any], name: str = builders.SERVER_CONTAINER) -> dict[str, Any]:
    status = pod.get("status") or {}
    for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        if cs.get("name") == name:
            return dict(cs)
    return {}


def restarts(pod: dict[str, Any]) -> int:
    return int(_container_status(pod).get("restartCount") or 0)


def live(pod: dict[str, Any]) -> bool:
    return not _meta(pod).get("deletionTimestamp")


def pod_ready(pod: dict[str, Any]) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or []
    return live(pod) and any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def template_version(pod_or_deployment: dict[str, Any] | None) -> str | None:
    return (_meta(pod_or_deployment or {}).get("annotations") or {}).get(builders.VERSION_LABEL)


def recorded_version(pod: dict[str, Any]) -> str | None:
    """What the operator last saw the pod serve, unless its container restarted since (a restarted
    server loads its template version again)."""
    ann = _meta(pod).get("annotations") or {}
    version = ann.get(builders.LOADED_VERSION_ANNOTATION)
    if version and ann.get(builders.LOADED_RESTARTS_ANNOTATION) == str(restarts(pod)):
        return str(version)
    return None


def pod_version(pod: dict[str, Any]) -> str | None:
    """The version a pod serves: recorded from its /readyz, else the one its template started."""
    return recorded_version(pod) or template_version(pod)


def pod_failure(pod: dict[str, Any]) -> tuple[str, str] | None:
    """(reason, message) when a pod cannot serve: a permanent exit code of its fetcher (the version
    missing, corrupt or denied) or server (bad model, failed GPU preflight), or a crash loop."""
    fetcher = _container_status(pod, builders.FETCH_CONTAINER)
    if fetcher:
        found = _container_failure(pod, fetcher)
        if found is not None:
            return found
    return _container_failure(pod, _container_status(pod))


def _container_failure(pod: dict[str, Any], cs: dict[str, Any]) -> tuple[str, str] | None:
    name = _meta(pod).get("name", "")
    for state in ((cs.get("state") or {}).get("terminated"), (cs.get("lastState") or {}).get("terminated")):
        if state and int(state.get("exitCode") or 0) in PERMANENT_EXITS:
            code = int(state["exitCode"])
            tail = (state.get("message") or "").strip().splitlines()
            detail = f": {tail[-1][:500]}" if tail else ""
            return PERMANENT_EXITS[code], f"pod {name} exited {code}{detail}"
    waiting = (cs.get("state") or {}).get("waiting") or {}
    last = (cs.get("lastState") or {}).get("terminated") or {}
    # without the last termination the exit code is unknown yet: a later status names it, and a
    # permanent code (above) says more than "crash loop"
    # the storage unreachable is not the version's fault: the kubelet retries the fetch with
    # back-off and the pod starts when the endpoint is back (or the progress deadline ends it)
    if int(last.get("exitCode") or 0) == ExitCode.STORAGE_UNREACHABLE:
        return None
    if waiting.get("reason") == "CrashLoopBackOff" and last:
        tail = (last.get("message") or "").strip().splitlines()
        detail = f": {tail[-1][:500]}" if tail else ""
        return "CrashLoop", f"pod {name} is crash-looping (exit {last.get('exitCode')}{detail})"
    return None


def deadline_exceeded(deployment: dict[str, Any] | None) -> str | None:
    for c in (deployment or {}).get("status", {}).get("conditions") or []:
        if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded":
            return str(c.get("message") or "the rollout missed its progress deadline")
    return None


def rollout_failure(
    deployment: dict[str, Any] | None, pods: list[dict[str, Any]], version: str
) -> tuple[str, str] | None:
    """Why the rollout of ``version`` failed, or None while it may still succeed."""
    for pod in pods:
        if live(pod) and template_version(pod) == version:
            found = pod_failure(pod)
            if found is not None:
                return found
    if template_version(deployment) == version:
        late = deadline_exceeded(deployment)
        if late is not None:
            return "ProgressDeadlineExceeded", late
    return None


# --- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failed:
    version: str
    generation: int
    reason: str

    def as_tuple(self) -> tuple[str, int, str]:
        return (self.version, self.generation, self.reason)


def failed_marker(deployment: dict[str, Any] | None) -> Failed | None:
    ann = _meta(deployment or {}).get("annotations") or {}
    version = ann.get(builders.FAILED_VERSION_ANNOTATION)
    if not version:
        return None
    try:
        generation = int(ann.get(builders.FAILED_GENERATION_ANNOTATION) or 0)
    except ValueError:
        generation = 0
    return Failed(str(version), generation, str(ann.get(builders.FAILED_REASON_ANNOTATION) or "Failed"))


@dataclass(frozen=True)
class Plan:
    #: the version the Deployment's pod template must run
    template_version: str
    #: a failed rollout to remember on the Deployment (None: none, or it no longer applies)
    failed: Failed | None = None
    #: this reconcile found the failure (post an Event, roll back)
    newly_failed: bool = False
    #: HotSwap: reload the ready pods to this version in place
    hot_swap: str | None = None
    #: replace the pods although the template already runs ``template_version`` (a hot swap left
    #: them on another version and cannot bring them back)
    replace_pods: bool = False


def plan(
    vm: api.VoiceModel,
    status: dict[str, Any],
    desired: str,
    deployment: dict[str, Any] | None,
    pods: list[dict[str, Any]],
) -> Plan:
    rollout = vm.spec.rollout
    last_good = status.get("lastGoodVersion")
    generation = vm.metadata.generation or 0
    current = template_version(deployment)

    def fall_back(failed: Failed, new: bool) -> Plan:
        target = last_good if rollout.auto_rollback and last_good and last_good != desired else desired
        return Plan(target, failed, new)

    marker = failed_marker(deployment)
    # a failed version stays failed until the spec asks for another one (setting it back to the
    # last good version is the fast path: that version is what the pods already run)
    if marker is not None and marker.version == desired:
        return fall_back(marker, False)
    if desired != last_good:
        found = rollout_failure(deployment, pods, desired)
        if found is not None:
            reason, message = found
            return fall_back(Failed(desired, generation, f"{reason}: {message}"), True)
    if (
        rollout.strategy == RolloutStrategy.HOT_SWAP
        and current is not None
        and settled(deployment)
        # the template is not the whole story: after a swap to v2 on a v1 template, setting the
        # version back to v1 leaves the template as it is, so the pods must be reloaded back
        and (current != desired or any(pod_ready(p) and pod_version(p) != desired for p in pods))
    ):
        return Plan(current, hot_swap=desired)
    if (
        current == desired
        and settled(deployment)
        and any(pod_ready(p) and pod_version(p) != desired for p in pods)
    ):
        # the strategy is no longer HotSwap, and pods still serve what a hot swap loaded
        return Plan(desired, replace_pods=True)
    return Plan(desired)


def swap_targets(pods: list[dict[str, Any]], version: str) -> list[dict[str, Any]]:
    """The pods a hot swap to ``version`` reloads: ready ones serving another version."""
    return [p for p in pods if pod_ready(p) and pod_version(p) != version]


def restart_token(deployment: dict[str, Any] | None) -> str | None:
    template = ((deployment or {}).get("spec") or {}).get("template") or {}
    return (_meta(template).get("annotations") or {}).get(builders.RESTART_ANNOTATION)


def settled(deployment: dict[str, Any] | None) -> bool:
    """The Deployment finished rolling out its current template: every replica updated and
    available, no old pods left."""
    if deployment is None:
        return False
    meta, spec, st = _meta(deployment), deployment.get("spec") or {}, deployment.get("status") or {}
    want = int(spec.get("replicas", 1))
    return (
        int(st.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
        and int(st.get("updatedReplicas") or 0) == want
        and int(st.get("availableReplicas") or 0) == want
        and int(st.get("replicas") or 0) == want
    )


# --- status --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Derived:
    phase: VoiceModelPhase
    reason: str
    message: str
    conditions: list[Cond]
    #: operator-owned status fields (None removes one)
    fields: dict[str, Any] = field(default_factory=dict)


def _phase_conditions(
    phase: Phase, reason: str, message: str, rolled_out: Cond, degraded: Cond, available: Cond
) -> list[Cond]:
    in_progress = phase in (Phase.PENDING, Phase.DEPLOYING)
    stuck = phase in (Phase.DEGRADED, Phase.FAILED)
    return [
        Cond(ConditionType.READY, phase == Phase.READY, reason, message),
        Cond(ConditionType.RECONCILING, in_progress, reason, message if in_progress else ""),
        Cond(ConditionType.STALLED, stuck, reason, message if stuck else ""),
        available,
        rolled_out,
        degraded,
    ]


def derive(
    vm: api.VoiceModel,
    status: dict[str, Any],
    source: Source,
    the_plan: Plan | None,
    deployment: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    device: dict[str, Any] | None = None,
) -> Derived:
    """What status should say. ``the_plan`` None: the source is not available (no Deployment)."""
    desired = source.version
    replicas = vm.spec.replicas
    if deployment is not None and "replicas" in (deployment.get("spec") or {}):
        replicas = int(deployment["spec"]["replicas"])  # an HPA may own the count
    live_pods = [p for p in pods if live(p)]
    ready_pods = [p for p in live_pods if pod_ready(p)]
    fields: dict[str, Any] = {
        "observedGeneration": vm.metadata.generation,
        "desiredVersion": desired,
        "endpoint": builders.endpoint(vm),
        "replicas": len(live_pods),
        "readyReplicas": len(ready_pods),
        "updatedReplicas": sum(1 for p in live_pods if desired and pod_version(p) == desired),
        "replicasText": api.replicas_text(len(ready_pods), replicas),
    }
    if device:
        fields["device"] = device
    serving = status.get("servingVersion")
    last_good = status.get("lastGoodVersion")
    versions = {pod_version(p) for p in ready_pods}
    rolled = the_plan is not None and settled(deployment) and len(versions) == 1
    if rolled:
        # every replica is available with one version: that is what is served now
        (serving,) = versions
        last_good = serving
    elif the_plan is not None and not ready_pods:
        serving = None
    fields["servingVersion"] = serving
    fields["lastGoodVersion"] = last_good
    ctype = ConditionType

    if the_plan is None:
        cond = source.available
        phase = Phase.PENDING
        return Derived(
            phase,
            cond.reason,
            cond.message,
            _phase_conditions(
                phase,
                cond.reason,
                cond.message,
                Cond(ctype.ROLLED_OUT, False, cond.reason, "no pods until the model is available"),
                Cond(ctype.DEGRADED, False, "NoFailure", ""),
                cond,
            ),
            fields,
        )

    failed = the_plan.failed
    template = the_plan.template_version
    if rolled and template != desired and not the_plan.hot_swap:
        rolled_out = Cond(ctype.ROLLED_OUT, True, "RolledBack", f"rolled back to {template} on every replica")
    elif rolled:
        rolled_out = Cond(ctype.ROLLED_OUT, True, "RolloutComplete", f"{serving} on every replica")
    else:
        rolled_out = Cond(ctype.ROLLED_OUT, False, "RollingOut", f"rolling out {template}")

    if failed is not None:
        now_serving = serving or "nothing"
        message = f"desired {failed.version} failed: {failed.reason}; serving {now_serving}"
        degraded = Cond(ctype.DEGRADED, True, failed.reason.split(":", 1)[0], message)
        phase = Phase.DEGRADED if ready_pods else Phase.FAILED
        reason = "RolledBack" if phase == Phase.DEGRADED and template != desired else "RolloutFailed"
        return Derived(
            phase,
            reason,
            message,
            _phase_conditions(phase, reason, message, rolled_out, degraded, source.available),
            fields,
        )
    degraded = Cond(ctype.DEGRADED, False, "NoFailure", "")
    if rolled and serving == desired:
        phase, reason = Phase.READY, "Serving"
        message = f"serving {desired} on {len(ready_pods)}/{replicas} replicas"
    elif the_plan.hot_swap:
        phase, reason = Phase.DEPLOYING, "HotSwapping"
        # the template's version says little here: after earlier swaps the pods serve another one
        message = f"reloading pods in place to {the_plan.hot_swap}" + (
            f"; serving {serving}" if serving else ""
        )
    else:
        phase, reason = Phase.DEPLOYING, "RollingOut"
        message = (
            f"rolling out {template}: {fields['updatedReplicas']} updated, {len(ready_pods)}/{replicas} ready"
            + (f"; serving {serving}" if serving else "")
        )
    return Derived(
        phase,
        reason,
        message,
        _phase_conditions(phase, reason, message, rolled_out, degraded, source.available),
        fields,
    )


# --- events --------------------------------------------------------------------------------------


def transition_event(status: dict[str, Any], derived: Derived) -> tuple[str, str, str] | None:
    """(type, reason, message) of the Event for a change of phase or of its reason."""
    prev_phase = status.get("phase")
    ready = {c.get("type"): c for c in status.get("conditions") or []}.get(ConditionType.READY) or {}
    if prev_phase == derived.phase.value and ready.get("reason") == derived.reason:
        return None
    warn = derived.phase in (Phase.DEGRADED, Phase.FAILED)
    kind = "Warning" if warn else "Normal"
    return kind, derived.reason, f"{prev_phase or 'New'} -> {derived.phase.value}: {derived.message}"
