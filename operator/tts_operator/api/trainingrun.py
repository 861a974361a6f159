"""The TrainingRun kind: its spec, phases and status, the whole object, and its Resource."""

from __future__ import annotations

import enum
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator

from tts_contract.contract import (
    MAX_STATUS_CHECKPOINTS,
    MAX_STATUS_SAMPLES,
    CheckpointRef,
    Defaults,
    Engine,
    Progress,
    SampleRef,
)
from tts_operator.api.common import (
    DNS1035_LABEL,
    DNS_LABEL_MAX,
    LABEL_VALUE,
    LANGUAGE,
    READ_SCHEMES,
    TRAININGRUN_NAME_MAX,
    VERSION,
    VOICEMODEL_NAME_MAX,
    WRITE_SCHEMES,
    ApiModel,
    ArtifactLocation,
    Bool,
    Condition,
    CustomResource,
    DevicePolicyField,
    EngineField,
    Float,
    Int,
    RelativePath,
    Resource,
    Resources,
    Scheduling,
    Str,
    _check_device,
    _conditions_field,
    _defaulted,
    _device_rules,
    cel,
    immutable,
    location_rules,
    rules,
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


class TrainingScheduling(Scheduling):
    """Where and with which priority the training pods are scheduled, and through which queue."""

    queue_name: Str | None = Field(
        default=None,
        alias="queueName",
        max_length=63,
        pattern=LABEL_VALUE,
        description="Kueue LocalQueue: sets the label kueue.x-k8s.io/queue-name so Kueue admits the Job.",
    )


class BaseModelSource(ArtifactLocation):
    """The pretrained model to fine-tune: a volume, or a URI fetched before training starts (for
    example hf://coqui/XTTS-v2@main). For xtts the folder holds model.pth, config.json, vocab.json,
    dvae.pth and mel_stats.pth."""

    what: ClassVar[str] = "baseModel"
    model_config = ConfigDict(json_schema_extra=rules(*location_rules("baseModel", READ_SCHEMES)))


#: a dataset is a folder (s3:// prefix) or an archive (https://); hub datasets are not models
DATASET_SCHEMES = ("s3", "https")


class DatasetFormat(enum.StrEnum):
    LJSPEECH = "ljspeech"


class Dataset(ArtifactLocation):
    """The training data: a volume (mounted read-only) or a URI (s3:// prefix or an https://
    archive) fetched before training starts."""

    what: ClassVar[str] = "dataset"
    schemes: ClassVar[tuple[str, ...]] = DATASET_SCHEMES
    model_config = ConfigDict(json_schema_extra=rules(*location_rules("dataset", DATASET_SCHEMES)))

    format: Annotated[DatasetFormat, Strict(False)] = Field(
        default=DatasetFormat(Defaults.DATASET_FORMAT),
        description="Layout of the dataset. ljspeech: metadata.csv (id|text|normalized text) "
        "and wavs/<id>.wav.",
    )
    language: Str = Field(
        default=Defaults.LANGUAGE,
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
        default=Defaults.EVAL_SPLIT,
        alias="evalSplit",
        gt=0,
        lt=1,
        description="Fraction of the clips held out for evaluation, strictly between 0 and 1.",
    )
    seed: Int = Field(
        default=Defaults.SEED, ge=0, description="Seed of the shuffle that picks samples and the split."
    )
    resample: Bool = Field(
        default=Defaults.RESAMPLE,
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
    batch_size: Int = Field(
        default=Defaults.BATCH_SIZE, alias="batchSize", ge=1, le=4096, description="Clips per batch."
    )
    grad_accum_steps: Int = Field(
        default=Defaults.GRAD_ACCUM_STEPS,
        alias="gradAccumSteps",
        ge=1,
        le=4096,
        description="Batches accumulated per optimizer step (effective batch = batchSize x gradAccumSteps).",
    )
    learning_rate: Float = Field(
        default=Defaults.LEARNING_RATE,
        alias="learningRate",
        gt=0,
        le=1,
        description="Optimizer learning rate.",
    )
    save_every_epochs: Int = Field(
        default=Defaults.SAVE_EVERY_EPOCHS,
        alias="saveEveryEpochs",
        ge=1,
        description="Save a checkpoint (and a sample) every this many epochs; at most epochs.",
    )
    keep_checkpoints: Int = Field(
        default=Defaults.KEEP_CHECKPOINTS,
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


class Checkpoints(ArtifactLocation):
    """Where checkpoints, samples, TensorBoard logs and progress go: a volume (mounted read-write;
    the run writes under ``<subPath>/<namespace>/<name>/``) or an s3:// prefix (the run's folder is
    mirrored to ``<prefix>/<namespace>/<name>/`` as each epoch ends, and a new pod on any node
    resumes from there). Nothing there is deleted with the run."""

    what: ClassVar[str] = "checkpoints"
    schemes: ClassVar[tuple[str, ...]] = WRITE_SCHEMES
    model_config = ConfigDict(json_schema_extra=rules(*location_rules("checkpoints", WRITE_SCHEMES)))


class Export(ArtifactLocation):
    """Where the best checkpoint is exported when the run succeeds: a volume, or an s3:// prefix
    (the version is uploaded as ``<prefix>/<version>/``, its manifest.json last)."""

    what: ClassVar[str] = "export"
    schemes: ClassVar[tuple[str, ...]] = WRITE_SCHEMES
    model_config = ConfigDict(json_schema_extra=rules(*location_rules("export", WRITE_SCHEMES)))

    version: Str | None = Field(
        default=None,
        max_length=63,
        pattern=VERSION,
        description="Name of the version directory created under the volume's subPath (or the uri's "
        "prefix). Unset: the run's name. An existing version is never overwritten.",
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

    enabled: Bool = Field(
        default=Defaults.TENSORBOARD, description="Write TensorBoard logs next to the checkpoints."
    )


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
        description="Volume or s3:// prefix for checkpoints, samples and logs. Immutable (a retry resumes "
        "from it).",
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
        default=Defaults.DEVICE_POLICY,
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
    resolved_base_model: Str | None = Field(
        default=None,
        alias="resolvedBaseModel",
        max_length=512,
        description="A hub base model (hf://org/repo@revision) as the training pod fetched it: its revision "
        "resolved to a commit. The export fetches that commit and records it as the version's lineage.",
    )
    output: ExportOutput | None = Field(default=None, description="The exported version, once exported.")
    promotion: Promotion | None = Field(default=None, description="The promotion of the exported version.")
    failure: Failure | None = Field(default=None, description="Why the run failed, when it failed.")


# --- the whole object ----------------------------------------------------------------------------

TRAININGRUN_NAME_MESSAGE = (
    f"metadata.name must be at most {TRAININGRUN_NAME_MAX} characters: the operator names the training "
    f"Job <name> and the export Job <name>-export, and Job names must fit the "
    f"{DNS_LABEL_MAX}-character label batch.kubernetes.io/job-name"
)


class TrainingRun(CustomResource[TrainingRunSpec, TrainingRunStatus]):
    """A training run: fine-tunes (xtts) or trains (vits) a voice and exports the best checkpoint.

    metadata.name is at most 52 characters (TRAININGRUN_NAME_MAX): the operator names the training
    Job ``<name>`` and the export Job ``<name>-export``, and a Job's name must fit the 63-character
    label ``batch.kubernetes.io/job-name`` on its pods; 11 characters stay free for such suffixes.
    """

    name_max = TRAININGRUN_NAME_MAX
    name_message = TRAININGRUN_NAME_MESSAGE

    kind: Literal["TrainingRun"] = "TrainingRun"


TRAININGRUN = Resource(
    model=TrainingRun, plural="trainingruns", singular="trainingrun", short_names=("trun",)
)


def progress_text(progress: Progress | None) -> str | None:
    """``status.progressText`` for the PROGRESS column: "epoch/epochs"."""
    if progress is None or progress.epochs <= 0:
        return None
    return f"{progress.epoch}/{progress.epochs}"
