"""The TrainingRun reconcile: read the run and its children once, ask ``trainingrun_plan.plan``
what to do, do it, write status once, post the Events.

One level-based reconcile serves every trigger: the run's own events (spec changes and the
trainer's status reports, which need progressText), the events of the Jobs and Pods it owns (found
by the ``tts-operator.dev/trainingrun`` label) and a paced resync of unfinished runs. Each
reconcile re-reads what it needs, so the order and number of events do not matter.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from pydantic import ValidationError

from tts_contract.contract import now_rfc3339
from tts_operator import api, promote
from tts_operator.api import PromoteMode, TrainingRunPhase
from tts_operator.builders import common
from tts_operator.builders import training as builders
from tts_operator.controller.controller import Context, Controller, Outcome, Resync, copy_of_body
from tts_operator.kube.client import Kube
from tts_operator.reconcile import trainingrun_plan as planner
from tts_operator.reconcile.conditions import status_patch
from tts_operator.reconcile.ownership import Ownership, controlled_by

_TERMINAL = frozenset(p.value for p in api.TERMINAL_PHASES)
#: the resync: every unfinished run this long after the previous round, at most 10 a second (a
#: run that lost its trigger, say to an API error, would otherwise wait for its next event)
RESYNC_SECONDS = 60.0


def _pod_selector(run: str, component: str) -> str:
    """The pods of a run's training or export Jobs (any Job of that name, this run's or not)."""
    return f"{builders.RUN_LABEL}={run},app.kubernetes.io/component={component}"


def _observe(kube: Kube, run: api.TrainingRun, phase: str | None) -> planner.Observed:
    """The run's children as they are. Only children this very run controls count: a run deleted
    and re-created under the same name must not inherit its predecessor's Jobs (or their pods)
    while the garbage collector has yet to remove them. A finished run's status is sticky (the plan
    looks at no child), so its children's last events cost no reads."""
    if phase in _TERMINAL:
        return planner.Observed()
    namespace, name, uid = run.metadata.namespace or "default", run.metadata.name, run.metadata.uid

    def own_job(job_name: str) -> dict[str, Any] | None:
        job = kube.get_job(namespace, job_name)
        return job if controlled_by(job, uid) else None

    def pods(component: str, job: dict[str, Any] | None) -> list[dict[str, Any]]:
        found = kube.list_pods(namespace, _pod_selector(name, component))
        return [p for p in found if job is None or controlled_by(p, job["metadata"].get("uid"))]

    job = own_job(builders.job_name(name))
    # the export Job is made only once training completed: no read for it before
    exporting = phase == TrainingRunPhase.EXPORTING.value or planner.job_finished(job) == "Complete"
    export_job = own_job(builders.export_job_name(name)) if exporting else None
    # no Job of its own yet: the pods of an earlier Job of its name would be in the new one's way
    leftovers = pods("training", None) if job is None and not exporting and not run.spec.suspend else []
    training_pods = pods("training", job) if job is not None else []
    export_pods = pods("export", export_job) if export_job is not None else []
    current = export_pods if export_job is not None else training_pods
    return planner.Observed(
        job=job,
        pods=training_pods,
        export_job=export_job,
        export_pods=export_pods,
        leftover_pods=leftovers,
        claims_in_use=_claims_in_use(kube, namespace, current),
    )


def _claims_in_use(kube: Kube, namespace: str, pods: list[dict[str, Any]]) -> list[planner.ClaimInUse]:
    """The single-node claims a placed but not yet running pod of the run waits for (a Multi-Attach
    wait). Read only while such a pod exists: its claims' access modes, then, if one attaches to
    one node, the namespace's pods (which of them use it, where)."""
    waiting = planner.placed_not_started(pods)
    claims = common.pod_claims(waiting) if waiting is not None else []
    if waiting is None or not claims:
        return []
    modes = {claim: kube.claim_access_modes(namespace, claim) for claim in claims}
    if not any(common.attaches_to_one_node(m) for m in modes.values()):
        return []
    return planner.claims_held_elsewhere(waiting, modes, kube.list_pods(namespace, ""))


class _FirstWave:
    """A brand-new run's first reads and creates, sent together (the apply -> Job latency users
    feel): the run read back, its Job's prerequisites created (built from the body the ADDED event
    carried) and the pods of an earlier Job of its name looked for. The read then decides whether
    that body was still the run's: only then do the creates count and nothing can own children by
    its brand-new uid yet (else they belonged to a uid that is gone, a stale event, and the garbage
    collector or a later create removes them)."""

    def __init__(self, ctx: Context, namespace: str, name: str, created: dict[str, Any]):
        kube, self.created = ctx.kube, created
        run = api.TrainingRun.model_validate(created)
        *prerequisites, _job = builders.children(run, ctx.settings)
        read, pods, *made = kube.concurrently(
            [
                lambda: kube.get_object(api.TRAININGRUN, namespace, name),
                lambda: kube.list_pods(namespace, _pod_selector(name, "training")),
                *(partial(_ownership(kube).create, obj, run.metadata.uid) for obj in prerequisites),
            ]
        )
        self.body: dict[str, Any] | None = read.result()
        self._made, self._pods = made, pods

    def fresh(self) -> bool:
        """The run read back is the very object of the event, unchanged and never reconciled."""
        meta, then = (self.body or {}).get("metadata") or {}, self.created["metadata"]
        return (
            self.body is not None
            and meta.get("uid") == then.get("uid")
            and meta.get("generation") == then.get("generation")
            and not self.body.get("status")
        )

    def observed(self) -> planner.Observed:
        for created in self._made:
            created.result()  # raises what the creates raised: they were this run's
        return planner.Observed(leftover_pods=list(self._pods.result()), prerequisites_made=True)


_OWNERSHIP: list[Ownership] = []


def _ownership(kube: Kube) -> Ownership:
    """The ``Ownership`` of the API client in use (it remembers which Job names it freed, and when):
    one for the operator's one client; a test's new client gets a new one."""
    if not _OWNERSHIP or _OWNERSHIP[0].kube is not kube:
        _OWNERSHIP[:] = [Ownership(kube)]
    return _OWNERSHIP[0]


def reconcile(ctx: Context, namespace: str, name: str, created: dict[str, Any] | None) -> Outcome:
    """Bring the run's children and status in line with its spec and what exists.

    ``created``: the run as an ADDED watch event carried it; see ``_FirstWave``. The read itself
    is never skipped: an ADDED event can be stale (the run deleted and re-created under the same
    name since), and nothing may act on it then."""
    kube = ctx.kube
    wave = None
    if created is not None and not created.get("status"):
        try:
            wave = _FirstWave(ctx, namespace, name, created)
        except ValidationError:
            wave = None  # admission should have stopped it: the usual path says so in status
    body = wave.body if wave is not None else kube.get_object(api.TRAININGRUN, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return Outcome(None)  # children go with it: owner references
    status: dict[str, Any] = body.get("status") or {}
    try:
        run = api.TrainingRun.model_validate(body)
    except ValidationError as e:
        # admission should have stopped this; say so instead of retrying forever
        failure = {"reason": "InvalidSpec", "message": str(e)[:4000]}
        kube.patch_status(api.TRAININGRUN, namespace, name, {"phase": "Failed", "failure": failure})
        return Outcome(TrainingRunPhase.FAILED.value)
    fresh = wave is not None and wave.fresh()
    observed = wave.observed() if fresh and wave is not None else _observe(kube, run, status.get("phase"))
    the_plan = planner.plan(run, status, observed, ctx.settings, now_rfc3339())

    job_created, promotion = _act(kube, run, body, the_plan)
    if the_plan.wait is not None:
        return Outcome(status.get("phase"), wait=the_plan.wait)
    desired = {**the_plan.status, **({"promotion": promotion} if promotion else {})}
    patch = status_patch(status, desired)
    if patch and not kube.patch_status(api.TRAININGRUN, namespace, name, patch):
        return Outcome(None)  # deleted meanwhile
    for event in planner.events_after(the_plan, job_created):
        kube.post_event(body, *event)
    return Outcome(the_plan.derived.phase.value)


def _act(
    kube: Kube, run: api.TrainingRun, body: dict[str, Any], the_plan: planner.Plan
) -> tuple[str | None, dict[str, Any] | None]:
    """Carry out the plan's actions in order. Returns what status and Events need of them: the
    training Job's creation (None unless this reconcile made it) and the promotion."""
    ownership, uid = _ownership(kube), run.metadata.uid
    namespace, name = run.metadata.namespace or "default", run.metadata.name
    if the_plan.prerequisites:
        ownership.create_all(the_plan.prerequisites, owner_uid=uid)
    if the_plan.stop_orphaned_job is not None:
        ownership.stop_orphaned_job(namespace, the_plan.stop_orphaned_job, uid or "")
    job_created = None
    if the_plan.job is not None and ownership.create(the_plan.job, owner_uid=uid) is not None:
        job_created = f"created training Job {builders.job_name(name)}"
    if the_plan.export_job is not None and ownership.create(the_plan.export_job, owner_uid=uid) is not None:
        message = f"created export Job {builders.export_job_name(name)}"
        kube.post_event(body, "Normal", "ExportJobCreated", message)
    if the_plan.job_suspend is not None:
        kube.set_job_suspend(namespace, builders.job_name(name), the_plan.job_suspend)
    promotion = None
    if the_plan.promote:
        promotion = _promote(kube, run, body, the_plan.derived.fields["output"])
    return job_created, promotion


def _promote(
    kube: Kube, run: api.TrainingRun, body: dict[str, Any], output: dict[str, Any]
) -> dict[str, Any]:
    """status.promotion for a freshly exported run, posting the Event that carries the change."""
    assert run.spec.promote is not None
    target = run.spec.promote.voice_model
    ns, version = run.metadata.namespace or "default", output["version"]
    promotion: dict[str, Any] = {
        "voiceModel": target,
        "version": version,
        "mode": run.spec.promote.mode.value,
        "time": now_rfc3339(),
        "applied": False,
    }
    if run.spec.promote.mode == PromoteMode.DIRECT:
        vm = kube.get_object(api.VOICEMODEL, ns, target)
        if vm is None:
            kube.post_event(
                body, "Warning", "PromotionFailed", f"VoiceModel {target} not found: not promoted"
            )
            return promotion
        change = promote.spec_change(run.metadata.name, version, run.spec.export, vm.get("spec"))
        kube.patch_spec(api.VOICEMODEL, ns, target, change)
        promotion["applied"] = True
        promotion["patch"] = json.dumps(change, sort_keys=True)
        kube.post_event(body, "Normal", "Promoted", f"patched VoiceModel {target}: {promotion['patch']}")
    else:
        change = promote.spec_change(run.metadata.name, version, run.spec.export, None)
        promotion["patch"] = json.dumps(change, sort_keys=True)
        kube.post_event(
            body,
            "Normal",
            "PromotionPublished",
            f"VoiceModel {target} should serve version {version}: merge patch {promotion['patch']} "
            f"(or: tts-operator promote {run.metadata.name} -n {ns} --voicemodel FILE)",
        )
    return promotion


CONTROLLER = Controller(
    api.TRAININGRUN,
    reconcile,
    Resync(RESYNC_SECONDS, 10.0, wanted=lambda run: (run.get("status") or {}).get("phase") not in _TERMINAL),
    # ADDED comes only from the live watch (kopf's start-up listing has no type): a new run's
    # first reconcile starts from the body it carried (``_FirstWave``)
    payload_of_added=copy_of_body,
)
CONTROLLER.watch_children("batch", "v1", "jobs", builders.RUN_LABEL, "Job")
CONTROLLER.watch_children("", "v1", "pods", builders.RUN_LABEL, "Pod")
