"""Server settings: what a serving pod is asked to do, plus the knobs the serve spec leaves out.

Built either from the operator's ``ServeSpec`` (the mounted JSON file) or directly from a model
directory for local use. Every limit has a default a user would expect, so ``Settings(models_root=...,
version=...)`` is enough to serve.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tts_contract.contract import Defaults, DevicePolicy, Engine, ServeSpec, VoiceSpec

#: a version or voice name: one path component, no dots at the start (no "..", no hidden files)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def is_safe_name(name: str) -> bool:
    """True when ``name`` can be used as a single file name inside a folder we own."""
    return bool(_NAME.fullmatch(name)) and ".." not in name


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: folder holding the version directories; a reload picks another directory in it
    models_root: Path
    version: str
    #: the engine the pod expects; None accepts what the manifest says
    engine: Engine | None = None
    device_policy: DevicePolicy = DevicePolicy.PREFER_GPU
    #: voices registered at start, reference clips relative to the version directory
    voices: list[VoiceSpec] = Field(default_factory=list)
    voices_dir: Path = Path("/tmp/voices")
    #: where versions live when the source is a URI (``s3://bucket/prefix``): a version that is not
    #: in models_root is fetched from ``<model_uri>/<version>/`` before it loads
    model_uri: str | None = None
    #: the shared voice store (``s3://bucket/prefix``): uploads go there and every replica picks
    #: them up; unset: voices live in voices_dir of this pod only
    voices_uri: str | None = None
    #: how often a pod lists the shared voice store for voices other replicas added or deleted
    voices_poll_seconds: float = Field(default=1.0, gt=0, le=60)

    # the serve spec's defaults (a local `tts-runtime serve --model-dir` has no spec)
    max_concurrency: int = Field(default=Defaults.MAX_CONCURRENCY, ge=1)
    max_queue: int = Field(default=Defaults.MAX_QUEUE, ge=0)
    max_text_length: int = Field(default=Defaults.MAX_TEXT_LENGTH, ge=1)
    #: the whole request: waiting in the queue plus generation
    request_timeout_seconds: float = Field(default=Defaults.REQUEST_TIMEOUT_SECONDS, gt=0)
    auth_token_file: Path | None = None

    #: a voice upload: all clips together
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    #: XTTS raises on reference audio shorter than this (PINS.md)
    min_voice_seconds: float = Field(default=0.33, gt=0)
    max_voice_seconds: float = Field(default=60.0, gt=0)
    max_voice_clips: int = Field(default=5, ge=1)

    #: the longest text piece generated at once. XTTS streaming re-decodes everything per chunk
    #: (quadratic, PINS.md), so streams are generated a sentence-sized piece at a time.
    stream_chunk_chars: int = Field(default=200, ge=20, le=1000)
    warmup_text: str = "Warming up."
    #: language used when a request names none (None: the model's first language)
    default_language: str | None = None

    @field_validator("model_uri", "voices_uri")
    @classmethod
    def _s3_location(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from tts_contract.uris import parse

        if parse(value).scheme != "s3":  # parse raises ValueError naming the problem
            raise ValueError(f"{value}: must be an s3:// location")
        return value

    def version_dir(self, version: str | None = None) -> Path:
        """The directory of ``version`` (default: the configured one); refuses names that escape."""
        version = self.version if version is None else version
        if not is_safe_name(version):
            raise ValueError(f"invalid version name {version!r}: use letters, digits, '.', '_', '-'")
        return self.models_root / version

    @classmethod
    def from_serve_spec(cls, spec: ServeSpec, **overrides: object) -> Settings:
        server = spec.server
        values: dict[str, object] = {
            "models_root": Path(spec.models_root),
            "version": spec.version,
            "engine": spec.engine,
            "device_policy": spec.device_policy,
            "voices": spec.voices,
            "voices_dir": Path(spec.voices_dir),
            "model_uri": spec.model_uri,
            "voices_uri": spec.voices_uri,
            "max_concurrency": server.max_concurrency,
            "max_queue": server.max_queue,
            "max_text_length": server.max_text_length,
            "request_timeout_seconds": server.request_timeout_seconds,
            "auth_token_file": Path(server.auth_token_file) if server.auth_token_file else None,
        }
        values.update(overrides)
        return cls.model_validate(values)

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, **overrides: object) -> Settings:
        """Serve the version directory ``model_dir`` (its parent becomes the models root)."""
        path = Path(model_dir).resolve()
        values: dict[str, object] = {"models_root": path.parent, "version": path.name}
        values.update(overrides)
        return cls.model_validate(values)
