"""The custom resources: TrainingRun and VoiceModel (group ``tts-operator.dev``, version ``v1alpha1``).

These pydantic models are the single source of the API. ``python -m tts_operator.crdgen`` turns them
into the CRDs in ``crds/`` (structural OpenAPI schemas; the rules pydantic cannot express in a JSON
schema travel as CEL ``x-kubernetes-validations``), and the operator parses objects with them::

    run = TrainingRun.model_validate(body)            # a whole object as the API server returns it
    spec = TrainingRunSpec.model_validate(body["spec"])

Every rule the API server enforces at admission is mirrored by a pydantic validator here, so a spec
that parses in Python is also admitted by the server and the other way round (tests pin both
sides). Only the transition rules (immutable fields) exist on the server alone: they need the old
object. Numbers, strings and booleans are strict, as the server's schema is: ``epochs: "3"`` is an
error on both sides.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    WithJsonSchema,
    model_validator,
)

from tts_operator.contract import (
    API_GROUP,
    API_VERSION,
    MAX_STATUS_CHECKPOINTS,
    MAX_STATUS_SAMPLES,
    CheckpointRef,
    DevicePolicy,
    Engine,
    Progress,
    SampleRef,
)

API_GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"

# --- name limits ---------------------------------------------------------------------------------
#
# The operator names children after their parent, and Kubernetes caps those names: a Job's name is
# copied into its pods' label ``batch.kubernetes.io/job-name`` (label values hold at most 63
# characters), and generated pod names keep at most 58 characters of their prefix. Rejecting a
# parent whose children could not be created is kinder than a run that is admitted and then stuck.

#: DNS label / label value limit
DNS_LABEL_MAX = 63
#: characters reserved after a TrainingRun's name for its children: the training Job ``<name>``,
#: the export Job ``<name>-export`` (7), per-run ServiceAccount/Role ``<name>-trainer`` (8) and 3 spare
TRAININGRUN_CHILD_SUFFIX_MAX = 11
TRAININGRUN_NAME_MAX = DNS_LABEL_MAX - TRAININGRUN_CHILD_SUFFIX_MAX  # 52
#: a VoiceModel's Deployment ``<name>`` makes ReplicaSets ``<name>-<pod-template-hash, up to 10>``
#: whose pods are ``<replicaset>-<5 random>``; the API server keeps only 58 characters of a
#: generated name's prefix, so ``<name>`` + 11 <= 58 keeps every pod name whole and traceable
VOICEMODEL_NAME_MAX = 58 - 11  # 47

# --- patterns (RE2 on the server, Python ``re`` here: only the common subset is used) -----------

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
#: an unsigned Kubernetes quantity: "8", "500m", "32Gi", "1.5", "1e3"
_DECIMAL = r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
QUANTITY = rf"^{_DECIMAL}(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?{_DECIMAL}))?$"
#: a version directory name; never "." or ".." because it must start with a letter or digit
VERSION = r"^[a-z0-9]([-a-z0-9._]*[a-z0-9])?$"
LANGUAGE = r"^[a-z]{2,3}(-[A-Za-z0-9]{1,8})*$"
CONDITION_TYPE = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
#: a ".." segment anywhere in a slash-separated path
_TRAVERSAL = r"(^|/)\.\.(/|$)"


# --- CEL rules -----------------------------------------------------------------------------------


def cel(
    rule: str,
    message: str | None = None,
    *,
    message_expression: str | None = None,
    field_path: str | None = None,
    reason: Literal["FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired"] | None = None,
) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry."""
    entry = {"rule": rule}
    if message is not None:
        entry["message"] = message
    if message_expression is not None:
        entry["messageExpression"] = message_expression
    if field_path is not None:
        entry["fieldPath"] = field_path
    if reason is not None:
        entry["reason"] = reason
    return entry


def rules(*entries: dict[str, str]) -> dict[str, Any]:
    """``json_schema_extra`` carrying CEL rules (for ``Field`` and ``ConfigDict``)."""
    return {"x-kubernetes-validations": list(entries)}


def immutable(field: str, hint: str) -> dict[str, Any]:
    """A transition rule on a required field: it may not change once the object exists."""
    return rules(cel("self == oldSelf", f"{field} is immutable: {hint}"))


# --- shared field types --------------------------------------------------------------------------

#: the server's schema is strict about JSON types; so are we (enums stay lax so "xtts" parses)
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]


def _check_relative_path(value: str) -> str:
    if value.startswith("/"):
        raise ValueError("must be a relative path: it must not start with '/'")
    if re.search(_TRAVERSAL, value):
        raise ValueError("must not contain '..' path segments (that would escape the volume)")
    return value


RELATIVE_PATH_RULES = rules(
    cel("!self.startsWith('/')", "must be a relative path: it must not start with '/'"),
    cel(
        f"!self.matches('{_TRAVERSAL}')".replace("\\", "\\\\"),
        "must not contain '..' path segments (that would escape the volume)",
    ),
)
#: a path inside a volume or model directory: relative, never climbing out with ".."
RelativePath = Annotated[
    Str, AfterValidator(_check_relative_path), Field(max_length=1024, json_schema_extra=RELATIVE_PATH_RULES)
]


def _quantity_from_int(value: Any) -> Any:
    # YAML users write `cpu: 8`; the server takes it (int-or-string) and so do we, as a string
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    return value


#: a Kubernetes quantity ("8", "500m", "32Gi"); an integer is accepted and kept as a string
Quantity = Annotated[
    Str,
    BeforeValidator(_quantity_from_int),
    Field(pattern=QUANTITY, max_length=64),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "pattern": QUANTITY,
            "maxLength": 64,
            # the pattern only applies to strings: keep integers from being negative too
            "x-kubernetes-validations": [
                cel("type(self) != int || self >= 0", "must be a non-negative quantity")
            ],
        }
    ),
]


def _defaulted(model: type[BaseModel], description: str) -> Any:
    """An object field that defaults to ``{}`` on the server too, so its own defaults apply."""
    return Field(default_factory=model, description=description, json_schema_extra={"default": {}})


class ApiModel(BaseModel):
    """Base of the spec models: camelCase on the wire, unknown fields rejected (as kubectl does)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", use_enum_values=False)

    def wire(self) -> dict[str, Any]:
        """The JSON the API server stores (aliases, no unset optionals)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# --- building blocks shared by both kinds --------------------------------------------------------


class VolumeRef(ApiModel):
    """A PersistentVolumeClaim in the object's namespace, optionally a folder inside it."""

    claim_name: Str = Field(
        alias="claimName",
        min_length=1,
        max_length=253,
        pattern=DNS1123_SUBDOMAIN,
        description="Name of a PersistentVolumeClaim in the same namespace.",
    )
    sub_path: RelativePath | None = Field(
        default=None,
        alias="subPath",
        description="Folder inside the claim to use instead of its root. Relative; '..' is not allowed.",
    )


class VolumeSource(ApiModel):
    """Where files live."""

    volume: VolumeRef = Field(description="The PersistentVolumeClaim (and folder in it) holding the files.")


class Toleration(ApiModel):
    """A toleration added to the pods (same meaning as in a Pod spec)."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "self.operator != 'Exists' || !has(self.value) || self.value == ''",
                "value must be empty when operator is Exists",
                field_path=".value",
                reason="FieldValueForbidden",
            )
        )
    )

    key: Str | None = Field(
        default=None, max_length=316, description="Taint key to tolerate; empty with Exists tolerates all."
    )
    operator: Literal["Exists", "Equal"] = Field(
        default="Equal", description="Exists matches any value of the key; Equal matches `value` only."
    )
    value: Str | None = Field(default=None, max_length=63, description="Taint value to match (Equal only).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; empty matches all effects."
    )
    toleration_seconds: Int | None = Field(
        default=None,
        alias="tolerationSeconds",
        description="For NoExecute: how long the pod stays bound after the taint appears; unset = forever.",
    )

    @model_validator(mode="after")
    def _exists_has_no_value(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("value must be empty when operator is Exists")
        return self


class Scheduling(ApiModel):
    """Where and with which priority the pods are scheduled."""

    priority_class_name: Str | None = Field(
        default=None,
        alias="priorityClassName",
        max_length=253,
        pattern=DNS1123_SUBDOMAIN,
        description="PriorityClass of the pods (for example one that may preempt lower-priority work).",
    )
    node_selector: dict[Str, Annotated[Str, Field(max_length=63)]] = Field(
        default_factory=dict,
        alias="nodeSelector",
        max_length=32,
        description="Extra node labels the pods require (resources.gpuProduct adds nvidia.com/gpu.product).",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=32,
        description="Extra tolerations. The GPU taint nvidia.com/gpu is tolerated automatically "
        "when GPUs are requested.",
    )


class TrainingScheduling(Scheduling):
    """Where and with which priority the training pods are scheduled, and through which queue."""

    queue_name: Str | None = Field(
        default=None,
        alias="queueName",
        max_length=63,
        pattern=LABEL_VALUE,
        description="Kueue LocalQueue: sets the label kueue.x-k8s.io/queue-name so Kueue admits the Job.",
    )


class Resources(ApiModel):
    """Compute resources of each pod."""

    gpus: Int = Field(
        default=1,
        ge=0,
        le=64,
        description="GPUs per pod, requested as the operator's GPU resource (default nvidia.com/gpu).",
    )
    gpu_product: Str | None = Field(
        default=None,
        alias="gpuProduct",
        min_length=1,
        max_length=63,
        pattern=LABEL_VALUE,
        description="GPU model to run on, as the node label nvidia.com/gpu.product "
        "(for example NVIDIA-GeForce-RTX-3090). Unset: any GPU.",
    )
    cpu: Quantity | None = Field(default=None, description='CPU request and limit, a quantity ("8", "500m").')
    memory: Quantity | None = Field(
        default=None, description='Memory request and limit, a quantity ("32Gi").'
    )


def _device_rules(gpus_path: str) -> list[dict[str, str]]:
    """devicePolicy against resources.gpus: the two must agree (shared by both kinds)."""
    return [
        cel(
            "self.devicePolicy != 'RequireGPU' || self.resources.gpus >= 1",
            "resources.gpus must be at least 1 when devicePolicy is RequireGPU "
            "(use PreferGPU or CPU to run without a GPU)",
            field_path=gpus_path,
        ),
        cel(
            "self.devicePolicy != 'CPU' || self.resources.gpus == 0",
            "resources.gpus must be 0 when devicePolicy is CPU: a CPU pod must not hold GPUs",
            field_path=gpus_path,
        ),
    ]


def _check_device(policy: DevicePolicy, resources: Resources) -> None:
    if policy == DevicePolicy.REQUIRE_GPU and resources.gpus < 1:
        raise ValueError("resources.gpus must be at least 1 when devicePolicy is RequireGPU")
    if policy == DevicePolicy.CPU and resources.gpus != 0:
        raise ValueError("resources.gpus must be 0 when devicePolicy is CPU")


EngineField = Annotated[Engine, Strict(False)]
DevicePolicyField = Annotated[DevicePolicy, Strict(False)]


# --- status building blocks ----------------------------------------------------------------------


class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class ConditionType(enum.StrEnum):
    """Condition types the operator sets. Ready/Reconciling/Stalled are the kstatus trio."""

    READY = "Ready"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"
    # TrainingRun
    QUEUED = "Queued"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    EXPORTED = "Exported"
    PROMOTED = "Promoted"
    # VoiceModel
    MODEL_AVAILABLE = "ModelAvailable"
    ROLLED_OUT = "RolledOut"
    DEGRADED = "Degraded"


class Condition(ApiModel):
    """A condition in the standard Kubernetes shape (metav1.Condition)."""

    type: Str = Field(
        max_length=316,
        pattern=CONDITION_TYPE,
        description="Condition type in CamelCase, for example Ready, Reconciling, Stalled, Exported.",
    )
    status: Annotated[ConditionStatus, Strict(False)] = Field(description="True, False or Unknown.")
    reason: Str = Field(
        min_length=1,
        max_length=1024,
        pattern=CONDITION_REASON,
        description="Machine-readable CamelCase reason for the last transition.",
    )
    message: Str = Field(default="", max_length=32768, description="Human-readable details.")
    last_transition_time: Str = Field(
        alias="lastTransitionTime",
        json_schema_extra={"format": "date-time"},
        description="When status last changed (RFC 3339).",
    )
    observed_generation: Int | None = Field(
        default=None,
        alias="observedGeneration",
        ge=0,
        description="metadata.generation the condition was computed from.",
    )


def _conditions_field() -> Any:
    return Field(
        default_factory=list,
        max_length=32,
        description="Current state as conditions, one per type.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


#: descriptions for the contract's status models, which carry none themselves (crdgen applies them;
#: a contract field without an entry here fails generation, so the two cannot drift apart)
CONTRACT_DESCRIPTIONS: dict[type[BaseModel], tuple[str, dict[str, str]]] = {
    Progress: (
        "Training progress as the trainer last reported it.",
        {
            "epoch": "Epochs completed.",
            "epochs": "Epochs the run will train in total.",
            "step": "Optimizer steps taken so far.",
            "loss": "Latest training loss.",
            "evalLoss": "Latest evaluation loss.",
            "eta": 'Estimated time left, for example "2h10m".',
            "attempt": "Which attempt (pod) of the Job this is, from 1.",
            "resumedFromEpoch": "Epoch of the checkpoint this attempt resumed from, when it resumed.",
            "updatedAt": "When the trainer wrote this report (RFC 3339).",
        },
    ),
    CheckpointRef: (
        "A saved checkpoint.",
        {
            "epoch": "Epoch the checkpoint was saved after.",
            "step": "Optimizer step the checkpoint was saved at.",
            "path": "Path of the checkpoint relative to the run's folder on the checkpoints volume.",
            "evalLoss": "Evaluation loss at this checkpoint.",
        },
    ),
    SampleRef: (
        "A sample synthesised at the end of an epoch.",
        {
            "epoch": "Epoch the sample was synthesised after.",
            "path": "Path of the wav file relative to the run's folder on the checkpoints volume.",
        },
    ),
}


# --- TrainingRun ---------------------------------------------------------------------------------


class BaseModelSource(VolumeSource):
    """The pretrained model to fine-tune. For xtts the folder holds model.pth, config.json,
    vocab.json, dvae.pth and mel_stats.pth."""


class DatasetFormat(enum.StrEnum):
    LJSPEECH = "ljspeech"


class Dataset(ApiModel):
    """The training data, mounted read-only."""

    volume: VolumeRef = Field(description="Where the dataset lives (mounted read-only).")
    format: Annotated[DatasetFormat, Strict(False)] = Field(
        default=DatasetFormat.LJSPEECH,
        description="Layout of the dataset. ljspeech: metadata.csv (id|text|normalized text) "
        "and wavs/<id>.wav.",
    )
    language: Str = Field(
        default="en",
        max_length=35,
        pattern=LANGUAGE,
        description='Language of the transcripts, as the engine names it ("en", "pt", "zh-cn").',
    )
    max_samples: Int | None = Field(
        default=None,
        alias="maxSamples",
        ge=1,
        description="Use at most this many clips (the first ones after shuffling with seed). Unset: all.",
    )
    eval_split: Float = Field(
        default=0.05,
        alias="evalSplit",
        gt=0,
        lt=1,
        description="Fraction of the clips held out for evaluation, strictly between 0 and 1.",
    )
    seed: Int = Field(default=1234, ge=0, description="Seed of the shuffle that picks samples and the split.")
    resample: Bool = Field(
        default=True,
        description="Resample clips whose sample rate differs from the engine's instead of rejecting them.",
    )


class Training(ApiModel):
    """Hyperparameters and checkpointing."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                # epochs < 1 has its own error already
                "self.epochs < 1 || self.saveEveryEpochs <= self.epochs",
                "saveEveryEpochs must not exceed epochs: no checkpoint would ever be saved",
                field_path=".saveEveryEpochs",
            )
        )
    )

    epochs: Int = Field(ge=1, le=100000, description="Epochs to train, at least 1.")
    batch_size: Int = Field(default=2, alias="batchSize", ge=1, le=4096, description="Clips per batch.")
    grad_accum_steps: Int = Field(
        default=1,
        alias="gradAccumSteps",
        ge=1,
        le=4096,
        description="Batches accumulated per optimizer step (effective batch = batchSize x gradAccumSteps).",
    )
    learning_rate: Float = Field(
        default=5e-6, alias="learningRate", gt=0, le=1, description="Optimizer learning rate."
    )
    save_every_epochs: Int = Field(
        default=1,
        alias="saveEveryEpochs",
        ge=1,
        description="Save a checkpoint (and a sample) every this many epochs; at most epochs.",
    )
    keep_checkpoints: Int = Field(
        default=3,
        alias="keepCheckpoints",
        ge=1,
        le=100,
        description="Checkpoints kept on the volume; older ones are deleted (the best one is always kept).",
    )

    @model_validator(mode="after")
    def _save_within_run(self) -> Training:
        if self.save_every_epochs > self.epochs:
            raise ValueError(
                f"saveEveryEpochs ({self.save_every_epochs}) must not exceed epochs ({self.epochs}): "
                "no checkpoint would ever be saved"
            )
        return self


class Samples(ApiModel):
    """A sentence synthesised after every saved epoch, so progress can be heard."""

    text: Str = Field(min_length=1, max_length=1000, description="The sentence to synthesise.")
    speaker_wav: RelativePath | None = Field(
        default=None,
        alias="speakerWav",
        description="xtts only: reference clip of the voice, relative to the dataset folder "
        "(for example wavs/ref.wav). Unset: the first clip of the dataset.",
    )


class Checkpoints(VolumeSource):
    """Where checkpoints, samples, TensorBoard logs and progress go (mounted read-write). The run
    writes under ``<subPath>/<namespace>/<name>/``; nothing there is deleted with the run."""


class Export(VolumeSource):
    """Where the best checkpoint is exported when the run succeeds."""

    version: Str | None = Field(
        default=None,
        max_length=63,
        pattern=VERSION,
        description="Name of the version directory created under the volume's subPath. "
        "Unset: the run's name. An existing version is never overwritten.",
    )


class PromoteMode(enum.StrEnum):
    PUBLISH = "Publish"
    DIRECT = "Direct"


class Promote(ApiModel):
    """What to do with the exported version."""

    voice_model: Str = Field(
        alias="voiceModel",
        max_length=VOICEMODEL_NAME_MAX,
        pattern=DNS1035_LABEL,
        description="VoiceModel (same namespace) that should serve the exported version.",
    )
    mode: Annotated[PromoteMode, Strict(False)] = Field(
        default=PromoteMode.PUBLISH,
        description="Publish: only report the change (status.promotion and an Event) for a GitOps repo "
        "to make. Direct: patch the VoiceModel's spec.version (clusters without GitOps).",
    )


class Tensorboard(ApiModel):
    """TensorBoard event files."""

    enabled: Bool = Field(default=True, description="Write TensorBoard logs next to the checkpoints.")


class TrainingRunSpec(ApiModel):
    """What to train, on what, and where the results go."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "self.engine != 'xtts' || has(self.baseModel)",
                "baseModel is required when engine is xtts: XTTS fine-tunes a pretrained model "
                "(model.pth, config.json, vocab.json, dvae.pth, mel_stats.pth)",
                field_path=".baseModel",
                reason="FieldValueRequired",
            ),
            cel(
                "self.engine == 'xtts' || !has(self.samples) || !has(self.samples.speakerWav)",
                "samples.speakerWav is only used by engine xtts",
                field_path=".samples.speakerWav",
                reason="FieldValueForbidden",
            ),
            *_device_rules(".resources.gpus"),
            cel(
                "has(self.baseModel) == has(oldSelf.baseModel)"
                " && (!has(self.baseModel) || self.baseModel == oldSelf.baseModel)",
                "baseModel is immutable: create a new TrainingRun to start from another model",
                field_path=".baseModel",
            ),
        )
    )

    engine: EngineField = Field(
        description="Model family: xtts (fine-tune XTTS v2) or vits (train VITS). Immutable.",
        json_schema_extra=immutable("engine", "create a new TrainingRun to train another engine"),
    )
    base_model: BaseModelSource | None = Field(
        default=None,
        alias="baseModel",
        description="Pretrained model to start from, mounted read-only. Required for xtts; for vits, "
        "a VITS checkpoint folder to continue from instead of training from scratch. Immutable.",
    )
    dataset: Dataset = Field(
        description="Training data. Immutable.",
        json_schema_extra=immutable("dataset", "create a new TrainingRun to train on other data"),
    )
    training: Training = Field(
        description="Hyperparameters. Immutable.",
        json_schema_extra=immutable("training", "create a new TrainingRun to train with other settings"),
    )
    samples: Samples | None = Field(default=None, description="A sample sentence synthesised per epoch.")
    checkpoints: Checkpoints = Field(
        description="Volume for checkpoints, samples and logs. Immutable (a retry resumes from it).",
        json_schema_extra=immutable("checkpoints", "the run resumes from the checkpoints it wrote there"),
    )
    export: Export = Field(
        description="Volume the best checkpoint is exported to, as an immutable version. Immutable.",
        json_schema_extra=immutable("export", "create a new TrainingRun to export elsewhere"),
    )
    promote: Promote | None = Field(
        default=None, description="Offer the exported version to a VoiceModel. Unset: export only."
    )
    resources: Resources = _defaulted(Resources, "GPUs, CPU and memory of the training pod.")
    scheduling: TrainingScheduling = _defaulted(TrainingScheduling, "Queue, priority and placement.")
    device_policy: DevicePolicyField = Field(
        default=DevicePolicy.REQUIRE_GPU,
        alias="devicePolicy",
        description="RequireGPU: fail unless the GPU preflight passes. PreferGPU: fall back to the CPU. "
        "CPU: never use a GPU (resources.gpus must be 0).",
    )
    tensorboard: Tensorboard = _defaulted(Tensorboard, "TensorBoard logging.")
    backoff_limit: Int = Field(
        default=3,
        alias="backoffLimit",
        ge=0,
        le=100,
        description="Retries after a failed or evicted pod; each retry resumes from the latest checkpoint.",
    )
    active_deadline_seconds: Int | None = Field(
        default=None,
        alias="activeDeadlineSeconds",
        ge=1,
        description="Fail the run when training has taken longer than this. Unset: no limit.",
    )
    suspend: Bool = Field(
        default=False,
        description="true stops the training pod (the checkpoint is kept); false resumes from it.",
    )

    @model_validator(mode="after")
    def _cross_field(self) -> TrainingRunSpec:
        if self.engine == Engine.XTTS and self.base_model is None:
            raise ValueError("baseModel is required when engine is xtts")
        if self.engine != Engine.XTTS and self.samples is not None and self.samples.speaker_wav is not None:
            raise ValueError("samples.speakerWav is only used by engine xtts")
        _check_device(self.device_policy, self.resources)
        return self


class TrainingRunPhase(enum.StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"
    RUNNING = "Running"
    EXPORTING = "Exporting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


#: phases a run never leaves: its children are never recreated
TERMINAL_PHASES = frozenset({TrainingRunPhase.SUCCEEDED, TrainingRunPhase.FAILED})


class ExportOutput(ApiModel):
    """The exported model version."""

    version: Str = Field(max_length=63, description="Name of the version directory.")
    path: Str = Field(max_length=1024, description="Path of the version directory inside the export volume.")
    sha256: Str = Field(
        max_length=64, description="Digest of the version: sha256 over its manifest's (path, sha256) pairs."
    )
    exported_at: Str | None = Field(
        default=None,
        alias="exportedAt",
        json_schema_extra={"format": "date-time"},
        description="When the export finished (RFC 3339).",
    )


class Failure(ApiModel):
    """Why the run failed."""

    reason: Str = Field(
        max_length=1024, description="Machine-readable CamelCase reason, for example BadInput."
    )
    message: Str = Field(default="", max_length=32768, description="What went wrong, for people.")
    exit_code: Int | None = Field(
        default=None, alias="exitCode", description="Exit code of the failed container, when it exited."
    )
    pod: Str | None = Field(default=None, max_length=253, description="The pod that failed.")


class Promotion(ApiModel):
    """The promotion of the exported version to a VoiceModel."""

    voice_model: Str = Field(alias="voiceModel", max_length=253, description="The VoiceModel.")
    version: Str = Field(max_length=63, description="The version to serve.")
    mode: Annotated[PromoteMode, Strict(False)] = Field(description="Publish or Direct.")
    patch: Str | None = Field(
        default=None,
        max_length=4096,
        description="Publish: the change a GitOps repo needs, as a JSON merge patch of the VoiceModel.",
    )
    applied: Bool = Field(default=False, description="Direct: whether the VoiceModel was patched.")
    time: Str | None = Field(
        default=None,
        json_schema_extra={"format": "date-time"},
        description="When it was published or applied.",
    )


class TrainingRunStatus(ApiModel):
    """What the run is doing, derived from its Job and pods and from the trainer's reports."""

    phase: Annotated[TrainingRunPhase, Strict(False)] | None = Field(
        default=None, description="Pending, Queued, Running, Exporting, Succeeded, Failed or Suspended."
    )
    observed_generation: Int | None = Field(
        default=None,
        alias="observedGeneration",
        ge=0,
        description="metadata.generation this status was computed from.",
    )
    conditions: list[Condition] = _conditions_field()
    job_name: Str | None = Field(
        default=None, alias="jobName", max_length=253, description="The training Job."
    )
    export_job_name: Str | None = Field(
        default=None, alias="exportJobName", max_length=253, description="The export Job."
    )
    start_time: Str | None = Field(
        default=None,
        alias="startTime",
        json_schema_extra={"format": "date-time"},
        description="When training first started.",
    )
    completion_time: Str | None = Field(
        default=None,
        alias="completionTime",
        json_schema_extra={"format": "date-time"},
        description="When the run reached Succeeded or Failed.",
    )
    progress: Progress | None = Field(
        default=None, description="Training progress, as the trainer reports it."
    )
    progress_text: Str | None = Field(
        default=None,
        alias="progressText",
        max_length=64,
        description='Progress for people ("7/50" epochs), shown by kubectl get.',
    )
    checkpoints: list[CheckpointRef] = Field(
        default_factory=list,
        max_length=MAX_STATUS_CHECKPOINTS,
        description=f"The latest checkpoints (at most {MAX_STATUS_CHECKPOINTS}).",
    )
    best: CheckpointRef | None = Field(
        default=None, description="The checkpoint with the lowest evaluation loss."
    )
    samples: list[SampleRef] = Field(
        default_factory=list,
        max_length=MAX_STATUS_SAMPLES,
        description=f"The latest per-epoch samples (at most {MAX_STATUS_SAMPLES}).",
    )
    output: ExportOutput | None = Field(default=None, description="The exported version, once exported.")
    promotion: Promotion | None = Field(default=None, description="The promotion of the exported version.")
    failure: Failure | None = Field(default=None, description="Why the run failed, when it failed.")


# --- VoiceModel ----------------------------------------------------------------------------------


class ModelSource(ApiModel):
    """Where the model comes from: exactly one of trainingRun or volume."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "has(self.trainingRun) || has(self.volume)",
                "model needs a source: set model.trainingRun or model.volume",
                reason="FieldValueRequired",
            ),
            cel(
                "!(has(self.trainingRun) && has(self.volume))",
                "model.trainingRun and model.volume are exclusive: set only one",
                field_path=".volume",
                reason="FieldValueForbidden",
            ),
        )
    )

    training_run: Str | None = Field(
        default=None,
        alias="trainingRun",
        max_length=TRAININGRUN_NAME_MAX,
        pattern=DNS1123_SUBDOMAIN,
        description="A TrainingRun in the same namespace: serve what it exported (its export volume).",
    )
    volume: VolumeRef | None = Field(
        default=None,
        description="A volume holding version directories (<subPath>/<version>/manifest.json), as "
        "TrainingRun export writes them. Requires spec.version.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        if self.training_run is None and self.volume is None:
            raise ValueError("model needs a source: set model.trainingRun or model.volume")
        if self.training_run is not None and self.volume is not None:
            raise ValueError("model.trainingRun and model.volume are exclusive: set only one")
        return self


class RolloutStrategy(enum.StrEnum):
    AVAILABILITY = "Availability"
    RESOURCE_AWARE = "ResourceAware"
    HOT_SWAP = "HotSwap"


class Rollout(ApiModel):
    """How a new version replaces the serving one."""

    strategy: Annotated[RolloutStrategy, Strict(False)] = Field(
        default=RolloutStrategy.AVAILABILITY,
        description="Availability: new pods first, never fewer ready (maxUnavailable 0). ResourceAware: "
        "free the GPU first (maxSurge 0), for clusters without spare GPUs. HotSwap: running pods load the "
        "new version beside the old one and switch atomically.",
    )
    progress_deadline_seconds: Int = Field(
        default=600,
        alias="progressDeadlineSeconds",
        ge=30,
        le=86400,
        description="A rollout not finished after this long has failed.",
    )
    auto_rollback: Bool = Field(
        default=True,
        alias="autoRollback",
        description="Roll back to status.lastGoodVersion when a rollout fails.",
    )


class Voice(ApiModel):
    """A named reference voice, registered once at start-up (its latents are cached)."""

    name: Str = Field(
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$",
        description="Voice name, as requests pass it in `voice`.",
    )
    wav: RelativePath = Field(description="Reference clip, relative to the model version directory.")


class SecretKeyRef(ApiModel):
    """A key of a Secret in the same namespace."""

    name: Str = Field(max_length=253, pattern=DNS1123_SUBDOMAIN, description="Name of the Secret.")
    key: Str = Field(
        default="token", min_length=1, max_length=253, description="Key in the Secret holding the value."
    )


class Server(ApiModel):
    """The synthesis server in each pod."""

    port: Int = Field(default=8005, ge=1, le=65535, description="Port of the HTTP server and the Service.")
    max_concurrency: Int = Field(
        default=1, alias="maxConcurrency", ge=1, le=256, description="Syntheses run at the same time per pod."
    )
    max_queue: Int = Field(
        default=16,
        alias="maxQueue",
        ge=0,
        le=10000,
        description="Requests waiting per pod; beyond it the server answers 429 with Retry-After.",
    )
    max_text_length: Int = Field(
        default=4000, alias="maxTextLength", ge=1, le=100000, description="Longest accepted input text."
    )
    auth_secret_ref: SecretKeyRef | None = Field(
        default=None,
        alias="authSecretRef",
        description="Require this bearer token on requests. Unset: no authentication.",
    )


class VoiceModelSpec(ApiModel):
    """A model version served over HTTP."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                # with both sources set, the exclusive-source error is the one that helps
                "!has(self.model.volume) || has(self.model.trainingRun) || has(self.version)",
                "version is required when model.volume is set: it names the version directory to serve",
                field_path=".version",
                reason="FieldValueRequired",
            ),
            *_device_rules(".resources.gpus"),
        )
    )

    engine: EngineField = Field(description="Model family of the served model: xtts or vits.")
    model: ModelSource = Field(description="Where the model versions come from: exactly one source.")
    version: Str | None = Field(
        default=None,
        max_length=63,
        pattern=VERSION,
        description="The version to serve: the knob GitOps edits to promote. Unset with model.trainingRun: "
        "the run's exported version.",
    )
    replicas: Int = Field(default=1, ge=0, le=100, description="Serving pods.")
    resources: Resources = _defaulted(Resources, "GPUs, CPU and memory of each serving pod.")
    device_policy: DevicePolicyField = Field(
        default=DevicePolicy.REQUIRE_GPU,
        alias="devicePolicy",
        description="RequireGPU: a pod is not ready unless the GPU preflight passes. PreferGPU: fall back "
        "to the CPU. CPU: never use a GPU (resources.gpus must be 0).",
    )
    scheduling: Scheduling = _defaulted(Scheduling, "Priority and placement of the serving pods.")
    rollout: Rollout = _defaulted(Rollout, "How new versions roll out.")
    voices: list[Voice] = Field(
        default_factory=list,
        max_length=64,
        description="Reference voices registered at start-up. Names are unique.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    server: Server = _defaulted(Server, "HTTP server settings.")

    @model_validator(mode="after")
    def _cross_field(self) -> VoiceModelSpec:
        if self.model.volume is not None and self.model.training_run is None and self.version is None:
            raise ValueError("version is required when model.volume is set")
        _check_device(self.device_policy, self.resources)
        names = [v.name for v in self.voices]
        if len(names) != len(set(names)):
            raise ValueError(f"voices: duplicate names in {names}")
        return self


class VoiceModelPhase(enum.StrEnum):
    PENDING = "Pending"
    DEPLOYING = "Deploying"
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILED = "Failed"


class DeviceInfo(ApiModel):
    """What the serving pods run on, as their GPU preflight reported it."""

    gpu: Str | None = Field(
        default=None, max_length=256, description='GPU name ("NVIDIA H100 80GB HBM3"); unset on CPU.'
    )
    torch: Str | None = Field(default=None, max_length=64, description="torch version.")
    cuda: Str | None = Field(default=None, max_length=64, description="CUDA runtime version; unset on CPU.")
    preflight: Str | None = Field(
        default=None,
        max_length=1024,
        description="GPU preflight verdict (Passed, Failed: reason, or Skipped).",
    )


class VoiceModelStatus(ApiModel):
    """What is being served, derived from the Deployment and its pods."""

    phase: Annotated[VoiceModelPhase, Strict(False)] | None = Field(
        default=None, description="Pending, Deploying, Ready, Degraded or Failed."
    )
    observed_generation: Int | None = Field(
        default=None,
        alias="observedGeneration",
        ge=0,
        description="metadata.generation this status was computed from.",
    )
    conditions: list[Condition] = _conditions_field()
    desired_version: Str | None = Field(
        default=None,
        alias="desiredVersion",
        max_length=63,
        description="The version spec asks for (resolved).",
    )
    serving_version: Str | None = Field(
        default=None, alias="servingVersion", max_length=63, description="The version all ready pods serve."
    )
    last_good_version: Str | None = Field(
        default=None,
        alias="lastGoodVersion",
        max_length=63,
        description="The last version that rolled out completely: the rollback target.",
    )
    replicas: Int | None = Field(default=None, ge=0, description="Serving pods that exist.")
    ready_replicas: Int | None = Field(
        default=None, alias="readyReplicas", ge=0, description="Pods ready (model loaded, warm-up passed)."
    )
    updated_replicas: Int | None = Field(
        default=None, alias="updatedReplicas", ge=0, description="Pods on the desired version."
    )
    replicas_text: Str | None = Field(
        default=None,
        alias="replicasText",
        max_length=64,
        description='Ready pods of desired ones ("2/2"), shown by kubectl get.',
    )
    endpoint: Str | None = Field(
        default=None,
        max_length=1024,
        description="In-cluster URL, for example http://narrator.default.svc:8005.",
    )
    device: DeviceInfo | None = Field(default=None, description="The device the pods run on.")


# --- whole objects -------------------------------------------------------------------------------


class ObjectMeta(BaseModel):
    """The part of metadata the operator uses; everything else is kept as it came."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    name: str = ""
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = Field(default=None, alias="resourceVersion")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


def _check_name(name: str, kind: str, limit: int, dns1035: bool) -> None:
    if len(name) > limit:
        raise ValueError(f"metadata.name of a {kind} must be at most {limit} characters, got {len(name)}")
    if dns1035 and name and not re.match(DNS1035_LABEL, name):
        raise ValueError(f"metadata.name of a {kind} must be a DNS-1035 label")


TRAININGRUN_NAME_MESSAGE = (
    f"metadata.name must be at most {TRAININGRUN_NAME_MAX} characters: the operator names the training "
    f"Job <name> and the export Job <name>-export, and Job names must fit the "
    f"{DNS_LABEL_MAX}-character label batch.kubernetes.io/job-name"
)
VOICEMODEL_NAME_MESSAGE = (
    f"metadata.name must be at most {VOICEMODEL_NAME_MAX} characters: the Deployment's pods are named "
    f"<name>-<pod-template-hash>-<suffix>, and longer names get cut"
)
VOICEMODEL_DNS_MESSAGE = (
    "metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter): "
    "it names the model's Service"
)


class TrainingRun(BaseModel):
    """A training run: fine-tunes (xtts) or trains (vits) a voice and exports the best checkpoint.

    metadata.name is at most 52 characters (TRAININGRUN_NAME_MAX): the operator names the training
    Job ``<name>`` and the export Job ``<name>-export``, and a Job's name must fit the 63-character
    label ``batch.kubernetes.io/job-name`` on its pods; 11 characters stay free for such suffixes.
    """

    model_config = ConfigDict(
        populate_by_name=True,
        extra="ignore",
        json_schema_extra=rules(
            cel(
                f"size(self.metadata.name) <= {TRAININGRUN_NAME_MAX}",
                TRAININGRUN_NAME_MESSAGE,
                field_path=".metadata.name",
            )
        ),
    )

    api_version: Literal["tts-operator.dev/v1alpha1"] = Field(
        default="tts-operator.dev/v1alpha1", alias="apiVersion"
    )
    kind: Literal["TrainingRun"] = "TrainingRun"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: TrainingRunSpec
    status: TrainingRunStatus = Field(default_factory=TrainingRunStatus)

    @model_validator(mode="after")
    def _name_fits(self) -> TrainingRun:
        _check_name(self.metadata.name, "TrainingRun", TRAININGRUN_NAME_MAX, dns1035=False)
        return self


class VoiceModel(BaseModel):
    """A served voice model: a Deployment and Service running the synthesis server.

    metadata.name is at most 47 characters (VOICEMODEL_NAME_MAX) and a DNS-1035 label: it names the
    Service (DNS-1035), and the Deployment's pods are ``<name>-<pod-template-hash (<=10)>-<5>``;
    the API server keeps 58 characters of a generated name's prefix, so 47 + 11 keeps them whole.
    """

    model_config = ConfigDict(
        populate_by_name=True,
        extra="ignore",
        json_schema_extra=rules(
            cel(
                f"size(self.metadata.name) <= {VOICEMODEL_NAME_MAX}",
                VOICEMODEL_NAME_MESSAGE,
                field_path=".metadata.name",
            ),
            cel(
                f"self.metadata.name.matches('{DNS1035_LABEL}')",
                VOICEMODEL_DNS_MESSAGE,
                field_path=".metadata.name",
            ),
        ),
    )

    api_version: Literal["tts-operator.dev/v1alpha1"] = Field(
        default="tts-operator.dev/v1alpha1", alias="apiVersion"
    )
    kind: Literal["VoiceModel"] = "VoiceModel"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: VoiceModelSpec
    status: VoiceModelStatus = Field(default_factory=VoiceModelStatus)

    @model_validator(mode="after")
    def _name_fits(self) -> VoiceModel:
        _check_name(self.metadata.name, "VoiceModel", VOICEMODEL_NAME_MAX, dns1035=True)
        return self


# --- helpers for the operator --------------------------------------------------------------------


def progress_text(progress: Progress | None) -> str | None:
    """``status.progressText`` for the PROGRESS column: "epoch/epochs"."""
    if progress is None or progress.epochs <= 0:
        return None
    return f"{progress.epoch}/{progress.epochs}"


def replicas_text(ready: int | None, desired: int) -> str:
    """``status.replicasText`` for the REPLICAS column: "ready/desired"."""
    return f"{ready or 0}/{desired}"


@dataclass(frozen=True)
class Resource:
    """How a kind is addressed: what kopf handlers and API clients need."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    model: type[BaseModel]
    spec_model: type[BaseModel]
    status_model: type[BaseModel]
    name_max: int

    group: str = API_GROUP
    version: str = API_VERSION

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{self.group}"


TRAININGRUN = Resource(
    kind="TrainingRun",
    plural="trainingruns",
    singular="trainingrun",
    short_names=("trun",),
    model=TrainingRun,
    spec_model=TrainingRunSpec,
    status_model=TrainingRunStatus,
    name_max=TRAININGRUN_NAME_MAX,
)
VOICEMODEL = Resource(
    kind="VoiceModel",
    plural="voicemodels",
    singular="voicemodel",
    short_names=("vmodel",),
    model=VoiceModel,
    spec_model=VoiceModelSpec,
    status_model=VoiceModelStatus,
    name_max=VOICEMODEL_NAME_MAX,
)
RESOURCES: tuple[Resource, ...] = (TRAININGRUN, VOICEMODEL)
CATEGORY = "tts"
