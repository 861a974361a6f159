"""What a TrainingRun's reconcile must do and say, decided from what exists (pure: no I/O).

``plan`` is the one entry point: the children to create or suspend, whether to promote, whether to
wait for a predecessor's pods, and the status and Events that follow. Level, not edge: ``derive``
looks at the current state of the world and the run's previous status (only for what cannot be
observed any more: a terminal phase is sticky, an exported run whose Job was deleted stays
exported) and says what the operator-owned status fields should be, which conditions hold, and
which children are missing. The trainer owns progress, checkpoints, best and
samples; they are read here (for progressText) but never written.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from tts_contract.contract import ARTIFACT_REASONS, ExitCode, ModelManifest, Progress
from tts_operator import api
from tts_operator.api import ConditionType, TrainingRunPhase
from tts_operator.builders import common
from tts_operator.builders import training as builders
from tts_operator.reconcile.conditions import Cond, merge_conditions
from tts_operator.settings import Settings

Phase = TrainingRunPhase

#: exit code -> failure reason (the contract's codes, then the shell's signal convention)
EXIT_REASONS: dict[int, str] = {
    int(ExitCode.FAILURE): "Error",
    int(ExitCode.BAD_INPUT): "BadInput",
    int(ExitCode.PREFLIGHT_FAILED): "PreflightFailed",
    int(ExitCode.INTERRUPTED): "Interrupted",
    **{int(code): reason for code, reason in ARTIFACT_REASONS.items()},
    137: "Killed",
    143: "Terminated",
}


@dataclass(frozen=True)
class Observed:
    """The run's children as the API server returned them (dicts, camelCase)."""

    job: dict[str, Any] | None = None
    pods: list[dict[str, Any]] = field(default_factory=list)
    export_job: dict[str, Any] | None = None
    export_pods: list[dict[str, Any]] = field(default_factory=list)
    #: pods of an earlier Job of the run's name, not its own (looked for only while it has no Job)
    leftover_pods: list[dict[str, Any]] = field(default_factory=list)
    #: the Job's prerequisites (ServiceAccount, Role, RoleBinding) were created already (a new
    #: run's first wave sends them while the run is read back)
    prerequisites_made: bool = False
    #: single-node claims the run's waiting pod needs that pods on other nodes hold (looked for
    #: only while a pod of the run is placed but not running: ``claims_held_elsewhere``)
    claims_in_use: list[ClaimInUse] = field(default_factory=list)


@dataclass(frozen=True)
class ClaimInUse:
    """A ReadWriteOnce claim a pod of the run waits for: attached on another node, for other pods
    (Kubernetes' Multi-Attach error). The pod starts once they stop."""

    claim: str
    modes: tuple[str, ...]
    #: the waiting pod and its node
    pod: str
    node: str
    #: (pod, node) of the pods on other nodes that use the claim
    holders: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Derived:
    phase: TrainingRunPhase
    #: why the run is in this phase, for people (condition messages and Events)
    message: str
    reason: str
    conditions: list[Cond]
    #: operator-owned status fields to merge into status (None removes a field)
    fields: dict[str, Any]
    create_training_job: bool = False
    create_export_job: bool = False
    #: the training Job's spec.suspend should be this (None: leave it alone, e.g. Kueue's business)
    job_suspend: bool | None = None


# --- small readers of Kubernetes objects ---------------------------------------------------------


def _conditions(obj: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {c.get("type", ""): c for c in ((obj or {}).get("status") or {}).get("conditions") or []}


def _true(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any] | None:
    c = _conditions(obj).get(ctype)
    return c if c is not None and c.get("status") == "True" else None


def job_finished(job: dict[str, Any] | None) -> str | None:
    """ "Complete", "Failed" or None. FailureTarget counts as failed: the Job is already doomed."""
    if _true(job, "Complete") or _true(job, "SuccessCriteriaMet"):
        return "Complete"
    if _true(job, "Failed") or _true(job, "FailureTarget"):
        return "Failed"
    return None


def _created(obj: dict[str, Any]) -> str:
    return (obj.get("metadata") or {}).get("creationTimestamp") or ""


def newest(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    return max(pods, key=lambda p: (_created(p), (p.get("metadata") or {}).get("name", "")), default=None)


def _statuses(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """Init containers (the fetchers) first, then the main ones."""
    status = pod.get("status") or {}
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def terminated_state(pod: dict[str, Any], container: str) -> dict[str, Any] | None:
    for cs in _statuses(pod):
        if cs.get("name") == container:
            return (cs.get("state") or {}).get("terminated")
    return None


def failed_container(pod: dict[str, Any], main: str) -> dict[str, Any] | None:
    """The terminated state of the container that failed the pod: an init container (a fetcher)
    that exited non-zero, else ``main``."""
    for cs in (pod.get("status") or {}).get("initContainerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term and term.get("exitCode", 0) != 0:
            return dict(term, container=cs.get("name"))
    return terminated_state(pod, main)


def waiting_state(pod: dict[str, Any]) -> dict[str, Any] | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting:
            return dict(waiting)
    return None


def failed_pod(pods: list[dict[str, Any]], container: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The newest pod whose container exited non-zero, with its terminated state."""
    for pod in sorted(pods, key=_created, reverse=True):
        term = failed_container(pod, container)
        if term and term.get("exitCode", 0) != 0:
            return pod, term
    return None


def resolved_base_model(pods: list[dict[str, Any]]) -> str | None:
    """The base model's uri with its hub revision resolved to a commit, from the first training pod
    whose ``fetch-base-model`` finished (its result is its termination message)."""
    for pod in sorted(pods, key=_created):
        term = terminated_state(pod, builders.FETCH_BASE_MODEL)
        if not term or term.get("exitCode") != 0:
            continue
        try:
            result = json.loads(term.get("message") or "")
        except ValueError:
            continue
        resolved = result.get("resolved") if isinstance(result, dict) else None
        if isinstance(resolved, str) and resolved.startswith("hf://") and len(resolved) <= 512:
            return resolved
    return None


def placed_not_started(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest of ``pods`` that the scheduler placed on a node but none of whose containers (init
    containers included) has started: the one a volume attach may hold up. A pod whose fetchers run
    has its volumes already."""
    for pod in sorted(pods, key=_created, reverse=True):
        status = pod.get("status") or {}
        if status.get("phase") != "Pending" or not (pod.get("spec") or {}).get("nodeName"):
            continue
        statuses = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
        if not any({"running", "terminated"} & set(cs.get("state") or {}) for cs in statuses):
            return pod
    return None


def claims_held_elsewhere(
    pod: dict[str, Any], modes: dict[str, list[str] | None], others: list[dict[str, Any]]
) -> list[ClaimInUse]:
    """The single-node claims (``modes``: each claim's access modes) ``pod`` mounts that pods on
    other nodes use: the attach/detach controller keeps the claim on their node, and ``pod`` waits."""
    node = pod["spec"]["nodeName"]
    uid = (pod.get("metadata") or {}).get("uid")
    found = []
    for claim in common.pod_claims(pod):
        claim_modes = modes.get(claim)
        if not claim_modes or not common.attaches_to_one_node(claim_modes):
            continue
        holders = tuple(
            sorted(
                (o["metadata"]["name"], o["spec"]["nodeName"])
                for o in others
                if (o.get("metadata") or {}).get("uid") != uid
                and (o.get("spec") or {}).get("nodeName") not in (None, node)
                and (o.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
                and claim in common.pod_claims(o)
            )
        )
        if holders:
            found.append(ClaimInUse(claim, tuple(claim_modes), pod["metadata"]["name"], node, holders))
    return found


def claim_in_use_cause(spec: api.TrainingRunSpec, used: ClaimInUse) -> tuple[str, str]:
    """(SingleNodeVolume, message) for a pod of the run held up by ``used``."""
    nodes = sorted({node for _, node in used.holders})
    pods = ", ".join(name for name, _ in used.holders)
    return (
        "SingleNodeVolume",
        f"pod {used.pod} on node {used.node} waits for PersistentVolumeClaim {used.claim} "
        f"({_claim_field(spec, used.claim)}): it is {'/'.join(used.modes)} and in use on node "
        f"{', '.join(nodes)} by pod(s) {pods} (Multi-Attach error); it starts once they stop. Use a "
        "ReadWriteMany claim for a folder that is served and written at once, or a uri (s3://)",
    )


# --- causes --------------------------------------------------------------------------------------


#: the scheduler's words for a pod whose PersistentVolumeClaim does not exist
_MISSING_CLAIM = re.compile(r'persistentvolumeclaim "([^"]+)" not found')
#: pending causes that will not go away by waiting: the user must act (Warning Events)
NEEDS_ACTION = frozenset({"InsufficientGPU", "Unschedulable", "VolumeNotFound", "SingleNodeVolume"})


def _claim_field(spec: api.TrainingRunSpec, claim: str) -> str:
    """The spec field naming ``claim`` (``dataset.volume.claimName``), for the message."""
    for field_name, location in (
        ("dataset", spec.dataset),
        ("baseModel", spec.base_model),
        ("checkpoints", spec.checkpoints),
        ("export", spec.export),
    ):
        volume = getattr(location, "volume", None)
        if volume is not None and volume.claim_name == claim:
            return f"spec.{field_name}.volume.claimName"
    return "a volume of the run"


def pending_cause(pod: dict[str, Any], spec: api.TrainingRunSpec, gpu_resource: str) -> tuple[str, str]:
    """(reason, message) for a pod that is not running yet, from the scheduler's PodScheduled."""
    sched = _conditions(pod).get("PodScheduled")
    if sched is not None and sched.get("status") == "False":
        text = sched.get("message") or ""
        missing = _MISSING_CLAIM.search(text)
        if missing is not None:
            claim = missing.group(1)
            return (
                "VolumeNotFound",
                f"PersistentVolumeClaim {claim} ({_claim_field(spec, claim)}) does not exist: "
                "create it, or name an existing claim",
            )
        if f"Insufficient {gpu_resource}" in text and spec.resources.gpus > 0:
            where = spec.resources.gpu_product or "any GPU node"
            # not the scheduler's own text: it counts nodes by reason and changes whenever other
            # pods come and go, and every change would be a status write and an Event per run
            return (
                "InsufficientGPU",
                f"waiting for {spec.resources.gpus} × {gpu_resource} on {where}: no node has enough free",  # noqa: RUF001
            )
        return "Unschedulable", f"the scheduler cannot place the pod: {text or sched.get('reason', '')}"
    waiting = waiting_state(pod)
    name = (pod.get("metadata") or {}).get("name", "")
    if waiting:
        detail = f": {waiting['message']}" if waiting.get("message") else ""
        return waiting.get(
            "reason"
        ) or "ContainerCreating", f"pod {name} is starting ({waiting.get('reason')}){detail}"
    return "PodStarting", f"pod {name} is starting"


def training_failure(job: dict[str, Any], pods: list[dict[str, Any]]) -> dict[str, Any]:
    """status.failure for a failed training Job: the exit code explains more than the Job does."""
    job_cond = _true(job, "Failed") or _true(job, "FailureTarget") or {}
    job_reason = job_cond.get("reason") or "Failed"
    found = failed_pod(pods, builders.TRAINER_CONTAINER)
    failure: dict[str, Any] = {"reason": job_reason, "message": job_cond.get("message") or ""}
    if job_reason == "DeadlineExceeded":
        failure["message"] = f"training exceeded activeDeadlineSeconds: {failure['message']}".rstrip(": ")
    if found is not None:
        pod, term = found
        code = int(term.get("exitCode", 1))
        if job_reason != "DeadlineExceeded":
            failure["reason"] = EXIT_REASONS.get(code, "Error")
            if term.get("reason") == "OOMKilled":
                failure["reason"] = "OOMKilled"
        tail = (term.get("message") or "").strip()
        failure["exitCode"] = code
        failure["pod"] = pod["metadata"]["name"]
        failure["message"] = f"{failure['message']}; exit code {code}" + (f": {tail}" if tail else "")
        failure["message"] = failure["message"].lstrip("; ")
    return failure


def export_report(
    pods: list[dict[str, Any]], run: api.TrainingRun, now: str
) -> tuple[dict[str, Any] | None, str]:
    """status.output from the export pod's termination message (the manifest), or (None, why not)."""
    for pod in sorted(pods, key=_created, reverse=True):
        term = terminated_state(pod, builders.EXPORT_CONTAINER)
        if not term or term.get("exitCode") != 0:
            continue
        text = (term.get("message") or "").strip()
        if not text:
            pod_name = pod["metadata"]["name"]
            return None, f"export pod {pod_name} succeeded but left no manifest in its termination message"
        try:
            manifest = ModelManifest.model_validate_json(text)
        except (ValidationError, ValueError) as e:
            return None, f"export pod {pod['metadata']['name']} left an unreadable manifest: {str(e)[:500]}"
        expected = builders.export_version(run)
        if manifest.version != expected:
            return None, f"export wrote version {manifest.version!r}, expected {expected!r}"
        return (
            {
                "version": manifest.version,
                "path": builders.export_path(run),
                "sha256": manifest.digest,
                "exportedAt": term.get("finishedAt") or now,
            },
            "",
        )
    return None, "no finished export pod found"


# --- the phase -----------------------------------------------------------------------------------


def _progress_text(status: dict[str, Any]) -> str | None:
    raw = status.get("progress")
    if not raw:
        return None
    try:
        return api.progress_text(Progress.model_validate(raw))
    except ValidationError:
        return None


def _phase_conditions(phase: Phase, reason: str, message: str, status: dict[str, Any]) -> list[Cond]:
    in_progress = phase in (Phase.PENDING, Phase.QUEUED, Phase.RUNNING, Phase.EXPORTING)
    conds = [
        Cond(ConditionType.READY, phase == Phase.SUCCEEDED, reason, message),
        Cond(ConditionType.RECONCILING, in_progress, reason, message if in_progress else ""),
        Cond(ConditionType.STALLED, phase == Phase.FAILED, reason, message if phase == Phase.FAILED else ""),
        Cond(ConditionType.QUEUED, phase == Phase.QUEUED, reason, message if phase == Phase.QUEUED else ""),
        Cond(
            ConditionType.RUNNING, phase == Phase.RUNNING, reason, message if phase == Phase.RUNNING else ""
        ),
    ]
    terminal = phase in (Phase.SUCCEEDED, Phase.FAILED)
    conds.append(
        Cond(ConditionType.SUCCEEDED, (phase == Phase.SUCCEEDED) if terminal else None, reason, message)
    )
    output = status.get("output")
    conds.append(
        Cond(ConditionType.EXPORTED, True, "ModelExported", f"exported version {output['version']}")
        if output
        else Cond(
            ConditionType.EXPORTED, False, "Exporting" if phase == Phase.EXPORTING else "NotExported", ""
        )
    )
    return conds


def derive(
    run: api.TrainingRun,
    status: dict[str, Any],
    observed: Observed,
    gpu_resource: str,
    now: str,
) -> Derived:
    """What status should say about ``run`` given its children and its previous ``status`` (a dict)."""
    spec = run.spec
    prev = status.get("phase")
    fields: dict[str, Any] = {
        "observedGeneration": run.metadata.generation,
        "progressText": _progress_text(status),
    }
    job, pods = observed.job, observed.pods
    if job is not None:
        fields["jobName"] = job["metadata"]["name"]
        start = (job.get("status") or {}).get("startTime")
        if start and not status.get("startTime"):
            fields["startTime"] = str(start).replace("+00:00", "Z")
    if not status.get("resolvedBaseModel"):
        resolved = resolved_base_model(pods)
        if resolved:
            fields["resolvedBaseModel"] = resolved

    def done(phase: Phase, reason: str, message: str, **extra: Any) -> Derived:
        merged = {**status, **fields, **extra}
        conds = _phase_conditions(phase, reason, message, merged)
        out = {**fields, **extra, "phase": phase.value}
        return Derived(phase, message, reason, conds, out, **flags)

    flags: dict[str, Any] = {}

    # terminal phases are sticky: nothing is recreated, nothing re-derived
    if prev in {p.value for p in api.TERMINAL_PHASES}:
        phase = Phase(prev)
        cond = _conditions({"status": status}).get(ConditionType.READY) or {}
        return done(phase, cond.get("reason") or phase.value, cond.get("message") or "")

    # export: the training is over once the training Job completed (or the run was Exporting)
    if observed.export_job is not None:
        fields["exportJobName"] = observed.export_job["metadata"]["name"]
        finished = job_finished(observed.export_job)
        if finished == "Complete":
            output, why = export_report(observed.export_pods, run, now)
            if output is None:
                missing = {"reason": "ExportReportMissing", "message": why}
                return done(Phase.FAILED, "ExportReportMissing", why, failure=missing, completionTime=now)
            msg = f"exported version {output['version']} to {output['path']} (sha256 {output['sha256'][:12]})"
            return done(
                Phase.SUCCEEDED, "ModelExported", msg, output=output, completionTime=now, failure=None
            )
        if finished == "Failed":
            found = failed_pod(observed.export_pods, builders.EXPORT_CONTAINER)
            failure: dict[str, Any] = {"reason": "ExportFailed", "message": "the export Job failed"}
            if found:
                pod, term = found
                code = int(term.get("exitCode", 1))
                failure.update(
                    # an artifact's own reason says more: VersionExists, AccessDenied, ...
                    reason=ARTIFACT_REASONS.get(code, "ExportFailed"),
                    exitCode=code,
                    pod=pod["metadata"]["name"],
                    message=f"the export Job failed: {(term.get('message') or '').strip()}".rstrip(": "),
                )
            reason = failure["reason"]
            return done(Phase.FAILED, reason, failure["message"], failure=failure, completionTime=now)
        if observed.claims_in_use:
            return done(Phase.EXPORTING, *claim_in_use_cause(spec, observed.claims_in_use[0]))
        return done(Phase.EXPORTING, "Exporting", "exporting the best checkpoint")

    finished = job_finished(job)
    if finished == "Complete" or prev == Phase.EXPORTING:
        flags["create_export_job"] = True
        return done(Phase.EXPORTING, "TrainingComplete", "training finished; creating the export Job")

    if spec.suspend:
        flags["job_suspend"] = True
        stopping = [p for p in pods if (p.get("status") or {}).get("phase") in ("Pending", "Running")]
        msg = "suspended: the training pod is stopped, checkpoints are kept; set spec.suspend=false to resume"
        if stopping:
            msg = f"suspending: waiting for {len(stopping)} pod(s) to stop (the trainer checkpoints first)"
        if job is None:
            msg = "suspended before it started"
        return done(Phase.SUSPENDED, "Suspended", msg)

    if finished == "Failed":
        assert job is not None
        failed = training_failure(job, pods)
        return done(Phase.FAILED, failed["reason"], failed["message"], failure=failed, completionTime=now)

    if job is None:
        flags["create_training_job"] = True
        return done(Phase.PENDING, "CreatingJob", "creating the training Job")

    queue = spec.scheduling.queue_name
    if (job.get("spec") or {}).get("suspend"):
        if queue:
            # Kueue unsuspends the Job once its queue admits the workload
            return done(Phase.QUEUED, "Queued", f"queued in Kueue queue {queue}")
        flags["job_suspend"] = False
        return done(Phase.PENDING, "Resuming", "resuming the suspended Job")

    jstatus = job.get("status") or {}
    attempt = int(jstatus.get("failed") or 0) + 1
    attempts = f"attempt {attempt} of {spec.backoff_limit + 1}"
    live = newest([p for p in pods if (p.get("status") or {}).get("phase") in ("Pending", "Running", None)])
    if live is not None and (live.get("status") or {}).get("phase") == "Running":
        progress = status.get("progress") or {}
        resumed = progress.get("resumedFromEpoch")
        detail = f"; resumed from epoch {resumed}" if resumed else ""
        return done(
            Phase.RUNNING, "Training", f"training in pod {live['metadata']['name']} ({attempts}{detail})"
        )
    if live is not None and observed.claims_in_use:
        return done(Phase.PENDING, *claim_in_use_cause(spec, observed.claims_in_use[0]))
    if live is not None:
        reason, msg = pending_cause(live, spec, gpu_resource)
        # a pod that was never placed has made no attempt: the count would only mislead
        return done(Phase.PENDING, reason, msg if reason == "VolumeNotFound" else f"{msg} ({attempts})")
    return done(Phase.PENDING, "WaitingForPod", f"waiting for the Job to start a pod ({attempts})")


# --- events --------------------------------------------------------------------------------------


def transition_event(status: dict[str, Any], derived: Derived) -> tuple[str, str, str] | None:
    """(type, reason, message) of the Event for a change of phase or of its reason (a Pending run
    that becomes unschedulable is news too); None when neither changed."""
    prev_phase = status.get("phase")
    ready = _conditions({"status": status}).get(ConditionType.READY) or {}
    if prev_phase == derived.phase.value and ready.get("reason") == derived.reason:
        return None
    warn = derived.phase == Phase.FAILED or derived.reason in NEEDS_ACTION
    kind = "Warning" if warn else "Normal"
    return kind, derived.reason, f"{prev_phase or 'New'} -> {derived.phase.value}: {derived.message}"


def with_job_created(transition: tuple[str, str, str] | None, created: str) -> tuple[str, str, str]:
    """The Event of a reconcile that created the training Job: ``JobCreated``, carrying the phase
    change that came with it (a new run's ``New -> Pending``) in its message, so the two cost one
    Event. A warning transition keeps its own reason (it is what the user must see): the Job's
    creation is then said in its message."""
    if transition is None:
        return "Normal", "JobCreated", created
    type_, reason, message = transition
    if type_ == "Warning":
        return type_, reason, f"{message}; {created}"
    return "Normal", "JobCreated", f"{message}; {created}"


# --- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What one reconcile does, in order, and what it then reports."""

    #: the status the run should have once the actions are done (``derived`` as fields + conditions)
    status: dict[str, Any]
    derived: Derived
    #: create these (the training Job's ServiceAccount, Role, RoleBinding), then ``job``
    prerequisites: list[dict[str, Any]] = field(default_factory=list)
    job: dict[str, Any] | None = None
    export_job: dict[str, Any] | None = None
    #: set the training Job's spec.suspend to this
    job_suspend: bool | None = None
    #: suspend the Job of this name if an owner that is gone left it (its pods then go at once)
    stop_orphaned_job: str | None = None
    #: a predecessor's pods are in the way: report nothing, look again a moment later (why)
    wait: str | None = None
    #: the run has just exported: carry out ``spec.promote``
    promote: bool = False
    #: the Event of a change of phase or reason, and of an export (see ``events_after``)
    transition: tuple[str, str, str] | None = None
    exported: tuple[str, str, str] | None = None


def plan(
    run: api.TrainingRun, status: dict[str, Any], observed: Observed, settings: Settings, now: str
) -> Plan:
    """The actions and the resulting status for ``run``, given its previous ``status`` and its
    children as ``observed``. A child the plan creates is part of the status it reports (a new
    Job: Pending, waiting for its pod), so status is written once, after the creates."""
    gpu = settings.gpu_resource
    derived = derive(run, status, observed, gpu, now)
    job = observed.job
    suspended = bool(((job or {}).get("spec") or {}).get("suspend"))
    steps: dict[str, Any] = {}
    if derived.job_suspend is not None and job is not None and suspended != derived.job_suspend:
        steps["job_suspend"] = derived.job_suspend
    if derived.create_training_job:
        *prerequisites, job_obj = builders.children(run, settings)
        steps["prerequisites"] = [] if observed.prerequisites_made else prerequisites
        if observed.leftover_pods:
            # pods of an earlier Job of this name (a run deleted and re-created) are still going
            # away: the Job controller keeps per-name state until they are gone, and a new Job
            # made meanwhile can get no pod for minutes. An earlier Job still there is suspended,
            # so its pods go without the garbage collector; the run is looked at again shortly
            name = job_obj["metadata"]["name"]
            why = f"{len(observed.leftover_pods)} pod(s) of an earlier Job {name}"
            return Plan({}, derived, stop_orphaned_job=name, wait=why, **steps)
        steps["job"] = job_obj
        derived = derive(run, status, replace(observed, job=job_obj), gpu, now)
    if derived.create_export_job:
        steps["export_job"] = builders.export_job(run, settings)
        derived = derive(run, status, replace(observed, export_job=steps["export_job"]), gpu, now)

    desired = dict(derived.fields)
    desired["conditions"] = merge_conditions(
        status.get("conditions") or [], derived.conditions, now, run.metadata.generation
    )
    output = derived.fields.get("output") if not status.get("output") else None
    if derived.phase == Phase.SUCCEEDED and output:
        steps["promote"] = run.spec.promote is not None and not status.get("promotion")
        path, digest = output["path"], output["sha256"]
        message = f"exported version {output['version']} to {path} (sha256 {digest})"
        steps["exported"] = ("Normal", "ModelExported", message)
    return Plan(desired, derived, transition=transition_event(status, derived), **steps)


def events_after(the_plan: Plan, job_created: str | None) -> list[tuple[str, str, str]]:
    """The Events to post once status is written: the phase change (the training Job's creation,
    when this reconcile created it, folded into it: one Event, not two), then the export."""
    transition = the_plan.transition
    if job_created is not None:
        transition = with_job_created(transition, job_created)
    return [e for e in (transition, the_plan.exported) if e is not None]
