"""The VoiceModel kind: its spec, phases and status, the whole object, and its Resource."""

from __future__ import annotations

import enum
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, Strict, model_validator

from tts_contract.contract import Defaults
from tts_operator.api.common import (
    DNS1123_SUBDOMAIN,
    TRAININGRUN_NAME_MAX,
    VERSION,
    VOICEMODEL_NAME_MAX,
    ApiModel,
    ArtifactUriField,
    Bool,
    Condition,
    CustomResource,
    DevicePolicyField,
    EngineField,
    Int,
    RelativePath,
    Resource,
    Resources,
    Scheduling,
    SecretRef,
    Str,
    VolumeRef,
    _check_device,
    _conditions_field,
    _defaulted,
    _device_rules,
    cel,
    rules,
)


class ModelSource(ApiModel):
    """Where the model comes from: exactly one of trainingRun, volume or uri."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "has(self.trainingRun) || has(self.volume) || has(self.uri)",
                "model needs a source: set model.trainingRun, model.volume or model.uri",
                reason="FieldValueRequired",
            ),
            cel(
                "[has(self.trainingRun), has(self.volume), has(self.uri)].filter(x, x).size() <= 1",
                "model.trainingRun, model.volume and model.uri are exclusive: set only one",
                reason="FieldValueForbidden",
            ),
            cel(
                "!has(self.uri) || self.uri.startsWith('s3://')",
                "model.uri: must start with s3:// (a prefix holding version directories)",
                field_path=".uri",
            ),
            cel(
                "!has(self.uri) || !self.uri.matches('(^|/)[.]{1,2}(/|$)')",
                "model.uri: '.' and '..' segments are not allowed (a key never leaves its prefix)",
                field_path=".uri",
            ),
            cel(
                "!has(self.secretRef) || has(self.uri)",
                "model.secretRef applies to model.uri only",
                field_path=".secretRef",
                reason="FieldValueForbidden",
            ),
        )
    )

    training_run: Str | None = Field(
        default=None,
        alias="trainingRun",
        max_length=TRAININGRUN_NAME_MAX,
        pattern=DNS1123_SUBDOMAIN,
        description="A TrainingRun in the same namespace: serve what it exported (its export volume or uri).",
    )
    volume: VolumeRef | None = Field(
        default=None,
        description="A volume holding version directories (<subPath>/<version>/manifest.json), as "
        "TrainingRun export writes them. Requires spec.version.",
    )
    uri: ArtifactUriField | None = Field(
        default=None,
        description="An s3://bucket/prefix holding version directories (<prefix>/<version>/manifest.json), "
        "as TrainingRun export uploads them; each pod fetches and verifies its version before it "
        "starts. Uploaded voices are kept under <prefix>/_voices/<namespace>/<name>/ and shared by "
        "the replicas. Requires spec.version.",
    )
    secret_ref: SecretRef | None = Field(
        default=None,
        alias="secretRef",
        description="Secret with the credentials for uri (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
        "AWS_ENDPOINT_URL, AWS_REGION, AWS_S3_ADDRESSING_STYLE), given to the serving pods as "
        "environment variables (they fetch versions and keep voices); the operator never reads it.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        given = [x for x in (self.training_run, self.volume, self.uri) if x is not None]
        if not given:
            raise ValueError("model needs a source: set model.trainingRun, model.volume or model.uri")
        if len(given) > 1:
            raise ValueError("model.trainingRun, model.volume and model.uri are exclusive: set only one")
        if self.uri is not None and not self.uri.startswith("s3://"):
            raise ValueError("model.uri: must start with s3:// (a prefix holding version directories)")
        if self.secret_ref is not None and self.uri is None:
            raise ValueError("model.secretRef applies to model.uri only")
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

    port: Int = Field(
        default=Defaults.PORT, ge=1, le=65535, description="Port of the HTTP server and the Service."
    )
    max_concurrency: Int = Field(
        default=Defaults.MAX_CONCURRENCY,
        alias="maxConcurrency",
        ge=1,
        le=256,
        description="Syntheses run at the same time per pod.",
    )
    max_queue: Int = Field(
        default=Defaults.MAX_QUEUE,
        alias="maxQueue",
        ge=0,
        le=10000,
        description="Requests waiting per pod; beyond it the server answers 429 with Retry-After.",
    )
    max_text_length: Int = Field(
        default=Defaults.MAX_TEXT_LENGTH,
        alias="maxTextLength",
        ge=1,
        le=100000,
        description="Longest accepted input text.",
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
                "!(has(self.model.volume) || has(self.model.uri)) || has(self.model.trainingRun)"
                " || has(self.version)",
                "version is required when model.volume or model.uri is set: it names the version "
                "directory to serve",
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
        default=Defaults.DEVICE_POLICY,
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
        if (self.model.volume or self.model.uri) and self.model.training_run is None and self.version is None:
            raise ValueError("version is required when model.volume or model.uri is set")
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


# --- the whole object ----------------------------------------------------------------------------

VOICEMODEL_NAME_MESSAGE = (
    f"metadata.name must be at most {VOICEMODEL_NAME_MAX} characters: the Deployment's pods are named "
    f"<name>-<pod-template-hash>-<suffix>, and longer names get cut"
)
VOICEMODEL_DNS_MESSAGE = (
    "metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter): "
    "it names the model's Service"
)


class VoiceModel(CustomResource[VoiceModelSpec, VoiceModelStatus]):
    """A served voice model: a Deployment and Service running the synthesis server.

    metadata.name is at most 47 characters (VOICEMODEL_NAME_MAX) and a DNS-1035 label: it names the
    Service (DNS-1035), and the Deployment's pods are ``<name>-<pod-template-hash (<=10)>-<5>``;
    the API server keeps 58 characters of a generated name's prefix, so 47 + 11 keeps them whole.
    """

    name_max = VOICEMODEL_NAME_MAX
    name_message = VOICEMODEL_NAME_MESSAGE
    dns1035_message = VOICEMODEL_DNS_MESSAGE

    kind: Literal["VoiceModel"] = "VoiceModel"


VOICEMODEL = Resource(model=VoiceModel, plural="voicemodels", singular="voicemodel", short_names=("vmodel",))


def replicas_text(ready: int | None, desired: int) -> str:
    """``status.replicasText`` for the REPLICAS column: "ready/desired"."""
    return f"{ready or 0}/{desired}"
