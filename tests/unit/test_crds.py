"""The generated CRDs: committed and current, structural, documented, and in step with the models."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tts_contract.contract import CheckpointRef, Progress, ProgressReport, SampleRef
from tts_operator import api, crdgen

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"


def _schemas() -> dict[str, dict[str, Any]]:
    return {r.kind: crdgen.object_schema(r) for r in api.RESOURCES}


def _walk(node: dict[str, Any], path: str = ""):
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}[*]")


def test_committed_crds_are_current() -> None:
    """Regenerate in memory and compare with crds/: fails when someone forgot `make crds`."""
    generated = crdgen.generate()
    assert sorted(generated) == sorted(p.name for p in CRDS.glob("*.yaml"))
    stale = crdgen.stale_files(CRDS)
    assert not stale, f"{stale} are stale: run `make crds` (python -m tts_operator.crdgen)"


def test_check_mode_detects_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert crdgen.main(["--out", str(tmp_path)]) == 0
    assert crdgen.main(["--check", "--out", str(tmp_path)]) == 0
    target = tmp_path / "trainingruns.tts-operator.dev.yaml"
    target.write_text(target.read_text().replace("minimum: 1\n", "minimum: 2\n", 1))
    assert crdgen.main(["--check", "--out", str(tmp_path)]) == 1
    assert "trainingruns.tts-operator.dev.yaml is stale" in capsys.readouterr().err


def test_crd_envelope() -> None:
    for resource in api.RESOURCES:
        crd = yaml.safe_load((CRDS / f"{resource.crd_name}.yaml").read_text())
        assert crd["metadata"]["name"] == resource.crd_name
        spec = crd["spec"]
        assert spec["group"] == "tts-operator.dev"
        assert spec["scope"] == "Namespaced"
        assert spec["names"]["shortNames"] == list(resource.short_names)
        assert spec["names"]["categories"] == ["tts"]
        (version,) = spec["versions"]
        assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
        assert version["subresources"] == {"status": {}}


@pytest.mark.parametrize(
    ("kind", "columns"),
    [
        ("TrainingRun", ["PHASE", "REASON", "PROGRESS", "LOSS", "BEST", "OUTPUT", "GPUS", "AGE"]),
        ("VoiceModel", ["READY", "REASON", "DESIRED", "SERVING", "REPLICAS", "GPUS", "ENDPOINT", "AGE"]),
    ],
)
def test_printer_columns(kind: str, columns: list[str]) -> None:
    shown = [c for c in crdgen.PRINTER_COLUMNS[kind] if not c.get("priority")]
    assert [c["name"].upper() for c in shown] == columns
    schema = _schemas()[kind]
    for column in crdgen.PRINTER_COLUMNS[kind]:
        path = column["jsonPath"]
        if path.startswith(".metadata") or "[?" in path:
            continue
        node = schema
        for part in path.strip(".").split("."):
            node = node["properties"][part]  # the column points at a field that exists
        expected = {"integer": "integer", "number": "number", "string": "string"}[node["type"]]
        assert column["type"] == expected, path


@pytest.mark.parametrize("kind", ["TrainingRun", "VoiceModel"])
def test_schema_is_structural_and_documented(kind: str) -> None:
    problems = []
    for path, node in _walk(_schemas()[kind]):
        for key in ("$ref", "$defs", "title", "allOf", "oneOf", "nullable", "const"):
            if key in node:
                problems.append(f"{path}: {key}")
        if node.get("additionalProperties") is False:
            problems.append(f"{path}: additionalProperties false")
        if "anyOf" in node and node["anyOf"] != [{"type": "integer"}, {"type": "string"}]:
            problems.append(f"{path}: anyOf {node['anyOf']}")
        if "type" not in node and not node.get("x-kubernetes-int-or-string"):
            problems.append(f"{path}: untyped")
        # the API server forbids anything but name/generateName under metadata, descriptions included
        exempt = not path or path.endswith(("[]", "[*]")) or path.startswith(".metadata")
        if not exempt and not node.get("description"):
            problems.append(f"{path}: no description")
        if isinstance(node.get("exclusiveMinimum"), int | float) and not isinstance(
            node["exclusiveMinimum"], bool
        ):
            problems.append(f"{path}: numeric exclusiveMinimum")
        # CEL cost estimates need bounds on what rules may iterate over
        if node.get("type") == "array" and "maxItems" not in node:
            problems.append(f"{path}: array without maxItems")
        if (
            node.get("x-kubernetes-validations")
            and node.get("type") == "string"
            and not ({"maxLength", "enum"} & node.keys())
        ):
            problems.append(f"{path}: CEL on an unbounded string")
    assert not problems, problems


@pytest.mark.parametrize("kind", ["TrainingRun", "VoiceModel"])
def test_cel_rules_are_well_formed(kind: str) -> None:
    count = 0
    for path, node in _walk(_schemas()[kind]):
        for rule in node.get("x-kubernetes-validations", []):
            count += 1
            assert rule.get("message") or rule.get("messageExpression"), (path, rule)
            assert rule.get("reason", "FieldValueInvalid") in {
                "FieldValueInvalid",
                "FieldValueForbidden",
                "FieldValueRequired",
                "FieldValueDuplicate",
            }
            if "fieldPath" in rule and not rule["fieldPath"].startswith(".metadata"):
                target = node
                for part in rule["fieldPath"].strip(".").split("."):
                    target = target["properties"][part]  # points at a real field
    assert count >= 10


def _validate(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """The subset of OpenAPI validation a structural status schema uses: types, bounds, enums."""
    errors: list[str] = []
    kind = schema.get("type")
    checks = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
    }
    if kind and not checks[kind](value):
        return [f"{path}: {value!r} is not {kind}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} !~ {schema['pattern']}")
        if len(value) > schema.get("maxLength", len(value)):
            errors.append(f"{path}: too long")
    if kind in ("integer", "number") and value < schema.get("minimum", value):
        errors.append(f"{path}: below minimum")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{path}.{name}: required")
        for name, sub in value.items():
            if name not in props:
                errors.append(f"{path}.{name}: not in the schema (the API server would prune it)")
            else:
                errors += _validate(sub, props[name], f"{path}.{name}")
    if isinstance(value, list):
        if len(value) > schema.get("maxItems", len(value)):
            errors.append(f"{path}: more than {schema['maxItems']} items")
        for i, item in enumerate(value):
            errors += _validate(item, schema["items"], f"{path}[{i}]")
    return errors


def test_trainer_status_patch_fits_the_status_schema() -> None:
    """What the trainer patches (contract.ProgressReport) is accepted, not pruned, by the CRD."""
    status_schema = _schemas()["TrainingRun"]["properties"]["status"]
    full = ProgressReport(
        progress=Progress(
            epoch=3,
            epochs=10,
            step=120,
            loss=0.5,
            evalLoss=0.6,
            eta="1h2m",
            attempt=2,
            resumedFromEpoch=2,
            updatedAt="2025-01-01T00:00:00Z",
        ),
        checkpoints=[
            CheckpointRef(epoch=e, step=e * 40, path=f"ckpt_{e}.pth", evalLoss=1.0 / e) for e in (1, 2, 3)
        ],
        best=CheckpointRef(epoch=3, step=120, path="ckpt_3.pth", evalLoss=0.33),
        samples=[SampleRef(epoch=e, path=f"samples/{e}.wav") for e in (1, 2, 3)],
    )
    for report in (full, ProgressReport(progress=Progress())):
        patch = report.status_patch()["status"]
        assert _validate(patch, status_schema) == []
        assert api.TrainingRunStatus.model_validate(patch).progress == report.progress
    # and a status the operator writes through the model also fits
    status = api.TrainingRunStatus(
        phase=api.TrainingRunPhase.SUCCEEDED,
        observedGeneration=1,
        conditions=[
            api.Condition(
                type="Ready",
                status=api.ConditionStatus.TRUE,
                reason="Exported",
                lastTransitionTime="2025-01-01T00:00:00Z",
            )
        ],
        progress=full.progress,
        progressText=api.progress_text(full.progress),
        output=api.ExportOutput(
            version="v1", path="narrator/v1", sha256="0" * 64, exportedAt="2025-01-01T00:00:00Z"
        ),
        failure=None,
    )
    assert _validate(status.wire(), status_schema) == []


def _apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """Defaulting as the API server does it: absent fields with a default get it, recursively."""
    value = copy.deepcopy(value)
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = _apply_defaults(value[name], sub)
    elif isinstance(value, list) and "items" in schema:
        value = [_apply_defaults(v, schema["items"]) for v in value]
    return value


def _drop_empty(value: Any) -> Any:
    if isinstance(value, dict):
        cleaned = {k: _drop_empty(v) for k, v in value.items()}
        return {k: v for k, v in cleaned.items() if v not in ({}, [])}
    return value


@pytest.mark.parametrize(
    ("kind", "spec"),
    [
        (
            "TrainingRun",
            {
                "engine": "vits",
                "dataset": {"volume": {"claimName": "d"}},
                "training": {"epochs": 1},
                "checkpoints": {"volume": {"claimName": "c"}},
                "export": {"volume": {"claimName": "m"}},
                "scheduling": {"tolerations": [{"key": "k"}]},
            },
        ),
        (
            "VoiceModel",
            {"engine": "xtts", "model": {"trainingRun": "r"}, "voices": [{"name": "a", "wav": "a.wav"}]},
        ),
    ],
)
def test_schema_defaults_match_model_defaults(kind: str, spec: dict[str, Any]) -> None:
    """The server fills in the same defaults as pydantic, so the operator sees one spec either way."""
    resource = api.TRAININGRUN if kind == "TrainingRun" else api.VOICEMODEL
    server_side = _apply_defaults(spec, _schemas()[kind]["properties"]["spec"])
    python_side = resource.spec_model.model_validate(spec).model_dump(
        by_alias=True, exclude_none=True, mode="json"
    )
    assert _drop_empty(server_side) == _drop_empty(python_side)
