"""Real speech for tests: espeak-ng speaks sentences, sox converts them, laid out as LJSpeech.

    dest/metadata.csv        id|text|normalized text   (no header, UTF-8)
    dest/wavs/<id>.wav       mono 16-bit PCM at ``sample_rate``
    dest/speaker_ref.wav     a longer clip of the same voice, for XTTS conditioning and samples

Deterministic: the same arguments give the same files.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

#: short sentences: espeak-ng says each in about 1.6-2.1 s (the tiny XTTS caps audio at about 2.2 s)
DEFAULT_TEXTS = (
    "Hello world, how are you?",
    "The quick brown fox jumps.",
    "Good morning to all of you.",
    "Please close the door now.",
    "It is a sunny day today.",
    "We will meet again soon.",
    "Turn left at the station.",
    "Dinner is ready at seven.",
)
SPEAKER_REF = "speaker_ref.wav"
SPEAKER_REF_TEXT = "This is a reference clip for the voice, spoken slowly and clearly."


class MissingToolError(RuntimeError):
    """espeak-ng or sox is not installed (Debian: apt-get install espeak-ng sox)."""


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MissingToolError(f"{name} is not installed (Debian: apt-get install espeak-ng sox)")
    return path


def speak(text: str, dest: Path, sample_rate: int = 22050) -> Path:
    """``text`` spoken by espeak-ng into ``dest`` as mono 16-bit PCM at ``sample_rate``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "espeak.wav"
        # 160 words per minute (espeak's default is 175): the default sentences land at 1.6-2.1 s
        subprocess.run(
            [_tool("espeak-ng"), "-s", "160", "-w", str(raw), text], check=True, capture_output=True
        )
        subprocess.run(
            [_tool("sox"), str(raw), "-r", str(sample_rate), "-c", "1", "-b", "16", str(dest)],
            check=True,
            capture_output=True,
        )
    return dest


def make_ljspeech_dataset(
    dest: Path, n_clips: int, sample_rate: int = 22050, texts: Sequence[str] | None = None
) -> Path:
    """An LJSpeech-layout dataset of ``n_clips`` spoken clips (texts cycle if fewer than clips)."""
    texts = list(texts or DEFAULT_TEXTS)
    if n_clips < 1 or not texts:
        raise ValueError("need at least one clip and one text")
    (dest / "wavs").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n_clips):
        text = texts[i % len(texts)]
        clip_id = f"clip_{i:03d}"
        speak(text, dest / "wavs" / f"{clip_id}.wav", sample_rate)
        lines.append(f"{clip_id}|{text}|{text}")
    (dest / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    speak(SPEAKER_REF_TEXT, dest / SPEAKER_REF, sample_rate)
    return dest
