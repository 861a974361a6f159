"""The per-object retry of failed reconciles (real timers, short delays)."""

from __future__ import annotations

import threading

from tts_operator.controller.backoff import Backoff


def test_a_failed_reconcile_is_retried_with_growing_delays_until_it_succeeds() -> None:
    backoff = Backoff(first=0.01, cap=0.04)
    fired = threading.Semaphore(0)
    delays = [backoff.failed("run", fired.release)]
    assert fired.acquire(timeout=5)  # the retry ran by itself: no event needed
    for _ in range(3):  # ...and failed again each time
        delays.append(backoff.failed("run", fired.release))
        assert fired.acquire(timeout=5)
    assert delays == [0.01, 0.02, 0.04, 0.04]  # doubling, capped
    backoff.succeeded("run")
    assert backoff.failed("run", fired.release) == 0.01  # a new failure starts over
    assert fired.acquire(timeout=5)


def test_one_retry_pending_per_object_and_success_cancels_it() -> None:
    backoff = Backoff(first=0.02)
    calls: list[str] = []
    backoff.failed("a", lambda: calls.append("first"))
    backoff.failed("a", lambda: calls.append("second"))  # still the one timer
    backoff.succeeded("a")  # an event's reconcile got through first
    # a witness timer set well after the cancelled one would have fired
    witness = threading.Event()
    Backoff(first=0.2).failed("witness", witness.set)
    assert witness.wait(5)
    assert calls == []  # the cancelled retry never ran

    backoff.failed("b", lambda: calls.append("first"))
    backoff.failed("b", lambda: calls.append("second"))
    witness.clear()
    Backoff(first=0.2).failed("witness", witness.set)
    assert witness.wait(5)
    assert calls == ["first"]  # one retry, not two
