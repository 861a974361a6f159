"""The VoiceModel reconcile: read the model's source, Deployment and pods once, ask
``voicemodel_plan`` which version the pods must run, start a hot swap or apply the children,
write status once, post the Events.

One level-based reconcile serves every trigger: the VoiceModel's own events, its Deployment's and
pods' events (found by the ``tts-operator.dev/voicemodel`` label), the events of the TrainingRun
it serves from, the end of a hot swap, and a paced resync. A hot swap's reloads never hold a
worker (``hotswap``): the reconcile comes back when they are done.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pydantic import ValidationError

from tts_contract.contract import now_rfc3339
from tts_operator import api, runtime_client
from tts_operator.builders import serving as builders
from tts_operator.controller.controller import Context, Controller, Outcome, Resync
from tts_operator.kube.client import Kube
from tts_operator.reconcile import hotswap
from tts_operator.reconcile import voicemodel_plan as planner
from tts_operator.reconcile.conditions import Cond, merge_conditions, status_patch

log = logging.getLogger(__name__)

#: the resync that catches what no event reports (a pod that stops answering between probes)
RESYNC_SECONDS = 30.0
#: VoiceModels the resync reconciles per second at most (a settled one costs only reads)
RESYNC_PER_SECOND = 10.0
HOT_SWAPS = hotswap.HotSwaps()


@dataclass
class _Seen:
    """What one reconcile read: the model's source, its Deployment and pods."""

    source: planner.Source
    deployment: dict[str, Any] | None = None
    pods: list[dict[str, Any]] = field(default_factory=list)


def _pod(vm: api.VoiceModel, pod: dict[str, Any], token: str | None) -> runtime_client.Pod | None:
    ip = (pod.get("status") or {}).get("podIP")
    return runtime_client.Pod(ip, vm.spec.server.port, token) if ip else None


def _token(kube: Kube, vm: api.VoiceModel) -> str | None:
    ref = vm.spec.server.auth_secret_ref
    return kube.secret_value(vm.metadata.namespace or "default", ref.name, ref.key) if ref else None


def _observe(kube: Kube, vm: api.VoiceModel, fresh: bool) -> _Seen:
    """A brand-new VoiceModel (``fresh``) owns nothing yet: its Deployment, pods and
    PodDisruptionBudget are not looked for (three reads saved for every new VoiceModel)."""
    namespace, name = vm.metadata.namespace or "default", vm.metadata.name
    run = None
    if vm.spec.model.training_run:
        run = kube.get_object(api.TRAININGRUN, namespace, vm.spec.model.training_run)
    source = planner.resolve_source(vm, run)
    claim = planner.single_node_claim(vm, source)
    if claim is not None:
        source = planner.with_access_modes(source, claim, kube.claim_access_modes(namespace, claim))
    seen = _Seen(source)
    if fresh:
        kube.known_absent("PodDisruptionBudget", namespace, builders.pdb_name(name))
        return seen
    seen.deployment = kube.get_deployment(namespace, builders.deployment_name(name))
    if seen.source.location is not None and seen.source.version:
        pods = kube.list_pods(namespace, builders.pod_selector_text(name))
        seen.pods = _record_versions(kube, vm, HOT_SWAPS.overlay((namespace, name), pods))
    return seen


def _record_versions(kube: Kube, vm: api.VoiceModel, pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ask each ready pod without a fresh record which version it serves; note it on the pod."""
    ns = vm.metadata.namespace or "default"
    for pod in pods:
        target = _pod(vm, pod, None)
        if not planner.pod_ready(pod) or planner.recorded_version(pod) is not None or target is None:
            continue
        try:
            version = runtime_client.loaded_version(target)
        except runtime_client.RuntimeCallError as e:
            log.info(
                "%s/%s: could not read pod %s's version: %s", ns, vm.metadata.name, pod["metadata"]["name"], e
            )
            continue
        if version:
            ann = hotswap.loaded_annotations(pod, version)
            kube.annotate_pod(ns, pod["metadata"]["name"], ann)
            pod.setdefault("metadata", {}).setdefault("annotations", {}).update(ann)
    return pods


def reconcile(ctx: Context, namespace: str, name: str, created_uid: str | None) -> Outcome:
    """Bring the VoiceModel's children and status in line with its spec and what exists.

    ``created_uid``: the uid an ADDED watch event carried. When the VoiceModel read now is that
    very object, never reconciled (no status), nothing owned by its brand-new uid can exist yet
    (``_observe``). The children are still built from the object read now, never from the event."""
    kube = ctx.kube
    body = kube.get_object(api.VOICEMODEL, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        HOT_SWAPS.forget((namespace, name))
        return Outcome(None)  # children go with it: owner references
    status: dict[str, Any] = body.get("status") or {}
    fresh = created_uid is not None and body["metadata"].get("uid") == created_uid and not status
    try:
        vm = api.VoiceModel.model_validate(body)
    except ValidationError as e:
        return _invalid(kube, body, status, e)
    seen = _observe(kube, vm, fresh)
    the_plan, device = None, None
    if seen.source.location is not None and seen.source.version:
        the_plan = _rollout(ctx, vm, body, status, seen)
        seen.deployment = _apply_children(ctx, vm, the_plan, seen, fresh)
        device = _device(kube, vm, status, seen.pods)
    derived = planner.derive(vm, status, seen.source, the_plan, seen.deployment, seen.pods, device)
    desired = {**derived.fields, "phase": derived.phase.value}
    desired["conditions"] = merge_conditions(
        status.get("conditions") or [], derived.conditions, now_rfc3339(), vm.metadata.generation
    )
    patch = status_patch(status, desired)
    if patch and not kube.patch_status(api.VOICEMODEL, namespace, name, patch):
        return Outcome(None)  # deleted meanwhile
    event = planner.transition_event(status, derived)
    if event is not None:
        kube.post_event(body, *event)
        log.info("%s/%s: %s", namespace, name, event[2])
    return Outcome(derived.phase.value)


def _rollout(
    ctx: Context, vm: api.VoiceModel, body: dict[str, Any], status: dict[str, Any], seen: _Seen
) -> planner.Plan:
    """The plan for the pods, and what it asks besides the children: a failed rollout's Event, a
    hot swap started (or, when the last one failed, a rolling update in its place)."""
    assert seen.source.version is not None
    kube, key = ctx.kube, (vm.metadata.namespace or "default", vm.metadata.name)
    the_plan = planner.plan(vm, status, seen.source.version, seen.deployment, seen.pods)
    if the_plan.newly_failed and the_plan.failed is not None:
        back = the_plan.template_version
        kube.post_event(
            body,
            "Warning",
            "RolloutFailed",
            f"version {the_plan.failed.version} failed: {the_plan.failed.reason}"
            + (f"; rolling back to {back}" if back != the_plan.failed.version else ""),
        )
    version = the_plan.hot_swap
    if version is None:
        return the_plan
    why = HOT_SWAPS.failure(key, version)
    if why is not None:
        # the pod keeps serving its old version; a rolling update replaces it instead
        kube.post_event(body, "Warning", "HotSwapFailed", f"{why}; falling back to a rolling update")
        return planner.Plan(version, replace_pods=True)
    targets = [p for p in planner.swap_targets(seen.pods, version) if _pod(vm, p, None) is not None]
    if targets:
        reload = hotswap.reload_pod(kube, body, vm.spec.server.port, _token(kube, vm), version)
        HOT_SWAPS.start(key, version, targets, reload, lambda: ctx.trigger(*key, "hot swap done"))
    return the_plan


def _apply_children(
    ctx: Context, vm: api.VoiceModel, the_plan: planner.Plan, seen: _Seen, fresh: bool
) -> dict[str, Any]:
    """Apply the Deployment, Service and PodDisruptionBudget; returns the Deployment as applied.

    ``fresh``: the VoiceModel's first reconcile. Its Service is then applied on the background lane
    (``Kube.apply_soon``): the API server allocates ClusterIPs one at a time, and a burst of new
    VoiceModels would otherwise hold every worker on it. The first reconcile's status cannot be
    Ready (its pods have only just been asked for), and every later reconcile applies the Service
    before it reports anything, waiting for the lane's apply if that is still going: Ready still
    means the Service is there. A lane apply that fails queues a reconcile, which applies the
    Service again the usual way (its error then retried with backoff)."""
    kube, settings = ctx.kube, ctx.settings
    ns, name = vm.metadata.namespace or "default", vm.metadata.name
    assert seen.source.location is not None
    version, current = the_plan.template_version, seen.deployment
    restart = planner.restart_token(current)
    if the_plan.replace_pods and planner.template_version(current) == version:
        # a template that does not change replaces no pod: a new token does (once per generation)
        restart = str(vm.metadata.generation)
    deployment_obj = builders.deployment(
        vm,
        version,
        seen.source.location,
        settings,
        autoscaled=kube.autoscaled(ns, builders.deployment_name(name)),
        failed=the_plan.failed.as_tuple() if the_plan.failed else None,
        restart=restart,
    )
    pdb, service = builders.pod_disruption_budget(vm), builders.service(vm)
    if fresh:

        def failed_again(done: Future[dict[str, Any]]) -> None:
            if done.exception() is not None:
                ctx.trigger(ns, name, "Service apply failed")

        kube.apply_soon(service).add_done_callback(failed_again)
    # independent of one another: sent together
    deployment, *rest = kube.concurrently(
        [
            partial(kube.apply, deployment_obj, current=current),
            *([] if fresh else [partial(kube.apply, service)]),
            partial(kube.apply, pdb)
            if pdb is not None
            else partial(kube.delete, "PodDisruptionBudget", ns, builders.pdb_name(name)),
        ]
    )
    for outcome in rest:
        outcome.result()  # raises what the apply raised
    result: dict[str, Any] = deployment.result()
    return result


def _device(
    kube: Kube, vm: api.VoiceModel, status: dict[str, Any], pods: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """status.device from a ready pod's /info (asked once; kept while pods keep serving)."""
    if status.get("device"):
        return dict(status["device"])
    ready = [p for p in pods if planner.pod_ready(p)]
    target = _pod(vm, ready[0], _token(kube, vm)) if ready else None
    if target is None:
        return None
    try:
        return runtime_client.device_info(runtime_client.info(target)) or None
    except runtime_client.RuntimeCallError as e:
        log.info("%s/%s: no device info yet: %s", vm.metadata.namespace, vm.metadata.name, e)
        return None


def _invalid(kube: Kube, body: dict[str, Any], status: dict[str, Any], error: ValidationError) -> Outcome:
    """Admission should have stopped this spec; say so in status instead of retrying forever."""
    message = str(error)[:4000]
    conds = merge_conditions(
        status.get("conditions") or [],
        [
            Cond(api.ConditionType.READY, False, "InvalidSpec", message),
            Cond(api.ConditionType.STALLED, True, "InvalidSpec", message),
            Cond(api.ConditionType.RECONCILING, False, "InvalidSpec", ""),
        ],
        now_rfc3339(),
        body["metadata"].get("generation"),
    )
    meta = body["metadata"]
    kube.patch_status(
        api.VOICEMODEL, meta["namespace"], meta["name"], {"phase": "Failed", "conditions": conds}
    )
    return Outcome(api.VoiceModelPhase.FAILED.value)


class RunIndex:
    """(namespace, TrainingRun) -> the VoiceModels whose model comes from that run, kept from the
    VoiceModels' own events (kopf's start-up listing included). A TrainingRun event (every status
    report of every run) then costs a dict lookup instead of a LIST of the namespace's VoiceModels.
    An event missed here is caught by the resync."""

    def __init__(self) -> None:
        self._runs: dict[tuple[str, str], str] = {}  # (namespace, VoiceModel) -> TrainingRun
        self._guard = threading.Lock()

    def record(self, namespace: str, voicemodel: str, spec: Mapping[str, Any] | None) -> None:
        run = ((spec or {}).get("model") or {}).get("trainingRun")
        with self._guard:
            if run:
                self._runs[(namespace, voicemodel)] = run
            else:
                self._runs.pop((namespace, voicemodel), None)

    def forget(self, namespace: str, voicemodel: str) -> None:
        with self._guard:
            self._runs.pop((namespace, voicemodel), None)

    def serving_from(self, namespace: str, run: str) -> list[str]:
        with self._guard:
            return sorted(vm for (ns, vm), r in self._runs.items() if ns == namespace and r == run)

    def on_event(self, event_type: str | None, namespace: str, name: str, body: Mapping[str, Any]) -> None:
        """A VoiceModel's own watch event (``Controller``'s ``on_event``)."""
        if event_type == "DELETED":
            self.forget(namespace, name)
        else:
            self.record(namespace, name, body.get("spec"))


RUNS = RunIndex()
CONTROLLER = Controller(
    api.VOICEMODEL,
    reconcile,
    Resync(RESYNC_SECONDS, RESYNC_PER_SECOND),
    # ADDED comes only from the live watch (kopf's start-up listing has no type): a new object
    payload_of_added=lambda body: (body.get("metadata") or {}).get("uid"),
    on_event=RUNS.on_event,
)
CONTROLLER.watch_children("apps", "v1", "deployments", builders.VOICEMODEL_LABEL, "Deployment")
CONTROLLER.watch_children("", "v1", "pods", builders.VOICEMODEL_LABEL, "Pod")
CONTROLLER.watch_related(api.TRAININGRUN, RUNS.serving_from, "TrainingRun")
