"""The Driver (queue + retry) and the resync that skips what an event reconciled a moment ago (a
stand-in lister; the resync's reads on the real API server are counted by
tests/chaos/test_chaos_slow_api.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from support.waiting import wait_for
from tts_operator import api
from tts_operator.controller.driver import Driver, resync_forever


class Lister:
    def __init__(self, names: list[str]) -> None:
        self.names = names

    def list_objects(self, resource: api.Resource, namespace: str | None) -> list[dict[str, Any]]:
        return [{"metadata": {"namespace": "ns", "name": n}} for n in self.names]


def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    wait_for(condition, timeout, "the condition", interval=0.005)


def test_the_resync_skips_objects_an_event_reconciled_recently_and_forgets_deleted_ones() -> None:
    done = threading.Semaphore(0)
    driver = Driver("VoiceModel", lambda ns, name, payload: done.release(), workers=1)
    driver.trigger("ns", "busy", "VoiceModel")
    driver.trigger("ns", "gone", "VoiceModel")
    for _ in range(2):
        assert done.acquire(timeout=10)
    wait_until(driver.idle)  # the reconciles returned (and were recorded)
    driver.forget("ns", "gone")
    assert driver.reconciled_within("ns", "busy", 60)
    assert not driver.reconciled_within("ns", "quiet", 60)
    assert not driver.reconciled_within("ns", "gone", 60)

    resynced: list[str] = []
    stop = threading.Event()

    def reconcile(namespace: str, name: str) -> None:
        resynced.append(name)
        if len(resynced) == 2:
            stop.set()

    lister = Lister(["busy", "quiet", "gone"])
    thread = threading.Thread(
        target=resync_forever,
        args=(lambda: lister, api.VOICEMODEL, (), reconcile, stop, 0.01, 1000.0),
        kwargs={"driver": driver, "fresh_for": 60.0},
    )
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    assert resynced == ["quiet", "gone"]  # "busy" was reconciled a moment ago


def test_a_failed_reconcile_is_retried_without_the_first_payload_and_is_not_fresh() -> None:
    calls: list[Any] = []
    done = threading.Semaphore(0)

    def reconcile(namespace: str, name: str, payload: Any) -> None:
        calls.append(payload)
        done.release()
        if len(calls) == 1:
            raise RuntimeError("API server away")

    driver = Driver("TrainingRun", reconcile, workers=1)
    driver.trigger("ns", "run", "TrainingRun", {"created": True})
    assert done.acquire(timeout=10)
    assert not driver.reconciled_within("ns", "run", 60)
    assert done.acquire(timeout=10)  # the retry, a second later, with no event
    assert calls == [{"created": True}, None]


def test_a_controller_reconciles_records_the_phase_and_retries_a_reconcile_that_must_wait() -> None:
    """``Controller``: a reconcile's ``Outcome`` sets the by-phase gauge; one that says ``wait`` is
    tried again (with backoff) although no event comes, and is not logged as a failure."""
    import kopf

    from tts_operator import metrics
    from tts_operator.controller.controller import Controller, Outcome, Resync
    from tts_operator.kube.client import Kube
    from tts_operator.settings import Settings

    calls: list[tuple[str, Any]] = []

    def reconcile(ctx: Any, namespace: str, name: str, payload: Any) -> Outcome:
        calls.append((name, payload))
        return Outcome("Pending", wait="a predecessor's pods" if len(calls) == 1 else None)

    # its own kopf registry: the handlers of this stand-in kind never reach the operator's
    registry = kopf.OperatorRegistry()
    controller = Controller(api.VOICEMODEL, reconcile, Resync(60), registry=registry)
    assert {h.id for h in registry._watching.get_all_handlers()} == {"voicemodel"}
    controller.bind(Kube.__new__(Kube), Settings())  # the stand-in reconcile uses no client
    controller.trigger("ns", "vm", "test", payload="body")
    wait_until(lambda: len(calls) == 2 and controller.driver.idle())
    assert calls == [("vm", "body"), ("vm", None)]  # the retry reads everything afresh
    gauge = metrics.OBJECTS.labels("VoiceModel", "Pending")._value.get()
    assert gauge >= 1
