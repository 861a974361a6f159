"""The voices directory: reference clips and their conditioning latents, persisted per voice.

Layout, one folder per voice::

    <voices_dir>/<name>/voice.json             name, source, clips with durations, creation time
    <voices_dir>/<name>/clip-<i>.wav           the validated reference clips (16-bit WAV)
    <voices_dir>/<name>/latents-<digest>.pt    conditioning latents for one model version

Latents depend on the model's weights (a fine-tuned XTTS has its own conditioning encoder), so they
are keyed by the version's manifest digest; the clips are kept so a new version can compute its own.
Names are validated before they touch the file system: one path component, no traversal.

With a shared voice store (``voicesUri``, ``shared_voices.py``) this folder is the pod's copy of it:
the same layout, kept in step with the store by a background poll.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from tts_contract.contract import now_rfc3339, sha256_file

from .audio import AudioDecodeError, decode_audio
from .settings import Settings, is_safe_name

VOICE_FILE = "voice.json"
LATENTS_PREFIX = "latents-"

log = logging.getLogger(__name__)


class VoiceError(ValueError):
    """A voice cannot be registered; the message says why, for the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class DecodedClip:
    filename: str
    samples: np.ndarray
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


def validate_voice_name(name: str) -> str:
    if not is_safe_name(name):
        raise VoiceError(
            "invalid_voice_name",
            f"invalid voice name {name!r}: 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
        )
    return name


def validate_clips(clips: list[tuple[str, bytes]], settings: Settings) -> list[DecodedClip]:
    """Decode and check reference clips; raise ``VoiceError`` with the reason for the first bad one."""
    if not clips:
        raise VoiceError("no_audio", "send at least one reference clip (multipart field 'file')")
    if len(clips) > settings.max_voice_clips:
        raise VoiceError("too_many_clips", f"{len(clips)} clips sent; at most {settings.max_voice_clips}")
    total = sum(len(data) for _, data in clips)
    if total > settings.max_upload_bytes:
        raise VoiceError("upload_too_large", f"{total} bytes sent; at most {settings.max_upload_bytes}")
    decoded = []
    for filename, data in clips:
        try:
            samples, rate = decode_audio(data)
        except AudioDecodeError as e:
            raise VoiceError("invalid_audio", f"{filename}: {e}") from None
        clip = DecodedClip(filename, samples, rate)
        if clip.seconds < settings.min_voice_seconds:
            raise VoiceError(
                "audio_too_short",
                f"{filename}: {clip.seconds:.2f} s of audio; a reference needs at least "
                f"{settings.min_voice_seconds} s (XTTS cannot condition on less)",
            )
        if clip.seconds > settings.max_voice_seconds:
            raise VoiceError(
                "audio_too_long",
                f"{filename}: {clip.seconds:.1f} s of audio; at most {settings.max_voice_seconds} s",
            )
        if not np.isfinite(samples).all():
            raise VoiceError("invalid_audio", f"{filename}: the audio holds NaN or infinite samples")
        if float(np.max(np.abs(samples))) < 1e-3:
            raise VoiceError(
                "silent_audio", f"{filename}: the clip is silent; a voice needs someone speaking"
            )
        decoded.append(clip)
    return decoded


class VoiceStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        #: called with (name, file) after latents were written (the shared store uploads them)
        self.on_latents_saved: Callable[[str, Path], None] | None = None

    def _dir(self, name: str) -> Path:
        return self.root / validate_voice_name(name)

    def folder(self, name: str) -> Path:
        return self._dir(name)

    def source(self, name: str) -> str | None:
        """``spec``, ``upload``, ...: where the voice came from; None when it is not there."""
        try:
            return str(self.record(name).get("source", "upload"))
        except (OSError, ValueError):
            return None

    def install(self, name: str, folder: Path) -> None:
        """Put a complete voice folder (``folder``, inside ``root``) in place of ``name``'s."""
        target = self._dir(name)
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}-old-", dir=self.root))
            target.rename(old / "voice")
        folder.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def scratch(self, name: str) -> Path:
        """A new empty folder beside the voices (same file system: ``install`` renames it)."""
        return Path(tempfile.mkdtemp(prefix=f".{validate_voice_name(name)}-", dir=self.root))

    def names(self) -> list[str]:
        return sorted(p.parent.name for p in self.root.glob(f"*/{VOICE_FILE}") if is_safe_name(p.parent.name))

    def exists(self, name: str) -> bool:
        return is_safe_name(name) and (self.root / name / VOICE_FILE).is_file()

    def record(self, name: str) -> dict[str, Any]:
        return json.loads((self._dir(name) / VOICE_FILE).read_text())

    def clip_paths(self, name: str) -> list[Path]:
        folder = self._dir(name)
        return [folder / c["file"] for c in self.record(name)["clips"]]

    def save(self, name: str, clips: list[DecodedClip], source: str) -> dict[str, Any]:
        """Write the clips and record into a temporary folder, then move it into place in one step."""
        target = self._dir(name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=self.root))
        try:
            entries = []
            for i, clip in enumerate(clips):
                file = f"clip-{i}.wav"
                sf.write(tmp / file, np.clip(clip.samples, -1.0, 1.0), clip.sample_rate, subtype="PCM_16")
                entries.append(
                    {
                        "file": file,
                        "original": clip.filename,
                        "seconds": round(clip.seconds, 3),
                        "sampleRate": clip.sample_rate,
                        "sha256": sha256_file(tmp / file),
                    }
                )
            record = {"name": name, "source": source, "createdAt": now_rfc3339(), "clips": entries}
            (tmp / VOICE_FILE).write_text(json.dumps(record, indent=2) + "\n")
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
            return record
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def delete(self, name: str) -> bool:
        target = self._dir(name)
        if not (target / VOICE_FILE).is_file():
            return False
        shutil.rmtree(target)
        return True

    # --- latents ----------------------------------------------------------------------------------

    def _latents_path(self, name: str, digest: str) -> Path:
        return self._dir(name) / f"{LATENTS_PREFIX}{digest[:16]}.pt"

    def load_latents(self, name: str, digest: str) -> Any | None:
        path = self._latents_path(name, digest)
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            return None  # a torn or foreign file: recompute rather than fail the voice

    def save_latents(self, name: str, digest: str, latents: Any) -> None:
        path = self._latents_path(name, digest)
        if not path.parent.is_dir():
            return  # deleted while its latents were computed
        tmp = path.with_suffix(".tmp")
        torch.save(latents, tmp)
        tmp.replace(path)
        if self.on_latents_saved is not None:
            try:
                self.on_latents_saved(name, path)
            except Exception as e:  # the latents are here; the other replicas compute their own
                log.warning("voice %s: could not share its latents: %s", name, e)
