"""What both kinds share: names and patterns, CEL helpers, common field types, conditions, the envelope."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Generic, Literal, Self, TypeVar, cast

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

from tts_contract import uris
from tts_contract.contract import API_GROUP, API_VERSION, Defaults, DevicePolicy, Engine

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


ContractT = TypeVar("ContractT", bound=BaseModel)


class ApiModel(BaseModel):
    """Base of the spec models: camelCase on the wire, unknown fields rejected (as kubectl does)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", use_enum_values=False)

    def wire(self) -> dict[str, Any]:
        """The JSON the API server stores (aliases, no unset optionals)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")

    def carry(self, target: type[ContractT], **set_by_operator: Any) -> ContractT:
        """``target`` (a contract model) from the fields it shares with this model, matched by wire name.

        Fields the API and the contract name alike are copied, not listed by hand. ``set_by_operator``
        gives, by Python name, the target's fields that have no counterpart here; naming one that has
        is an error (a value is never carried and then silently replaced).
        """
        wanted = {field.alias or name for name, field in target.model_fields.items()}
        values = {k: v for k, v in self.model_dump(by_alias=True, mode="json").items() if k in wanted}
        for name, value in set_by_operator.items():
            if name not in target.model_fields:
                raise TypeError(f"{target.__name__} has no field {name!r}")
            key = target.model_fields[name].alias or name
            if key in values:
                raise TypeError(f"{target.__name__}.{key} is carried from {type(self).__name__}, not set")
            values[key] = value
        return target.model_validate(values)


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


class SecretRef(ApiModel):
    """A Secret in the object's namespace."""

    name: Str = Field(
        min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN, description="Name of the Secret."
    )


#: the URI schemes a location accepts, by what it is used for
READ_SCHEMES = ("s3", "hf", "https")
WRITE_SCHEMES = ("s3",)


def _check_uri(value: str) -> str:
    uris.parse(value)  # ValueError naming what is wrong
    return value


ArtifactUriField = Annotated[Str, Field(max_length=2048, pattern=uris.ANY_URI), AfterValidator(_check_uri)]


def location_rules(what: str, schemes: tuple[str, ...]) -> list[dict[str, str]]:
    """CEL rules of a location: exactly one of volume or uri; the schemes it takes; sha256 with
    (and only with) https; secretRef only with a uri; no '.'/'..' segments or empty key segments."""
    allowed = " || ".join(f"self.uri.startsWith('{s}://')" for s in schemes)
    names = ", ".join(f"{s}://" for s in schemes)
    return [
        cel(
            "has(self.volume) != has(self.uri)",
            f"{what}: set exactly one of volume or uri",
            reason="FieldValueInvalid",
        ),
        cel(
            f"!has(self.uri) || {allowed}",
            f"{what}.uri: must start with {names}",
            field_path=".uri",
        ),
        cel(
            "!has(self.uri) || !self.uri.matches('(^|/)[.]{1,2}(/|$)')",
            f"{what}.uri: '.' and '..' segments are not allowed (a key never leaves its prefix)",
            field_path=".uri",
        ),
        cel(
            "!has(self.uri) || !self.uri.startsWith('https://') || has(self.sha256)",
            f"{what}.sha256 is required with an https:// uri: a download from the web is checked",
            field_path=".sha256",
            reason="FieldValueRequired",
        ),
        cel(
            "!has(self.sha256) || (has(self.uri) && self.uri.startsWith('https://'))",
            f"{what}.sha256 applies to https:// only (s3:// versions carry a manifest, hf:// a commit)",
            field_path=".sha256",
            reason="FieldValueForbidden",
        ),
        cel(
            "!has(self.secretRef) || has(self.uri)",
            f"{what}.secretRef applies to a uri only",
            field_path=".secretRef",
            reason="FieldValueForbidden",
        ),
    ]


class ArtifactLocation(ApiModel):
    """Where files live: exactly one of a volume or a URI (object storage, the hub, the web).

    Subclasses say what the location is for (``what``) and which schemes it takes; their
    ``model_config`` carries ``location_rules`` for the server, ``_one_location`` checks the same here.
    """

    what: ClassVar[str] = "location"
    schemes: ClassVar[tuple[str, ...]] = READ_SCHEMES

    volume: VolumeRef | None = Field(
        default=None, description="A PersistentVolumeClaim (and folder in it) holding the files."
    )
    uri: ArtifactUriField | None = Field(
        default=None,
        description="Instead of a volume: s3://bucket/prefix, hf://org/repo@revision (a branch or tag is "
        "resolved to its commit) or https://host/file (a file or .tar/.tar.gz/.zip archive, with sha256). "
        "Fetched into the pod before it starts; written locations take s3:// only.",
    )
    sha256: Str | None = Field(
        default=None,
        pattern=uris.SHA256,
        description="https:// only, required there: the file's sha256 (hex).",
    )
    secret_ref: SecretRef | None = Field(
        default=None,
        alias="secretRef",
        description="Secret with the credentials for the uri, as environment variables: AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION, AWS_S3_ADDRESSING_STYLE; HF_TOKEN, "
        "HF_ENDPOINT. Given only to the containers that fetch or upload; the operator never reads it.",
    )

    @model_validator(mode="after")
    def _one_location(self) -> Self:
        what = self.what
        if (self.volume is None) == (self.uri is None):
            raise ValueError(f"{what}: set exactly one of volume or uri")
        if self.uri is not None:
            scheme = self.uri.split("://", 1)[0]
            if scheme not in self.schemes:
                raise ValueError(f"{what}.uri: must start with {', '.join(s + '://' for s in self.schemes)}")
            if scheme == "https" and self.sha256 is None:
                raise ValueError(f"{what}.sha256 is required with an https:// uri")
        if self.sha256 is not None and not (self.uri or "").startswith("https://"):
            raise ValueError(f"{what}.sha256 applies to https:// only")
        if self.secret_ref is not None and self.uri is None:
            raise ValueError(f"{what}.secretRef applies to a uri only")
        return self

    def lineage(self, resolved: str | None = None) -> str:
        """Where the files came from, as the exported manifest records it: the uri (``resolved``
        instead when given: a hub branch pinned to its commit), else ``pvc://claim[/subPath]``."""
        if self.uri is not None:
            return resolved or self.uri
        assert self.volume is not None
        tail = f"/{self.volume.sub_path}" if self.volume.sub_path else ""
        return f"pvc://{self.volume.claim_name}{tail}"


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


class Resources(ApiModel):
    """Compute resources of each pod."""

    gpus: Int = Field(
        default=Defaults.GPUS,
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


SpecT = TypeVar("SpecT", bound=ApiModel)
StatusT = TypeVar("StatusT", bound=ApiModel)


def _name_rules_schema(schema: dict[str, Any], cls: type[Any]) -> None:
    if hasattr(cls, "name_max"):  # a kind, not the generic base
        schema.update(rules(*cls.name_rules()))


class CustomResource(BaseModel, Generic[SpecT, StatusT]):
    """A whole object of one of the kinds, as the API server returns it: metadata, spec and status.

    A kind is ``class Kind(CustomResource[KindSpec, KindStatus])`` that pins ``kind`` and sets its
    metadata.name limits as class variables; they are checked here and, as the CEL rules
    ``name_rules()`` makes of them, by the API server (crdgen puts those on the CRD's root).
    """

    model_config = ConfigDict(populate_by_name=True, extra="ignore", json_schema_extra=_name_rules_schema)

    #: longest metadata.name of the kind
    name_max: ClassVar[int]
    #: the server's message when metadata.name is longer than name_max
    name_message: ClassVar[str]
    #: the server's message when metadata.name is not a DNS-1035 label; None: no such rule
    dns1035_message: ClassVar[str | None] = None

    api_version: Literal["tts-operator.dev/v1alpha1"] = Field(
        default="tts-operator.dev/v1alpha1", alias="apiVersion"
    )
    kind: str
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: SpecT
    #: no status yet parses as ``{}``: the kind's status model with its defaults
    status: StatusT = Field(default_factory=dict, validate_default=True)

    @classmethod
    def name_rules(cls) -> list[dict[str, str]]:
        """The CEL rules on metadata.name (the CRD's root validations)."""
        entries = [
            cel(f"size(self.metadata.name) <= {cls.name_max}", cls.name_message, field_path=".metadata.name")
        ]
        if cls.dns1035_message is not None:
            entries.append(
                cel(
                    f"self.metadata.name.matches('{DNS1035_LABEL}')",
                    cls.dns1035_message,
                    field_path=".metadata.name",
                )
            )
        return entries

    @model_validator(mode="after")
    def _name_fits(self) -> Self:
        _check_name(self.metadata.name, self.kind, self.name_max, dns1035=self.dns1035_message is not None)
        return self


@dataclass(frozen=True)
class Resource:
    """How a kind is addressed: what kopf handlers and API clients need."""

    model: type[CustomResource[Any, Any]]
    plural: str
    singular: str
    short_names: tuple[str, ...]

    group: str = API_GROUP
    version: str = API_VERSION

    @property
    def kind(self) -> str:
        return cast(str, self.model.model_fields["kind"].default)

    @property
    def spec_model(self) -> type[ApiModel]:
        return cast(type[ApiModel], self.model.model_fields["spec"].annotation)

    @property
    def status_model(self) -> type[ApiModel]:
        return cast(type[ApiModel], self.model.model_fields["status"].annotation)

    @property
    def name_max(self) -> int:
        return self.model.name_max

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{self.group}"


CATEGORY = "tts"
