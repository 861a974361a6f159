"""Broken datasets end before any training with one clear report and ExitCode.BAD_INPUT (65).

Each case breaks a copy of a real spoken dataset one way and runs the real CLI on it; the VITS engine
without a base model is used because its config is the cheapest to build.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import soundfile as sf

from support.datasets import speak
from support.runtime_cli import Runner
from tts_contract.contract import DatasetSpec, Engine, ExitCode
from tts_runtime.training.dataset import check_dataset, fingerprint, prepare_dataset, select


def _missing_wav(ds: Path) -> None:
    (ds / "wavs" / "clip_001.wav").unlink()


def _unreadable_wav(ds: Path) -> None:
    (ds / "wavs" / "clip_002.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 10)


def _wrong_rate(ds: Path) -> None:
    speak("Hello world.", ds / "wavs" / "clip_000.wav", sample_rate=16000)


def _too_short(ds: Path) -> None:
    subprocess.run(
        ["sox", str(ds / "wavs" / "clip_000.wav"), str(ds / "short.wav"), "trim", "0", "0.1"], check=True
    )
    (ds / "short.wav").replace(ds / "wavs" / "clip_000.wav")


def _too_long(ds: Path) -> None:
    sf.write(str(ds / "wavs" / "clip_003.wav"), [0.01] * (22050 * 20), 22050)


def _empty_text(ds: Path) -> None:
    lines = (ds / "metadata.csv").read_text().splitlines()
    lines[1] = "clip_001||"
    (ds / "metadata.csv").write_text("\n".join(lines) + "\n")


def _bad_encoding(ds: Path) -> None:
    raw = (ds / "metadata.csv").read_bytes().splitlines()
    raw[2] = "clip_002|Caf\u00e9 ol\u00e9|Caf\u00e9 ol\u00e9".encode("latin-1")
    (ds / "metadata.csv").write_bytes(b"\n".join(raw) + b"\n")


def _no_metadata(ds: Path) -> None:
    (ds / "metadata.csv").unlink()


def _bad_columns(ds: Path) -> None:
    with open(ds / "metadata.csv", "a") as f:
        f.write("just one column without pipes\n")


def _duplicate_id(ds: Path) -> None:
    with open(ds / "metadata.csv", "a") as f:
        f.write("clip_000|Again.|Again.\n")


def _unsupported_chars(ds: Path) -> None:
    with open(ds / "metadata.csv", "a") as f:
        f.write("clip_005|\u65e5\u672c\u8a9e\u3067\u3059|\u65e5\u672c\u8a9e\u3067\u3059\n")
    lines = (ds / "metadata.csv").read_text().splitlines()
    (ds / "metadata.csv").write_text(
        "\n".join(line for line in lines if not line.startswith("clip_005|Come")) + "\n"
    )


def _path_in_id(ds: Path) -> None:
    with open(ds / "metadata.csv", "a") as f:
        f.write("../../etc/passwd|Sneaky.|Sneaky.\n")


CASES: list[tuple[str, Callable[[Path], None], list[str], str, list[str]]] = [
    # (name, break it, extra flags, problem kind in the report, words the report must show)
    ("missing wav", _missing_wav, [], "missing_audio", ["line 2 (clip_001)", "wavs/clip_001.wav"]),
    ("unreadable wav", _unreadable_wav, [], "unreadable_audio", ["line 3 (clip_002)"]),
    ("wrong sample rate", _wrong_rate, ["--no-resample"], "wrong_sample_rate", ["16000 Hz", "22050 Hz"]),
    (
        "mixed sample rates",
        _wrong_rate,
        ["--no-resample"],
        "mixed_sample_rates",
        ["1 at 16000 Hz, 5 at 22050 Hz"],
    ),
    ("clip too short", _too_short, [], "bad_duration", ["line 1 (clip_000)", "0.10 s"]),
    ("clip too long", _too_long, [], "bad_duration", ["line 4 (clip_003)", "20.00 s"]),
    ("empty transcript", _empty_text, [], "empty_text", ["line 2 (clip_001)"]),
    ("bad encoding", _bad_encoding, [], "bad_encoding", ["line 3", "UTF-8"]),
    ("no metadata.csv", _no_metadata, [], "missing_metadata", ["metadata.csv"]),
    ("wrong columns", _bad_columns, [], "bad_columns", ["line 7", "just one column"]),
    ("duplicate id", _duplicate_id, [], "duplicate_id", ["line 7 (clip_000)", "first on line 1"]),
    ("unsupported characters", _unsupported_chars, [], "text_unsupported", ["(clip_005)", "vocabulary"]),
    ("path in id", _path_in_id, [], "bad_id", ["../../etc/passwd"]),
]


@pytest.mark.parametrize(("name", "breaker", "flags", "kind", "words"), CASES, ids=[c[0] for c in CASES])
def test_broken_dataset_is_reported_and_rejected(
    name: str,
    breaker: Callable[[Path], None],
    flags: list[str],
    kind: str,
    words: list[str],
    dataset_copy: Path,
    tmp_path: Path,
    run_cli: Runner,
) -> None:
    breaker(dataset_copy)
    out = tmp_path / "run"
    result = run_cli(
        "--engine", "vits", "--dataset", str(dataset_copy), "--output", str(out), "--epochs", "1",
        "--device-policy", "CPU", *flags,
    )  # fmt: skip
    assert result.returncode == ExitCode.BAD_INPUT, result.stderr[-3000:]
    assert "the dataset cannot be trained on" in result.stderr
    assert kind in result.stderr
    for word in words:
        assert word in result.stderr, f"{word!r} missing from:\n{result.stderr[-3000:]}"
    report = json.loads((out / "dataset-report.json").read_text())
    assert not report["ok"]
    assert kind in {p["kind"] for p in report["problems"]}
    # no training started: no checkpoints, no model
    assert not (out / "checkpoints").exists()


def test_many_problems_make_one_report_with_counts(
    dataset_copy: Path, tmp_path: Path, run_cli: Runner
) -> None:
    with open(dataset_copy / "metadata.csv", "a") as f:
        for i in range(8):
            f.write(f"gone{i}|Missing clip.|Missing clip.\n")
        f.write("clip_009||\n")
    out = tmp_path / "run"
    result = run_cli(
        "--engine", "vits", "--dataset", str(dataset_copy), "--output", str(out), "--epochs", "1"
    )
    assert result.returncode == ExitCode.BAD_INPUT
    err = result.stderr
    assert "15 metadata lines, 6 usable clips, 9 problem(s) in 2 kind(s)" in err, err[-2000:]
    assert "missing_audio: 8" in err and "empty_text: 1" in err
    assert "line 7 (gone0)" in err and "... and 3 more" in err  # the first five, then a count


def test_bad_spec_is_bad_input(tmp_path: Path, run_cli: Runner) -> None:
    result = run_cli(
        "--engine", "vits", "--dataset", str(tmp_path), "--output", str(tmp_path / "o"), "--epochs", "0"
    )
    assert result.returncode == ExitCode.BAD_INPUT
    assert "training.epochs" in result.stderr


def test_xtts_without_base_model_files_is_bad_input(
    dataset_copy: Path, tmp_path: Path, run_cli: Runner
) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    result = run_cli(
        "--engine", "xtts", "--base-model", str(base), "--dataset", str(dataset_copy),
        "--output", str(tmp_path / "o"), "--epochs", "1",
    )  # fmt: skip
    assert result.returncode == ExitCode.BAD_INPUT
    assert "lacks model.pth, vocab.json, dvae.pth, mel_stats.pth" in result.stderr


# --- in-process: selection, resampling, fingerprint ---------------------------------------------


def test_mixed_rates_are_resampled_when_allowed(dataset_copy: Path, tmp_path: Path) -> None:
    speak("Hello world.", dataset_copy / "wavs" / "clip_000.wav", sample_rate=16000)
    spec = DatasetSpec(path=str(dataset_copy), evalSplit=0.2)
    prepared = prepare_dataset(spec, Engine.VITS, tmp_path / "cache")
    resampled = [s for s in prepared.train + prepared.eval if str(tmp_path / "cache") in s["audio_file"]]
    assert len(resampled) == 1 and prepared.report.resampled == 1
    assert sf.info(resampled[0]["audio_file"]).samplerate == 22050


def test_max_samples_and_split_are_seeded(dataset_copy: Path) -> None:
    report = check_dataset(DatasetSpec(path=str(dataset_copy)), Engine.VITS)
    assert report.ok and len(report.clips) == 6
    spec = DatasetSpec(path=str(dataset_copy), maxSamples=4, evalSplit=0.25, seed=7)
    train, evals = select(report.clips, spec)
    again = select(report.clips, spec)
    assert (train, evals) == again  # a retried pod sees the same split
    assert len(train) == 3 and len(evals) == 1
    other = select(report.clips, DatasetSpec(path=str(dataset_copy), maxSamples=4, evalSplit=0.25, seed=8))
    assert {c.id for c in train + evals} != {c.id for c in other[0] + other[1]} or evals != other[1]


def test_fingerprint_changes_with_any_clip(dataset_copy: Path) -> None:
    report = check_dataset(DatasetSpec(path=str(dataset_copy)), Engine.VITS)
    before = fingerprint(dataset_copy, report.clips)
    assert before == fingerprint(dataset_copy, report.clips)
    data, rate = sf.read(str(dataset_copy / "wavs" / "clip_003.wav"))
    sf.write(str(dataset_copy / "wavs" / "clip_003.wav"), data * 0.5, rate)
    assert fingerprint(dataset_copy, report.clips) != before


def test_copy_of_dataset_is_untouched(spoken_dataset: Path) -> None:
    # the session dataset must stay valid for the other tests
    assert check_dataset(DatasetSpec(path=str(spoken_dataset)), Engine.VITS).ok
    assert shutil.which("espeak-ng")


def test_cpu_verdict_keeps_coqui_trainer_off_the_gpu():
    """When the preflight chose the CPU, coqui's Trainer must not pick CUDA on its own."""
    from trainer import Trainer, TrainerArgs, TrainerConfig

    from tts_runtime.training.runner import _cpu_trainer

    cls = _cpu_trainer(Trainer)
    assert issubclass(cls, Trainer)
    assert cls.setup_training_environment(TrainerArgs(), TrainerConfig(), None) == (False, 0)
