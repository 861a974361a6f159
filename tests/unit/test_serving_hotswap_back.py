"""HotSwap back to the template's own version: the pods were swapped away from it, so they must be
reloaded again although the template already names the desired version (pure functions)."""

from __future__ import annotations

from test_serving_status import deployment, pod, voicemodel

from tts_operator import api
from tts_operator.status import serving as s


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
