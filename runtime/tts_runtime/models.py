"""Load a model version directory and synthesise: one loader for XTTS and VITS, used by every command.

A version directory holds ``config.json`` and ``model.pth`` (plus ``vocab.json`` for XTTS) and, when
it was exported or made by ``demo-model``, a ``manifest.json`` with the sha256 of every file.
``load_model`` returns a ``LoadedModel`` with one interface for both engines:

    model = load_model(version_dir, "cuda")
    voice = model.conditioning_latents([Path("ref.wav")])      # XTTS only: compute once, reuse
    audio, rate = model.synthesize("Hello.", voice=voice, language="en", speed=1.0)

Checkpoints are read with ``weights_only=True`` (no code runs from a model file) and never written
back: model volumes are mounted read-only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tts_contract.contract import MANIFEST_NAME, Engine, ModelManifest, verify_manifest

from .errors import BadInputError

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
MODEL_NAME = "model.pth"
VOCAB_NAME = "vocab.json"


def read_engine(config_path: Path) -> Engine:
    """The engine a coqui ``config.json`` describes (its ``model`` field)."""
    try:
        model = json.loads(config_path.read_text()).get("model")
    except (OSError, ValueError) as e:
        raise BadInputError(f"{config_path}: cannot read a coqui config: {e}") from e
    try:
        return Engine(model)
    except ValueError:
        engines = ", ".join(e.value for e in Engine)
        raise BadInputError(
            f"{config_path}: model {model!r} is not supported (supported: {engines})"
        ) from None


@contextlib.contextmanager
def _legacy_xtts_globals() -> Iterator[None]:
    """Let ``weights_only`` unpickling accept the config objects that original XTTS releases pickled.

    coqui-tts has the same idea (``_legacy_safe_globals``) but uses ``torch.serialization.safe_globals``,
    which torch 2.4 lacks, and then rewrites the checkpoint in place. This version uses the
    ``add_safe_globals`` that 2.4 has, restores the allow-list afterwards, and writes nothing.
    """
    from TTS.config.shared_configs import BaseDatasetConfig
    from TTS.tts.configs.xtts_config import XttsArgs, XttsAudioConfig, XttsConfig

    # the original releases pickled XttsArgs/XttsAudioConfig under the module they lived in then
    moved = (XttsArgs, XttsAudioConfig)
    homes = [cls.__module__ for cls in moved]
    before = torch.serialization.get_safe_globals()
    try:
        for cls in moved:
            cls.__module__ = "TTS.tts.models.xtts"
        torch.serialization.add_safe_globals([*moved, XttsConfig, BaseDatasetConfig])
        yield
    finally:
        for cls, home in zip(moved, homes, strict=True):
            cls.__module__ = home
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A coqui checkpoint as a dict, with a legacy pickled XTTS config turned into a plain dict."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        with _legacy_xtts_globals():
            try:
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as e:
                raise BadInputError(f"{path}: not a checkpoint this runtime can read safely: {e}") from e
        log.info("%s: legacy XTTS checkpoint (pickled config); converting in memory", path)
    except (OSError, RuntimeError) as e:
        raise BadInputError(f"{path}: cannot read checkpoint: {e}") from e
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise BadInputError(f"{path}: not a coqui checkpoint (no 'model' state dict)")
    config = checkpoint.get("config")
    if config is not None and not isinstance(config, dict):
        checkpoint["config"] = config.to_dict()
    return checkpoint


@dataclass(frozen=True)
class VoiceLatents:
    """What XTTS needs to speak in a voice: compute once per reference clip, then reuse."""

    gpt_cond_latent: torch.Tensor
    speaker_embedding: torch.Tensor


class LoadedModel(ABC):
    engine: Engine
    #: whether ``conditioning_latents`` works (XTTS clones voices; VITS has its own single voice)
    clones_voices: bool
    #: the coqui model itself (``Xtts`` or ``Vits``), for what this interface does not cover (streaming)
    model: Any

    def __init__(self, version_dir: Path, device: torch.device, manifest: ModelManifest | None) -> None:
        self.version_dir = version_dir
        self.device = device
        self.manifest = manifest
        self.version = manifest.version if manifest else version_dir.name

    @property
    @abstractmethod
    def sample_rate(self) -> int: ...

    @property
    @abstractmethod
    def languages(self) -> list[str]: ...

    @abstractmethod
    def synthesize(
        self, text: str, voice: VoiceLatents | None = None, language: str | None = None, speed: float = 1.0
    ) -> tuple[np.ndarray, int]:
        """Speak ``text``: mono float32 samples in [-1, 1] and their sample rate."""

    def conditioning_latents(self, wav_paths: Sequence[Path]) -> VoiceLatents:
        raise BadInputError(f"{self.engine.value} models do not clone voices from reference clips")

    def _check_text(self, text: str, speed: float) -> str:
        text = text.strip()
        if not text:
            raise BadInputError("nothing to say: the text is empty")
        if not 0.25 <= speed <= 4.0:
            raise BadInputError(f"speed {speed} is out of range (0.25 to 4.0)")
        return text


class XttsModel(LoadedModel):
    engine = Engine.XTTS
    clones_voices = True

    def __init__(self, version_dir: Path, device: torch.device, manifest: ModelManifest | None) -> None:
        super().__init__(version_dir, device, manifest)
        from TTS.tts.configs.xtts_config import XttsConfig
        from TTS.tts.models.xtts import Xtts

        if not (version_dir / VOCAB_NAME).is_file():
            raise BadInputError(f"{version_dir}: no {VOCAB_NAME} (XTTS needs its tokenizer beside the model)")
        config = XttsConfig()
        config.load_json(str(version_dir / CONFIG_NAME))
        model = Xtts(config)
        checkpoint = read_checkpoint(version_dir / MODEL_NAME)
        # Xtts.load_checkpoint reads model.pth itself, falling back to an API torch 2.4 lacks and
        # rewriting the file for legacy checkpoints; hand it the state dict we read safely instead
        model._load_checkpoint = lambda _path: checkpoint["model"]
        model.load_checkpoint(config, checkpoint_dir=str(version_dir), eval=True)
        self.model = model.to(device)
        self.config = config

    @property
    def sample_rate(self) -> int:
        return int(self.config.model_args.output_sample_rate)

    @property
    def languages(self) -> list[str]:
        return list(self.config.languages)

    def conditioning_latents(self, wav_paths: Sequence[Path]) -> VoiceLatents:
        if not wav_paths:
            raise BadInputError("XTTS needs at least one reference clip")
        for path in wav_paths:
            if not Path(path).is_file():
                raise BadInputError(f"reference clip {path} does not exist")
        try:
            gpt, speaker = self.model.get_conditioning_latents(
                audio_path=[str(p) for p in wav_paths],
                gpt_cond_len=self.config.gpt_cond_len,
                gpt_cond_chunk_len=self.config.gpt_cond_chunk_len,
                max_ref_length=self.config.max_ref_len,
                sound_norm_refs=self.config.sound_norm_refs,
            )
        except RuntimeError as e:
            if "too short" in str(e):  # XTTS needs at least 0.33 s of reference audio
                raise BadInputError(f"reference audio too short: {e}") from e
            raise
        return VoiceLatents(gpt_cond_latent=gpt, speaker_embedding=speaker)

    def synthesize(
        self, text: str, voice: VoiceLatents | None = None, language: str | None = None, speed: float = 1.0
    ) -> tuple[np.ndarray, int]:
        text = self._check_text(text, speed)
        if voice is None:
            raise BadInputError("XTTS needs a voice: compute one with conditioning_latents(reference clips)")
        language = language or self.languages[0]
        if language.split("-")[0] not in {lang.split("-")[0] for lang in self.languages}:
            raise BadInputError(f"language {language!r} is not supported (supported: {self.languages})")
        cfg = self.config
        out = self.model.inference(
            text,
            language,
            voice.gpt_cond_latent,
            voice.speaker_embedding,
            temperature=cfg.temperature,
            length_penalty=cfg.length_penalty,
            repetition_penalty=cfg.repetition_penalty,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            speed=speed,
        )
        return np.asarray(out["wav"], dtype=np.float32), self.sample_rate


#: the length scale of the VITS synthesis running in this thread (None: the model's own)
_LENGTH_SCALE: ContextVar[float | None] = ContextVar("vits_length_scale", default=None)


def _per_call_length_scale(model: Any) -> Any:
    """Make ``model.length_scale`` (read by coqui's ``Vits.inference``) answer per call.

    Setting the attribute for one request and restoring it afterwards races when two worker
    threads synthesize at once at different speeds: one request speaks at the other's speed. The
    model's class becomes a subclass whose ``length_scale`` is the calling context's value, else the
    model's configured one (``base_length_scale``)."""
    base_cls = type(model)

    class PerCallLengthScale(base_cls):  # type: ignore[misc, valid-type]
        @property
        def length_scale(self) -> float:
            value = _LENGTH_SCALE.get()
            return self.base_length_scale if value is None else value

        @length_scale.setter
        def length_scale(self, value: float) -> None:
            self.base_length_scale = float(value)

    base = float(model.__dict__.pop("length_scale"))
    model.__class__ = PerCallLengthScale
    model.base_length_scale = base
    return model


class VitsModel(LoadedModel):
    engine = Engine.VITS
    clones_voices = False

    def __init__(self, version_dir: Path, device: torch.device, manifest: ModelManifest | None) -> None:
        super().__init__(version_dir, device, manifest)
        from TTS.tts.configs.vits_config import VitsConfig
        from TTS.tts.models.vits import Vits

        config = VitsConfig()
        config.load_json(str(version_dir / CONFIG_NAME))
        model = Vits(config)
        checkpoint = read_checkpoint(version_dir / MODEL_NAME)
        # the discriminator only matters for training; strict loading still expects its weights
        model.load_state_dict(checkpoint["model"], strict=True)
        model.eval()
        self.model = _per_call_length_scale(model.to(device))
        self.config = config

    @property
    def sample_rate(self) -> int:
        return int(self.config.audio.sample_rate)

    @property
    def languages(self) -> list[str]:
        return list(self.model.language_manager.language_names) if self.model.language_manager else []

    def synthesize(
        self, text: str, voice: VoiceLatents | None = None, language: str | None = None, speed: float = 1.0
    ) -> tuple[np.ndarray, int]:
        text = self._check_text(text, speed)
        if voice is not None:
            raise BadInputError("this VITS model has a single voice and does not clone reference clips")
        # VITS scales its predicted durations by length_scale; the model is shared by the server's
        # worker threads, so the speed is this call's own (a context variable), never the model's
        token = _LENGTH_SCALE.set(self.model.base_length_scale / speed)
        try:
            with torch.inference_mode():
                out = self.model.synthesize(text, language=language)
        finally:
            _LENGTH_SCALE.reset(token)
        return np.asarray(out["wav"], dtype=np.float32).reshape(-1), self.sample_rate


def resolve_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError(
            f"device {device} requested but CUDA is not available (run 'tts-runtime preflight')"
        )
    if dev.type == "cpu":
        use_cpu_kernels_for_variable_lengths()
    return dev


def use_cpu_kernels_for_variable_lengths() -> None:
    """Turn oneDNN (mkldnn) off for this process's CPU work.

    TTS convolutions see a new input length on nearly every call, and torch 2.4's oneDNN path builds
    new primitives for each one: on the tiny VITS that made synthesis about 40x slower (real-time
    factor 1.3-1.9 against 0.04) and grew the process by about 12 MB per request without bound.
    PyTorch's native CPU kernels have neither problem. GPUs (cuDNN) are not affected.
    """
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]


def load_model(
    version_dir: str | Path, device: str | torch.device = "cpu", verify: bool = True
) -> LoadedModel:
    """Load a version directory onto ``device``.

    With ``verify`` (the default) a directory with a manifest has every file checked against its
    sha256 first, so a half-copied or corrupted version fails here with a clear message instead of
    inside torch. A directory without a manifest (a plain coqui model) loads only with
    ``verify=False``.
    """
    version_dir = Path(version_dir)
    if not version_dir.is_dir():
        raise BadInputError(f"{version_dir}: not a directory")
    for name in (CONFIG_NAME, MODEL_NAME):
        if not (version_dir / name).is_file():
            raise BadInputError(f"{version_dir}: no {name}")
    manifest = None
    if (version_dir / MANIFEST_NAME).is_file():
        manifest = ModelManifest.load(version_dir)
    if verify:
        problems = verify_manifest(version_dir)
        if problems:
            raise BadInputError(f"{version_dir}: failed verification: " + "; ".join(problems))
    engine = read_engine(version_dir / CONFIG_NAME)
    if manifest is not None and manifest.engine != engine:
        raise BadInputError(
            f"{version_dir}: manifest says {manifest.engine.value}, config.json says {engine.value}"
        )
    dev = resolve_device(device)
    started = time.perf_counter()
    cls: type[LoadedModel] = XttsModel if engine is Engine.XTTS else VitsModel
    model = cls(version_dir, dev, manifest)
    log.info(
        "loaded %s model %s on %s in %.2fs", engine.value, model.version, dev, time.perf_counter() - started
    )
    return model
