"""A VoiceModel's plan and status from its source, Deployment and pods: pure functions, no cluster."""

from __future__ import annotations

from typing import Any

from tts_operator import api
from tts_operator.builders import serving as b
from tts_operator.status import serving as s


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
