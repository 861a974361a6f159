"""The per-object coalescer both controllers run their reconciles through, and the VoiceModel
controller's TrainingRun index."""

from __future__ import annotations

import threading

import pytest

from tts_operator.handlers.coalesce import Coalescer
from tts_operator.handlers.serving import RunIndex


def test_triggers_during_a_round_fold_into_one_more_round() -> None:
    coalescer = Coalescer()
    started, release = threading.Event(), threading.Event()
    rounds: list[int] = []

    def reconcile(round_: int) -> None:
        rounds.append(round_)
        if round_ == 0:
            started.set()
            assert release.wait(10)

    first = threading.Thread(target=lambda: coalescer.run("a", reconcile))
    first.start()
    assert started.wait(10)
    # five triggers while round 0 runs: none runs its own reconcile
    assert [coalescer.run("a", reconcile) for _ in range(5)] == [False] * 5
    # another object is not held up
    assert coalescer.run("b", lambda _r: None) is True
    release.set()
    first.join(10)
    assert rounds == [0, 1]
    # idle again: the next trigger runs at once
    assert coalescer.run("a", reconcile) is True
    assert rounds == [0, 1, 0]


def test_a_failing_round_frees_the_key() -> None:
    coalescer = Coalescer()

    def boom(_round: int) -> None:
        raise RuntimeError("API down")

    with pytest.raises(RuntimeError):
        coalescer.run("a", boom)
    assert coalescer.run("a", lambda _r: None) is True


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
