"""The operator <-> runtime contract.

Everything the operator (kopf, no torch) and the runtime (torch, no kopf) must agree on lives here
and only here: the paths inside a pod, the run and serve specs the operator hands to the pod, the
exit codes, the progress report, and the manifest of an exported model version. This module imports
nothing heavier than pydantic so that both images can use it; tests pin its shape.
"""

from __future__ import annotations

import enum
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

API_GROUP = "tts-operator.dev"
API_VERSION = "v1alpha1"
CONTRACT_VERSION = 1


class ExitCode(enum.IntEnum):
    """How a runtime process ends. The operator maps these onto Job retry decisions."""

    SUCCESS = 0
    #: an unexpected error: retried up to the run's backoffLimit
    FAILURE = 1
    #: bad input (dataset, spec, model directory): retrying cannot help, the Job fails at once
    BAD_INPUT = 65  # sysexits EX_DATAERR
    #: the GPU preflight failed under devicePolicy RequireGPU: retrying on the same node cannot help
    PREFLIGHT_FAILED = 69  # sysexits EX_UNAVAILABLE
    #: stopped by SIGTERM after writing a checkpoint: the retry resumes from it
    INTERRUPTED = 75  # sysexits EX_TEMPFAIL
    #: an artifact (object, prefix, hub repo or revision, file) does not exist
    ARTIFACT_NOT_FOUND = 66  # sysexits EX_NOINPUT
    #: the storage endpoint could not be reached, after retries with back-off: a later try may work
    STORAGE_UNREACHABLE = 68  # sysexits EX_NOHOST
    #: publishing refused: the version already exists there (published versions are immutable)
    VERSION_EXISTS = 73  # sysexits EX_CANTCREAT
    #: a fetched file's sha256 differs from the manifest's (or from the location's sha256)
    CHECKSUM_MISMATCH = 74  # sysexits EX_IOERR
    #: the storage refused the credentials (403, invalid keys, a hub token without access)
    ACCESS_DENIED = 77  # sysexits EX_NOPERM


#: exit codes after which the operator must not retry
PERMANENT_EXIT_CODES = frozenset(
    {
        ExitCode.BAD_INPUT,
        ExitCode.PREFLIGHT_FAILED,
        ExitCode.ARTIFACT_NOT_FOUND,
        ExitCode.VERSION_EXISTS,
        ExitCode.CHECKSUM_MISMATCH,
        ExitCode.ACCESS_DENIED,
    }
)

#: the status reason each artifact exit code is reported as (TrainingRun and VoiceModel alike)
ARTIFACT_REASONS: dict[int, str] = {
    ExitCode.ARTIFACT_NOT_FOUND: "ArtifactNotFound",
    ExitCode.STORAGE_UNREACHABLE: "StorageUnreachable",
    ExitCode.VERSION_EXISTS: "VersionExists",
    ExitCode.CHECKSUM_MISMATCH: "ChecksumMismatch",
    ExitCode.ACCESS_DENIED: "AccessDenied",
}


class DevicePolicy(enum.StrEnum):
    REQUIRE_GPU = "RequireGPU"
    PREFER_GPU = "PreferGPU"
    CPU = "CPU"


class Engine(enum.StrEnum):
    XTTS = "xtts"
    VITS = "vits"


class Defaults:
    """Defaults the operator's API (``tts_operator.api``), the specs below and the runtime share.

    Set here only: a TrainingRun or VoiceModel field that the operator copies into a RunSpec or
    ServeSpec takes its default from here, so an unset field means the same on both sides
    (tests/unit/test_contract_mapping.py pins the mapping and that the defaults agree).
    """

    # RunSpec.dataset <- TrainingRun spec.dataset
    DATASET_FORMAT: Final = "ljspeech"
    LANGUAGE: Final = "en"
    EVAL_SPLIT: Final = 0.05
    SEED: Final = 1234
    RESAMPLE: Final = True
    # RunSpec.training <- TrainingRun spec.training
    BATCH_SIZE: Final = 2
    GRAD_ACCUM_STEPS: Final = 1
    LEARNING_RATE: Final = 5e-6
    SAVE_EVERY_EPOCHS: Final = 1
    KEEP_CHECKPOINTS: Final = 3
    # RunSpec / ServeSpec <- spec.devicePolicy, spec.resources.gpus, spec.tensorboard.enabled
    DEVICE_POLICY: Final = DevicePolicy.REQUIRE_GPU
    GPUS: Final = 1
    TENSORBOARD: Final = True
    # ServeSpec.server <- VoiceModel spec.server
    PORT: Final = 8005
    MAX_CONCURRENCY: Final = 1
    MAX_QUEUE: Final = 16
    MAX_TEXT_LENGTH: Final = 4000
    #: not in the VoiceModel API: the operator leaves it at this default
    REQUEST_TIMEOUT_SECONDS: Final = 120.0


class Paths:
    """Mount points inside the pods the operator creates."""

    SPEC_DIR = "/etc/tts-operator"
    RUN_SPEC = "/etc/tts-operator/run.json"
    SERVE_SPEC = "/etc/tts-operator/serve.json"
    #: not under SPEC_DIR: a volume mounted inside another, read-only one cannot get its mount point
    #: (the runtime cannot create the directory in a read-only volume), and the pod never starts
    AUTH_TOKEN_DIR = "/etc/tts-auth"
    DATASET = "/data/dataset"
    BASE_MODEL = "/data/base"
    CHECKPOINTS = "/data/checkpoints"
    EXPORT = "/models/export"
    MODEL = "/models/serving"
    SCRATCH = "/tmp"

    #: environment variable that points a runtime command at its spec file (tests override paths)
    RUN_SPEC_ENV = "TTS_RUN_SPEC"
    SERVE_SPEC_ENV = "TTS_SERVE_SPEC"


class StorageEnv:
    """Environment variables that configure access to a URI location. A location's ``secretRef``
    names a Secret whose keys are these names; the operator passes the Secret as ``envFrom`` to the
    containers that fetch or upload, and never reads it."""

    ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
    SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"
    SESSION_TOKEN = "AWS_SESSION_TOKEN"
    #: an S3-compatible endpoint (SeaweedFS, MinIO, Ceph RGW, GCS interop); unset: AWS
    ENDPOINT_URL = "AWS_ENDPOINT_URL"
    REGION = "AWS_REGION"
    #: "path" or "virtual"; unset: path-style when ENDPOINT_URL is set, else virtual-hosted
    ADDRESSING_STYLE = "AWS_S3_ADDRESSING_STYLE"
    HF_TOKEN = "HF_TOKEN"
    #: a hub-compatible server instead of huggingface.co (a mirror)
    HF_ENDPOINT = "HF_ENDPOINT"


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")


class RunRef(_Model):
    """The TrainingRun a pod works for (so the trainer can report progress on it)."""

    namespace: str
    name: str
    uid: str = ""


class DatasetSpec(_Model):
    path: str = Paths.DATASET
    format: Literal["ljspeech"] = Defaults.DATASET_FORMAT
    language: str = Defaults.LANGUAGE
    max_samples: int | None = Field(default=None, alias="maxSamples", ge=1)
    eval_split: float = Field(default=Defaults.EVAL_SPLIT, alias="evalSplit", gt=0, lt=1)
    seed: int = Defaults.SEED
    #: resample clips whose rate differs from the engine's, instead of rejecting them
    resample: bool = Defaults.RESAMPLE


class TrainingSpec(_Model):
    epochs: int = Field(ge=1)
    batch_size: int = Field(default=Defaults.BATCH_SIZE, alias="batchSize", ge=1)
    grad_accum_steps: int = Field(default=Defaults.GRAD_ACCUM_STEPS, alias="gradAccumSteps", ge=1)
    learning_rate: float = Field(default=Defaults.LEARNING_RATE, alias="learningRate", gt=0)
    save_every_epochs: int = Field(default=Defaults.SAVE_EVERY_EPOCHS, alias="saveEveryEpochs", ge=1)
    keep_checkpoints: int = Field(default=Defaults.KEEP_CHECKPOINTS, alias="keepCheckpoints", ge=1)


class SampleSpec(_Model):
    text: str
    #: speaker reference relative to the dataset root (XTTS only)
    speaker_wav: str | None = Field(default=None, alias="speakerWav")


class RunSpec(_Model):
    """What a training pod is asked to do. The operator writes it as JSON to ``Paths.RUN_SPEC``."""

    contract_version: int = Field(default=CONTRACT_VERSION, alias="contractVersion")
    run: RunRef
    engine: Engine
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    training: TrainingSpec
    samples: SampleSpec | None = None
    base_model_path: str | None = Field(default=None, alias="baseModelPath")
    #: the run's own folder: checkpoints, samples, TensorBoard logs, progress.json
    output_path: str = Field(alias="outputPath")
    #: where the run's folder is mirrored when the checkpoints live in object storage
    #: (``s3://bucket/prefix/<namespace>/<name>``): restored from there at start (a pod on another
    #: node resumes from the newest complete checkpoint), uploaded as each epoch ends
    checkpoints_uri: str | None = Field(default=None, alias="checkpointsUri")
    device_policy: DevicePolicy = Field(default=Defaults.DEVICE_POLICY, alias="devicePolicy")
    gpus: int = Field(default=Defaults.GPUS, ge=0)
    tensorboard: bool = Defaults.TENSORBOARD
    #: patch progress into TrainingRun.status through the pod's ServiceAccount
    report_status: bool = Field(default=True, alias="reportStatus")


class VoiceSpec(_Model):
    name: str
    #: reference clip, relative to the model directory
    wav: str


class ServerSettings(_Model):
    port: int = Field(default=Defaults.PORT, ge=1, le=65535)
    max_concurrency: int = Field(default=Defaults.MAX_CONCURRENCY, alias="maxConcurrency", ge=1)
    max_queue: int = Field(default=Defaults.MAX_QUEUE, alias="maxQueue", ge=0)
    max_text_length: int = Field(default=Defaults.MAX_TEXT_LENGTH, alias="maxTextLength", ge=1)
    request_timeout_seconds: float = Field(
        default=Defaults.REQUEST_TIMEOUT_SECONDS, alias="requestTimeoutSeconds", gt=0
    )
    auth_token_file: str | None = Field(default=None, alias="authTokenFile")


class ServeSpec(_Model):
    """What a serving pod is asked to do. The operator writes it as JSON to ``Paths.SERVE_SPEC``."""

    contract_version: int = Field(default=CONTRACT_VERSION, alias="contractVersion")
    engine: Engine
    #: folder holding one or more version directories
    models_root: str = Field(default=Paths.MODEL, alias="modelsRoot")
    version: str
    device_policy: DevicePolicy = Field(default=Defaults.DEVICE_POLICY, alias="devicePolicy")
    voices: list[VoiceSpec] = Field(default_factory=list)
    voices_dir: str = Field(default="/tmp/voices", alias="voicesDir")
    #: where the versions live when the source is a URI (``s3://bucket/prefix``): a pod asked to
    #: load a version it has not got (a hot swap) fetches ``<modelUri>/<version>/`` into modelsRoot
    model_uri: str | None = Field(default=None, alias="modelUri")
    #: the shared voice store (``s3://bucket/prefix``): uploaded voices are written there and every
    #: replica picks them up; unset: voices live in voicesDir of one pod only
    voices_uri: str | None = Field(default=None, alias="voicesUri")
    server: ServerSettings = Field(default_factory=ServerSettings)


# --- progress: trainer -> TrainingRun.status ----------------------------------------------------


class CheckpointRef(_Model):
    epoch: int
    step: int
    path: str
    eval_loss: float | None = Field(default=None, alias="evalLoss")


class SampleRef(_Model):
    epoch: int
    path: str


class Progress(_Model):
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    loss: float | None = None
    eval_loss: float | None = Field(default=None, alias="evalLoss")
    eta: str | None = None
    attempt: int | None = None
    resumed_from_epoch: int | None = Field(default=None, alias="resumedFromEpoch")
    updated_at: str | None = Field(default=None, alias="updatedAt")


class ProgressReport(_Model):
    """The part of TrainingRun.status the trainer owns (a merge patch on the status subresource)."""

    progress: Progress
    checkpoints: list[CheckpointRef] = Field(default_factory=list)
    best: CheckpointRef | None = None
    samples: list[SampleRef] = Field(default_factory=list)

    def status_patch(self) -> dict:
        """The merge patch; losses with ``LOSS_DIGITS`` significant digits (what `kubectl get`
        shows; TensorBoard keeps every digit)."""
        return {"status": _round_losses(self.model_dump(by_alias=True, exclude_none=True, mode="json"))}


#: significant digits of a loss in TrainingRun.status
LOSS_DIGITS = 4


def _round_losses(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: float(f"{v:.{LOSS_DIGITS}g}")
            if k in ("loss", "evalLoss") and isinstance(v, float)
            else _round_losses(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_round_losses(v) for v in value]
    return value


#: bounded lists in status (etcd objects must stay small)
MAX_STATUS_CHECKPOINTS = 10
MAX_STATUS_SAMPLES = 20


# --- the exported model version -----------------------------------------------------------------

MANIFEST_NAME = "manifest.json"


class ManifestFile(_Model):
    path: str
    sha256: str
    size: int


class ManifestSource(_Model):
    namespace: str | None = None
    training_run: str | None = Field(default=None, alias="trainingRun")
    uid: str | None = None
    checkpoint: str | None = None
    #: lineage: where the base model and the dataset came from, a hub revision resolved to its
    #: commit (``hf://org/repo@<sha>``), a volume as ``pvc://claim/subPath``
    base_model: str | None = Field(default=None, alias="baseModel")
    dataset: str | None = None


class ManifestVoice(_Model):
    """A reference voice shipped inside the version: serving pods register it at start."""

    name: str
    #: the clip, relative to the version directory (listed in ``files`` too)
    wav: str


class ModelManifest(_Model):
    format_version: int = Field(default=1, alias="formatVersion")
    version: str
    engine: Engine
    files: list[ManifestFile]
    metrics: dict[str, float] = Field(default_factory=dict)
    source: ManifestSource = Field(default_factory=ManifestSource)
    dataset_fingerprint: str | None = Field(default=None, alias="datasetFingerprint")
    voices: list[ManifestVoice] = Field(default_factory=list)
    #: the voice a request without ``voice`` (or with ``default``) speaks in; one of ``voices``
    default_voice: str | None = Field(default=None, alias="defaultVoice")
    created_at: str = Field(default_factory=lambda: now_rfc3339(), alias="createdAt")
    runtime: dict[str, str] = Field(default_factory=dict)

    @property
    def digest(self) -> str:
        """sha256 over the sorted (path, sha256) pairs: one id for the whole version."""
        h = hashlib.sha256()
        for f in sorted(self.files, key=lambda f: f.path):
            h.update(f"{f.path}\0{f.sha256}\n".encode())
        return h.hexdigest()

    def dumps(self) -> str:
        return json.dumps(self.model_dump(by_alias=True, mode="json"), indent=2, sort_keys=True) + "\n"

    @classmethod
    def load(cls, version_dir: str | Path) -> ModelManifest:
        return cls.model_validate_json(Path(version_dir, MANIFEST_NAME).read_text())


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_manifest(version_dir: str | Path) -> list[str]:
    """Problems found in a version directory (empty when every file matches its checksum)."""
    version_dir = Path(version_dir)
    try:
        manifest = ModelManifest.load(version_dir)
    except FileNotFoundError:
        return [f"{version_dir}: no {MANIFEST_NAME}"]
    except ValueError as e:
        return [f"{version_dir}/{MANIFEST_NAME}: invalid: {e}"]
    problems = []
    for f in manifest.files:
        p = version_dir / f.path
        if not p.resolve().is_relative_to(version_dir.resolve()):
            problems.append(f"{f.path}: escapes the version directory")
        elif not p.is_file():
            problems.append(f"{f.path}: missing")
        elif p.stat().st_size != f.size:
            problems.append(f"{f.path}: size {p.stat().st_size} != {f.size}")
        elif sha256_file(p) != f.sha256:
            problems.append(f"{f.path}: sha256 mismatch")
    return problems


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
