"""A VoiceModel's plan and status from its source, Deployment and pods, and its hot swaps: no cluster."""

from __future__ import annotations

from typing import Any

from tts_operator import api
from tts_operator.builders import serving as b
from tts_operator.reconcile import voicemodel_plan as s


def voicemodel(**spec: Any) -> api.VoiceModel:
    body: dict[str, Any] = {
        "metadata": {"name": "narrator", "namespace": "voices", "uid": "u", "generation": 4},
        "spec": {
            "engine": "vits",
            "model": {"volume": {"claimName": "models", "subPath": "n"}},
            "version": "v2",
        },
    }
    body["spec"].update(spec)
    return api.VoiceModel.model_validate(body)


def deployment(
    version: str, *, replicas: int = 1, settled: bool = True, **annotations: str
) -> dict[str, Any]:
    done = replicas if settled else 0
    return {
        "metadata": {
            "name": "narrator",
            "generation": 2,
            "annotations": {b.VERSION_LABEL: version, **annotations},
        },
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": 2,
            "replicas": replicas,
            "updatedReplicas": done,
            "availableReplicas": done,
            "readyReplicas": done,
        },
    }


def pod(version: str, ready: bool = True, loaded: str | None = None, **container: Any) -> dict[str, Any]:
    annotations = {b.VERSION_LABEL: version}
    if loaded:
        annotations |= {b.LOADED_VERSION_ANNOTATION: loaded, b.LOADED_RESTARTS_ANNOTATION: "0"}
    return {
        "metadata": {"name": f"p-{version}", "annotations": annotations},
        "status": {
            "podIP": "10.0.0.1",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [{"name": "server", "restartCount": 0, **container}],
        },
    }


def conds(derived: s.Derived) -> dict[str, bool | None]:
    return {c.type: c.status for c in derived.conditions}


def test_training_run_source_waits_for_the_export() -> None:
    vm = api.VoiceModel.model_validate(
        {"metadata": {"name": "n"}, "spec": {"engine": "vits", "model": {"trainingRun": "ft"}}}
    )
    assert s.resolve_source(vm, None).available.reason == "TrainingRunNotFound"
    running = {"spec": {"export": {"volume": {"claimName": "models"}}}, "status": {"phase": "Running"}}
    src = s.resolve_source(vm, running)
    assert (
        src.location is None and src.available.reason == "TrainingRunNotExported" and not src.available.status
    )
    d = s.derive(vm, {}, src, None, None, [])
    assert d.phase == api.VoiceModelPhase.PENDING
    expected = {
        "Ready": False,
        "Reconciling": True,
        "Stalled": False,
        "ModelAvailable": False,
        "RolledOut": False,
    }
    assert {k: conds(d)[k] for k in expected} == expected
    exported = {**running, "status": {"output": {"version": "ft", "path": "voices/ft"}}}
    src = s.resolve_source(vm, exported)
    assert (
        src.location == b.ModelLocation("models", "voices") and src.version == "ft" and src.available.status
    )


def test_ready_only_when_every_replica_serves_the_desired_version() -> None:
    vm = voicemodel(replicas=2)
    src = s.resolve_source(vm, None)
    plan = s.plan(vm, {"lastGoodVersion": "v1"}, "v2", deployment("v2", replicas=2), [])
    assert plan == s.Plan("v2")
    mid = s.derive(
        vm,
        {"servingVersion": "v1"},
        src,
        plan,
        deployment("v2", replicas=2, settled=False),
        [pod("v1"), pod("v2")],
    )
    assert mid.phase == api.VoiceModelPhase.DEPLOYING and mid.fields["servingVersion"] == "v1"
    assert conds(mid)["Ready"] is False and conds(mid)["Reconciling"] is True
    done = s.derive(
        vm, {"servingVersion": "v1"}, src, plan, deployment("v2", replicas=2), [pod("v2"), pod("v2")]
    )
    assert done.phase == api.VoiceModelPhase.READY
    assert done.fields["servingVersion"] == done.fields["lastGoodVersion"] == "v2"
    assert done.fields["replicasText"] == "2/2" and done.fields["updatedReplicas"] == 2
    assert done.fields["endpoint"] == "http://narrator.voices.svc:8005"


def test_a_permanent_exit_rolls_back_and_says_so() -> None:
    vm = voicemodel()
    crashed = pod("v2", ready=False, lastState={"terminated": {"exitCode": 65, "message": "sha256 mismatch"}})
    plan = s.plan(vm, {"lastGoodVersion": "v1"}, "v2", deployment("v2", settled=False), [pod("v1"), crashed])
    assert plan.template_version == "v1" and plan.newly_failed and plan.failed is not None
    assert plan.failed.reason.startswith("BadModel")
    # next reconcile: the marker on the Deployment keeps v2 failed; the rollback has finished
    marker = {
        b.FAILED_VERSION_ANNOTATION: "v2",
        b.FAILED_GENERATION_ANNOTATION: "4",
        b.FAILED_REASON_ANNOTATION: "BadModel: x",
    }
    dep = deployment("v1", **marker)
    plan = s.plan(vm, {"lastGoodVersion": "v1"}, "v2", dep, [pod("v1")])
    assert plan.template_version == "v1" and not plan.newly_failed
    d = s.derive(
        vm,
        {"servingVersion": "v1", "lastGoodVersion": "v1"},
        s.resolve_source(vm, None),
        plan,
        dep,
        [pod("v1")],
    )
    assert d.phase == api.VoiceModelPhase.DEGRADED
    degraded = next(c for c in d.conditions if c.type == "Degraded")
    assert degraded.status and degraded.message == "desired v2 failed: BadModel: x; serving v1"
    assert conds(d)["Stalled"] is True and conds(d)["Ready"] is False
    rolled = next(c for c in d.conditions if c.type == "RolledOut")
    assert rolled.status and rolled.reason == "RolledBack"
    # setting the version back is the fast path: no failure applies, the pods already run v1
    back = voicemodel(version="v1")
    assert s.plan(back, {"lastGoodVersion": "v1"}, "v1", dep, [pod("v1")]) == s.Plan("v1")


def test_no_rollback_without_auto_rollback_or_last_good() -> None:
    crashed = pod(
        "v2",
        ready=False,
        state={"waiting": {"reason": "CrashLoopBackOff"}},
        lastState={"terminated": {"exitCode": 1}},
    )
    vm = voicemodel(rollout={"autoRollback": False})
    assert s.plan(vm, {"lastGoodVersion": "v1"}, "v2", deployment("v2"), [crashed]).template_version == "v2"
    first = s.plan(voicemodel(), {}, "v2", deployment("v2"), [crashed])
    assert (
        first.template_version == "v2"
        and first.failed is not None
        and first.failed.reason.startswith("CrashLoop")
    )
    d = s.derive(voicemodel(), {}, s.resolve_source(voicemodel(), None), first, deployment("v2"), [crashed])
    assert d.phase == api.VoiceModelPhase.FAILED


def test_preflight_failure_and_missed_deadline() -> None:
    vm = voicemodel()
    preflight = pod("v2", ready=False, state={"terminated": {"exitCode": 69}})
    assert s.rollout_failure(None, [preflight], "v2") == ("PreflightFailed", "pod p-v2 exited 69")
    late = deployment("v2", settled=False)
    late["status"]["conditions"] = [
        {
            "type": "Progressing",
            "status": "False",
            "reason": "ProgressDeadlineExceeded",
            "message": "too slow",
        }
    ]
    plan = s.plan(vm, {"lastGoodVersion": "v1"}, "v2", late, [])
    assert plan.template_version == "v1" and plan.failed is not None
    assert plan.failed.reason == "ProgressDeadlineExceeded: too slow"


def test_hot_swap_keeps_the_template_and_tracks_pod_versions() -> None:
    vm = voicemodel(rollout={"strategy": "HotSwap"}, replicas=2)
    pods = [pod("v1"), pod("v1")]
    plan = s.plan(vm, {"lastGoodVersion": "v1"}, "v2", deployment("v1", replicas=2), pods)
    assert plan == s.Plan("v1", hot_swap="v2")
    src = s.resolve_source(vm, None)
    half = s.derive(
        vm,
        {"servingVersion": "v1"},
        src,
        plan,
        deployment("v1", replicas=2),
        [pod("v1", loaded="v2"), pod("v1")],
    )
    assert half.phase == api.VoiceModelPhase.DEPLOYING and half.fields["servingVersion"] == "v1"
    assert half.fields["updatedReplicas"] == 1
    done = s.derive(
        vm, {}, src, plan, deployment("v1", replicas=2), [pod("v1", loaded="v2"), pod("v1", loaded="v2")]
    )
    assert done.phase == api.VoiceModelPhase.READY and done.fields["servingVersion"] == "v2"
    # a container restart makes the record stale: the server loaded its template version again
    restarted = pod("v1", loaded="v2")
    restarted["status"]["containerStatuses"][0]["restartCount"] = 1
    assert s.pod_version(restarted) == "v1"
    # mid-rollout HotSwap is a plain rolling update
    assert s.plan(vm, {}, "v2", deployment("v1", replicas=2, settled=False), pods) == s.Plan("v2")


def test_transition_events() -> None:
    vm = voicemodel()
    d = s.derive(vm, {}, s.resolve_source(vm, None), s.Plan("v2"), deployment("v2"), [pod("v2")])
    assert s.transition_event({}, d) == ("Normal", "Serving", "New -> Ready: serving v2 on 1/1 replicas")
    same = {"phase": "Ready", "conditions": [{"type": "Ready", "reason": "Serving"}]}
    assert s.transition_event(same, d) is None


# --- HotSwap back to the template's own version: the pods were swapped away from it, so they must
# be reloaded again although the template already names the desired version


def test_setting_the_version_back_to_the_template_reloads_the_pods() -> None:
    vm = voicemodel(rollout={"strategy": "HotSwap"}, replicas=2, version="v1")
    status = {"servingVersion": "v2", "lastGoodVersion": "v2"}
    swapped = [pod("v1", loaded="v2"), pod("v1", loaded="v2")]
    plan = s.plan(vm, status, "v1", deployment("v1", replicas=2), swapped)
    assert plan == s.Plan("v1", hot_swap="v1")
    src = s.resolve_source(vm, None)
    during = s.derive(vm, status, src, plan, deployment("v1", replicas=2), swapped)
    assert during.phase == api.VoiceModelPhase.DEPLOYING and during.reason == "HotSwapping"
    assert during.fields["servingVersion"] == "v2"
    assert during.message == "reloading pods in place to v1; serving v2"

    # once every pod is back on v1 there is nothing to reload, and status says so
    back = [pod("v1", loaded="v1"), pod("v1", loaded="v1")]
    assert s.plan(vm, status, "v1", deployment("v1", replicas=2), back) == s.Plan("v1")
    done = s.derive(vm, status, src, s.Plan("v1"), deployment("v1", replicas=2), back)
    assert done.phase == api.VoiceModelPhase.READY and done.fields["servingVersion"] == "v1"


def test_other_strategies_and_unready_pods_do_not_trigger_a_reload() -> None:
    status = {"servingVersion": "v1", "lastGoodVersion": "v1"}
    # a pod that is not ready is not asked to reload (it has nothing loaded to swap)
    hot = voicemodel(rollout={"strategy": "HotSwap"}, replicas=2, version="v1")
    pods = [pod("v1", loaded="v1"), pod("v1", ready=False)]
    assert s.plan(hot, status, "v1", deployment("v1", replicas=2), pods) == s.Plan("v1")
    # mid-rollout, HotSwap waits for the Deployment to settle
    swapped = [pod("v1", loaded="v2")]
    assert s.plan(hot, status, "v1", deployment("v1", settled=False), swapped) == s.Plan("v1")
    # Availability never reloads in place: pods a hot swap left on v2 (the strategy changed since)
    # are replaced by a rolling restart of the v1 template, once the Deployment is settled
    avail = voicemodel(rollout={"strategy": "Availability"}, version="v1")
    assert s.plan(avail, status, "v1", deployment("v1"), swapped) == s.Plan("v1", replace_pods=True)
    assert s.plan(avail, status, "v1", deployment("v1", settled=False), swapped) == s.Plan("v1")
    assert s.plan(avail, status, "v1", deployment("v1"), [pod("v1", loaded="v1")]) == s.Plan("v1")


def test_a_restart_token_rolls_pods_whose_template_does_not_change() -> None:
    from tts_operator.builders import serving as builders
    from tts_operator.settings import Settings

    vm = voicemodel(version="v1")
    location = builders.ModelLocation(claim_name="models", sub_path="narrator")
    plain = builders.deployment(vm, "v1", location, Settings())
    restarted = builders.deployment(vm, "v1", location, Settings(), restart="7")
    assert s.restart_token(plain) is None and s.restart_token(restarted) == "7"
    # the only difference is in the pod template: the Deployment controller rolls every pod
    assert plain["spec"]["template"] != restarted["spec"]["template"]
    plain["spec"]["template"]["metadata"]["annotations"][builders.RESTART_ANNOTATION] = "7"
    assert plain == restarted


# --- hot swaps run off the workers (``reconcile.hotswap``) -----------------------------------------


def test_a_hot_swap_runs_in_the_background_once_and_reports_its_failure_once() -> None:
    import threading

    from tts_operator import runtime_client
    from tts_operator.reconcile import hotswap

    swaps, key = hotswap.HotSwaps(), ("voices", "narrator")
    first, second = pod("v1", loaded="v1"), pod("v1", loaded="v1")
    first["metadata"] |= {"name": "a", "uid": "ua"}
    second["metadata"] |= {"name": "b", "uid": "ub"}
    release, finished = threading.Event(), threading.Event()
    reloaded: list[str] = []

    def reload(p: dict[str, Any]) -> dict[str, Any]:
        release.wait(10)
        if p["metadata"]["name"] == "b":
            raise runtime_client.RuntimeCallError(404, "model version v2 not found")
        reloaded.append(p["metadata"]["name"])
        return {}

    assert swaps.start(key, "v2", [second, first], reload, finished.set)
    # a second reconcile while the reloads go on starts nothing
    assert not swaps.start(key, "v2", [first, second], reload, finished.set)
    release.set()
    assert finished.wait(10)
    assert reloaded == ["a"]  # in name order; stopped at b
    # the failure is handed to one reconcile (which falls back to a rolling update), not to two
    why = swaps.failure(key, "v2")
    assert why is not None and "pod b could not reload v2" in why and "not found" in why
    assert swaps.failure(key, "v2") is None
    # the swap is over: the next one may start
    assert swaps.start(key, "v3", [first], lambda p: {}, lambda: None)
    # a pod list that predates the reload's annotation still shows what pod a serves now
    listed = pod("v1", loaded="v1")
    listed["metadata"] |= {"name": "a", "uid": "ua"}
    (seen,) = swaps.overlay(key, [listed])
    assert s.pod_version(seen) == "v2" and s.swap_targets([seen], "v2") == []
    # unless its container restarted since: a restarted server loads its template's version
    restarted = pod("v1", restartCount=1)
    restarted["metadata"] |= {"name": "a", "uid": "ua"}
    (seen,) = swaps.overlay(key, [restarted])
    assert s.pod_version(seen) == "v1"


def test_nothing_to_reload_starts_no_swap() -> None:
    from tts_operator.reconcile import hotswap

    swaps = hotswap.HotSwaps()
    assert not swaps.start(("voices", "narrator"), "v2", [], lambda p: {}, lambda: None)
