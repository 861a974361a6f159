"""The pydantic API models: they accept and reject what the API server does, and parse real objects."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from support.admission_cases import CASES, Case, training_run, voice_model, volume_voice_model
from tts_contract.contract import CheckpointRef, DevicePolicy, Engine, Progress, ProgressReport, SampleRef
from tts_operator import api


def _parse(obj: dict) -> api.TrainingRun | api.VoiceModel:
    model = api.VoiceModel if obj["kind"] == "VoiceModel" else api.TrainingRun
    return model.model_validate(obj)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_models_agree_with_admission_cases(case: Case) -> None:
    valid, invalid = case.objects()
    _parse(valid)
    with pytest.raises(ValidationError) as err:
        _parse(invalid)
    # the error names the field, by its location or in its message
    leaf = case.field.rsplit(".", 1)[-1].split("[")[0]
    assert leaf in str(err.value), str(err.value)


def test_training_run_parses_a_full_object_with_status() -> None:
    obj = training_run()
    obj["metadata"] |= {"namespace": "ml", "uid": "1234", "generation": 2, "managedFields": [{"x": 1}]}
    report = ProgressReport(
        progress=Progress(
            epoch=2, epochs=3, step=40, loss=0.8, evalLoss=0.9, updatedAt="2025-01-01T00:00:00Z"
        ),
        checkpoints=[CheckpointRef(epoch=2, step=40, path="checkpoint_40.pth", evalLoss=0.9)],
        best=CheckpointRef(epoch=2, step=40, path="checkpoint_40.pth", evalLoss=0.9),
        samples=[SampleRef(epoch=2, path="samples/epoch_2.wav")],
    )
    obj |= report.status_patch()
    obj["status"]["phase"] = "Running"
    run = api.TrainingRun.model_validate(obj)
    assert run.metadata.name == "narrator-ft"
    assert run.metadata.namespace == "ml"
    assert run.spec.engine is Engine.XTTS
    assert run.spec.base_model is not None and run.spec.base_model.volume.sub_path == "xtts-v2"
    assert run.status.phase is api.TrainingRunPhase.RUNNING
    assert run.status.progress == report.progress
    assert run.status.best == report.best
    assert api.progress_text(run.status.progress) == "2/3"


def test_spec_alone_parses_and_gets_defaults() -> None:
    spec = api.TrainingRunSpec.model_validate(
        {
            "engine": "vits",
            "dataset": {"volume": {"claimName": "data"}},
            "training": {"epochs": 2},
            "checkpoints": {"volume": {"claimName": "ckpt"}},
            "export": {"volume": {"claimName": "models"}},
        }
    )
    assert spec.device_policy is DevicePolicy.REQUIRE_GPU
    assert spec.resources.gpus == 1
    assert spec.dataset.eval_split == 0.05
    assert spec.training.batch_size == 2
    assert spec.backoff_limit == 3
    assert spec.tensorboard.enabled is True
    assert spec.suspend is False
    wire = spec.wire()
    assert wire["devicePolicy"] == "RequireGPU"
    assert wire["dataset"]["evalSplit"] == 0.05
    assert "baseModel" not in wire


def test_quantities_accept_integers_as_strings() -> None:
    res = api.Resources.model_validate({"gpus": 0, "cpu": 8, "memory": "512Mi"})
    assert res.cpu == "8"
    assert res.memory == "512Mi"
    for bad in ("8 cores", "1.2.3", "", "Gi", True):
        with pytest.raises(ValidationError):
            api.Resources.model_validate({"cpu": bad})


def test_condition_shape() -> None:
    cond = api.Condition.model_validate(
        {"type": "Ready", "status": "True", "reason": "Serving", "lastTransitionTime": "2025-01-01T00:00:00Z"}
    )
    assert cond.status is api.ConditionStatus.TRUE
    assert cond.wire() == {
        "type": "Ready",
        "status": "True",
        "reason": "Serving",
        "message": "",
        "lastTransitionTime": "2025-01-01T00:00:00Z",
    }
    with pytest.raises(ValidationError, match="reason"):
        api.Condition.model_validate(
            {"type": "Ready", "status": "True", "reason": "has spaces", "lastTransitionTime": "x"}
        )
    with pytest.raises(ValidationError, match="status"):
        api.Condition.model_validate(
            {"type": "Ready", "status": "Yes", "reason": "R", "lastTransitionTime": "x"}
        )


def test_voice_model_sources() -> None:
    by_run = api.VoiceModel.model_validate(voice_model())
    assert by_run.spec.model.training_run == "narrator-ft"
    assert by_run.spec.version is None  # resolved from the run's export by the operator
    by_volume = api.VoiceModel.model_validate(volume_voice_model())
    assert by_volume.spec.model.volume is not None
    assert by_volume.spec.version == "narrator-ft"
    assert by_volume.spec.rollout.auto_rollback is True
    assert by_volume.spec.server.port == 8005


def test_name_limits_leave_room_for_children() -> None:
    longest_run = "r" * api.TRAININGRUN_NAME_MAX
    assert len(f"{longest_run}-export") <= api.DNS_LABEL_MAX
    assert len(f"{longest_run}-trainer") <= api.DNS_LABEL_MAX
    longest_vm = "v" * api.VOICEMODEL_NAME_MAX
    replica_set = f"{longest_vm}-{'9' * 10}"  # pod-template-hash: up to 10 characters
    assert len(replica_set) <= 58  # the prefix the API server keeps of a generated pod name
    # the limits are stated in the kinds' documentation and in the server's messages
    assert str(api.TRAININGRUN_NAME_MAX) in (api.TrainingRun.__doc__ or "")
    assert str(api.VOICEMODEL_NAME_MAX) in (api.VoiceModel.__doc__ or "")


def test_helpers() -> None:
    assert api.progress_text(None) is None
    assert api.progress_text(Progress()) is None
    assert api.progress_text(Progress(epoch=7, epochs=50)) == "7/50"
    assert api.replicas_text(None, 2) == "0/2"
    assert api.replicas_text(2, 2) == "2/2"
    assert api.TRAININGRUN.crd_name == "trainingruns.tts-operator.dev"
    assert api.VOICEMODEL.short_names == ("vmodel",)


def test_relative_path_rules_match_python_and_cel_regex() -> None:
    ok = ["a", "a/b", "a..b", "..a/b", "a/b..", "a/.b", "./a"]
    bad = ["..", "../a", "a/..", "a/../b", "/a", "/"]
    for path in ok:
        api.VolumeRef.model_validate({"claimName": "c", "subPath": path})
    for path in bad:
        with pytest.raises(ValidationError, match="subPath"):
            api.VolumeRef.model_validate({"claimName": "c", "subPath": path})


def test_kinds_share_one_envelope() -> None:
    # each kind is a CustomResource[Spec, Status]; its Resource reads the rest off the model
    assert api.TRAININGRUN.kind == "TrainingRun" and api.VOICEMODEL.kind == "VoiceModel"
    assert api.TRAININGRUN.spec_model is api.TrainingRunSpec
    assert api.VOICEMODEL.status_model is api.VoiceModelStatus
    assert (api.TRAININGRUN.name_max, api.VOICEMODEL.name_max) == (52, 47)
    vm = api.VoiceModel.model_validate(voice_model())
    assert isinstance(vm.status, api.VoiceModelStatus) and vm.status.phase is None  # no status: defaults
    assert "status" not in vm.model_fields_set
    with pytest.raises(ValidationError, match="kind"):
        api.TrainingRun.model_validate({**voice_model(), "spec": training_run()["spec"]})
    with pytest.raises(ValidationError, match="DNS-1035"):
        api.VoiceModel.model_validate({**voice_model(), "metadata": {"name": "9lives"}})
    api.TrainingRun.model_validate({**training_run(), "metadata": {"name": "9lives"}})  # no such rule
    assert [r["fieldPath"] for r in api.VoiceModel.name_rules()] == [".metadata.name"] * 2
