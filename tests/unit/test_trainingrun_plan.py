"""TrainingRun status from observed children (pure logic; the dicts are shaped as the API returns them)."""

from __future__ import annotations

from typing import Any

from tts_contract.contract import ManifestFile, ModelManifest
from tts_operator import api
from tts_operator.reconcile import trainingrun_plan as st
from tts_operator.reconcile.conditions import Cond, merge_conditions, status_patch

NOW = "2026-01-01T00:00:00Z"
GPU = "nvidia.com/gpu"


def make_run(**spec: Any) -> api.TrainingRun:
    base: dict[str, Any] = {
        "engine": "vits",
        "dataset": {"volume": {"claimName": "d"}},
        "training": {"epochs": 3},
        "checkpoints": {"volume": {"claimName": "c"}},
        "export": {"volume": {"claimName": "m", "subPath": "voices"}},
        "resources": {"gpus": 8, "gpuProduct": "NVIDIA-H100-80GB-HBM3"},
    }
    base.update(spec)
    return api.TrainingRun.model_validate(
        {"metadata": {"name": "r", "namespace": "ns", "uid": "u", "generation": 2}, "spec": base}
    )


def job(
    conditions: tuple[tuple[str, str], ...] = (),
    suspend: bool = False,
    failed: int = 0,
    name: str = "r-train",
) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"suspend": suspend},
        "status": {
            "failed": failed,
            "startTime": "2026-01-01T00:00:00+00:00",
            "conditions": [
                {"type": t, "status": "True", "reason": r, "message": f"{t} because {r}"}
                for t, r in conditions
            ],
        },
    }


def pod(name: str, phase: str, created: str = "2026-01-01T00:00:00Z", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "creationTimestamp": created}, "status": {"phase": phase, **status}}


def terminated(container: str, code: int, message: str = "", reason: str = "Error") -> dict[str, Any]:
    state = {"terminated": {"exitCode": code, "message": message, "reason": reason, "finishedAt": NOW}}
    return {"containerStatuses": [{"name": container, "state": state}]}


def derive(run: api.TrainingRun, observed: st.Observed, status: dict[str, Any] | None = None) -> st.Derived:
    return st.derive(run, status or {}, observed, GPU, NOW)


def conds(d: st.Derived) -> dict[str, Cond]:
    return {c.type: c for c in d.conditions}


def test_new_run_wants_its_job() -> None:
    d = derive(make_run(), st.Observed())
    assert d.phase == api.TrainingRunPhase.PENDING and d.create_training_job
    assert d.fields["observedGeneration"] == 2
    assert conds(d)["Reconciling"].status is True and conds(d)["Ready"].status is False


def test_unschedulable_gpu_request_names_its_cause() -> None:
    scheduled = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/4 nodes are available: 2 Insufficient nvidia.com/gpu, 2 node(s) didn't match selector.",
    }
    p = pod("r-train-x", "Pending", conditions=[scheduled])
    d = derive(
        make_run(resources={"gpus": 9, "gpuProduct": "NVIDIA-H100-80GB-HBM3"}), st.Observed(job(), [p])
    )
    assert d.phase == api.TrainingRunPhase.PENDING and d.reason == "InsufficientGPU"
    expected = "waiting for 9 × nvidia.com/gpu on NVIDIA-H100-80GB-HBM3: no node has enough free"  # noqa: RUF001
    assert d.message.startswith(expected)
    assert not d.create_training_job
    assert st.transition_event({}, d) is not None and st.transition_event({}, d)[0] == "Warning"  # type: ignore[index]


def test_other_unschedulable_causes_pass_the_scheduler_message() -> None:
    scheduled = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "pvc not bound",
    }
    d = derive(make_run(), st.Observed(job(), [pod("p", "Pending", conditions=[scheduled])]))
    assert d.reason == "Unschedulable" and "pvc not bound" in d.message


def test_a_missing_claim_is_named_once_with_the_field_that_names_it() -> None:
    scheduled = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": '0/4 nodes are available: persistentvolumeclaim "nope-data" not found. not found',
    }
    run = make_run(dataset={"volume": {"claimName": "nope-data"}})
    d = derive(run, st.Observed(job(), [pod("p", "Pending", conditions=[scheduled])]))
    assert d.phase == api.TrainingRunPhase.PENDING and d.reason == "VolumeNotFound"
    assert d.message == (
        "PersistentVolumeClaim nope-data (spec.dataset.volume.claimName) does not exist: "
        "create it, or name an existing claim"
    )
    event = st.transition_event({}, d)
    assert event is not None and event[0] == "Warning"


def _on_node(
    name: str, node: str | None, claims: list[str], phase: str = "Running", uid: str | None = None
) -> dict[str, Any]:
    p = pod(name, phase)
    p["metadata"]["uid"] = uid or f"uid-{name}"
    p["spec"] = {
        "nodeName": node,
        "volumes": [{"name": c, "persistentVolumeClaim": {"claimName": c}} for c in claims]
        + [{"name": "scratch", "emptyDir": {}}],
    }
    return p


def test_an_export_waiting_for_a_single_node_claim_held_on_another_node_says_which() -> None:
    export_pod = _on_node("r-export-a", "gpu-local-0", ["c", "m"], phase="Pending")
    others = [
        export_pod,
        _on_node("narrator-1", "cpu-local-0", ["m"]),
        _on_node("narrator-2", "gpu-local-0", ["m"]),  # same node: no conflict
        _on_node("old-export", "cpu-local-0", ["m"], phase="Succeeded"),  # done: detached
        _on_node("reader", "cpu-local-0", ["c"]),  # c is ReadWriteMany
        _on_node("unplaced", None, ["m"], phase="Pending"),
    ]
    modes: dict[str, list[str] | None] = {"c": ["ReadWriteMany"], "m": ["ReadWriteOnce"]}
    assert (
        st.placed_not_started([export_pod, _on_node("unplaced", None, ["m"], phase="Pending")]) is export_pod
    )
    # its fetchers run: its volumes are attached, nothing to look for
    fetching = _on_node("r-export-b", "gpu-local-0", ["m"], phase="Pending")
    fetching["status"]["initContainerStatuses"] = [{"name": "fetch-base-model", "state": {"running": {}}}]
    assert st.placed_not_started([fetching]) is None
    (used,) = st.claims_held_elsewhere(export_pod, modes, others)
    assert used == st.ClaimInUse(
        "m", ("ReadWriteOnce",), "r-export-a", "gpu-local-0", (("narrator-1", "cpu-local-0"),)
    )
    # no claim modes known (a claim gone), or every mode shared: nothing to say
    assert st.claims_held_elsewhere(export_pod, {"c": None, "m": ["ReadWriteMany"]}, others) == []

    completed = job((("Complete", "x"),))
    d = derive(
        make_run(),
        st.Observed(completed, [], job(name="r-export"), [export_pod], claims_in_use=[used]),
    )
    assert d.phase == api.TrainingRunPhase.EXPORTING and d.reason == "SingleNodeVolume"
    assert d.message == (
        "pod r-export-a on node gpu-local-0 waits for PersistentVolumeClaim m "
        "(spec.export.volume.claimName): it is ReadWriteOnce and in use on node cpu-local-0 by pod(s) "
        "narrator-1 (Multi-Attach error); it starts once they stop. Use a ReadWriteMany claim for a "
        "folder that is served and written at once, or a uri (s3://)"
    )
    event = st.transition_event({"phase": "Exporting"}, d)
    assert event is not None and event[0] == "Warning" and event[1] == "SingleNodeVolume"
    # once the holders stop, the export is just exporting again
    d = derive(make_run(), st.Observed(completed, [], job(name="r-export"), [export_pod]))
    assert d.reason == "Exporting"


def test_a_training_pod_waiting_for_a_single_node_claim_is_pending_with_the_cause() -> None:
    train_pod = _on_node("r-train-a", "gpu-local-0", ["d", "c"], phase="Pending")
    used = st.claims_held_elsewhere(
        train_pod,
        {"d": ["ReadWriteOncePod"], "c": ["ReadWriteMany"]},
        [_on_node("prep", "cpu-local-0", ["d"])],
    )
    d = derive(make_run(), st.Observed(job(), [train_pod], claims_in_use=used))
    assert d.phase == api.TrainingRunPhase.PENDING and d.reason == "SingleNodeVolume"
    assert "PersistentVolumeClaim d (spec.dataset.volume.claimName): it is ReadWriteOncePod" in d.message


def test_kueue_queued() -> None:
    d = derive(make_run(scheduling={"queueName": "gpu-training"}), st.Observed(job(suspend=True)))
    assert d.phase == api.TrainingRunPhase.QUEUED
    assert d.message == "queued in Kueue queue gpu-training"
    assert conds(d)["Queued"].status is True
    assert d.job_suspend is None  # Kueue's business


def test_running_reports_attempt_and_resume() -> None:
    d = derive(
        make_run(backoffLimit=3),
        st.Observed(
            job(failed=1),
            [pod("old", "Failed", "2026-01-01T00:00:00Z"), pod("new", "Running", "2026-01-01T00:01:00Z")],
        ),
        {"progress": {"epoch": 1, "epochs": 3, "resumedFromEpoch": 1}},
    )
    assert d.phase == api.TrainingRunPhase.RUNNING
    assert "pod new" in d.message and "attempt 2 of 4" in d.message and "resumed from epoch 1" in d.message
    assert d.fields["progressText"] == "1/3"
    assert d.fields["startTime"] == "2026-01-01T00:00:00Z"


def test_suspend_and_resume() -> None:
    d = derive(make_run(suspend=True), st.Observed(job(), [pod("p", "Running")]))
    assert d.phase == api.TrainingRunPhase.SUSPENDED and d.job_suspend is True
    assert "waiting for 1 pod" in d.message
    resumed = derive(make_run(suspend=False), st.Observed(job(suspend=True)), {"phase": "Suspended"})
    assert resumed.job_suspend is False and resumed.phase == api.TrainingRunPhase.PENDING


def test_permanent_exit_code_becomes_the_failure_reason() -> None:
    p = pod("r-train-a", "Failed", **terminated("trainer", 65, "dataset: 3 clips missing"))
    d = derive(make_run(), st.Observed(job((("Failed", "PodFailurePolicy"),)), [p]))
    assert d.phase == api.TrainingRunPhase.FAILED
    f = d.fields["failure"]
    assert f["reason"] == "BadInput" and f["exitCode"] == 65 and f["pod"] == "r-train-a"
    assert "dataset: 3 clips missing" in f["message"]
    assert conds(d)["Stalled"].status is True and conds(d)["Succeeded"].status is False
    assert d.fields["completionTime"] == NOW


def test_deadline_exceeded_keeps_the_job_reason() -> None:
    p = pod("p", "Failed", **terminated("trainer", 143))
    d = derive(make_run(), st.Observed(job((("Failed", "DeadlineExceeded"),)), [p]))
    assert d.fields["failure"]["reason"] == "DeadlineExceeded" and d.fields["failure"]["exitCode"] == 143


def test_completed_training_wants_the_export_job_even_after_its_job_is_gone() -> None:
    d = derive(make_run(), st.Observed(job((("Complete", "CompletionsReached"),))))
    assert d.phase == api.TrainingRunPhase.EXPORTING and d.create_export_job and not d.create_training_job
    gone = derive(make_run(), st.Observed(), {"phase": "Exporting"})
    assert gone.create_export_job and not gone.create_training_job


def manifest_text(version: str) -> tuple[str, ModelManifest]:
    m = ModelManifest(
        version=version, engine="vits", files=[ManifestFile(path="model.pth", sha256="ab" * 32, size=3)]
    )
    return m.dumps(), m


def test_export_success_sets_output_from_the_termination_message() -> None:
    text, manifest = manifest_text("r")
    ep = pod("r-export-a", "Succeeded", **terminated("export", 0, text, "Completed"))
    d = derive(
        make_run(),
        st.Observed(job((("Complete", "x"),)), [], job((("Complete", "x"),), name="r-export"), [ep]),
    )
    assert d.phase == api.TrainingRunPhase.SUCCEEDED
    assert d.fields["output"] == {
        "version": "r",
        "path": "voices/r",
        "sha256": manifest.digest,
        "exportedAt": NOW,
    }
    assert conds(d)["Exported"].status is True and conds(d)["Ready"].status is True
    assert d.fields["exportJobName"] == "r-export"


def test_export_without_report_or_with_the_wrong_version_fails() -> None:
    export_job = job((("Complete", "x"),), name="r-export")
    empty = pod("e", "Succeeded", **terminated("export", 0, "", "Completed"))
    d = derive(make_run(), st.Observed(None, [], export_job, [empty]), {"phase": "Exporting"})
    assert d.phase == api.TrainingRunPhase.FAILED and d.fields["failure"]["reason"] == "ExportReportMissing"
    text, _ = manifest_text("other")
    wrong = pod("e", "Succeeded", **terminated("export", 0, text, "Completed"))
    d = derive(make_run(), st.Observed(None, [], export_job, [wrong]), {"phase": "Exporting"})
    assert "expected 'r'" in d.message


def test_terminal_phases_are_sticky() -> None:
    done = {
        "phase": "Succeeded",
        "output": {"version": "r"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "ModelExported", "message": "m"}],
    }
    d = derive(make_run(), st.Observed(), done)  # the Job was deleted
    assert d.phase == api.TrainingRunPhase.SUCCEEDED
    assert not d.create_training_job and not d.create_export_job
    assert st.transition_event(done, d) is None


def test_merge_conditions_keeps_transition_time_unless_status_changes() -> None:
    old = [
        {"type": "Ready", "status": "False", "reason": "A", "message": "", "lastTransitionTime": "t0"},
        {"type": "Foreign", "status": "True", "reason": "X", "message": "", "lastTransitionTime": "t0"},
    ]
    same = merge_conditions(old, [Cond("Ready", False, "B", "m")], "t1", 3)
    assert (
        same[0]["lastTransitionTime"] == "t0"
        and same[0]["reason"] == "B"
        and same[0]["observedGeneration"] == 3
    )
    assert same[1]["type"] == "Foreign"
    flipped = merge_conditions(old, [Cond("Ready", True, "C")], "t1", 3)
    assert flipped[0]["lastTransitionTime"] == "t1" and flipped[0]["status"] == "True"


def test_status_patch_only_carries_changes() -> None:
    assert status_patch({"phase": "Running", "jobName": "j"}, {"phase": "Running", "jobName": "j"}) == {}
    assert status_patch({"phase": "Running"}, {"phase": "Failed", "failure": None}) == {"phase": "Failed"}
    assert status_patch({"failure": {"reason": "x"}}, {"failure": None}) == {"failure": None}


# --- the plan: what a reconcile does, and the one status write that follows ----------------------


def plan(run: api.TrainingRun, observed: st.Observed, status: dict[str, Any] | None = None) -> st.Plan:
    from tts_operator.settings import Settings

    return st.plan(run, status or {}, observed, Settings(), NOW)


def test_a_new_run_creates_prerequisites_then_its_job_and_reports_the_job_it_made() -> None:
    p = plan(make_run(), st.Observed())
    assert [o["kind"] for o in p.prerequisites] == ["ServiceAccount", "Role", "RoleBinding"]
    assert p.job is not None and p.job["kind"] == "Job" and p.export_job is None
    assert p.wait is None and p.stop_orphaned_job is None and p.job_suspend is None
    # status is what the new Job brings (written once, after the creates)
    assert p.status["phase"] == "Pending" and p.status["jobName"] == p.job["metadata"]["name"]
    assert p.derived.reason == "WaitingForPod" and "attempt 1 of" in p.derived.message
    # its creation and the phase change are one Event; without a create, just the change
    (created,) = st.events_after(p, "created training Job r")
    assert created[:2] == ("Normal", "JobCreated") and created[2].endswith("; created training Job r")
    assert st.events_after(p, None) == [p.transition]
    # the first wave sent the prerequisites already: only the Job is left
    assert plan(make_run(), st.Observed(prerequisites_made=True)).prerequisites == []


def test_a_run_queued_in_kueue_reports_queued_as_soon_as_its_job_is_made() -> None:
    p = plan(make_run(scheduling={"queueName": "gpu-training"}), st.Observed())
    assert p.job is not None and p.job["spec"]["suspend"] is True
    assert p.status["phase"] == "Queued" and p.job_suspend is None


def test_pods_of_an_earlier_job_make_the_run_wait_and_write_nothing() -> None:
    leftover = pod("r-old", "Running")
    p = plan(make_run(), st.Observed(leftover_pods=[leftover]))
    assert p.job is None and p.status == {} and p.transition is None
    assert p.stop_orphaned_job == "r-train" and p.wait == "1 pod(s) of an earlier Job r-train"


def test_completed_training_creates_the_export_job_and_reports_exporting() -> None:
    p = plan(make_run(), st.Observed(job((("Complete", "CompletionsReached"),))), {"phase": "Running"})
    assert p.export_job is not None and p.export_job["metadata"]["name"] == "r-export"
    assert p.job is None and p.prerequisites == []
    assert p.status["phase"] == "Exporting" and p.status["exportJobName"] == "r-export"


def test_suspend_and_resume_set_the_jobs_suspend() -> None:
    assert plan(make_run(suspend=True), st.Observed(job())).job_suspend is True
    assert plan(make_run(suspend=True), st.Observed(job(suspend=True))).job_suspend is None  # already
    assert plan(make_run(), st.Observed(job(suspend=True)), {"phase": "Suspended"}).job_suspend is False


def test_a_finished_run_does_nothing_and_keeps_its_status() -> None:
    status = {
        "phase": "Failed",
        "conditions": [{"type": "Ready", "status": "False", "reason": "BadInput", "message": "m"}],
    }
    p = plan(make_run(), st.Observed(), status)
    assert (p.prerequisites, p.job, p.export_job, p.job_suspend, p.promote) == ([], None, None, None, False)
    assert p.status["phase"] == "Failed" and p.transition is None


def test_an_export_promotes_once_and_says_so() -> None:
    text, m = manifest_text("r")
    export_pod = pod("r-export-x", "Succeeded", **terminated("export", 0, text))
    exported = st.Observed(
        job((("Complete", "CompletionsReached"),)),
        [],
        job((("Complete", "Done"),), name="r-export"),
        [export_pod],
    )
    promoting = make_run(promote={"voiceModel": "narrator"})
    p = plan(promoting, exported, {"phase": "Exporting"})
    assert p.status["phase"] == "Succeeded" and p.promote
    assert p.exported is not None and p.exported[1] == "ModelExported" and m.digest in p.exported[2]
    # the phase change first, then the export
    transition, export = st.events_after(p, None)
    assert transition[2].startswith("Exporting -> Succeeded") and export == p.exported
    # once the output is in status (or without spec.promote) nothing is promoted again
    done = {"phase": "Exporting", "output": p.status["output"]}
    assert not plan(promoting, exported, done).promote and plan(promoting, exported, done).exported is None
    assert not plan(make_run(), exported, {"phase": "Exporting"}).promote
