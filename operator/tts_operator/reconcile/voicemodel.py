"""VoiceModel handlers: parse -> resolve the source -> plan -> (hot-swap) -> apply -> status -> Event.

One level-based reconcile serves every trigger: the VoiceModel's own events, its Deployment's and
pods' events (found by the ``tts-operator.dev/voicemodel`` label), the events of the TrainingRun it
serves from, and a slow resync. Each reconcile re-reads everything. Events only queue the
VoiceModel (``driver``); a reconcile can take a while (HotSwap reloads pods one by one), and
triggers that arrive meanwhile fold into one more round once it is done.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from functools import partial
from typing import Any

import kopf
from pydantic import ValidationError

from tts_operator import api, metrics, runtime_client
from tts_operator.builders import serving as builders
from tts_operator.contract import now_rfc3339
from tts_operator.handlers.driver import Driver
from tts_operator.handlers.driver import resync_forever as resync
from tts_operator.handlers.workqueue import EVENT, NEW, RESYNC
from tts_operator.kube import Kube
from tts_operator.settings import MANAGED_BY, Settings
from tts_operator.status import serving as status_logic
from tts_operator.status.conditions import Cond, merge_conditions
from tts_operator.status.training import status_patch

log = logging.getLogger(__name__)

KIND = api.VOICEMODEL.kind
_PHASES = metrics.PhaseBook(KIND)
#: the resync that catches what no event reports (a pod that stops answering between probes)
RESYNC_SECONDS = 30.0
#: VoiceModels the resync reconciles per second at most (a settled one costs only reads)
RESYNC_PER_SECOND = 10.0


class Context:
    """What the handlers share, set once at start-up by ``tts_operator.manager``."""

    kube: Kube | None = None
    settings: Settings = Settings()


def _pod_ip(pod: dict[str, Any]) -> str | None:
    return (pod.get("status") or {}).get("podIP")


def _endpoint(vm: api.VoiceModel, pod: dict[str, Any], token: str | None) -> runtime_client.Pod | None:
    ip = _pod_ip(pod)
    return runtime_client.Pod(ip, vm.spec.server.port, token) if ip else None


def _token(kube: Kube, vm: api.VoiceModel) -> str | None:
    ref = vm.spec.server.auth_secret_ref
    return kube.secret_value(vm.metadata.namespace or "default", ref.name, ref.key) if ref else None


def _record_versions(kube: Kube, vm: api.VoiceModel, pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ask each ready pod without a fresh record which version it serves; note it on the pod."""
    ns = vm.metadata.namespace or "default"
    for pod in pods:
        if not status_logic.pod_ready(pod) or status_logic.recorded_version(pod) is not None:
            continue
        target = _endpoint(vm, pod, None)
        if target is None:
            continue
        try:
            version = runtime_client.loaded_version(target)
        except runtime_client.RuntimeCallError as e:
            log.info(
                "%s/%s: could not read pod %s's version: %s", ns, vm.metadata.name, pod["metadata"]["name"], e
            )
            continue
        if version:
            ann = {
                builders.LOADED_VERSION_ANNOTATION: version,
                builders.LOADED_RESTARTS_ANNOTATION: str(status_logic.restarts(pod)),
            }
            kube.annotate_pod(ns, pod["metadata"]["name"], ann)
            pod.setdefault("metadata", {}).setdefault("annotations", {}).update(ann)
    return pods


def _hot_swap(
    kube: Kube, vm: api.VoiceModel, body: dict[str, Any], pods: list[dict[str, Any]], version: str
) -> str | None:
    """Reload every ready pod not on ``version``, one at a time. Returns why a pod could not, or None."""
    ns = vm.metadata.namespace or "default"
    token = _token(kube, vm)
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        if not status_logic.pod_ready(pod) or status_logic.pod_version(pod) == version:
            continue
        name = pod["metadata"]["name"]
        target = _endpoint(vm, pod, token)
        if target is None:
            continue
        try:
            answer = runtime_client.reload(target, version)
        except runtime_client.RuntimeCallError as e:
            return f"pod {name} could not reload {version}: {e}"
        kube.annotate_pod(
            ns,
            name,
            {
                builders.LOADED_VERSION_ANNOTATION: version,
                builders.LOADED_RESTARTS_ANNOTATION: str(status_logic.restarts(pod)),
            },
        )
        kube.post_event(
            body,
            "Normal",
            "Reloaded",
            f"pod {name} reloaded {answer.get('previous')} -> {version} in {answer.get('seconds')} s",
        )
    return None


def _device(
    kube: Kube, vm: api.VoiceModel, status: dict[str, Any], pods: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """status.device from a ready pod's /info (asked once; kept while pods keep serving)."""
    if status.get("device"):
        return dict(status["device"])
    ready = [p for p in pods if status_logic.pod_ready(p)]
    if not ready:
        return None
    target = _endpoint(vm, ready[0], _token(kube, vm))
    if target is None:
        return None
    try:
        return runtime_client.device_info(runtime_client.info(target)) or None
    except runtime_client.RuntimeCallError as e:
        log.info("%s/%s: no device info yet: %s", vm.metadata.namespace, vm.metadata.name, e)
        return None


def _apply_children(
    kube: Kube,
    vm: api.VoiceModel,
    the_plan: status_logic.Plan,
    location: builders.ModelLocation,
    settings: Settings,
    current: dict[str, Any] | None,
    fresh: bool = False,
) -> dict[str, Any]:
    """Apply the children; ``current``: the Deployment as this reconcile read it (None: none).

    ``fresh``: the VoiceModel's first reconcile. Its Service is then applied on the background lane
    (``Kube.apply_soon``): the API server allocates ClusterIPs one at a time, and a burst of new
    VoiceModels would otherwise hold every worker on it (1000 of them took 88 s to all get a
    Deployment and a phase, 43 s without the Service). The status the first reconcile reports
    cannot be Ready (its pods have only just been asked for), and every later reconcile applies
    the Service before it reports anything, waiting for the lane's apply if that is still going:
    Ready still means the Service is there. A lane apply that fails queues a reconcile, which
    applies the Service again the usual way (its error then retried with backoff)."""
    ns, name = vm.metadata.namespace or "default", vm.metadata.name
    version = the_plan.template_version
    failed = the_plan.failed.as_tuple() if the_plan.failed else None
    restart = status_logic.restart_token(current)
    if the_plan.replace_pods and status_logic.template_version(current) == version:
        # a template that does not change replaces no pod: a new token does (once per generation)
        restart = str(vm.metadata.generation)
    deployment_obj = builders.deployment(
        vm,
        version,
        location,
        settings,
        autoscaled=kube.autoscaled(ns, builders.deployment_name(name)),
        failed=failed,
        restart=restart,
    )
    pdb = builders.pod_disruption_budget(vm)
    service = builders.service(vm)
    if fresh:

        def failed_again(done: Future[dict[str, Any]]) -> None:
            if done.exception() is not None:
                _trigger(ns, name, "Service apply failed")

        kube.apply_soon(service).add_done_callback(failed_again)
    # independent of one another: sent together
    deployment, *_rest = kube.concurrently(
        [
            partial(kube.apply, deployment_obj, current=current),
            *([] if fresh else [partial(kube.apply, service)]),
            partial(kube.apply, pdb)
            if pdb is not None
            else partial(kube.delete, "PodDisruptionBudget", ns, builders.pdb_name(name)),
        ]
    )
    for outcome in _rest:
        outcome.result()  # raises what the apply raised
    result: dict[str, Any] = deployment.result()
    return result


def reconcile(
    kube: Kube, settings: Settings, namespace: str, name: str, created_uid: str | None = None
) -> api.VoiceModelPhase | None:
    """Bring the VoiceModel's children and status in line with its spec and what exists.

    ``created_uid``: the uid an ADDED watch event carried. When the VoiceModel read now is that
    very object, never reconciled (no status), nothing owned by its brand-new uid can exist yet:
    its Deployment, pods and PodDisruptionBudget are not looked for (three reads saved for every
    new VoiceModel; hundreds a minute when they come in bulk). The children are still built from
    the object read now, never from the event: the event may be stale."""
    with metrics.reconciling(KIND):
        body = kube.get_object(api.VOICEMODEL, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            _PHASES.set(f"{namespace}/{name}", None)
            return None  # children go with it: owner references
        status: dict[str, Any] = body.get("status") or {}
        fresh = created_uid is not None and body["metadata"].get("uid") == created_uid and not status
        now = now_rfc3339()
        try:
            vm = api.VoiceModel.model_validate(body)
        except ValidationError as e:
            # admission should have stopped this; say so instead of retrying forever
            message = str(e)[:4000]
            conds = merge_conditions(
                status.get("conditions") or [],
                [
                    Cond(api.ConditionType.READY, False, "InvalidSpec", message),
                    Cond(api.ConditionType.STALLED, True, "InvalidSpec", message),
                    Cond(api.ConditionType.RECONCILING, False, "InvalidSpec", ""),
                ],
                now,
                body["metadata"].get("generation"),
            )
            kube.patch_status(api.VOICEMODEL, namespace, name, {"phase": "Failed", "conditions": conds})
            return api.VoiceModelPhase.FAILED

        run = None
        if vm.spec.model.training_run:
            run = kube.get_object(api.TRAININGRUN, namespace, vm.spec.model.training_run)
        source = status_logic.resolve_source(vm, run)
        deployment = None if fresh else kube.get_deployment(namespace, builders.deployment_name(name))
        pods: list[dict[str, Any]] = []
        the_plan = None
        device = None
        if fresh:
            kube.known_absent("PodDisruptionBudget", namespace, builders.pdb_name(name))
        if source.location is not None and source.version:
            if not fresh:
                pods = kube.list_pods(namespace, builders.pod_selector_text(name))
            pods = _record_versions(kube, vm, pods)
            the_plan = status_logic.plan(vm, status, source.version, deployment, pods)
            if the_plan.newly_failed and the_plan.failed is not None:
                kube.post_event(
                    body,
                    "Warning",
                    "RolloutFailed",
                    f"version {the_plan.failed.version} failed: {the_plan.failed.reason}"
                    + (
                        f"; rolling back to {the_plan.template_version}"
                        if the_plan.template_version != the_plan.failed.version
                        else ""
                    ),
                )
            if the_plan.hot_swap:
                why = _hot_swap(kube, vm, body, pods, the_plan.hot_swap)
                if why is not None:
                    # the pod keeps serving its old version; a rolling update replaces it instead
                    kube.post_event(
                        body, "Warning", "HotSwapFailed", f"{why}; falling back to a rolling update"
                    )
                    the_plan = status_logic.Plan(the_plan.hot_swap, replace_pods=True)
                # the annotations the reloads just wrote: a consistent read
                pods = kube.list_pods(namespace, builders.pod_selector_text(name), cached=False)
            deployment = _apply_children(kube, vm, the_plan, source.location, settings, deployment, fresh)
            device = _device(kube, vm, status, pods)

        derived = status_logic.derive(vm, status, source, the_plan, deployment, pods, device)
        desired = {**derived.fields, "phase": derived.phase.value}
        desired["conditions"] = merge_conditions(
            status.get("conditions") or [], derived.conditions, now, vm.metadata.generation
        )
        patch = status_patch(status, desired)
        if patch and not kube.patch_status(api.VOICEMODEL, namespace, name, patch):
            _PHASES.set(f"{namespace}/{name}", None)
            return None  # deleted meanwhile
        event = status_logic.transition_event(status, derived)
        if event is not None:
            kube.post_event(body, *event)
            log.info("%s/%s: %s", namespace, name, event[2])
        _PHASES.set(f"{namespace}/{name}", derived.phase.value)
        return derived.phase


def _reconcile_queued(namespace: str, name: str, created_uid: str | None) -> None:
    kube = Context.kube
    if kube is not None:
        reconcile(kube, Context.settings, namespace, name, created_uid)


_DRIVER = Driver(KIND, _reconcile_queued)


def _echo(event_type: str | None, body: Mapping[str, Any]) -> bool:
    kube = Context.kube
    return kube is not None and kube.echoes_own_write(event_type, body)


def _trigger(
    namespace: str | None,
    name: str | None,
    trigger: str,
    created_uid: str | None = None,
    priority: int = EVENT,
) -> None:
    if namespace and name:
        _DRIVER.trigger(namespace, name, trigger, created_uid, NEW if created_uid else priority)


class RunIndex:
    """(namespace, TrainingRun) -> the VoiceModels whose model comes from that run, kept from the
    VoiceModels' own events (kopf's start-up listing included). A TrainingRun event (every status
    report of every run) then costs a dict lookup instead of a LIST of the namespace's VoiceModels,
    which is most of the work at a thousand VoiceModels and sat in front of the TrainingRun
    handler's apply -> Job path. An event missed here is caught by the resync."""

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


RUNS = RunIndex()


@kopf.on.event(api.API_GROUP, api.API_VERSION, api.VOICEMODEL.plural)
async def voicemodel_event(
    type: str,
    name: str,
    namespace: str | None,
    spec: Mapping[str, Any],
    uid: str | None,
    body: Mapping[str, Any],
    **_: Any,
) -> None:
    if _echo(type, body):
        return  # our own status patch coming back: nothing new to reconcile
    if type == "DELETED":
        _PHASES.set(f"{namespace}/{name}", None)
        _DRIVER.forget(namespace or "", name)
        if namespace:
            RUNS.forget(namespace, name)
        return
    if namespace:
        RUNS.record(namespace, name, spec)
    # ADDED comes only from the live watch (kopf's start-up listing has no type): a new object
    _trigger(namespace, name, "VoiceModel", uid if type == "ADDED" else None)


_CHILD_LABELS: dict[str, Any] = {
    "app.kubernetes.io/managed-by": MANAGED_BY,
    builders.VOICEMODEL_LABEL: kopf.PRESENT,
}


@kopf.on.event("apps", "v1", "deployments", labels=_CHILD_LABELS)
async def deployment_event(
    type: str, body: Mapping[str, Any], labels: Mapping[str, str], namespace: str | None, **_: Any
) -> None:
    if not _echo(type, body):  # our own apply of it coming back says nothing new
        _trigger(namespace, labels.get(builders.VOICEMODEL_LABEL), "Deployment")


@kopf.on.event("", "v1", "pods", labels=_CHILD_LABELS)
async def pod_event(labels: Mapping[str, str], namespace: str | None, **_: Any) -> None:
    _trigger(namespace, labels.get(builders.VOICEMODEL_LABEL), "Pod")


@kopf.on.event(api.API_GROUP, api.API_VERSION, api.TRAININGRUN.plural)
async def trainingrun_event(name: str, namespace: str | None, **_: Any) -> None:
    """A run that exports (or disappears) changes what the VoiceModels serving from it can do."""
    if not namespace:
        return
    for vm in RUNS.serving_from(namespace, name):
        _trigger(namespace, vm, "TrainingRun")


def resync_forever(
    namespaces: tuple[str, ...], stop: threading.Event, interval: float = RESYNC_SECONDS
) -> None:
    """Every VoiceModel, ``interval`` seconds after the previous round (see ``driver.resync_forever``)."""
    resync(
        lambda: Context.kube,
        api.VOICEMODEL,
        namespaces,
        lambda ns, name: _trigger(ns, name, "resync", priority=RESYNC),
        stop,
        interval,
        RESYNC_PER_SECOND,
        driver=_DRIVER,
    )
