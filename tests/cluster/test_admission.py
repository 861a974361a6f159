"""Admission on the real API server: the CRDs' schemas and CEL rules accept and reject what we mean.

Every case is a pair that differs in one field (tests/support/admission_cases.py): the valid object
must be accepted, the invalid one rejected with an error that names the field. Creates of the
pairs use server-side dry-run (everything but storage runs: defaulting, schema, CEL), so they
persist nothing and share the ``default`` namespace; tests that need stored objects (updates,
status) get their own namespace.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from subprocess import CompletedProcess
from typing import Any, cast

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from support.admission_cases import (
    CASES,
    IMMUTABLE_CASES,
    Case,
    ImmutableCase,
    base_object,
    set_path,
    training_run,
    voice_model,
)
from tts_contract.contract import CheckpointRef, Progress, ProgressReport, SampleRef
from tts_operator import api

pytestmark = pytest.mark.cluster

DRY_RUN_NAMESPACE = "default"
Kubectl = Callable[..., CompletedProcess[str]]


@pytest.fixture(scope="module")
def custom(k8s_api: client.ApiClient, crds: list[api.Resource]) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(k8s_api)


def _resource(obj: dict[str, Any]) -> api.Resource:
    return api.VOICEMODEL if obj["kind"] == "VoiceModel" else api.TRAININGRUN


def _rejection(e: ApiException) -> tuple[str, set[str]]:
    """The message of a 422 and the fields its causes name."""
    assert e.status == 422, f"expected 422 Invalid, got {e.status}: {e.body}"
    status = json.loads(e.body or "{}")
    causes = status.get("details", {}).get("causes", [])
    return status["message"], {c.get("field", "") for c in causes}


def create(custom: client.CustomObjectsApi, obj: dict[str, Any], *, dry_run: bool = True) -> dict[str, Any]:
    r = _resource(obj)
    namespace = obj["metadata"].get("namespace", DRY_RUN_NAMESPACE)
    created = custom.create_namespaced_custom_object(
        r.group, r.version, namespace, r.plural, obj, dry_run="All" if dry_run else None
    )
    return cast(dict[str, Any], created)


def replace(custom: client.CustomObjectsApi, obj: dict[str, Any]) -> dict[str, Any]:
    r = _resource(obj)
    meta = obj["metadata"]
    replaced = custom.replace_namespaced_custom_object(
        r.group, r.version, meta["namespace"], r.plural, meta["name"], obj, dry_run="All"
    )
    return cast(dict[str, Any], replaced)


def assert_rejected(call: Callable[[], Any], field: str, says: str) -> str:
    with pytest.raises(ApiException) as err:
        call()
    message, fields = _rejection(err.value)
    assert field in fields, f"the rejection should name {field}; it names {sorted(fields)}: {message}"
    assert says in message, f"the rejection should say {says!r}: {message}"
    return message


def test_enough_admission_cases() -> None:
    assert len(CASES) + len(IMMUTABLE_CASES) >= 25


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_invalid_spec_is_rejected_and_its_twin_accepted(custom: client.CustomObjectsApi, case: Case) -> None:
    valid, invalid = case.objects()
    created = create(custom, valid)
    assert created["metadata"]["name"] == valid["metadata"]["name"]
    assert_rejected(lambda: create(custom, invalid), case.field, case.says)


@pytest.mark.parametrize("case", IMMUTABLE_CASES, ids=[c.id for c in IMMUTABLE_CASES])
def test_immutable_field_cannot_change(
    custom: client.CustomObjectsApi, namespace: str, case: ImmutableCase
) -> None:
    obj = base_object(case.base)
    obj["metadata"]["namespace"] = namespace
    stored = create(custom, obj, dry_run=False)

    # the valid update touches a label only; the invalid one also changes the immutable field
    stored["metadata"].setdefault("labels", {})["touched"] = "yes"
    replace(custom, stored)
    set_path(stored, case.path, case.new)
    assert_rejected(lambda: replace(custom, stored), case.field, case.says)


def test_mutable_fields_can_change(custom: client.CustomObjectsApi, namespace: str) -> None:
    """suspend, promote, resources and scheduling are meant to change on a live run."""
    obj = training_run()
    obj["metadata"]["namespace"] = namespace
    stored = create(custom, obj, dry_run=False)
    stored["spec"]["suspend"] = True
    stored["spec"]["promote"] = {"voiceModel": "other", "mode": "Direct"}
    stored["spec"]["resources"]["gpus"] = 4
    stored["spec"]["scheduling"]["priorityClassName"] = "urgent"
    updated = replace(custom, stored)
    assert updated["spec"]["suspend"] is True
    assert updated["spec"]["resources"]["gpus"] == 4


def _drop_empty(value: Any) -> Any:
    if isinstance(value, dict):
        cleaned = {k: _drop_empty(v) for k, v in value.items()}
        return {k: v for k, v in cleaned.items() if v not in ({}, [])}
    return value


@pytest.mark.parametrize(
    "obj",
    [
        {
            "apiVersion": "tts-operator.dev/v1alpha1",
            "kind": "TrainingRun",
            "metadata": {"name": "minimal"},
            "spec": {
                "engine": "vits",
                "dataset": {"volume": {"claimName": "d"}},
                "training": {"epochs": 1},
                "checkpoints": {"volume": {"claimName": "c"}},
                "export": {"volume": {"claimName": "m"}},
            },
        },
        {
            "apiVersion": "tts-operator.dev/v1alpha1",
            "kind": "VoiceModel",
            "metadata": {"name": "minimal"},
            "spec": {"engine": "xtts", "model": {"trainingRun": "r"}},
        },
    ],
    ids=["TrainingRun", "VoiceModel"],
)
def test_server_defaults_equal_model_defaults(custom: client.CustomObjectsApi, obj: dict[str, Any]) -> None:
    """The operator parses the defaulted spec with pydantic: both sides must fill in the same values."""
    stored = create(custom, obj)
    python_side = _resource(obj).spec_model.model_validate(obj["spec"])
    assert _drop_empty(stored["spec"]) == _drop_empty(python_side.wire())  # type: ignore[attr-defined]


def test_status_written_by_trainer_and_operator_is_kept_whole(
    custom: client.CustomObjectsApi, namespace: str
) -> None:
    """ProgressReport.status_patch() and an operator status go through the status subresource unpruned."""
    r = api.TRAININGRUN
    obj = training_run()
    obj["metadata"]["namespace"] = namespace
    create(custom, obj, dry_run=False)
    name = obj["metadata"]["name"]

    report = ProgressReport(
        progress=Progress(
            epoch=2,
            epochs=3,
            step=80,
            loss=0.75,
            evalLoss=0.8,
            eta="3m",
            attempt=2,
            resumedFromEpoch=1,
            updatedAt="2025-01-01T00:00:00Z",
        ),
        checkpoints=[
            CheckpointRef(epoch=e, step=40 * e, path=f"checkpoint_{40 * e}.pth", evalLoss=0.8) for e in (1, 2)
        ],
        best=CheckpointRef(epoch=2, step=80, path="checkpoint_80.pth", evalLoss=0.8),
        samples=[SampleRef(epoch=e, path=f"samples/epoch_{e}.wav") for e in (1, 2)],
    )
    patch = report.status_patch()
    custom.patch_namespaced_custom_object_status(r.group, r.version, namespace, r.plural, name, patch)

    operator_status = api.TrainingRunStatus(
        phase=api.TrainingRunPhase.RUNNING,
        observedGeneration=1,
        conditions=[
            api.Condition(
                type=api.ConditionType.READY,
                status=api.ConditionStatus.FALSE,
                reason="Training",
                message="epoch 2/3",
                lastTransitionTime="2025-01-01T00:00:00Z",
                observedGeneration=1,
            )
        ],
        jobName=name,
        progressText=api.progress_text(report.progress),
    ).wire()
    for key in ("checkpoints", "samples"):
        operator_status.pop(key)  # the trainer owns these: the operator's merge patch leaves them alone
    stored = cast(
        dict[str, Any],
        custom.patch_namespaced_custom_object_status(
            r.group, r.version, namespace, r.plural, name, {"status": operator_status}
        ),
    )

    assert {k: stored["status"][k] for k in patch["status"]} == patch["status"]
    assert {k: stored["status"][k] for k in operator_status} == operator_status
    parsed = api.TrainingRun.model_validate(stored)
    assert parsed.status.progress == report.progress
    assert parsed.status.conditions[0].reason == "Training"


def test_kubectl_shows_columns_short_names_and_docs(
    custom: client.CustomObjectsApi, kubectl: Kubectl, namespace: str
) -> None:
    run = training_run()
    vm = voice_model()
    for obj in (run, vm):
        obj["metadata"]["namespace"] = namespace
        create(custom, obj, dry_run=False)

    header = kubectl("get", "trun", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "REASON", "PROGRESS", "LOSS", "BEST", "OUTPUT", "GPUS", "AGE"]
    header = kubectl("get", "vmodel", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "READY", "REASON", "DESIRED", "SERVING", "REPLICAS", "GPUS", "ENDPOINT", "AGE"]

    # the category lists both kinds
    listed = kubectl("get", "tts", "-n", namespace, "-o", "name").stdout.split()
    assert sorted(listed) == sorted(
        ["trainingrun.tts-operator.dev/narrator-ft", "voicemodel.tts-operator.dev/narrator"]
    )
    # selectable fields
    assert kubectl(
        "get", "trun", "-n", namespace, "--field-selector", "spec.engine=xtts", "-o", "name"
    ).stdout
    assert not kubectl(
        "get", "trun", "-n", namespace, "--field-selector", "spec.engine=vits", "-o", "name"
    ).stdout

    explained = kubectl("explain", "trainingrun.spec.dataset.evalSplit").stdout
    assert "Fraction of the clips held out for evaluation" in explained
    explained = kubectl("explain", "voicemodel.spec.model").stdout
    assert "exactly one" in explained
