"""The run's reference voice: the clip(s) a fine-tuned XTTS version ships so it can speak at once.

A fine-tuned XTTS clones voices from reference clips and has none built in; without one, a served
version answers every request with ``voice_not_found`` until someone uploads a clip. So the trainer
keeps the run's reference in its output folder and ``tts-runtime export`` ships it inside the
version (``voices/<name>.wav``, ``ModelManifest.voices``), where serving pods register it at start::

    <outputPath>/voices/voices.json     {"default": name, "voices": [{"name", "wav", "from", "seconds"}]}
    <outputPath>/voices/<name>.wav      mono 16-bit WAV
    <outputPath>/model/voices/          the same, copied into the servable model at the finish: the
                                        export reads them there, wherever model/ was fetched from

The clip is ``samples.speakerWav`` of the run spec when set; else up to ``MAX_CLIPS`` clean clips
of the dataset, the longest within ``PREFERRED_SECONDS`` first, ties broken by the dataset's seed
(so a retry picks the same ones). The first voice is named after the TrainingRun, the others
``<name>-2``, ``<name>-3``. Written at the start of a run, before any GPU time, and kept as it is
on a resume (a retry must not change the voice a run ships).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from tts_contract.contract import RunSpec

from .dataset import Clip
from .engine import BadInput

log = logging.getLogger(__name__)

VOICES_DIR = "voices"
INDEX = "voices.json"
#: reference voices picked from a dataset when the spec names no speakerWav
MAX_CLIPS = 3
#: XTTS conditions on 3-6 s slices; a longer clip adds nothing, a shorter one sounds thin
PREFERRED_SECONDS = (3.0, 15.0)
#: outside this a clip is no reference at all (the server refuses under 0.33 s and over 60 s)
USABLE_SECONDS = (0.5, 30.0)
#: the serving API's voice names (VoiceModel ``spec.voices[].name``)
VOICE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$")
VOICE_NAME_MAX = 63


def voice_name(base: str, index: int = 1) -> str:
    """``base`` as a valid voice name (the TrainingRun's name usually is one already); the
    ``index``-th voice of a run gets ``-<index>`` appended from the second on."""
    name = re.sub(r"[^a-z0-9_-]+", "-", base.lower()).strip("-_") or "voice"
    suffix = f"-{index}" if index > 1 else ""
    name = name[: VOICE_NAME_MAX - len(suffix)].rstrip("-_") + suffix
    assert VOICE_NAME.fullmatch(name), name
    return name


@dataclass(frozen=True)
class ReferenceVoice:
    name: str
    #: relative to the voices folder
    wav: str
    #: where it came from, relative to the dataset root
    source: str
    seconds: float


def read_index(voices_dir: Path) -> tuple[list[ReferenceVoice], str | None]:
    """The voices a run folder holds, and the default's name; ``([], None)`` when there are none."""
    try:
        data = json.loads((voices_dir / INDEX).read_text())
    except (OSError, ValueError):
        return [], None
    voices = [
        ReferenceVoice(v["name"], v["wav"], v.get("from", ""), float(v.get("seconds", 0.0)))
        for v in data.get("voices", [])
        if isinstance(v, dict) and VOICE_NAME.fullmatch(str(v.get("name", "")))
    ]
    default = data.get("default")
    return voices, default if any(v.name == default for v in voices) else None


def _clean(path: Path) -> np.ndarray | None:
    """The clip as mono float samples when it is a usable reference: finite, not silent, not clipped."""
    try:
        data, _rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError):
        return None
    mono = data.mean(axis=1)
    if mono.size == 0 or not np.isfinite(mono).all():
        return None
    rms = float(np.sqrt(np.mean(mono**2)))
    if rms < 0.003:  # about -50 dBFS: silence or near it
        return None
    if float(np.mean(np.abs(mono) >= 0.999)) > 0.001:  # more than 0.1 % of samples at full scale
        return None
    return mono


def rank_clips(clips: Iterable[Clip], seed: int) -> list[Clip]:
    """Usable clips, best references first: within PREFERRED_SECONDS, longest first; then the rest,
    longest first. Equal durations are ordered by the dataset's seed, not by the file's order."""
    lo, hi = USABLE_SECONDS
    usable = [c for c in clips if lo <= c.seconds <= hi]
    usable.sort(key=lambda c: c.id)
    random.Random(seed).shuffle(usable)
    plo, phi = PREFERRED_SECONDS
    return sorted(usable, key=lambda c: (not plo <= c.seconds <= phi, -round(c.seconds, 2)))


def _pick(spec: RunSpec, clips: list[Clip]) -> list[tuple[Path, str, np.ndarray, int]]:
    """(path, source, mono samples, rate) of the reference clips to keep."""
    root = Path(spec.dataset.path)
    wanted = spec.samples.speaker_wav if spec.samples else None
    if wanted:
        path = (root / wanted).resolve()
        if not path.is_relative_to(root.resolve()):
            raise BadInput(f"samples.speakerWav {wanted!r} escapes the dataset folder")
        if not path.is_file():
            raise BadInput(f"samples.speakerWav {wanted!r}: no such file in the dataset ({root})")
        mono = _clean(path)
        if mono is None:
            raise BadInput(
                f"samples.speakerWav {wanted!r}: not a usable reference clip "
                "(unreadable, silent, clipped or not finite)"
            )
        return [(path, wanted, mono, int(sf.info(str(path)).samplerate))]
    picked = []
    for clip in rank_clips(clips, spec.dataset.seed):
        mono = _clean(clip.path)
        if mono is not None:
            picked.append((clip.path, clip.path.relative_to(root).as_posix(), mono, clip.sample_rate))
        if len(picked) == MAX_CLIPS:
            break
    return picked


def write_reference_voices(spec: RunSpec, clips: list[Clip], out: Path) -> list[ReferenceVoice]:
    """Keep the run's reference voice(s) in ``out/voices/`` (see the module docstring); an existing
    set is kept as it is. Returns the voices, the default first."""
    dest = out / VOICES_DIR
    existing, _default = read_index(dest)
    if existing and all((dest / v.wav).is_file() for v in existing):
        return existing
    picked = _pick(spec, clips)
    if not picked:
        log.warning("no clip of the dataset is a usable reference voice: the version will have none")
        return []
    tmp = out / f".{VOICES_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    voices = []
    for i, (_path, source, mono, rate) in enumerate(picked, start=1):
        name = voice_name(spec.run.name, i)
        wav = f"{name}.wav"
        sf.write(str(tmp / wav), np.clip(mono, -1.0, 1.0), rate, subtype="PCM_16")
        voices.append(ReferenceVoice(name, wav, source, round(len(mono) / rate, 3)))
    index: dict[str, Any] = {
        "default": voices[0].name,
        "voices": [{"name": v.name, "wav": v.wav, "from": v.source, "seconds": v.seconds} for v in voices],
    }
    (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    if dest.exists():
        shutil.rmtree(dest)  # a torn set from an attempt that died while writing it
    os.replace(tmp, dest)
    log.info("reference voice(s) %s from %s", ", ".join(v.name for v in voices), [v.source for v in voices])
    return voices


def copy_voices(out: Path, model_dir: Path) -> list[str]:
    """The run's reference voices into the servable model folder (``model_dir/voices/``); the files
    copied, relative to ``model_dir``."""
    src = out / VOICES_DIR
    voices, _default = read_index(src)
    if not voices:
        return []
    dest = model_dir / VOICES_DIR
    dest.mkdir(parents=True, exist_ok=True)
    for name in (INDEX, *(v.wav for v in voices)):
        shutil.copyfile(src / name, dest / name)
    return [f"{VOICES_DIR}/{INDEX}", *(f"{VOICES_DIR}/{v.wav}" for v in voices)]
