"""Dataset loading and preflight: find every problem in an LJSpeech folder before any GPU time is spent.

coqui's own loaders are the wrong place for this: its ljspeech formatter stops at the first bad line,
and XTTS' training dataset silently *skips* clips it cannot load (it returns another sample instead),
so a broken dataset trains on a fraction of itself without a word. Here every line is checked, all
problems are collected into one report, and the run ends with ``ExitCode.BAD_INPUT`` (no retry).

Only soundfile and numpy are imported at module level: the preflight must run in seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from tts_contract.contract import DatasetSpec, Engine

METADATA = "metadata.csv"
WAVS = "wavs"
#: how many offending lines each problem kind shows in the report
EXAMPLES_PER_PROBLEM = 5


@dataclass(frozen=True)
class EngineLimits:
    """What an engine's training code accepts; clips outside these are dropped or crash inside coqui."""

    sample_rate: int
    min_seconds: float
    max_seconds: float
    max_text_chars: int


#: XTTS: ``XTTSDataset`` rejects clips under 0.5 s and over ``GPTArgs.max_wav_length`` (255995 samples at
#: 22050 Hz, about 11.6 s); VITS: coqui's defaults accept anything, but clips over ~15 s exhaust memory
#: on ordinary GPUs and clips under 0.5 s give the duration predictor nothing to learn.
ENGINE_LIMITS: dict[Engine, EngineLimits] = {
    Engine.XTTS: EngineLimits(
        sample_rate=22050, min_seconds=0.5, max_seconds=255995 / 22050, max_text_chars=250
    ),
    Engine.VITS: EngineLimits(sample_rate=22050, min_seconds=0.5, max_seconds=15.0, max_text_chars=400),
}


@dataclass(frozen=True)
class Clip:
    """One usable line of metadata.csv."""

    line: int
    id: str
    text: str
    path: Path
    sample_rate: int
    channels: int
    frames: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


@dataclass
class Problem:
    kind: str
    description: str
    count: int = 0
    examples: list[str] = field(default_factory=list)


class DatasetReport:
    """All problems found in a dataset, grouped by kind, with the first offending lines of each."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lines = 0
        self.clips: list[Clip] = []
        self.problems: dict[str, Problem] = {}
        self.resampled = 0

    def add(self, kind: str, description: str, example: str) -> None:
        problem = self.problems.setdefault(kind, Problem(kind, description))
        problem.count += 1
        if len(problem.examples) < EXAMPLES_PER_PROBLEM:
            problem.examples.append(example)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": str(self.root),
            "lines": self.lines,
            "usableClips": len(self.clips),
            "ok": self.ok,
            "problems": [
                {"kind": p.kind, "description": p.description, "count": p.count, "examples": p.examples}
                for p in self.problems.values()
            ],
        }

    def render(self) -> str:
        head = f"dataset {self.root}: {self.lines} metadata lines, {len(self.clips)} usable clips"
        if self.ok:
            return head + ", no problems"
        total = sum(p.count for p in self.problems.values())
        out = [f"{head}, {total} problem(s) in {len(self.problems)} kind(s):"]
        for p in self.problems.values():
            out.append(f"  {p.kind}: {p.count} — {p.description}")
            out.extend(f"      {e}" for e in p.examples)
            if p.count > len(p.examples):
                out.append(f"      ... and {p.count - len(p.examples)} more")
        return "\n".join(out)


class DatasetError(Exception):
    """The dataset cannot be trained on; retrying will not help."""

    def __init__(self, report: DatasetReport) -> None:
        super().__init__(report.render())
        self.report = report


@dataclass(frozen=True)
class PreparedDataset:
    """The outcome of a passing preflight: the samples coqui trains on, split, and a fingerprint."""

    root: Path
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    fingerprint: str
    report: DatasetReport


#: extra text check an engine can plug in (XTTS: the tokenizer must know every character)
TextCheck = Callable[[str], str | None]


def check_dataset(
    spec: DatasetSpec,
    engine: Engine,
    *,
    resample: bool | None = None,
    text_check: TextCheck | None = None,
    limits: EngineLimits | None = None,
) -> DatasetReport:
    """Read metadata.csv and every clip header; collect problems instead of stopping at the first."""
    root = Path(spec.path)
    limits = limits or ENGINE_LIMITS[engine]
    resample = spec.resample if resample is None else resample
    report = DatasetReport(root)
    meta = root / METADATA
    if not root.is_dir():
        report.add("missing_dataset", "the dataset folder does not exist", str(root))
        return report
    if not meta.is_file():
        report.add("missing_metadata", f"no {METADATA} (LJSpeech layout: {METADATA} + {WAVS}/)", str(meta))
        return report
    raw_lines = meta.read_bytes().splitlines()
    seen: dict[str, int] = {}
    rates: dict[int, int] = {}
    for number, raw in enumerate(raw_lines, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte-order mark that spreadsheet exports add
        if not raw.strip():
            continue
        report.lines += 1
        where = f"line {number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            report.add(
                "bad_encoding",
                "line is not valid UTF-8 (re-save metadata.csv as UTF-8)",
                f"{where}: byte {e.start}: {raw[:60]!r}",
            )
            continue
        cols = line.rstrip("\r").split("|")
        if len(cols) < 2:
            report.add("bad_columns", "expected id|text|normalized_text", f"{where}: {line[:80]!r}")
            continue
        clip_id = cols[0].strip()
        # the normalized column is what coqui's ljspeech formatter trains on; fall back to the raw text
        text = (cols[2] if len(cols) >= 3 and cols[2].strip() else cols[1]).strip()
        where = f"line {number} ({clip_id})"
        if not clip_id or "/" in clip_id or "\\" in clip_id or clip_id.startswith("."):
            report.add("bad_id", "clip ids must be plain file names (no paths)", f"{where}: {line[:80]!r}")
            continue
        if clip_id in seen:
            report.add(
                "duplicate_id", "the same clip id appears twice", f"{where}: first on line {seen[clip_id]}"
            )
            continue
        seen[clip_id] = number
        if not text:
            report.add("empty_text", "the transcript is empty", where)
            continue
        if "\ufffd" in text or any(ord(c) < 32 and c != "\t" for c in text):
            report.add(
                "bad_text", "the transcript holds replacement or control characters", f"{where}: {text!r}"
            )
            continue
        if len(text) > limits.max_text_chars:
            report.add(
                "text_too_long",
                f"transcripts longer than {limits.max_text_chars} characters do not fit the {engine} model",
                f"{where}: {len(text)} characters",
            )
            continue
        if text_check is not None and (why := text_check(text)):
            report.add(
                "text_unsupported", f"the {engine} tokenizer cannot encode the transcript", f"{where}: {why}"
            )
            continue
        wav = root / WAVS / f"{clip_id}.wav"
        if not wav.is_file():
            report.add(
                "missing_audio", f"no {WAVS}/<id>.wav for the line", f"{where}: {wav.relative_to(root)}"
            )
            continue
        try:
            info = sf.info(str(wav))
        except (RuntimeError, sf.LibsndfileError) as e:
            report.add("unreadable_audio", "the audio file cannot be decoded", f"{where}: {e}".strip())
            continue
        clip = Clip(number, clip_id, text, wav, int(info.samplerate), int(info.channels), int(info.frames))
        if clip.frames == 0:
            report.add("empty_audio", "the audio file holds no samples", where)
            continue
        if not limits.min_seconds <= clip.seconds <= limits.max_seconds:
            report.add(
                "bad_duration",
                f"clips must last {limits.min_seconds:g}-{limits.max_seconds:.1f} s for {engine}",
                f"{where}: {clip.seconds:.2f} s",
            )
            continue
        rates[clip.sample_rate] = rates.get(clip.sample_rate, 0) + 1
        if clip.sample_rate != limits.sample_rate and not resample:
            report.add(
                "wrong_sample_rate",
                f"{engine} trains at {limits.sample_rate} Hz and resampling is off (dataset.resample=false)",
                f"{where}: {clip.sample_rate} Hz",
            )
            continue
        report.clips.append(clip)
    if len(rates) > 1 and not resample:
        summary = ", ".join(f"{n} at {r} Hz" for r, n in sorted(rates.items()))
        report.add("mixed_sample_rates", "clips have different sample rates and resampling is off", summary)
    if report.lines == 0:
        report.add("empty_metadata", f"{METADATA} has no lines", str(meta))
    elif report.ok and len(report.clips) < 2:
        report.add(
            "too_few_clips", "training needs at least 2 clips (one for evaluation)", f"{len(report.clips)}"
        )
    return report


def select(clips: list[Clip], spec: DatasetSpec) -> tuple[list[Clip], list[Clip]]:
    """``maxSamples`` and the eval split, both drawn with the spec's seed so a retry sees the same split."""
    rng = random.Random(spec.seed)
    chosen = sorted(clips, key=lambda c: c.line)
    if spec.max_samples is not None and spec.max_samples < len(chosen):
        chosen = sorted(rng.sample(chosen, spec.max_samples), key=lambda c: c.line)
    shuffled = chosen[:]
    rng.shuffle(shuffled)
    n_eval = min(max(1, round(len(shuffled) * spec.eval_split)), len(shuffled) - 1)
    return shuffled[n_eval:], shuffled[:n_eval]


def resample_clip(clip: Clip, cache: Path, rate: int) -> Path:
    """A mono copy of the clip at the engine's rate (written once, atomically, then reused)."""
    dest = cache / f"{clip.id}.wav"
    if dest.is_file():
        return dest
    import torch
    import torchaudio

    data, sr = sf.read(str(clip.path), dtype="float32", always_2d=True)
    audio = torch.from_numpy(np.ascontiguousarray(data.T)).mean(dim=0, keepdim=True)
    if sr != rate:
        audio = torchaudio.functional.resample(audio, sr, rate)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp.wav")
    sf.write(str(tmp), audio.squeeze(0).numpy(), rate, subtype="PCM_16")
    os.replace(tmp, dest)
    return dest


def fingerprint(root: Path, clips: Iterable[Clip]) -> str:
    """sha256 over metadata.csv and the content of every clip used: the export manifest's dataset id."""
    h = hashlib.sha256()
    h.update(b"metadata\0")
    h.update(hashlib.sha256((root / METADATA).read_bytes()).digest())
    for clip in sorted(clips, key=lambda c: c.id):
        digest = hashlib.sha256(clip.path.read_bytes()).hexdigest()
        h.update(f"{clip.id}\0{clip.path.stat().st_size}\0{digest}\n".encode())
    return "sha256:" + h.hexdigest()


def to_sample(clip: Clip, audio: Path, language: str, root: Path) -> dict[str, Any]:
    """The sample dict coqui's ljspeech formatter plus ``add_extra_keys`` would have produced."""
    return {
        "text": clip.text,
        "audio_file": str(audio),
        "speaker_name": "ljspeech",
        "root_path": str(root),
        "language": language,
        "audio_unique_name": f"ljspeech#wavs/{clip.id}",
    }


def prepare_dataset(
    spec: DatasetSpec,
    engine: Engine,
    cache_dir: Path,
    *,
    resample: bool | None = None,
    text_check: TextCheck | None = None,
    report_path: Path | None = None,
    limits: EngineLimits | None = None,
) -> PreparedDataset:
    """Preflight, then select, resample where needed and fingerprint. Raises DatasetError."""
    limits = limits or ENGINE_LIMITS[engine]
    report = check_dataset(spec, engine, resample=resample, text_check=text_check, limits=limits)
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = report_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        os.replace(tmp, report_path)
    if not report.ok:
        raise DatasetError(report)
    rate = limits.sample_rate
    root = Path(spec.path)
    train, evals = select(report.clips, spec)

    def sample(clip: Clip) -> dict[str, Any]:
        audio = clip.path
        if clip.sample_rate != rate or clip.channels != 1:
            audio = resample_clip(clip, cache_dir, rate)
            report.resampled += 1
        return to_sample(clip, audio, spec.language, root)

    return PreparedDataset(
        root=root,
        train=[sample(c) for c in train],
        eval=[sample(c) for c in evals],
        fingerprint=fingerprint(root, train + evals),
        report=report,
    )
