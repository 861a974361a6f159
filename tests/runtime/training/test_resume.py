"""Kill a run mid-epoch, restart it: it resumes after the last finished epoch and repeats none.

Evidence comes from the trainer's own records (events.jsonl, progress.json, checkpoint files), never
from timing. The tiny XTTS is used: its steps are the cheapest of the two engines on CPU.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support.runtime_cli import REPO, Runner, read_events, runtime_env, trainer_command, write_spec
from support.waiting import WaitTimeout, wait_for
from tts_contract.contract import ExitCode

pytestmark = pytest.mark.slow

#: 6 clips, evalSplit 0.2 -> 5 training clips, batch 2 -> 3 steps per epoch
STEPS_PER_EPOCH = 3


def _spec(tmp_path: Path, base: Path, dataset: Path, out: Path) -> Path:
    return write_spec(
        tmp_path / "run.json",
        engine="xtts",
        baseModelPath=str(base),
        outputPath=str(out),
        dataset={"path": str(dataset), "evalSplit": 0.2},
        training={"epochs": 2, "batchSize": 2, "keepCheckpoints": 2},
    )


def _progress(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / "progress.json").read_text())["progress"]
    except (OSError, ValueError, KeyError):
        return {}


def _wait_for(
    what: str, condition: Callable[[], bool], proc: subprocess.Popen[str], timeout: float = 180
) -> None:
    def reached() -> bool:
        if condition():
            return True
        if proc.poll() is not None:
            stderr = proc.stderr.read()[-3000:] if proc.stderr else ""
            pytest.fail(f"trainer exited ({proc.returncode}) before {what}:\n{stderr}")
        return False

    try:
        wait_for(reached, timeout, what, interval=0.05, retry_on=())
    except WaitTimeout:
        proc.kill()
        raise


def _start(spec: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*trainer_command(), "--spec", str(spec)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=runtime_env(),
        cwd=REPO,
    )


def _in_second_epoch(out: Path) -> bool:
    return _progress(out).get("step", 0) > STEPS_PER_EPOCH


def _by_attempt(events: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    attempts: dict[int, list[dict[str, Any]]] = {}
    current = 0
    for e in events:
        if e["event"] == "attempt_start":
            current = e["attempt"]
        attempts.setdefault(current, []).append(e)
    return attempts


def test_sigkill_mid_epoch_then_restart_resumes_without_repeating(
    tiny_xtts_base: Path, spoken_dataset: Path, tmp_path: Path, run_cli: Runner
) -> None:
    out = tmp_path / "run"
    spec = _spec(tmp_path, tiny_xtts_base, spoken_dataset, out)
    proc = _start(spec)
    _wait_for("a step of epoch 2", lambda: _in_second_epoch(out), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    first = _by_attempt(read_events(out))[1]
    # killed inside epoch 2: epoch 1 is checkpointed, epoch 2 is not
    assert [e["epoch"] for e in first if e["event"] == "checkpoint"] == [1]
    assert not [e for e in first if e["event"] == "epoch_end" and e["epoch"] == 2]

    result = run_cli("--spec", str(spec))
    assert result.returncode == ExitCode.SUCCESS, result.stderr[-3000:]
    second = _by_attempt(read_events(out))[2]
    resumed = [e for e in second if e["event"] == "resumed"]
    assert resumed and resumed[0]["fromEpoch"] == 1 and resumed[0]["step"] == STEPS_PER_EPOCH
    assert [e["epoch"] for e in second if e["event"] == "epoch_start"] == [2]  # epoch 1 not repeated
    all_ends = [e["epoch"] for e in read_events(out) if e["event"] == "epoch_end"]
    assert all_ends == [1, 2]
    progress = _progress(out)
    assert progress["attempt"] == 2 and progress["resumedFromEpoch"] == 1
    assert progress["step"] == 2 * STEPS_PER_EPOCH  # steps continue from the checkpoint, none counted twice
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pth")) == [
        "best_model.pth", "epoch_0001.pth", "epoch_0002.pth",
    ]  # fmt: skip
    # one run folder, however many attempts: coqui's logs continue in logs/; voices/ holds the
    # reference clip the export ships (XTTS), written once
    folders = {p.name for p in out.iterdir() if p.is_dir()}
    assert (
        {"checkpoints", "logs", "model", "samples", "voices"}
        <= folders
        <= {"cache", "checkpoints", "logs", "model", "samples", "voices"}
    )


def test_sigterm_checkpoints_and_exits_interrupted_then_resumes(
    tiny_xtts_base: Path, spoken_dataset: Path, tmp_path: Path, run_cli: Runner
) -> None:
    out = tmp_path / "run"
    spec = _spec(tmp_path, tiny_xtts_base, spoken_dataset, out)
    proc = _start(spec)
    _wait_for("a step of epoch 2", lambda: _in_second_epoch(out), proc)
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    code = proc.wait(60)  # well inside Kubernetes' default 30 s grace period on a real GPU node
    took = time.monotonic() - sent
    stderr = proc.stderr.read() if proc.stderr else ""
    assert code == ExitCode.INTERRUPTED, stderr[-3000:]
    interrupted = [e for e in read_events(out) if e["event"] == "interrupted"]
    assert interrupted and interrupted[0]["saved"] and interrupted[0]["epochsCompleted"] == 1
    assert (out / "checkpoints" / "interrupted.pth").is_file()
    assert "interrupted: checkpoint" in stderr
    stopped_at = interrupted[0]["step"]
    assert stopped_at > STEPS_PER_EPOCH
    print(f"SIGTERM to exit: {took:.1f} s")

    result = run_cli("--spec", str(spec))
    assert result.returncode == ExitCode.SUCCESS, result.stderr[-3000:]
    second = _by_attempt(read_events(out))[2]
    resumed = next(e for e in second if e["event"] == "resumed")
    # resumes from the newer weights of the interrupted checkpoint, repeating only the unfinished epoch 2
    assert (
        resumed["file"] == "interrupted.pth" and resumed["fromEpoch"] == 1 and resumed["step"] == stopped_at
    )
    assert [e["epoch"] for e in second if e["event"] == "epoch_start"] == [2]
    assert not (out / "checkpoints" / "interrupted.pth").exists()  # superseded by epoch 2's checkpoint
    assert _progress(out)["step"] == stopped_at + STEPS_PER_EPOCH
