"""The work queue both controllers run their reconciles through (real threads), and the
VoiceModel controller's TrainingRun index."""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Any

import pytest

from tts_operator.controller.queue import NEW, RESYNC, WorkQueue
from tts_operator.reconcile.voicemodel import RunIndex


class Recorder:
    """A handler that records (key, trigger, payload) and can hold one key until released."""

    def __init__(self, hold: Hashable | None = None) -> None:
        self.calls: list[tuple[Hashable, str, Any]] = []
        self.hold, self.holding, self.release = hold, threading.Event(), threading.Event()
        self.done = threading.Semaphore(0)
        self._guard = threading.Lock()

    def __call__(self, key: Hashable, trigger: str, payload: Any) -> None:
        with self._guard:
            self.calls.append((key, trigger, payload))
            first_of_held = key == self.hold and not self.holding.is_set()
        if first_of_held:
            self.holding.set()
            assert self.release.wait(10)
        self.done.release()

    def wait_for(self, n: int) -> None:
        for _ in range(n):
            assert self.done.acquire(timeout=10), f"only {self.calls} handled"


def test_triggers_while_a_key_is_handled_fold_into_one_more_round_without_payload() -> None:
    rec = Recorder(hold="a")
    queue = WorkQueue("test", rec, workers=2)
    try:
        queue.add("a", "ADDED", {"body": 1})
        assert rec.holding.wait(10)
        for trigger in ("Job", "Pod", "Pod", "Job", "Pod"):  # five triggers while "a" is handled
            queue.add("a", trigger, {"ignored": True})
        queue.add("b", "Pod")  # another key is not held up by "a"
        rec.wait_for(1)
        assert rec.calls[-1] == ("b", "Pod", None)
        rec.release.set()
        rec.wait_for(2)  # "a" itself, then one more round for all five triggers
        assert [c for c in rec.calls if c[0] == "a"] == [("a", "ADDED", {"body": 1}), ("a", "Job", None)]
        assert not queue.busy()
    finally:
        queue.stop()


def test_a_key_waits_in_the_queue_once_and_keeps_its_first_payload() -> None:
    rec = Recorder(hold="busy")
    queue = WorkQueue("test", rec, workers=1)  # one worker, held: everything else waits
    try:
        queue.add("busy", "resync")
        assert rec.holding.wait(10)
        queue.add("a", "ADDED", "created")
        queue.add("a", "MODIFIED", "later")
        queue.add("b", "Pod")
        assert queue.depth() == 2
        rec.release.set()
        rec.wait_for(3)
        assert rec.calls == [("busy", "resync", None), ("a", "ADDED", "created"), ("b", "Pod", None)]
    finally:
        queue.stop()


def test_new_objects_go_first_then_events_then_the_resync() -> None:
    rec = Recorder(hold="busy")
    queue = WorkQueue("test", rec, workers=1)
    try:
        queue.add("busy", "Pod")
        assert rec.holding.wait(10)
        queue.add("old-1", "resync", priority=RESYNC)
        queue.add("old-2", "Deployment")
        queue.add("new-1", "ADDED", "uid-1", priority=NEW)
        queue.add("old-1", "Pod")  # a real event moves a resync round up (behind old-2)
        queue.add("new-2", "ADDED", "uid-2", priority=NEW)
        queue.add("busy", "resync", priority=RESYNC)  # one more round for "busy", last
        rec.release.set()
        rec.wait_for(6)
        assert [(k, t, p) for k, t, p in rec.calls] == [
            ("busy", "Pod", None),
            ("new-1", "ADDED", "uid-1"),
            ("new-2", "ADDED", "uid-2"),
            ("old-2", "Deployment", None),
            ("old-1", "resync", None),  # the first trigger's name and payload stay
            ("busy", "resync", None),
        ]
        with pytest.raises(ValueError, match="priority"):
            queue.add("x", "Pod", priority=7)
    finally:
        queue.stop()


def test_a_failing_handler_neither_kills_its_worker_nor_holds_its_key() -> None:
    handled = threading.Semaphore(0)

    def boom(key: Hashable, trigger: str, payload: Any) -> None:
        handled.release()
        if trigger == "first":
            raise RuntimeError("API down")

    queue = WorkQueue("test", boom, workers=1)
    try:
        queue.add("a", "first")
        assert handled.acquire(timeout=10)
        queue.add("a", "second")
        assert handled.acquire(timeout=10)
    finally:
        queue.stop()


def test_a_queue_needs_a_worker() -> None:
    with pytest.raises(ValueError, match="at least one worker"):
        WorkQueue("test", lambda *_: None, workers=0)


def test_run_index_follows_voicemodel_specs() -> None:
    index = RunIndex()
    index.record("ns", "vm-a", {"model": {"trainingRun": "run-1"}})
    index.record("ns", "vm-b", {"model": {"trainingRun": "run-1"}})
    index.record("other", "vm-c", {"model": {"trainingRun": "run-1"}})
    index.record("ns", "vm-d", {"model": {"volume": {"claimName": "models"}, "path": "v1"}})
    assert index.serving_from("ns", "run-1") == ["vm-a", "vm-b"]
    # a VoiceModel moved to another source, one deleted
    index.record("ns", "vm-a", {"model": {"volume": {"claimName": "models"}, "path": "v2"}})
    index.forget("ns", "vm-b")
    assert index.serving_from("ns", "run-1") == []
    assert index.serving_from("other", "run-1") == ["vm-c"]
