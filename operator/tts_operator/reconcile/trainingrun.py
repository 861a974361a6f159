"""TrainingRun handlers: parse -> build -> apply -> derive status -> patch status -> Event.

One level-based reconcile serves every trigger: the run's own events (spec changes and the
trainer's status reports, which need progressText), and the events of the Jobs and Pods it owns
(found by the ``tts-operator.dev/trainingrun`` label). Each reconcile re-reads the run and its
children, so the order and number of events do not matter. Events only queue the run
(``driver``): triggers that arrive while it waits or is being reconciled fold into one more round,
and a per-run lock keeps direct callers from racing on the same run.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import replace
from functools import partial
from typing import Any

import kopf
from pydantic import ValidationError

from tts_operator import api, metrics, promote
from tts_operator.api import PromoteMode, TrainingRunPhase
from tts_operator.builders import training as builders
from tts_operator.contract import now_rfc3339
from tts_operator.handlers.driver import Driver
from tts_operator.handlers.driver import resync_forever as resync
from tts_operator.handlers.workqueue import EVENT, NEW, RESYNC
from tts_operator.kube import Kube, StaleOwner
from tts_operator.settings import MANAGED_BY, Settings
from tts_operator.status import training as status_logic
from tts_operator.status.conditions import merge_conditions

log = logging.getLogger(__name__)

KIND = api.TRAININGRUN.kind
_PHASES = metrics.PhaseBook(KIND)


class Context:
    """What the handlers share, set once at start-up by ``tts_operator.manager``."""

    kube: Kube | None = None
    settings: Settings = Settings()


_locks: dict[tuple[str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(namespace: str, name: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault((namespace, name), threading.Lock())


def _controlled_by(obj: dict[str, Any] | None, uid: str | None) -> bool:
    refs = ((obj or {}).get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("controller") and r.get("uid") == uid for r in refs)


_TERMINAL = frozenset(p.value for p in api.TERMINAL_PHASES)


def _pod_selector(run: str, component: str) -> str:
    """The pods of a run's training or export Jobs (any Job of that name, this run's or not)."""
    return f"{builders.RUN_LABEL}={run},app.kubernetes.io/component={component}"


def _observe(
    kube: Kube, namespace: str, name: str, uid: str | None, phase: str | None
) -> status_logic.Observed:
    """The run's children as they are. Only children this very run controls count: a run deleted
    and re-created under the same name must not inherit its predecessor's Jobs (or their pods)
    while the garbage collector has yet to remove them."""

    def own_job(job_name: str) -> dict[str, Any] | None:
        job = kube.get_job(namespace, job_name)
        return job if _controlled_by(job, uid) else None

    def pods(component: str, job: dict[str, Any]) -> list[dict[str, Any]]:
        found = kube.list_pods(namespace, _pod_selector(name, component))
        return [p for p in found if _controlled_by(p, job["metadata"].get("uid"))]

    job = own_job(builders.job_name(name))
    # the export Job is made only once training completed: no read for it before
    exporting = phase == TrainingRunPhase.EXPORTING.value or status_logic.job_finished(job) == "Complete"
    export_job = own_job(builders.export_job_name(name)) if exporting else None
    return status_logic.Observed(
        job=job,
        pods=pods("training", job) if job is not None else [],
        export_job=export_job,
        export_pods=pods("export", export_job) if export_job is not None else [],
    )


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


class _Head:
    """The first wave of a brand-new run's first reconcile, sent together: the run read back, its
    Job's prerequisites created (ServiceAccount, Role, RoleBinding: built from the
    body the ADDED event carried) and the check for pods of an earlier Job of its name. The read
    then decides whether that body was still the run's: only then do the creates count (else they
    belonged to a uid that is gone, a stale event, and the garbage collector or the next
    ``Kube.create`` removes them) and the Job follows."""

    def __init__(self, kube: Kube, settings: Settings, namespace: str, name: str, created: dict[str, Any]):
        self.created = created
        self.run = api.TrainingRun.model_validate(created)
        *prerequisites, _job = builders.children(self.run, settings)
        uid = self.run.metadata.uid
        read, pods, *made = kube.concurrently(
            [
                lambda: kube.get_object(api.TRAININGRUN, namespace, name),
                lambda: kube.list_pods(namespace, _pod_selector(name, "training")),
                *(partial(kube.create, obj, uid) for obj in prerequisites),
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

    def leftover_pods(self) -> list[dict[str, Any]]:
        """The pods of an earlier Job (raises what the creates raised: they were this run's)."""
        for created in self._made:
            created.result()
        return list(self._pods.result())


def reconcile(
    kube: Kube,
    settings: Settings,
    namespace: str,
    name: str,
    created: dict[str, Any] | None = None,
) -> TrainingRunPhase | None:
    """Bring the run's children and status in line with its spec and what exists. Returns the phase.

    ``created``: the run as an ADDED watch event carried it. When the run read now is still that
    very object with an empty status, nothing can own children by its brand-new uid yet, so the
    first reconcile does not look for children: it goes straight to creating them (the apply -> Job
    latency users feel), its prerequisites even while the run is being read back (``_Head``). The
    read itself is not skipped: an ADDED event can be stale (the run deleted and re-created under
    the same name since), and nothing may act on it then. ``Kube.create`` never replaces a child
    of the run living under that name, so a stale event's creates cannot take the new run's away.
    """
    with _lock(namespace, name), metrics.reconciling(KIND):
        head = None
        if created is not None and not created.get("status"):
            try:
                head = _Head(kube, settings, namespace, name, created)
            except ValidationError:
                head = None  # admission should have stopped it: the usual path says so in status
        body = head.body if head is not None else kube.get_object(api.TRAININGRUN, namespace, name)
        fresh = head is not None and head.fresh()
        if body is None or body["metadata"].get("deletionTimestamp"):
            _PHASES.set(f"{namespace}/{name}", None)
            return None  # children go with it: owner references
        status: dict[str, Any] = body.get("status") or {}
        try:
            run = api.TrainingRun.model_validate(body)
        except ValidationError as e:
            # admission should have stopped this; say so instead of retrying forever
            kube.patch_status(
                api.TRAININGRUN,
                namespace,
                name,
                {"phase": "Failed", "failure": {"reason": "InvalidSpec", "message": str(e)[:4000]}},
            )
            return TrainingRunPhase.FAILED
        now = now_rfc3339()
        # a finished run's status is sticky (derive looks at no child), so its children's last
        # events cost no reads either
        prev_phase = status.get("phase")
        terminal = prev_phase in _TERMINAL
        observed = (
            status_logic.Observed()
            if fresh or terminal
            else _observe(kube, namespace, name, run.metadata.uid, prev_phase)
        )
        derived = status_logic.derive(run, status, observed, settings.gpu_resource, now)

        job_created = None
        if derived.create_training_job:
            *prerequisites, job_obj = builders.children(run, settings)
            if fresh and head is not None:
                leftovers = head.leftover_pods()  # made and looked for in the first wave
            else:
                kube.create_all(prerequisites, owner_uid=run.metadata.uid)
                leftovers = kube.list_pods(namespace, _pod_selector(name, "training"))
            if leftovers:
                # pods of an earlier Job of this name (a run deleted and re-created) are still going
                # away: the Job controller keeps per-name state until they are gone, and a new Job
                # made meanwhile can get no pod for minutes. The retry comes back in a moment; an
                # earlier Job still there is suspended, so its pods go without the garbage collector
                kube.stop_orphaned_job(namespace, job_obj["metadata"]["name"], run.metadata.uid or "")
                raise StaleOwner(f"{len(leftovers)} pod(s) of an earlier Job {job_obj['metadata']['name']}")
            new_job = kube.create(job_obj, owner_uid=run.metadata.uid)
            if new_job is not None:
                # posted below, together with the phase change it brings (one Event, not two)
                job_created = f"created training Job {builders.job_name(name)}"
            job = new_job or _observe(kube, namespace, name, run.metadata.uid, prev_phase).job
            derived = status_logic.derive(run, status, replace(observed, job=job), settings.gpu_resource, now)
        if derived.create_export_job:
            new_export = kube.create(builders.export_job(run, settings), owner_uid=run.metadata.uid)
            if new_export is not None:
                kube.post_event(
                    body, "Normal", "ExportJobCreated", f"created export Job {builders.export_job_name(name)}"
                )
            export = new_export or _observe(kube, namespace, name, run.metadata.uid, prev_phase).export_job
            derived = status_logic.derive(
                run, status, replace(observed, export_job=export), settings.gpu_resource, now
            )
        job = observed.job
        job_suspended = bool(((job or {}).get("spec") or {}).get("suspend"))
        if derived.job_suspend is not None and job is not None and job_suspended != derived.job_suspend:
            kube.set_job_suspend(namespace, builders.job_name(name), derived.job_suspend)

        desired = dict(derived.fields)
        desired["conditions"] = merge_conditions(
            status.get("conditions") or [], derived.conditions, now, run.metadata.generation
        )
        exported_now = derived.phase == TrainingRunPhase.SUCCEEDED and not status.get("output")
        if exported_now and derived.fields.get("output") and run.spec.promote and not status.get("promotion"):
            desired["promotion"] = _promote(kube, run, body, derived.fields["output"])
        patch = status_logic.status_patch(status, desired)
        if patch and not kube.patch_status(api.TRAININGRUN, namespace, name, patch):
            _PHASES.set(f"{namespace}/{name}", None)
            return None  # deleted meanwhile

        event = status_logic.transition_event(status, derived)
        if job_created is not None:
            event = status_logic.with_job_created(event, job_created)
        if event is not None:
            kube.post_event(body, *event)
            log.info("%s/%s: %s", namespace, name, event[2])
        if exported_now and derived.fields.get("output"):
            out = derived.fields["output"]
            kube.post_event(
                body,
                "Normal",
                "ModelExported",
                f"exported version {out['version']} to {out['path']} (sha256 {out['sha256']})",
            )
        _PHASES.set(f"{namespace}/{name}", derived.phase.value)
        return derived.phase


def _reconcile_queued(namespace: str, name: str, created: dict[str, Any] | None) -> None:
    kube = Context.kube
    if kube is not None:
        reconcile(kube, Context.settings, namespace, name, created)


_DRIVER = Driver(KIND, _reconcile_queued)


def _trigger(
    namespace: str | None, name: str | None, trigger: str, created: Any = None, priority: int = EVENT
) -> None:
    if namespace and name:
        _DRIVER.trigger(namespace, name, trigger, created, NEW if created is not None else priority)


def _echo(event_type: str | None, body: Mapping[str, Any]) -> bool:
    kube = Context.kube
    return kube is not None and kube.echoes_own_write(event_type, body)


# The event handlers only queue the run (``driver``): async, so kopf calls them in its event loop
# and lets go of the event at once, instead of holding it while a thread reconciles.


@kopf.on.event(api.API_GROUP, api.API_VERSION, api.TRAININGRUN.plural)
async def trainingrun_event(
    type: str, name: str, namespace: str | None, event: Mapping[str, Any], **_: Any
) -> None:
    if _echo(type, event["object"]):
        return  # our own status patch coming back: nothing new to reconcile
    if type == "DELETED":
        _PHASES.set(f"{namespace}/{name}", None)
        _DRIVER.forget(namespace or "", name)
        return
    # ADDED comes only from the live watch (kopf's start-up listing has no type): a new object
    created = copy.deepcopy(dict(event["object"])) if type == "ADDED" else None
    _trigger(namespace, name, "TrainingRun", created)


@kopf.on.event(
    "batch",
    "v1",
    "jobs",
    labels={"app.kubernetes.io/managed-by": MANAGED_BY, builders.RUN_LABEL: kopf.PRESENT},
)
async def job_event(
    type: str, body: Mapping[str, Any], labels: Mapping[str, str], namespace: str | None, **_: Any
) -> None:
    if not _echo(type, body):  # our own create of it coming back says nothing new
        _trigger(namespace, labels.get(builders.RUN_LABEL), "Job")


@kopf.on.event(
    "", "v1", "pods", labels={"app.kubernetes.io/managed-by": MANAGED_BY, builders.RUN_LABEL: kopf.PRESENT}
)
async def pod_event(labels: Mapping[str, str], namespace: str | None, **_: Any) -> None:
    _trigger(namespace, labels.get(builders.RUN_LABEL), "Pod")


#: the TrainingRun resync: every unfinished run this long after the previous round, at most 10 a
#: second (a run that lost its trigger, say to an API error, would otherwise wait for its next event)
RESYNC_SECONDS = 60.0


def resync_forever(
    namespaces: tuple[str, ...], stop: threading.Event, interval: float = RESYNC_SECONDS
) -> None:
    resync(
        lambda: Context.kube,
        api.TRAININGRUN,
        namespaces,
        lambda ns, name: _trigger(ns, name, "resync", priority=RESYNC),
        stop,
        interval,
        10.0,
        wanted=lambda run: (run.get("status") or {}).get("phase") not in _TERMINAL,
        driver=_DRIVER,
    )
