"""What one running server knows: settings, the current model, voices, workers, readiness."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import Request

from tts_contract.contract import Engine, ExitCode, now_rfc3339

from ..artifacts.store import ArtifactError, retrying
from .device import DeviceChoice, choose_device
from .engine import LoadError, ModelHandle, load_version
from .errors import ApiError, not_ready
from .metrics import Metrics
from .scheduler import Scheduler
from .settings import Settings
from .shared_voices import SharedVoices, SyncChanges
from .voices import VoiceError, VoiceStore, validate_clips

log = logging.getLogger(__name__)

#: model names OpenAI clients send; all mean "the model this server serves"
OPENAI_MODEL_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")

ModelLoader = Callable[[Path, str], Any]


def _default_loader(path: Path, device: str) -> Any:
    # Imported here, on the loader thread: coqui-tts takes seconds to import (PINS.md) and the app
    # must answer /healthz meanwhile.
    from tts_runtime.models import load_model

    # load_version has verified the checksums already: hashing a multi-GB model twice costs seconds
    return load_model(path, device, verify=False)


class ServerState:
    def __init__(
        self,
        settings: Settings,
        *,
        loader: ModelLoader | None = None,
        on_fatal: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.scheduler = Scheduler(settings.max_concurrency, settings.max_queue, self.metrics)
        self.voices = VoiceStore(settings.voices_dir)
        spec_names = frozenset(v.name for v in settings.voices)
        #: the voice store every replica shares (voicesUri); None: voices are this pod's own
        self.shared: SharedVoices | None = (
            SharedVoices(settings.voices_uri, self.voices, protected=spec_names.__contains__)
            if settings.voices_uri
            else None
        )
        self._poll_failures = 0
        self.handle: ModelHandle | None = None
        self.device: DeviceChoice | None = None
        self.phase = "starting"
        self.error: str | None = None
        self.fatal_exit_code: int | None = None
        self.last_reload: dict[str, Any] | None = None
        self.reload_step: str | None = None
        self.started_at = now_rfc3339()
        self._loader = loader or _default_loader
        self._on_fatal = on_fatal
        # Loading runs beside serving, on its own thread, so a reload never takes a worker slot.
        self._load_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tts-loader")
        self.reload_lock = asyncio.Lock()
        self.voice_lock = asyncio.Lock()

    # --- readiness ------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.handle is not None

    def require_handle(self) -> ModelHandle:
        handle = self.handle
        if handle is None:
            raise not_ready(
                f"the model is not loaded yet (phase: {self.phase})"
                + (f": {self.error}" if self.error else "")
            )
        return handle

    def _progress(self, phase: str) -> None:
        self.phase = phase
        log.info("%s", phase)

    # --- start ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Register spec voices, copy the shared store's, pick the device (preflight), load and warm
        the configured version; then, with a shared voice store, follow it until cancelled."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._load_executor, self._register_spec_voices)
            if self.shared is not None:
                self._progress(f"copying the voices of {self.shared.uri}")
                shared = self.shared

                def first_sync() -> SyncChanges:
                    # a storage that does not answer is tried again with back-off (a minute at most)
                    return retrying(lambda: self._sync_voices(initial=True), shared.uri, what="voice store")

                try:
                    await loop.run_in_executor(self._load_executor, first_sync)
                except ArtifactError as e:
                    raise LoadError(f"voice store: {e}", e.exit_code) from None
            self._progress("running the GPU preflight")
            self.device = await loop.run_in_executor(
                self._load_executor, choose_device, self.settings.device_policy
            )
            handle = await loop.run_in_executor(
                self._load_executor, self._load, self.settings.version, self._progress
            )
        except LoadError as e:
            self._fail(str(e), e.exit_code)
            return
        except Exception as e:  # a bug or an environment problem: report it the same way
            log.exception("start failed")
            self._fail(f"{type(e).__name__}: {e}", ExitCode.FAILURE)
            return
        self._switch(handle)
        self.phase = "ready"
        log.info(
            "ready: serving %s (%s) on %s %s",
            handle.version,
            handle.engine.value,
            handle.device,
            handle.timings,
        )
        if self.shared is not None:
            await self._follow_voice_store()

    # --- the shared voice store -----------------------------------------------------------------

    def _sync_voices(self, initial: bool = False) -> SyncChanges:
        assert self.shared is not None
        changes = self.shared.sync(initial=initial)
        handle = self.handle
        if changes and handle is not None:
            # a replaced or removed voice's latents in memory are stale; new ones load on first use
            for name in (*changes.replaced, *changes.removed):
                handle.latents.pop(name, None)
            self.metrics.voices.set(len(handle.latents))
        if changes:
            log.info(
                "voice store: added %s, replaced %s, removed %s, latents for %s",
                changes.added or "-",
                changes.replaced or "-",
                changes.removed or "-",
                changes.latents or "-",
            )
        return changes

    async def _follow_voice_store(self) -> None:
        """Poll the shared store every ``voices_poll_seconds`` until cancelled (the app stops)."""
        while True:
            await asyncio.sleep(self.settings.voices_poll_seconds)
            try:
                async with self.voice_lock:
                    await asyncio.to_thread(self._sync_voices)
            except Exception as e:  # the store went away: keep serving the voices we have
                self._poll_failures += 1
                if self._poll_failures in (1, 10) or self._poll_failures % 60 == 0:
                    log.warning("voice store: %s (%d failed polls in a row)", e, self._poll_failures)
            else:
                if self._poll_failures:
                    log.info("voice store: reachable again after %d failed polls", self._poll_failures)
                self._poll_failures = 0

    # --- model versions from a URI --------------------------------------------------------------

    def _fetch_version(self, version: str, path: Path) -> None:
        """Fetch ``<model_uri>/<version>/`` into ``path`` (verified against its manifest), through a
        staging folder beside it so that a version directory is complete or absent."""
        from tts_contract.uris import parse
        from tts_runtime.artifacts.fetch import fetch

        assert self.settings.model_uri is not None
        try:
            uri = str(parse(self.settings.model_uri).child(version))
        except ValueError as e:
            raise LoadError(f"modelUri {self.settings.model_uri}: {e}") from None
        staging = path.with_name(f".{path.name}.fetching")
        log.info("fetching %s into %s", uri, path)
        try:
            fetch(uri, staging, manifest=True)
        except ArtifactError as e:
            if not e.retryable:  # an unreachable store leaves what it fetched: the next try resumes
                shutil.rmtree(staging, ignore_errors=True)
            raise LoadError(f"model version {version!r}: {e}", e.exit_code) from None
        if path.exists():  # another fetch of the same version finished first
            shutil.rmtree(staging, ignore_errors=True)
        else:
            staging.rename(path)

    def _fail(self, message: str, exit_code: int) -> None:
        log.error("cannot serve: %s", message)
        self.phase = "failed"
        self.error = message
        self.fatal_exit_code = exit_code
        if self._on_fatal is not None:
            self._on_fatal(exit_code)

    def _load(self, version: str, progress: Callable[[str], None]) -> ModelHandle:
        assert self.device is not None
        return load_version(
            self.settings,
            version,
            self.device.device,
            self.voices,
            self._loader,
            progress,
            fetch=self._fetch_version if self.settings.model_uri else None,
            on_latents=lambda origin: self.metrics.voice_latents.labels(origin=origin).inc(),
        )

    def _reload_progress(self, step: str) -> None:
        self.reload_step = step
        log.info("reload: %s", step)

    def _register_spec_voices(self) -> None:
        if not self.settings.voices:
            return
        if self.settings.engine == Engine.VITS:
            log.warning("voices in the spec ignored: VITS models do not clone voices")
            return
        self._progress("registering spec voices")
        version_dir = self.settings.version_dir()
        for spec in self.settings.voices:
            path = (version_dir / spec.wav).resolve()
            if not path.is_relative_to(version_dir.resolve()):
                raise LoadError(f"voice {spec.name}: {spec.wav} escapes the model directory")
            if not path.is_file():
                raise LoadError(f"voice {spec.name}: reference clip {spec.wav} not found in {version_dir}")
            try:
                clips = validate_clips([(spec.wav, path.read_bytes())], self.settings)
                self.voices.save(spec.name, clips, source="spec")
            except VoiceError as e:
                raise LoadError(f"voice {spec.name}: {e.message}") from None

    def _switch(self, handle: ModelHandle) -> None:
        # One reference assignment: a request sees the old handle or the new one, never a mix.
        self.handle = handle
        self.metrics.set_model(handle.version, handle.engine.value, handle.device)
        self.metrics.ready.set(1)
        self.metrics.voices.set(len(handle.latents))
        for phase, seconds in handle.timings.items():
            self.metrics.load_seconds.labels(phase=phase).set(seconds)

    # --- hot reload -----------------------------------------------------------------------------

    async def reload(self, version: str) -> dict[str, Any]:
        """Load ``version`` beside the current model, warm it, then switch. Raises ``ApiError``."""
        if self.reload_lock.locked():
            raise ApiError(409, "reload_in_progress", "another reload is in progress; retry when it ends")
        async with self.reload_lock:
            old = self.require_handle()
            started = time.monotonic()
            try:
                new = await asyncio.get_running_loop().run_in_executor(
                    self._load_executor, self._load, version, self._reload_progress
                )
            except LoadError as e:
                self.metrics.reloads.labels(result="failed").inc()
                self.last_reload = {"version": version, "ok": False, "error": str(e), "at": now_rfc3339()}
                log.error("reload to %s failed, still serving %s: %s", version, old.version, e)
                raise ApiError(
                    422, "reload_failed", f"{e}; still serving {old.version}", param="version"
                ) from None
            finally:
                self.reload_step = None
            self._switch(new)
            self.metrics.reloads.labels(result="succeeded").inc()
            seconds = round(time.monotonic() - started, 3)
            self.last_reload = {
                "version": new.version,
                "previous": old.version,
                "ok": True,
                "at": now_rfc3339(),
            }
            log.info("reloaded: %s -> %s in %.1f s", old.version, new.version, seconds)
            return {
                "version": new.version,
                "previous": old.version,
                "seconds": seconds,
                "timings": new.timings,
            }

    def shutdown(self) -> None:
        self.scheduler.shutdown()
        self._load_executor.shutdown(wait=False, cancel_futures=True)

    # --- model names ----------------------------------------------------------------------------

    def check_model_name(self, name: str, handle: ModelHandle) -> None:
        if name in (handle.version, handle.engine.value, *OPENAI_MODEL_ALIASES):
            return
        raise ApiError(
            404,
            "model_not_found",
            f"model {name!r} is not served here; "
            f"use {handle.version!r} or one of {', '.join(OPENAI_MODEL_ALIASES)}",
            param="model",
        )


def get_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.tts
    return state
