"""A run whose checkpoints live in object storage (RunSpec.checkpointsUri; training/mirror.py), against
the session's real SeaweedFS (``s3_server``).

The first tests drive ``RunMirror`` over a real ``CheckpointStore`` without training: what a sync
uploads, that the bucket's checkpoint index is written after the files it names and before the
pruned ones are deleted (checked after every single write the mirror makes), what a restore brings
back, and the exit codes of a storage that refuses or cannot be reached. The last one trains the
tiny XTTS through the real CLI, kills it (SIGKILL, as a node dies) inside epoch 2, and resumes it in
a fresh, empty run folder (another node) from the bucket alone.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from support.runtime_cli import REPO, read_events, runtime_env, trainer_command, write_spec
from support.s3 import boto3_client, unique_prefix
from support.waiting import WaitTimeout, wait_for
from tts_contract.contract import ExitCode
from tts_runtime.artifacts.store import ArtifactError
from tts_runtime.training.checkpoints import CheckpointInfo, CheckpointStore
from tts_runtime.training.mirror import CHECKPOINT_INDEX, RunMirror

#: bucket writes after which the bucket is checked (the index names only objects that exist)
_WRITES = ("PutObject", "CopyObject", "CompleteMultipartUpload", "DeleteObject")


def _keys(s3: Any, bucket: str, prefix: str) -> dict[str, int]:
    """Relative path -> size of every object under ``prefix/``."""
    found: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        for item in page.get("Contents", []):
            found[item["Key"][len(prefix) + 1 :]] = item["Size"]
    return found


def _bucket_index(s3: Any, bucket: str, prefix: str) -> list[str] | None:
    try:
        body = s3.get_object(Bucket=bucket, Key=f"{prefix}/{CHECKPOINT_INDEX}")["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None
    return sorted(json.loads(body)["files"])


def _unnamed(s3: Any, bucket: str, prefix: str) -> list[str]:
    """Checkpoints the bucket's index names that are not in the bucket (must stay empty). Listed
    before and after reading the index: a file named by the index it was read from was there at one
    of the two listings, unless deleted in between by a later sync (not within one check)."""
    before = _keys(s3, bucket, prefix)
    named = _bucket_index(s3, bucket, prefix) or []
    after = _keys(s3, bucket, prefix)
    return [n for n in named if f"checkpoints/{n}" not in before and f"checkpoints/{n}" not in after]


class _Watch:
    """Records the mirror's requests in the order they complete, and checks the bucket after each
    write: the index may only name objects that exist."""

    def __init__(self, mirror: RunMirror, checker: Any, bucket: str, prefix: str) -> None:
        self.calls: list[tuple[str, str]] = []
        self.violations: list[str] = []
        self._lock = threading.Lock()
        self.checker, self.bucket, self.prefix = checker, bucket, prefix
        events = mirror.client.meta.events
        events.register("provide-client-params.s3", self._params)
        events.register("after-call.s3", self._after)

    def _params(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["test-key"] = params.get("Key", "")

    def _after(self, model: Any, context: dict[str, Any], **_: Any) -> None:
        key = str(context.get("test-key", ""))
        with self._lock:
            self.calls.append((model.name, key.removeprefix(f"{self.prefix}/")))
            if model.name in _WRITES:
                missing = _unnamed(self.checker, self.bucket, self.prefix)
                if missing:
                    self.violations.append(f"after {model.name} {key}: the index names missing {missing}")

    def take(self) -> list[tuple[str, str]]:
        with self._lock:
            calls, self.calls = self.calls, []
        return [c for c in calls if c[0] in _WRITES]


def _state(n: int) -> dict[str, Any]:
    import torch

    return {"model": {"w": torch.full((256,), float(n))}, "step": n}


def _save(store: CheckpointStore, epoch: int, loss: float) -> None:
    store.save_epoch(_state(epoch), CheckpointInfo("", epoch, epoch * 3, loss, loss))


def _local_checkpoints(out: Path) -> set[str]:
    return {p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith(".")}


def _bucket_checkpoints(s3: Any, bucket: str, prefix: str) -> set[str]:
    return {k.split("/", 1)[1] for k in _keys(s3, bucket, prefix) if k.startswith("checkpoints/")}


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)


@pytest.fixture
def prefix() -> str:
    return unique_prefix("mirror")


def test_sync_uploads_checkpoints_before_their_index_and_deletes_pruned_ones_after_it(
    s3_server: Any, prefix: str, tmp_path: Path
) -> None:
    s3 = boto3_client(s3_server)
    bucket = s3_server.bucket
    out = tmp_path / "run"
    mirror = RunMirror(f"s3://{bucket}/{prefix}", out, env=s3_server.env("admin"))
    assert mirror.restore().files == []  # nothing there: a fresh run
    watch = _Watch(mirror, s3, bucket, prefix)
    store = CheckpointStore(out / "checkpoints", keep=2)
    _write(out / "events.jsonl", '{"event": "attempt_start"}\n')
    _write(out / "cache" / "wavs" / "clip.wav", b"resampled")  # never mirrored
    _write(out / ".progress.json.tmp", "{}")  # a temporary of an atomic write: never mirrored
    _write(out / "logs" / "events.out.tfevents.1.host", b"tb" * 100)

    def sync_and_check(expect_deleted: set[str]) -> list[tuple[str, str]]:
        result = mirror.sync()
        calls = watch.take()
        index_at = calls.index(("PutObject", CHECKPOINT_INDEX))
        before, after = calls[:index_at], calls[index_at + 1 :]
        # every checkpoint file is in the bucket before the index that names it
        assert not [c for c in after if c[0] != "DeleteObject"], calls
        assert {k for op, k in after} == {f"checkpoints/{n}" for n in expect_deleted}, calls
        assert set(result.deleted) == {f"checkpoints/{n}" for n in expect_deleted}
        assert all(k != CHECKPOINT_INDEX for _, k in before)
        # the bucket now mirrors the folder's checkpoints exactly, index included
        assert _bucket_checkpoints(s3, bucket, prefix) == _local_checkpoints(out)
        assert _bucket_index(s3, bucket, prefix) == sorted(
            json.loads((out / CHECKPOINT_INDEX).read_text())["files"]
        )
        return before

    _save(store, 1, 3.0)
    _write(out / "samples" / "epoch_1.wav", b"RIFF1")
    first = sync_and_check(set())
    assert ("PutObject", "checkpoints/epoch_0001.pth") in first
    # best_model.pth is a hard link of epoch 1: copied inside the bucket, not uploaded again
    assert ("CopyObject", "checkpoints/best_model.pth") in first
    keys = _keys(s3, bucket, prefix)
    assert {"events.jsonl", "samples/epoch_1.wav", "logs/events.out.tfevents.1.host"} <= set(keys)
    assert not [k for k in keys if k.startswith("cache/") or "/." in f"/{k}"]

    assert mirror.sync().changed is False  # nothing new: nothing sent

    _save(store, 2, 2.0)
    sync_and_check(set())
    _save(store, 3, 2.5)  # not the best; keep=2 prunes epoch 1
    second = sync_and_check({"epoch_0001.pth"})
    assert [k for _, k in second] == ["checkpoints/epoch_0003.pth"]  # only what changed
    store.save_interrupted(_state(4), CheckpointInfo("", 3, 11, None, 2.4))  # SIGTERM mid-epoch 4
    sync_and_check(set())
    _save(store, 4, 1.0)  # supersedes interrupted.pth, prunes epoch 2, the new best
    sync_and_check({"interrupted.pth", "epoch_0002.pth"})
    assert not watch.violations, watch.violations

    # the summary the export reads goes after model/, and last
    _write(out / "model" / "model.pth", b"weights")
    _write(out / "model" / "config.json", "{}")
    _write(out / "training.json", "{}")
    result = mirror.sync(final=True)
    calls = watch.take()
    assert calls[-1] == ("PutObject", "training.json")
    assert {"model/model.pth", "model/config.json"} <= set(result.uploaded)


def test_restore_into_an_empty_folder_brings_back_what_the_index_names(
    s3_server: Any, prefix: str, tmp_path: Path
) -> None:
    s3 = boto3_client(s3_server)
    bucket = s3_server.bucket
    uri = f"s3://{bucket}/{prefix}"
    node_a = tmp_path / "node-a"
    mirror = RunMirror(uri, node_a, env=s3_server.env("admin"))
    mirror.restore()
    store = CheckpointStore(node_a / "checkpoints", keep=3)
    for epoch in (1, 2):
        _save(store, epoch, 3.0 - epoch)
    _write(node_a / "events.jsonl", '{"event": "attempt_start", "attempt": 1}\n')
    _write(node_a / "progress.json", '{"progress": {"epoch": 2}}\n')
    _write(node_a / "samples" / "epoch_1.wav", b"RIFF1")
    _write(node_a / "voices" / "voices.json", "{}")
    _write(node_a / "ranks" / "1" / "events.jsonl", '{"event": "attempt_start", "rank": 1}\n')
    mirror.sync()
    # a sync that died between its upload and its index: the bucket has a checkpoint nobody names
    s3.put_object(Bucket=bucket, Key=f"{prefix}/checkpoints/epoch_0003.pth", Body=b"not sealed")

    node_b = tmp_path / "node-b"
    again = RunMirror(uri, node_b, env=s3_server.env("admin"))
    result = again.restore()
    assert result.ignored == ["checkpoints/epoch_0003.pth"]
    assert "ranks/1/events.jsonl" not in result.files  # rank 1 restores its own
    for rel in (
        "events.jsonl",
        "progress.json",
        "samples/epoch_1.wav",
        "voices/voices.json",
        CHECKPOINT_INDEX,
    ):
        assert (node_b / rel).read_bytes() == (node_a / rel).read_bytes(), rel
    assert _local_checkpoints(node_b) == _local_checkpoints(node_a)
    restored = CheckpointStore(node_b / "checkpoints", keep=3)
    latest = restored.latest()
    assert latest is not None and latest.file == "epoch_0002.pth" and latest.step == 6
    assert float(restored.load(latest)["model"]["w"][0]) == 2.0
    # the next sync sends nothing back, and removes what the index never named
    first = again.sync()
    assert first.uploaded == [] and first.deleted == ["checkpoints/epoch_0003.pth"]

    rank1 = RunMirror(uri, node_b, rank=1, env=s3_server.env("admin"))
    assert rank1.restore().files == ["ranks/1/events.jsonl"]
    assert rank1.sync().changed is False  # only rank 0 uploads

    # a folder with a history of its own (the container restarted in its pod) is newer: kept
    _write(node_b / "events.jsonl", '{"event": "newer"}\n')
    kept = RunMirror(uri, node_b, env=s3_server.env("admin")).restore()
    assert kept.kept_local and (node_b / "events.jsonl").read_text() == '{"event": "newer"}\n'
    # ... unless its restore did not finish: then it is done again
    (node_b / ".mirror-restoring").touch()
    redone = RunMirror(uri, node_b, env=s3_server.env("admin")).restore()
    assert not redone.kept_local and not (node_b / ".mirror-restoring").exists()
    assert (node_b / "events.jsonl").read_bytes() == (node_a / "events.jsonl").read_bytes()


def test_refused_and_unreachable_storage_end_with_the_contract_codes(
    s3_server: Any, prefix: str, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    _write(out / "events.jsonl", "{}\n")
    reader = s3_server.env("reader")  # may Read and List only
    mirror = RunMirror(f"s3://{s3_server.bucket}/{prefix}", out, env=reader)
    mirror.restore()
    with pytest.raises(ArtifactError) as denied:
        mirror.sync()
    assert denied.value.code == ExitCode.ACCESS_DENIED
    assert f"s3://{s3_server.bucket}/{prefix}" in str(denied.value)
    assert reader["AWS_SECRET_ACCESS_KEY"] not in str(denied.value)

    from tts_devcluster.s3 import S3Ports

    closed = {**s3_server.env("admin"), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3Ports.free().s3}"}
    retries: list[str] = []
    gone = RunMirror(
        f"s3://{s3_server.bucket}/{prefix}", out, env=closed, retry_s=1.0, on_retry=retries.append
    )
    with pytest.raises(ArtifactError) as unreachable:
        gone.restore()
    assert unreachable.value.code == ExitCode.STORAGE_UNREACHABLE and retries
    with pytest.raises(ArtifactError) as bad:
        RunMirror("https://example.com/x", out)
    assert bad.value.code == ExitCode.BAD_INPUT


# --- a real run ------------------------------------------------------------------------------------

#: 6 clips, evalSplit 0.2 -> 5 training clips, batch 2 -> 3 steps per epoch
STEPS_PER_EPOCH = 3


def _progress(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / "progress.json").read_text())["progress"]
    except (OSError, ValueError, KeyError):
        return {}


class _Poller(threading.Thread):
    """Checks the bucket over and over while the trainer runs: its index never names a missing file."""

    def __init__(self, s3: Any, bucket: str, prefix: str) -> None:
        super().__init__(daemon=True)
        self.s3, self.bucket, self.prefix = s3, bucket, prefix
        self.stop = threading.Event()
        self.violations: list[str] = []
        self.checks = 0

    def run(self) -> None:
        while not self.stop.wait(0.1):
            missing = _unnamed(self.s3, self.bucket, self.prefix)
            self.checks += 1
            if missing:
                self.violations.append(f"the index names missing {missing}")


def _start(spec: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*trainer_command(), "--spec", str(spec)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


def _wait_in_epoch_2(proc: subprocess.Popen[str], out: Path, past_step: int) -> None:
    def reached() -> bool:
        if proc.poll() is not None:
            stderr = proc.stderr.read()[-3000:] if proc.stderr else ""
            pytest.fail(f"trainer exited ({proc.returncode}) before step {past_step + 1}:\n{stderr}")
        return _progress(out).get("step", 0) > past_step

    try:
        wait_for(reached, 180, f"step {past_step + 1}", interval=0.05, retry_on=())
    except WaitTimeout:
        proc.kill()
        raise


@pytest.mark.slow
def test_killed_run_resumes_on_another_node_from_the_bucket(
    s3_server: Any, tiny_xtts_base: Path, spoken_dataset: Path, prefix: str, tmp_path: Path
) -> None:
    """Node A dies (SIGKILL) inside epoch 2; node B resumes from the bucket, is drained (SIGTERM)
    inside epoch 2 and uploads its interrupted checkpoint; node C finishes from that checkpoint.
    Each node starts with an empty folder: the bucket is all they share."""
    s3 = boto3_client(s3_server)
    bucket = s3_server.bucket
    run_prefix = f"{prefix}/default/test-run"

    def spec(out: Path) -> Path:
        return write_spec(
            tmp_path / f"{out.name}.json",
            engine="xtts",
            baseModelPath=str(tiny_xtts_base),
            outputPath=str(out),
            checkpointsUri=f"s3://{bucket}/{run_prefix}",
            dataset={"path": str(spoken_dataset), "evalSplit": 0.2},
            training={"epochs": 2, "batchSize": 2, "keepCheckpoints": 1},
        )

    env = {**runtime_env(), **s3_server.env("admin")}
    poller = _Poller(s3, bucket, run_prefix)
    poller.start()
    try:
        node_a = tmp_path / "node-a"
        proc = _start(spec(node_a), env)
        _wait_in_epoch_2(proc, node_a, STEPS_PER_EPOCH)
        proc.send_signal(signal.SIGKILL)  # the node dies, its emptyDir with it
        proc.wait(30)
        assert not [e for e in read_events(node_a) if e["event"] == "epoch_end" and e["epoch"] == 2]
        shutil.rmtree(node_a)

        # (1) epoch 1 is in the bucket: checkpoint, index, sample, TensorBoard, the audit trail
        keys = _keys(s3, bucket, run_prefix)
        assert {
            "checkpoints/epoch_0001.pth", "checkpoints/best_model.pth", CHECKPOINT_INDEX,
            "samples/epoch_1.wav", "events.jsonl", "progress.json", "voices/voices.json",
        } <= set(keys), sorted(keys)  # fmt: skip
        assert [k for k in keys if k.startswith("logs/events.out.tfevents.")]
        assert _bucket_index(s3, bucket, run_prefix) == ["best_model.pth", "epoch_0001.pth"]
        assert not [k for k in keys if k.startswith("cache/")]

        # (2) a new pod on another node: an empty folder, the same checkpointsUri; drained in epoch 2
        node_b = tmp_path / "node-b"
        proc = _start(spec(node_b), env)
        _wait_in_epoch_2(proc, node_b, STEPS_PER_EPOCH)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        stderr = proc.stderr.read() if proc.stderr else ""
        assert code == ExitCode.INTERRUPTED, stderr[-3000:]
        assert "checkpoints: restored" in stderr
        interrupted = [e for e in read_events(node_b) if e["event"] == "interrupted"]
        assert interrupted and interrupted[0]["saved"] and interrupted[0]["epochsCompleted"] == 1
        stopped_at = interrupted[0]["step"]
        assert _bucket_index(s3, bucket, run_prefix) == [
            "best_model.pth",
            "epoch_0001.pth",
            "interrupted.pth",
        ]
        shutil.rmtree(node_b)

        node_c = tmp_path / "node-c"
        result = subprocess.run(
            [*trainer_command(), "--spec", str(spec(node_c))],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            cwd=REPO,
        )
        assert result.returncode == ExitCode.SUCCESS, result.stderr[-3000:]
    finally:
        poller.stop.set()
        poller.join(10)

    events = read_events(node_c)
    by_attempt: list[list[dict[str, Any]]] = []
    for e in events:
        if e["event"] == "attempt_start":
            by_attempt.append([])
        by_attempt[-1].append(e)
    # the earlier attempts' trail came from the bucket
    assert [a[0]["attempt"] for a in by_attempt] == [1, 2, 3]
    resumed = [[e for e in a if e["event"] == "resumed"] for a in by_attempt]
    assert resumed[1][0]["fromEpoch"] == 1 and resumed[1][0]["step"] == STEPS_PER_EPOCH
    # node C resumes from the newer weights of node B's interrupted checkpoint
    assert resumed[2][0]["file"] == "interrupted.pth" and resumed[2][0]["step"] == stopped_at
    # no finished epoch was ever trained again: epoch 1 once, only the unfinished epoch 2 repeated
    # (node A's lines after its last sync, epoch 2's start, died with its folder)
    assert [[e["epoch"] for e in a if e["event"] == "epoch_start"] for a in by_attempt] == [[1], [2], [2]]
    assert [e["epoch"] for e in events if e["event"] == "epoch_end"] == [1, 2]
    progress = _progress(node_c)
    assert progress["attempt"] == 3 and progress["resumedFromEpoch"] == 1
    assert progress["step"] == stopped_at + STEPS_PER_EPOCH
    assert (node_c / "samples" / "epoch_1.wav").is_file()  # restored, not made again

    # the bucket ends as the folder: keepCheckpoints=1 pruned epoch 1, interrupted.pth superseded
    assert _bucket_checkpoints(s3, bucket, run_prefix) == _local_checkpoints(node_c)
    assert not {"epoch_0001.pth", "interrupted.pth"} & _bucket_checkpoints(s3, bucket, run_prefix)
    keys = _keys(s3, bucket, run_prefix)
    model_files = {p.relative_to(node_c).as_posix() for p in (node_c / "model").rglob("*") if p.is_file()}
    assert model_files and model_files <= set(keys)  # what the export fetches
    assert {"training.json", "samples/epoch_2.wav", "voices/voices.json"} <= set(keys)
    final_events = s3.get_object(Bucket=bucket, Key=f"{run_prefix}/events.jsonl")["Body"].read()
    assert final_events == (node_c / "events.jsonl").read_bytes()  # the attempt's end included

    # (3) at no point did the bucket's index name a checkpoint that was not there
    assert poller.checks > 10 and not poller.violations, poller.violations
