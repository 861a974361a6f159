"""The model being served: loading a version (checksums, latents, warm-up) and generating audio.

A ``ModelHandle`` is immutable once loaded, apart from its voice-latents cache. Requests take the
current handle when they start and keep it to the end, so a hot reload can swap the server's handle
at any time: in-flight work finishes on the old model, which is freed when the last one lets go.
Generation runs one text piece at a time on a worker thread and checks for cancellation between
pieces: a client that disconnects, or a deadline that passes, stops the work at the next piece.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from tts_contract.contract import MANIFEST_NAME, Engine, ExitCode, ModelManifest, verify_manifest

from ..errors import BadInputError
from .errors import ApiError
from .scheduler import DeadlineExceeded, Scheduler
from .settings import Settings
from .textsplit import split_text
from .voices import VoiceStore

log = logging.getLogger(__name__)

#: what a VITS model without named speakers calls its one voice; for XTTS, the alias of the version's
#: default voice (the manifest's ``defaultVoice``)
DEFAULT_VOICE = "default"


class LoadError(Exception):
    """A version cannot be served; ``exit_code`` tells the CLI how to end."""

    def __init__(self, message: str, exit_code: ExitCode = ExitCode.BAD_INPUT) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class VersionVoice:
    """A reference voice shipped inside the version (the manifest's ``voices``)."""

    name: str
    path: Path
    seconds: float
    sample_rate: int


@dataclass
class ModelHandle:
    version: str
    path: Path
    digest: str
    engine: Engine
    model: Any
    device: str
    sample_rate: int
    languages: tuple[str, ...]
    #: built-in voices (VITS speakers, or "default"); XTTS voices come from the voice store
    builtin_voices: tuple[str, ...]
    #: voice name -> conditioning latents for this model (XTTS)
    latents: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    #: the voices the version ships (XTTS), registered with it and gone with it on a hot swap; a
    #: spec voice of the same name wins (it is not in here)
    version_voices: dict[str, VersionVoice] = field(default_factory=dict)
    #: the voice ``default`` means (one of ``version_voices``)
    default_voice: str | None = None
    #: names of the spec's voices (they win over the version's; a spec voice named ``default``
    #: wins over the alias)
    spec_voices: frozenset[str] = frozenset()
    #: told where each voice's latents came from: "computed" or "file" (metrics)
    on_latents: Callable[[str], None] = field(default=lambda origin: None, repr=False)

    @property
    def clones_voices(self) -> bool:
        return self.engine == Engine.XTTS

    def resolve_voice(self, name: str, store: VoiceStore) -> str | None:
        """The voice a request's ``voice`` names (XTTS): a spec voice, a version voice, ``default``
        (the version's default voice), an uploaded voice; None when there is none of that name."""
        if name in self.spec_voices:
            return name if store.exists(name) else None
        if name in self.version_voices:
            return name
        if name == DEFAULT_VOICE and self.default_voice is not None:
            return self.default_voice
        return name if store.exists(name) else None

    def voice_names(self, store: VoiceStore) -> list[str]:
        """Every voice a request can name (XTTS), sorted."""
        return sorted(set(store.names()) | set(self.version_voices))

    def voice_latents(self, name: str, store: VoiceStore) -> Any:
        """Latents of a voice: memory, then the voices directory, then computed (worker thread)."""
        cached = self.latents.get(name)
        if cached is not None:
            return cached
        version_voice = self.version_voices.get(name)
        if version_voice is not None:
            # computed at load; here only when that failed: try again, the error goes to the request
            latents = self.model.conditioning_latents([version_voice.path])
            self.on_latents("computed")
            self.latents[name] = latents
            return latents
        if not store.exists(name):  # deleted between the request's check and now
            raise ApiError(404, "voice_not_found", f"voice {name!r} is not registered", param="voice")
        saved = store.load_latents(name, self.digest)
        if saved is not None:
            latents = _restore_latents(saved, self.device)
            self.on_latents("file")
        else:
            latents = self.model.conditioning_latents(store.clip_paths(name))
            self.on_latents("computed")
            store.save_latents(name, self.digest, _latents_state(latents))
        self.latents[name] = latents
        return latents

    def synthesize(self, text: str, request: SynthesisRequest, latents: Any) -> np.ndarray:
        if request.sampling and self.engine == Engine.XTTS:
            audio = _xtts_sampled(self.model, text, latents, request)
        else:
            audio, _rate = self.model.synthesize(
                text, voice=latents, language=request.language, speed=request.speed
            )
        return np.asarray(audio, dtype=np.float32).reshape(-1)


def _latents_state(latents: Any) -> dict[str, Any]:
    """``VoiceLatents`` as a plain dict of CPU tensors: loadable with ``weights_only=True``."""
    return {f.name: getattr(latents, f.name).detach().cpu() for f in dataclasses.fields(latents)}


def _restore_latents(state: dict[str, Any], device: str) -> Any:
    from tts_runtime.models import VoiceLatents

    return VoiceLatents(**{key: value.to(device) for key, value in state.items()})


def _xtts_sampled(model: Any, text: str, latents: Any, request: SynthesisRequest) -> np.ndarray:
    """XTTS with per-request sampling settings.

    ``LoadedModel.synthesize`` always samples with the config's settings; a request that overrides
    them goes to the underlying ``Xtts.inference`` with the config's values as defaults.
    """
    import torch

    cfg = model.config
    settings = {
        "temperature": cfg.temperature,
        "length_penalty": cfg.length_penalty,
        "repetition_penalty": cfg.repetition_penalty,
        "top_k": cfg.top_k,
        "top_p": cfg.top_p,
        **request.sampling,
    }
    language = request.language or model.languages[0]
    with torch.inference_mode():
        out = model.model.inference(
            text.strip(),
            language,
            latents.gpt_cond_latent,
            latents.speaker_embedding,
            speed=request.speed,
            **settings,
        )
    return np.asarray(out["wav"], dtype=np.float32)


@dataclass
class SynthesisRequest:
    text: str
    voice: str
    language: str | None
    speed: float = 1.0
    sampling: dict[str, Any] = field(default_factory=dict)
    chunk_chars: int = 200


# --- loading ------------------------------------------------------------------------------------


def _model_languages(model: Any) -> tuple[str, ...]:
    langs = getattr(model, "languages", None) or ()
    return tuple(str(x) for x in langs)


def _model_speakers(model: Any) -> tuple[str, ...]:
    speakers = getattr(model, "speakers", None) or ()
    return tuple(str(x) for x in speakers) or (DEFAULT_VOICE,)


def _synthetic_reference(path: Path, seconds: float = 3.0, rate: int = 22050) -> None:
    """A voiced-sounding clip (a harmonic tone with vibrato and noise) for warming up XTTS when no
    voice is registered yet: it runs the same conditioning code paths (STFTs) as a real clip."""
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 + 10 * np.sin(2 * np.pi * 4 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    wave = sum(np.sin(k * phase) / k for k in range(1, 8))
    rng = np.random.default_rng(0)
    wave = 0.3 * wave / np.max(np.abs(wave)) + 0.01 * rng.standard_normal(len(t))
    sf.write(path, wave.astype(np.float32), rate)


def version_voices(
    manifest: ModelManifest, path: Path, spec_voices: frozenset[str]
) -> tuple[dict[str, VersionVoice], str | None]:
    """The voices a version ships (XTTS), less those a spec voice of the same name replaces, and the
    default. A clip that cannot be read is left out with a warning: the version still serves."""
    voices: dict[str, VersionVoice] = {}
    if manifest.engine != Engine.XTTS:
        return voices, None
    root = path.resolve()
    for voice in manifest.voices:
        if voice.name in spec_voices:
            log.info("version voice %s: the spec's voice of that name wins", voice.name)
            continue
        clip = (path / voice.wav).resolve()
        if not clip.is_relative_to(root) or not clip.is_file():
            log.warning("version voice %s: %s is not a file in the version: left out", voice.name, voice.wav)
            continue
        try:
            info = sf.info(str(clip))
        except (OSError, RuntimeError) as e:
            log.warning("version voice %s: %s cannot be read (%s): left out", voice.name, voice.wav, e)
            continue
        voices[voice.name] = VersionVoice(voice.name, clip, info.frames / info.samplerate, info.samplerate)
    default = manifest.default_voice if manifest.default_voice in voices else next(iter(voices), None)
    return voices, default


def load_version(
    settings: Settings,
    version: str,
    device: str,
    store: VoiceStore,
    load_model: Callable[[Path, str], Any],
    progress: Callable[[str], None] = lambda _: None,
    fetch: Callable[[str, Path], None] | None = None,
    on_latents: Callable[[str], None] = lambda _: None,
) -> ModelHandle:
    """Verify, load and warm one version directory. Blocking: call it from a thread.

    ``fetch(version, path)``, when given, brings a version that is not in the models root there first
    (from the VoiceModel's URI source); it raises ``LoadError``.
    """
    try:
        path = settings.version_dir(version)
    except ValueError as e:
        raise LoadError(str(e)) from None
    if fetch is not None and not (path / MANIFEST_NAME).is_file():
        progress(f"fetching {version}")
        fetch(version, path)
    if not path.is_dir():
        raise LoadError(f"model version {version!r} not found: {path} is not a directory")
    progress("verifying checksums")
    started = time.monotonic()
    problems = verify_manifest(path)
    if problems:
        raise LoadError(f"model version {version!r} failed verification: " + "; ".join(problems))
    manifest = ModelManifest.load(path)
    if settings.engine is not None and manifest.engine != settings.engine:
        raise LoadError(
            f"model version {version!r} is {manifest.engine.value}; "
            f"the server expects {settings.engine.value}"
        )
    verified = time.monotonic()

    progress(f"loading {manifest.engine.value} model {version} on {device}")
    try:
        model = load_model(path, device)
    except Exception as e:
        raise LoadError(f"model version {version!r} failed to load: {type(e).__name__}: {e}") from e
    loaded = time.monotonic()
    handle = ModelHandle(
        version=manifest.version or version,
        path=path,
        digest=manifest.digest,
        engine=manifest.engine,
        model=model,
        device=device,
        sample_rate=int(model.sample_rate),
        languages=_model_languages(model),
        builtin_voices=() if manifest.engine == Engine.XTTS else _model_speakers(model),
        spec_voices=frozenset(v.name for v in settings.voices),
        on_latents=on_latents,
    )
    handle.version_voices, handle.default_voice = version_voices(manifest, path, handle.spec_voices)

    progress("computing voice latents")
    if handle.clones_voices:
        # the version's default voice first: the warm-up speaks in the first voice with latents
        ordered = sorted(handle.version_voices.values(), key=lambda v: v.name != handle.default_voice)
        for voice in ordered:
            try:
                handle.latents[voice.name] = model.conditioning_latents([voice.path])
                on_latents("computed")
            except Exception as e:
                log.warning("version voice %s: latents failed on %s: %s: left out", voice.name, version, e)
                del handle.version_voices[voice.name]
        if handle.default_voice not in handle.version_voices:
            handle.default_voice = next(iter(handle.version_voices), None)
        for name in store.names():
            if name in handle.version_voices:
                continue
            try:
                handle.voice_latents(name, store)
            except Exception as e:  # one bad voice must not block a version: it is reported on use
                log.warning("voice %s: latents failed on %s: %s", name, version, e)
    voiced = time.monotonic()

    progress("warming up")
    try:
        _warm_up(handle, settings, store)
    except Exception as e:
        raise LoadError(
            f"model version {version!r} failed its warm-up synthesis: {type(e).__name__}: {e}"
        ) from e
    warm = time.monotonic()
    handle.timings = {
        "verifySeconds": round(verified - started, 3),
        "loadSeconds": round(loaded - verified, 3),
        "voicesSeconds": round(voiced - loaded, 3),
        "warmupSeconds": round(warm - voiced, 3),
    }
    return handle


def _warm_up(handle: ModelHandle, settings: Settings, store: VoiceStore) -> None:
    language = settings.default_language or (handle.languages[0] if handle.languages else None)
    if handle.clones_voices:
        if handle.latents:
            voice, latents = next(iter(handle.latents.items()))
        else:
            with tempfile.TemporaryDirectory() as tmp:
                ref = Path(tmp, "warmup.wav")
                _synthetic_reference(ref)
                latents = handle.model.conditioning_latents([ref])
            voice = "warmup"
    else:
        voice, latents = handle.builtin_voices[0], None
    audio = handle.synthesize(
        settings.warmup_text, SynthesisRequest(settings.warmup_text, voice, language), latents
    )
    if audio.size == 0 or not np.isfinite(audio).all():
        raise RuntimeError("the warm-up produced no usable audio")


# --- generation ---------------------------------------------------------------------------------


@dataclass
class GenerationStats:
    #: when the request arrived; ``started`` is when a worker took it
    created: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.monotonic)
    first_audio: float | None = None
    finished: float | None = None
    audio_samples: int = 0
    pieces: int = 0


class Generation:
    """One request's generation: pieces made on a worker thread, handed to the event loop."""

    def __init__(
        self,
        handle: ModelHandle,
        request: SynthesisRequest,
        store: VoiceStore,
        scheduler: Scheduler,
        timeout_seconds: float,
        on_piece: Callable[[], None] = lambda: None,
    ) -> None:
        self.handle = handle
        self._on_piece = on_piece
        self.request = request
        self.pieces = split_text(request.text, request.chunk_chars)
        self._store = store
        self._scheduler = scheduler
        self._timeout = timeout_seconds
        self._deadline = time.monotonic() + timeout_seconds
        self._cancel = threading.Event()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._future: asyncio.Future[None] | None = None
        self.stats = GenerationStats()

    async def start(self) -> None:
        """Wait for a worker (raises 429 or a deadline error) and start generating."""
        loop = asyncio.get_running_loop()

        def emit(kind: str, value: Any) -> None:
            loop.call_soon_threadsafe(self._queue.put_nowait, (kind, value))

        def work() -> None:
            try:
                latents = (
                    self.handle.voice_latents(self.request.voice, self._store)
                    if self.handle.clones_voices
                    else None
                )
                for piece in self.pieces:
                    if self._cancel.is_set() or time.monotonic() > self._deadline:
                        break
                    emit("audio", self.handle.synthesize(piece, self.request, latents))
                    self._on_piece()
                emit("end", None)
            except Exception as e:
                emit("error", e)

        self._future = await self._scheduler.submit(work, self._deadline, self._timeout)
        self.stats.started = time.monotonic()

    def cancel(self) -> None:
        self._cancel.set()

    async def audio(self) -> AsyncIterator[np.ndarray]:
        """The audio of each piece as it is generated; stops the worker if the consumer goes away."""
        try:
            while True:
                remaining = self._deadline - time.monotonic()
                try:
                    kind, value = await asyncio.wait_for(self._queue.get(), timeout=max(0.0, remaining))
                except TimeoutError:
                    raise DeadlineExceeded(self._timeout, "generating") from None
                if kind == "end":
                    self.stats.finished = time.monotonic()
                    return
                if kind == "error":
                    raise _as_api_error(value)
                if self.stats.first_audio is None:
                    self.stats.first_audio = time.monotonic()
                self.stats.audio_samples += len(value)
                self.stats.pieces += 1
                yield value
        finally:
            self._cancel.set()

    @property
    def completed(self) -> bool:
        return self.stats.finished is not None

    async def collect(self) -> np.ndarray:
        chunks = [chunk async for chunk in self.audio()]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


def _as_api_error(exc: BaseException) -> Exception:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, BadInputError):  # the model refused this input (text, voice): the client's to fix
        return ApiError(400, "invalid_input", str(exc))
    # A failure inside the model for this input: the process is fine, the request is not.
    log.error("generation failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
    return ApiError(500, "generation_failed", f"generation failed: {type(exc).__name__}: {exc}")
