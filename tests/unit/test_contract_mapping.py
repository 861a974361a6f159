"""The API -> contract mapping: every RunSpec/ServeSpec field has a known source, and values arrive.

``run_spec`` and ``serve_spec`` (operator/tts_operator/builders) turn a TrainingRun or VoiceModel into
the spec its pods read. The tables below say, for every field of the contract's specs, where its value
comes from: a field of the custom resource, or the operator itself. A field added to the contract
without a source, or to the API without being carried or explicitly left out, fails here. So does a
runtime flag (``tts-runtime train``/``serve``) that overrides a field that is not there.
"""

from __future__ import annotations

import argparse
import json
import types
from typing import Any, Union, get_args, get_origin

import pytest
from pydantic import BaseModel

from tts_contract.contract import CONTRACT_VERSION, Defaults, Paths, RunSpec, ServeSpec
from tts_operator import api
from tts_operator.builders import serving, training
from tts_operator.reconcile import voicemodel_plan as vm_planner
from tts_runtime import serve, train_cli

# --- walking models by wire name ------------------------------------------------------------------


def _submodel(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The model a field holds (through ``X | None`` and ``list[X]``), and whether it is a list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        for arg in get_args(annotation):
            model, is_list = _submodel(arg)
            if model is not None:
                return model, is_list
    if origin is list:
        model, _ = _submodel(get_args(annotation)[0])
        return model, model is not None
    return None, False


def leaves(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Wire path (``server.maxQueue``, ``voices[].name``) -> field info of every leaf field."""
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        path = f"{prefix}{field.alias or name}"
        sub, is_list = _submodel(field.annotation)
        if sub is None:
            out[path] = field
        else:
            out.update(leaves(sub, f"{path}[]." if is_list else f"{path}."))
    return out


def value_at(data: Any, path: str) -> Any:
    """The value at a wire path in dumped JSON; ``[]`` maps over a list."""
    head, _, rest = path.partition(".")
    if head.endswith("[]"):
        items = data[head[:-2]]
        return [value_at(item, rest) for item in items]
    value = data.get(head) if isinstance(data, dict) else None
    return value_at(value, rest) if rest and value is not None else value


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# --- the mapping ---------------------------------------------------------------------------------

#: RunSpec field -> the TrainingRun field it is copied from
RUN_SPEC_SOURCES = {
    "run.namespace": "metadata.namespace",
    "run.name": "metadata.name",
    "run.uid": "metadata.uid",
    "engine": "spec.engine",
    "dataset.format": "spec.dataset.format",
    "dataset.language": "spec.dataset.language",
    "dataset.maxSamples": "spec.dataset.maxSamples",
    "dataset.evalSplit": "spec.dataset.evalSplit",
    "dataset.seed": "spec.dataset.seed",
    "dataset.resample": "spec.dataset.resample",
    "training.epochs": "spec.training.epochs",
    "training.batchSize": "spec.training.batchSize",
    "training.gradAccumSteps": "spec.training.gradAccumSteps",
    "training.learningRate": "spec.training.learningRate",
    "training.saveEveryEpochs": "spec.training.saveEveryEpochs",
    "training.keepCheckpoints": "spec.training.keepCheckpoints",
    "samples.text": "spec.samples.text",
    "samples.speakerWav": "spec.samples.speakerWav",
    "devicePolicy": "spec.devicePolicy",
    "gpus": "spec.resources.gpus",
    "tensorboard": "spec.tensorboard.enabled",
}
#: RunSpec field -> the value the operator sets (a run with a baseModel; the paths are mount points)
RUN_SPEC_SET_BY_OPERATOR = {
    "contractVersion": CONTRACT_VERSION,
    "dataset.path": Paths.DATASET,
    "baseModelPath": Paths.BASE_MODEL,  # spec.baseModel's volume, mounted; unset without one
    "outputPath": Paths.CHECKPOINTS,  # spec.checkpoints' volume at the run's folder, or a pod-local copy
    "checkpointsUri": "s3://ckpt/runs/ml/narrator-ft",  # spec.checkpoints.uri + the run's folder
    "reportStatus": True,
}
#: TrainingRun spec fields the run spec does not carry: the operator uses them for the Jobs and pods
RUN_SPEC_LEAVES_OUT = (
    "spec.baseModel.",  # mounted at baseModelPath
    "spec.dataset.volume.",  # mounted at dataset.path
    "spec.dataset.uri",  # or fetched there
    "spec.dataset.sha256",
    "spec.dataset.secretRef.",  # the fetcher's environment
    "spec.checkpoints.",  # mounted at outputPath
    "spec.export.",  # the export Job
    "spec.promote.",  # the operator promotes
    "spec.resources.gpuProduct",
    "spec.resources.cpu",
    "spec.resources.memory",
    "spec.scheduling.",
    "spec.backoffLimit",
    "spec.activeDeadlineSeconds",
    "spec.suspend",
)

VERSION = "v-template"
#: ServeSpec field -> the VoiceModel field it is copied from
SERVE_SPEC_SOURCES = {
    "engine": "spec.engine",
    "devicePolicy": "spec.devicePolicy",
    "voices[].name": "spec.voices[].name",
    "voices[].wav": "spec.voices[].wav",
    "server.port": "spec.server.port",
    "server.maxConcurrency": "spec.server.maxConcurrency",
    "server.maxQueue": "spec.server.maxQueue",
    "server.maxTextLength": "spec.server.maxTextLength",
}
#: ServeSpec field -> the value the operator sets (a VoiceModel with an authSecretRef)
SERVE_SPEC_SET_BY_OPERATOR = {
    "contractVersion": CONTRACT_VERSION,
    "modelsRoot": Paths.MODEL,
    "version": VERSION,  # the pod template's version: serve_spec's argument (spec.version, resolved)
    "voicesDir": f"{Paths.SCRATCH}/voices",
    "server.requestTimeoutSeconds": Defaults.REQUEST_TIMEOUT_SECONDS,  # not in the API
    "server.authTokenFile": f"{Paths.AUTH_TOKEN_DIR}/{serving.AUTH_TOKEN_FILE}",  # the mounted Secret
    "modelUri": "s3://models/narrator",  # spec.model.uri (or the TrainingRun's export uri)
    "voicesUri": "s3://models/narrator/_voices/ml/narrator",  # the shared store, under the prefix
}
#: VoiceModel spec fields the serve spec does not carry
SERVE_SPEC_LEAVES_OUT = (
    "spec.model.",  # where the versions live: mounted at modelsRoot
    "spec.version",  # resolved by the operator, passed to serve_spec as the template's version
    "spec.replicas",
    "spec.resources.",
    "spec.scheduling.",
    "spec.rollout.",
    "spec.server.authSecretRef.",  # mounted; authTokenFile says where
)


#: fields whose only valid value is their default
ONLY_ONE_VALUE = {"spec.dataset.format"}


def full_training_run() -> api.TrainingRun:
    """A TrainingRun whose carried fields all differ from their defaults."""
    return api.TrainingRun.model_validate(
        {
            "metadata": {"name": "narrator-ft", "namespace": "ml", "uid": "uid-1"},
            "spec": {
                "engine": "xtts",
                "baseModel": {"volume": {"claimName": "base", "subPath": "xtts-v2"}},
                "dataset": {
                    "volume": {"claimName": "datasets", "subPath": "narrator"},
                    "language": "pt",
                    "maxSamples": 100,
                    "evalSplit": 0.2,
                    "seed": 7,
                    "resample": False,
                },
                "training": {
                    "epochs": 12,
                    "batchSize": 3,
                    "gradAccumSteps": 84,
                    "learningRate": 1e-4,
                    "saveEveryEpochs": 4,
                    "keepCheckpoints": 5,
                },
                "samples": {"text": "Olá.", "speakerWav": "wavs/ref.wav"},
                "checkpoints": {"uri": "s3://ckpt/runs", "secretRef": {"name": "s3"}},
                "export": {"volume": {"claimName": "models"}},
                "resources": {"gpus": 2},
                "devicePolicy": "PreferGPU",
                "tensorboard": {"enabled": False},
            },
        }
    )


def full_voice_model() -> api.VoiceModel:
    """A VoiceModel whose carried fields all differ from their defaults."""
    return api.VoiceModel.model_validate(
        {
            "metadata": {"name": "narrator", "namespace": "ml"},
            "spec": {
                "engine": "vits",
                "model": {"uri": "s3://models/narrator", "secretRef": {"name": "s3"}},
                "version": "v-spec",
                "voices": [{"name": "anna", "wav": "voices/anna.wav"}, {"name": "bo", "wav": "b.wav"}],
                "devicePolicy": "CPU",
                "resources": {"gpus": 0},
                "server": {
                    "port": 9000,
                    "maxConcurrency": 3,
                    "maxQueue": 5,
                    "maxTextLength": 123,
                    "authSecretRef": {"name": "tts-token"},
                },
            },
        }
    )


KINDS = {
    "RunSpec": (
        RunSpec,
        api.TrainingRun,
        RUN_SPEC_SOURCES,
        RUN_SPEC_SET_BY_OPERATOR,
        RUN_SPEC_LEAVES_OUT,
        full_training_run,
        training.run_spec,
    ),
    "ServeSpec": (
        ServeSpec,
        api.VoiceModel,
        SERVE_SPEC_SOURCES,
        SERVE_SPEC_SET_BY_OPERATOR,
        SERVE_SPEC_LEAVES_OUT,
        full_voice_model,
        lambda vm: serving.serve_spec(vm, VERSION, vm_planner.resolve_source(vm, None).location),
    ),
}


def _api_leaves(model: type[api.CustomResource[Any, Any]]) -> dict[str, Any]:
    spec = leaves(model.model_fields["spec"].annotation, "spec.")
    meta = leaves(api.ObjectMeta, "metadata.")
    return spec | meta


# --- the tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_contract_field_has_a_source(kind: str) -> None:
    contract, resource, sources, by_operator, _, _, _ = KINDS[kind]
    fields = set(leaves(contract))
    assert not set(sources) & set(by_operator), "a field is either copied or set by the operator"
    assert set(sources) | set(by_operator) == fields, (
        f"{kind} fields without a known source: {sorted(fields - set(sources) - set(by_operator))}; "
        f"mapped but not in {kind}: {sorted((set(sources) | set(by_operator)) - fields)}"
    )
    api_fields = _api_leaves(resource)
    unknown = sorted(src for src in sources.values() if src not in api_fields)
    assert not unknown, f"sources that {resource.__name__} does not have: {unknown}"


@pytest.mark.parametrize("kind", KINDS)
def test_every_api_field_is_carried_or_left_out(kind: str) -> None:
    _, resource, sources, _, left_out, _, _ = KINDS[kind]
    carried = set(sources.values())
    spec_fields = [path for path in _api_leaves(resource) if path.startswith("spec.")]
    neither = [p for p in spec_fields if p not in carried and not p.startswith(left_out)]
    assert not neither, f"{resource.__name__} fields neither carried into the spec nor left out: {neither}"
    both = [p for p in carried if p.startswith(left_out)]
    assert not both, f"carried and listed as left out: {both}"


@pytest.mark.parametrize("kind", KINDS)
def test_non_default_values_arrive(kind: str) -> None:
    contract, resource, sources, by_operator, _, build, to_spec = KINDS[kind]
    obj = build()
    spec = to_spec(obj)
    wire = spec.model_dump(by_alias=True, mode="json")
    source = obj.model_dump(by_alias=True, mode="json")
    api_fields = _api_leaves(resource)
    for field, src in sources.items():
        value = value_at(source, src)
        assert value is not None, f"{src} is unset in the test object"
        default = api_fields[src].get_default(call_default_factory=True)
        if default is not None and src not in ONLY_ONE_VALUE:
            assert value != _json(default), f"{src} is at its default: the test cannot tell it arrived"
        assert value_at(wire, field) == value, f"{kind}.{field} != {src}"
    for field, expected in by_operator.items():
        assert value_at(wire, field) == _json(expected), f"{kind}.{field}"
    # round trip: the file the pod reads parses back into the very spec
    assert contract.model_validate_json(spec.model_dump_json(by_alias=True, exclude_none=True)) == spec


@pytest.mark.parametrize("kind", KINDS)
def test_defaults_agree(kind: str) -> None:
    """An unset spec field means what the contract's default means (both come from Defaults).

    (metadata is the operator's to fill: no namespace is "default", no uid "" in the RunSpec.)
    """
    contract, resource, sources, *_ = KINDS[kind]
    contract_fields, api_fields = leaves(contract), _api_leaves(resource)
    for field, src in sources.items():
        if not src.startswith("spec."):
            continue
        ours, theirs = contract_fields[field], api_fields[src]
        if ours.is_required() or theirs.is_required():
            continue
        assert _json(ours.get_default(call_default_factory=True)) == _json(
            theirs.get_default(call_default_factory=True)
        ), f"default of {kind}.{field} != default of {src}"


def test_optional_parts_stay_unset() -> None:
    spec = training.run_spec(
        api.TrainingRun.model_validate(
            {
                "metadata": {"name": "r"},
                "spec": {
                    "engine": "vits",
                    "dataset": {"volume": {"claimName": "d"}},
                    "training": {"epochs": 1},
                    "checkpoints": {"volume": {"claimName": "c"}},
                    "export": {"volume": {"claimName": "e"}},
                },
            }
        )
    )
    assert spec.samples is None and spec.base_model_path is None
    vm = full_voice_model()
    assert vm.spec.server.auth_secret_ref is not None
    vm.spec.server.auth_secret_ref = None
    assert serving.serve_spec(vm, VERSION).server.auth_token_file is None


def test_carry_refuses_to_override_a_carried_field() -> None:
    from tts_contract.contract import TrainingSpec

    with pytest.raises(TypeError, match="carried"):
        full_training_run().spec.training.carry(TrainingSpec, epochs=1)
    with pytest.raises(TypeError, match="no field"):
        full_training_run().spec.training.carry(TrainingSpec, nonsense=1)


# --- the runtime's flags -------------------------------------------------------------------------


def _dests(add_arguments: Any) -> set[str]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return {a.dest for a in parser._actions if a.dest != "help"}


#: train flags that override no RunSpec field
TRAIN_NOT_OVERRIDES = {"spec", "nproc", "ddp_backend", "progress_bar", "verbose"}


def test_train_flags_map_onto_run_spec_fields() -> None:
    dests = _dests(train_cli.add_arguments)
    assert set(train_cli._OVERRIDES) == dests - TRAIN_NOT_OVERRIDES
    fields = leaves(RunSpec)
    for dest, path in train_cli._OVERRIDES.items():
        assert ".".join(path) in fields, f"--{dest}: {path} is not a RunSpec field"


def test_train_flags_arrive_in_the_run_spec(tmp_path: Any) -> None:
    argv = [
        "--engine", "xtts", "--run-name", "r1", "--namespace", "ns",
        "--dataset", str(tmp_path / "data"), "--language", "pt", "--max-samples", "9",
        "--eval-split", "0.3", "--seed", "5", "--no-resample",
        "--base-model", str(tmp_path / "base"), "--output", str(tmp_path / "out"),
        "--epochs", "4", "--batch-size", "6", "--grad-accum-steps", "7", "--learning-rate", "0.001",
        "--save-every-epochs", "2", "--keep-checkpoints", "8",
        "--sample-text", "hello", "--sample-speaker-wav", "wavs/a.wav",
        "--device-policy", "CPU", "--gpus", "0", "--no-tensorboard", "--report-status",
    ]  # fmt: skip
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    args = parser.parse_args(argv)
    wire = train_cli.build_spec(args).model_dump(by_alias=True, mode="json")
    for dest, path in train_cli._OVERRIDES.items():
        given = getattr(args, dest)
        assert given is not None, f"--{dest} is not exercised"
        assert value_at(wire, ".".join(path)) == _json(given), dest


def test_serve_flags_map_onto_settings_fields() -> None:
    from tts_runtime.server.settings import Settings

    dests = _dests(serve.add_arguments)
    # --spec/--model-dir choose the input, --version/--host/--port are applied on their own
    assert set(serve._OVERRIDES) == dests - {"spec", "model_dir", "version", "host", "port"}
    assert set(serve._OVERRIDES.values()) <= set(Settings.model_fields)
    # the flags named after a ServeSpec field override that field (flattened into Settings)
    server = ServeSpec.model_fields["server"].annotation
    spec_fields = set(ServeSpec.model_fields) | set(server.model_fields)
    assert set(serve._OVERRIDES.values()) - spec_fields == {"stream_chunk_chars"}


def test_serve_flags_arrive_in_the_settings(tmp_path: Any) -> None:
    argv = [
        "--model-dir", str(tmp_path / "v1"), "--engine", "vits", "--device-policy", "CPU",
        "--voices-dir", str(tmp_path / "voices"), "--auth-token-file", str(tmp_path / "token"),
        "--max-concurrency", "3", "--max-queue", "5", "--max-text-length", "99",
        "--request-timeout", "7.5", "--stream-chunk-chars", "50",
    ]  # fmt: skip
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    args = parser.parse_args(argv)
    settings = serve.settings_from_args(args)
    for dest, field in serve._OVERRIDES.items():
        given = getattr(args, dest)
        assert given is not None, f"--{dest} is not exercised"
        assert getattr(settings, field) == given, dest


def test_the_trainers_status_report_rounds_losses_to_four_significant_digits() -> None:
    from tts_contract.contract import CheckpointRef, Progress, ProgressReport

    best = CheckpointRef(epoch=3, step=30, path="c.pth", evalLoss=5.886717319488525)
    report = ProgressReport(
        progress=Progress(epoch=3, epochs=8, step=30, loss=6.525095701217651, evalLoss=0.000123456),
        checkpoints=[best],
        best=best,
    )
    status = report.status_patch()["status"]
    assert status["progress"]["loss"] == 6.525 and status["progress"]["evalLoss"] == 0.0001235
    assert status["best"]["evalLoss"] == 5.887 and status["checkpoints"][0]["evalLoss"] == 5.887
    assert status["progress"]["step"] == 30  # only losses
    assert report.best is not None and report.best.eval_loss == 5.886717319488525  # kept whole
