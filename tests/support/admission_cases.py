"""Admission cases for TrainingRun and VoiceModel: each a valid object and an invalid twin.

The two objects of a case differ in exactly one field (``path``): ``good`` makes it valid, ``bad``
invalid. ``tests/cluster/test_admission.py`` sends both to the real API server (the CRD schema and
its CEL rules decide); ``tests/unit/test_api.py`` feeds the same objects to the pydantic models,
which must agree with the server. ``field`` is the path the rejection must name, ``says`` a phrase
its message must contain.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Literal

#: marks "this field is absent"
DELETE: Any = object()

Kind = Literal["TrainingRun", "VoiceModel"]


def training_run(name: str = "narrator-ft") -> dict[str, Any]:
    """A valid XTTS TrainingRun that sets most fields, so each case only has to change one."""
    return {
        "apiVersion": "tts-operator.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": name},
        "spec": {
            "engine": "xtts",
            "baseModel": {"volume": {"claimName": "base-models", "subPath": "xtts-v2"}},
            "dataset": {
                "volume": {"claimName": "datasets", "subPath": "narrator"},
                "language": "pt",
                "maxSamples": 100,
                "evalSplit": 0.1,
            },
            "training": {"epochs": 3, "batchSize": 2, "saveEveryEpochs": 1},
            "samples": {"text": "Olá, este é um teste.", "speakerWav": "wavs/ref.wav"},
            "checkpoints": {"volume": {"claimName": "checkpoints"}},
            "export": {"volume": {"claimName": "models", "subPath": "narrator"}},
            "promote": {"voiceModel": "narrator", "mode": "Publish"},
            "resources": {"gpus": 1, "cpu": "2", "memory": "4Gi"},
            "scheduling": {
                "queueName": "gpu-training",
                "tolerations": [{"key": "dedicated", "value": "tts"}],
            },
            "devicePolicy": "RequireGPU",
        },
    }


def vits_run(name: str = "narrator-vits") -> dict[str, Any]:
    run = training_run(name)
    run["spec"]["engine"] = "vits"
    del run["spec"]["baseModel"]
    del run["spec"]["samples"]["speakerWav"]
    return run


def voice_model(name: str = "narrator") -> dict[str, Any]:
    """A valid VoiceModel serving a TrainingRun's export."""
    return {
        "apiVersion": "tts-operator.dev/v1alpha1",
        "kind": "VoiceModel",
        "metadata": {"name": name},
        "spec": {
            "engine": "xtts",
            "model": {"trainingRun": "narrator-ft"},
            "replicas": 2,
            "resources": {"gpus": 1, "memory": "16Gi"},
            "devicePolicy": "RequireGPU",
            "rollout": {"strategy": "Availability", "progressDeadlineSeconds": 600},
            "voices": [{"name": "narrator", "wav": "voices/narrator.wav"}],
            "server": {"port": 8005, "maxConcurrency": 2},
        },
    }


def volume_voice_model(name: str = "narrator") -> dict[str, Any]:
    vm = voice_model(name)
    vm["spec"]["model"] = {"volume": {"claimName": "models", "subPath": "narrator"}}
    vm["spec"]["version"] = "narrator-ft"
    return vm


def uri_voice_model(name: str = "narrator") -> dict[str, Any]:
    vm = voice_model(name)
    vm["spec"]["model"] = {"uri": "s3://models/narrator", "secretRef": {"name": "s3-models"}}
    vm["spec"]["version"] = "narrator-ft"
    return vm


#: a sha256 for https:// locations (admission checks its shape only)
SHA = "a" * 64


def uri_training_run(name: str = "narrator-ft") -> dict[str, Any]:
    """Every location a URI: the base model on the hub, the dataset on the web, the export in S3."""
    run = training_run(name)
    spec = run["spec"]
    spec["baseModel"] = {"uri": "hf://coqui/XTTS-v2@main", "secretRef": {"name": "hf-token"}}
    spec["dataset"] = {k: v for k, v in spec["dataset"].items() if k != "volume"}
    spec["dataset"] |= {"uri": "https://data.example.com/narrator.tar.gz", "sha256": SHA}
    spec["export"] = {"uri": "s3://models/narrator", "secretRef": {"name": "s3-models"}}
    return run


_BASES = {
    "trun": training_run,
    "trun-uri": uri_training_run,
    "vits": vits_run,
    "vmodel": voice_model,
    "vmodel-volume": volume_voice_model,
    "vmodel-uri": uri_voice_model,
}


def set_path(obj: dict[str, Any], path: str, value: Any) -> None:
    """Set (or with DELETE remove) a dotted path such as ``spec.training.epochs``."""
    *parents, leaf = path.split(".")
    node = obj
    for key in parents:
        node = node.setdefault(key, {})
    if value is DELETE:
        node.pop(leaf, None)
    else:
        node[leaf] = copy.deepcopy(value)


@dataclass(frozen=True)
class Case:
    id: str
    base: str
    path: str
    good: Any
    bad: Any
    #: the field the rejection must name (as the API server writes paths)
    field: str
    #: a phrase the rejection must contain (our CEL messages); empty: the field is enough
    says: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def kind(self) -> Kind:
        return "VoiceModel" if self.base.startswith("vmodel") else "TrainingRun"

    def objects(self, namespace: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """(valid, invalid): the same object but for ``path``."""
        pair = []
        for value in (self.good, self.bad):
            obj = _BASES[self.base]()
            if namespace:
                obj["metadata"]["namespace"] = namespace
            for path, shared in self.extra.items():
                set_path(obj, path, shared)
            set_path(obj, self.path, value)
            pair.append(obj)
        return pair[0], pair[1]


def _volume(claim: str, sub_path: str | None = None) -> dict[str, Any]:
    return {"claimName": claim} | ({"subPath": sub_path} if sub_path is not None else {})


CASES: list[Case] = [
    # --- TrainingRun: ranges ---
    Case("epochs-zero", "trun", "spec.training.epochs", 3, 0, "spec.training.epochs"),
    Case("epochs-negative", "trun", "spec.training.epochs", 3, -2, "spec.training.epochs"),
    Case("batch-size-zero", "trun", "spec.training.batchSize", 2, 0, "spec.training.batchSize"),
    Case("learning-rate-zero", "trun", "spec.training.learningRate", 1e-4, 0.0, "spec.training.learningRate"),
    Case(
        "save-every-beyond-epochs",
        "trun",
        "spec.training.saveEveryEpochs",
        3,
        4,
        "spec.training.saveEveryEpochs",
        says="saveEveryEpochs must not exceed epochs",
    ),
    Case("max-samples-negative", "trun", "spec.dataset.maxSamples", 100, -5, "spec.dataset.maxSamples"),
    Case("max-samples-zero", "trun", "spec.dataset.maxSamples", 1, 0, "spec.dataset.maxSamples"),
    Case("eval-split-zero", "trun", "spec.dataset.evalSplit", 0.1, 0.0, "spec.dataset.evalSplit"),
    Case("eval-split-one", "trun", "spec.dataset.evalSplit", 0.9, 1.0, "spec.dataset.evalSplit"),
    Case("eval-split-above-one", "trun", "spec.dataset.evalSplit", 0.5, 1.5, "spec.dataset.evalSplit"),
    Case("language-not-a-code", "trun", "spec.dataset.language", "pt", "Portuguese", "spec.dataset.language"),
    Case("backoff-limit-negative", "trun", "spec.backoffLimit", 0, -1, "spec.backoffLimit"),
    # --- TrainingRun: enums and types ---
    Case("engine-unknown", "trun", "spec.engine", "xtts", "tacotron2", "spec.engine"),
    Case("device-policy-unknown", "trun", "spec.devicePolicy", "PreferGPU", "GPU", "spec.devicePolicy"),
    Case("gpus-not-a-number", "trun", "spec.resources.gpus", 2, "two", "spec.resources.gpus"),
    Case("gpus-numeric-string", "trun", "spec.resources.gpus", 2, "2", "spec.resources.gpus"),
    Case("gpus-negative", "trun", "spec.resources.gpus", 1, -1, "spec.resources.gpus"),
    Case("promote-mode-unknown", "trun", "spec.promote.mode", "Direct", "Auto", "spec.promote.mode"),
    Case(
        "promote-target-not-dns1035",
        "trun",
        "spec.promote.voiceModel",
        "narrator",
        "Narrator_1",
        "spec.promote.voiceModel",
    ),
    # --- TrainingRun: quantities ---
    Case("cpu-not-a-quantity", "trun", "spec.resources.cpu", "8", "eight", "spec.resources.cpu"),
    Case("cpu-negative-integer", "trun", "spec.resources.cpu", 2, -2, "spec.resources.cpu"),
    Case("memory-bad-suffix", "trun", "spec.resources.memory", "32Gi", "32GB", "spec.resources.memory"),
    Case("memory-negative", "trun", "spec.resources.memory", "1Gi", "-1Gi", "spec.resources.memory"),
    # --- TrainingRun: volumes and paths ---
    Case(
        "dataset-without-volume",
        "trun",
        "spec.dataset.volume",
        _volume("datasets", "narrator"),
        DELETE,
        "spec.dataset",
        says="set exactly one of volume or uri",
    ),
    Case(
        "claim-name-invalid",
        "trun",
        "spec.checkpoints.volume.claimName",
        "checkpoints",
        "Check_Points",
        "spec.checkpoints.volume.claimName",
    ),
    Case(
        "dataset-subpath-absolute",
        "trun",
        "spec.dataset.volume.subPath",
        "narrator",
        "/etc",
        "spec.dataset.volume.subPath",
        says="relative path",
    ),
    Case(
        "dataset-subpath-traversal",
        "trun",
        "spec.dataset.volume.subPath",
        "narrator/clips",
        "narrator/../../secrets",
        "spec.dataset.volume.subPath",
        says="'..'",
    ),
    Case(
        "base-model-subpath-parent",
        "trun",
        "spec.baseModel.volume.subPath",
        "xtts-v2",
        "..",
        "spec.baseModel.volume.subPath",
        says="'..'",
    ),
    Case(
        "checkpoints-subpath-trailing-parent",
        "trun",
        "spec.checkpoints.volume.subPath",
        "runs/a",
        "runs/..",
        "spec.checkpoints.volume.subPath",
        says="'..'",
    ),
    Case(
        "speaker-wav-absolute",
        "trun",
        "spec.samples.speakerWav",
        "wavs/ref.wav",
        "/etc/passwd",
        "spec.samples.speakerWav",
        says="relative path",
    ),
    Case(
        "export-version-traversal",
        "trun",
        "spec.export.version",
        "narrator-v2",
        "../narrator-v1",
        "spec.export.version",
    ),
    # --- TrainingRun: cross-field rules ---
    Case(
        "xtts-without-base-model",
        "trun",
        "spec.baseModel",
        {"volume": _volume("base-models", "xtts-v2")},
        DELETE,
        "spec.baseModel",
        says="baseModel is required when engine is xtts",
    ),
    Case(
        "vits-with-speaker-wav",
        "vits",
        "spec.samples.speakerWav",
        DELETE,
        "wavs/ref.wav",
        "spec.samples.speakerWav",
        says="only used by engine xtts",
    ),
    Case(
        "require-gpu-without-gpus",
        "trun",
        "spec.resources.gpus",
        1,
        0,
        "spec.resources.gpus",
        says="at least 1 when devicePolicy is RequireGPU",
    ),
    Case(
        "toleration-exists-with-value",
        "trun",
        "spec.scheduling.tolerations",
        [{"key": "dedicated", "operator": "Exists"}],
        [{"key": "dedicated", "operator": "Exists", "value": "tts"}],
        "spec.scheduling.tolerations[0].value",
        says="value must be empty when operator is Exists",
    ),
    # --- TrainingRun: names the operator derives children from ---
    Case(
        "run-name-too-long",
        "trun",
        "metadata.name",
        "r" * 52,
        "r" * 53,
        "metadata.name",
        says="at most 52 characters",
    ),
    # --- VoiceModel ---
    Case(
        "model-both-sources",
        "vmodel",
        "spec.model.volume",
        DELETE,
        _volume("models", "narrator"),
        "spec.model",
        says="exclusive",
    ),
    Case(
        "model-run-and-uri",
        "vmodel",
        "spec.model.uri",
        DELETE,
        "s3://models/narrator",
        "spec.model",
        says="exclusive",
    ),
    Case(
        "model-uri-traversal",
        "vmodel-uri",
        "spec.model.uri",
        "s3://models/narrator",
        "s3://models/../etc",
        "spec.model.uri",
        says="'..'",
    ),
    Case(
        "model-uri-not-s3",
        "vmodel-uri",
        "spec.model.uri",
        "s3://models/narrator",
        "hf://coqui/XTTS-v2",
        "spec.model.uri",
        says="must start with s3://",
    ),
    Case(
        "model-secret-without-uri",
        "vmodel-volume",
        "spec.model.secretRef",
        DELETE,
        {"name": "s3-models"},
        "spec.model.secretRef",
        says="applies to model.uri only",
    ),
    Case(
        "uri-source-without-version",
        "vmodel-uri",
        "spec.version",
        "narrator-ft",
        DELETE,
        "spec.version",
        says="version is required when model.volume or model.uri is set",
    ),
    # --- TrainingRun: URI locations ---
    Case(
        "location-volume-and-uri",
        "trun",
        "spec.export.uri",
        DELETE,
        "s3://models/narrator",
        "spec.export",
        says="exactly one of volume or uri",
    ),
    Case(
        "https-without-sha256",
        "trun-uri",
        "spec.dataset.sha256",
        SHA,
        DELETE,
        "spec.dataset.sha256",
        says="sha256 is required with an https:// uri",
    ),
    Case(
        "sha256-on-s3",
        "trun-uri",
        "spec.export.sha256",
        DELETE,
        SHA,
        "spec.export.sha256",
        says="applies to https:// only",
    ),
    Case(
        "export-uri-not-s3",
        "trun-uri",
        "spec.export.uri",
        "s3://models/narrator",
        "hf://coqui/XTTS-v2",
        "spec.export.uri",
        says="must start with s3://",
    ),
    Case(
        "dataset-from-the-hub",
        "trun-uri",
        "spec.dataset.uri",
        "s3://datasets/narrator",
        "hf://coqui/XTTS-v2",
        "spec.dataset.uri",
        says="must start with s3://, https://",
        extra={"spec.dataset.sha256": DELETE},
    ),
    Case(
        "checkpoints-uri-not-s3",
        "trun-uri",
        "spec.checkpoints.uri",
        "s3://checkpoints/runs",
        "https://example.com/ckpt.tar",
        "spec.checkpoints.uri",
        says="must start with s3://",
        extra={"spec.checkpoints.volume": DELETE},
    ),
    Case(
        "uri-key-traversal",
        "trun-uri",
        "spec.baseModel.uri",
        "hf://coqui/XTTS-v2@main",
        "s3://models/a/../../etc",
        "spec.baseModel.uri",
        says="'..'",
    ),
    Case(
        "uri-key-absolute",
        "trun-uri",
        "spec.export.uri",
        "s3://models/narrator",
        "s3://models//narrator",
        "spec.export.uri",
    ),
    Case(
        "uri-unknown-scheme",
        "trun-uri",
        "spec.baseModel.uri",
        "hf://coqui/XTTS-v2@main",
        "ftp://models.example.com/xtts",
        "spec.baseModel.uri",
    ),
    Case(
        "secret-without-uri",
        "trun",
        "spec.export.secretRef",
        DELETE,
        {"name": "s3-models"},
        "spec.export.secretRef",
        says="applies to a uri only",
    ),
    Case(
        "model-no-source",
        "vmodel",
        "spec.model.trainingRun",
        "narrator-ft",
        DELETE,
        "spec.model",
        says="needs a source",
    ),
    Case(
        "volume-source-without-version",
        "vmodel-volume",
        "spec.version",
        "narrator-ft",
        DELETE,
        "spec.version",
        says="version is required when model.volume or model.uri is set",
    ),
    Case(
        "model-run-name-too-long",
        "vmodel",
        "spec.model.trainingRun",
        "r" * 52,
        "r" * 53,
        "spec.model.trainingRun",
    ),
    Case("vm-engine-unknown", "vmodel", "spec.engine", "vits", "bark", "spec.engine"),
    Case("replicas-negative", "vmodel", "spec.replicas", 0, -1, "spec.replicas"),
    Case(
        "rollout-strategy-unknown",
        "vmodel",
        "spec.rollout.strategy",
        "HotSwap",
        "BlueGreen",
        "spec.rollout.strategy",
    ),
    Case(
        "progress-deadline-too-short",
        "vmodel",
        "spec.rollout.progressDeadlineSeconds",
        30,
        0,
        "spec.rollout.progressDeadlineSeconds",
    ),
    Case("port-out-of-range", "vmodel", "spec.server.port", 8080, 70000, "spec.server.port"),
    Case("version-traversal", "vmodel-volume", "spec.version", "narrator-ft", "../etc", "spec.version"),
    Case(
        "voice-wav-traversal",
        "vmodel",
        "spec.voices",
        [{"name": "narrator", "wav": "voices/narrator.wav"}],
        [{"name": "narrator", "wav": "../../etc/passwd"}],
        "spec.voices[0].wav",
        says="'..'",
    ),
    Case(
        "voice-names-duplicate",
        "vmodel",
        "spec.voices",
        [{"name": "narrator", "wav": "a.wav"}, {"name": "narrator-2", "wav": "b.wav"}],
        [{"name": "narrator", "wav": "a.wav"}, {"name": "narrator", "wav": "b.wav"}],
        "spec.voices[1]",
    ),
    Case(
        "cpu-policy-with-gpus",
        "vmodel",
        "spec.resources.gpus",
        0,
        1,
        "spec.resources.gpus",
        says="must be 0 when devicePolicy is CPU",
        extra={"spec.devicePolicy": "CPU"},
    ),
    Case(
        "vm-name-too-long",
        "vmodel",
        "metadata.name",
        "v" * 47,
        "v" * 48,
        "metadata.name",
        says="at most 47 characters",
    ),
    Case(
        "vm-name-not-dns1035",
        "vmodel",
        "metadata.name",
        "narrator9",
        "9narrator",
        "metadata.name",
        says="DNS-1035",
    ),
]


@dataclass(frozen=True)
class ImmutableCase:
    """A field that must not change after create: ``new`` is the changed value."""

    id: str
    base: str
    path: str
    new: Any
    field: str
    says: str


IMMUTABLE_CASES: list[ImmutableCase] = [
    ImmutableCase("engine", "trun", "spec.engine", "vits", "spec.engine", "engine is immutable"),
    ImmutableCase(
        "dataset-volume",
        "trun",
        "spec.dataset.volume",
        _volume("datasets", "other"),
        "spec.dataset",
        "dataset is immutable",
    ),
    ImmutableCase(
        "dataset-eval-split", "trun", "spec.dataset.evalSplit", 0.2, "spec.dataset", "dataset is immutable"
    ),
    ImmutableCase(
        "training-epochs", "trun", "spec.training.epochs", 30, "spec.training", "training is immutable"
    ),
    ImmutableCase(
        "export-volume",
        "trun",
        "spec.export.volume",
        _volume("other-models"),
        "spec.export",
        "export is immutable",
    ),
    ImmutableCase(
        "checkpoints-volume",
        "trun",
        "spec.checkpoints.volume",
        _volume("other-checkpoints"),
        "spec.checkpoints",
        "checkpoints is immutable",
    ),
    ImmutableCase(
        "base-model-changed",
        "trun",
        "spec.baseModel",
        {"volume": _volume("base-models", "xtts-v2.1")},
        "spec.baseModel",
        "baseModel is immutable",
    ),
    ImmutableCase(
        "base-model-added",
        "vits",
        "spec.baseModel",
        {"volume": _volume("base-models", "vits")},
        "spec.baseModel",
        "baseModel is immutable",
    ),
]


def base_object(base: str) -> dict[str, Any]:
    return _BASES[base]()


def mentions_field(message: str, field_path: str) -> bool:
    """Whether an API server error names ``field_path`` (as "spec.x.y: ..." or in its text)."""
    return re.search(rf"(^|[\s\"'(]){re.escape(field_path)}([:\s\"')]|$)", message) is not None
