"""``Kube.concurrently``: independent calls at once, outcomes in order, and no deadlock when the
calls themselves send calls together (no request is sent here: the calls are plain functions; the
requests it carries are exercised on the real API server by the cluster and e2e tests)."""

from __future__ import annotations

import threading

import pytest
from kubernetes import client

from tts_operator.kube.client import POOL_WORKERS, Kube


def test_outcomes_come_back_in_order_and_errors_are_kept_per_call() -> None:
    kube = Kube(client.ApiClient())

    def fail() -> int:
        raise RuntimeError("409")

    a, b, c = kube.concurrently([lambda: 1, fail, lambda: 3])
    assert (a.result(), c.result()) == (1, 3)
    with pytest.raises(RuntimeError, match="409"):
        b.result()
    assert kube.concurrently([]) == []


@pytest.mark.timeout(30)  # a starved pool waits forever
def test_calls_that_send_their_own_calls_together_do_not_starve_the_pool() -> None:
    kube = Kube(client.ApiClient())
    # every pool thread (and more) runs a call that itself needs several pool calls
    gate = threading.Barrier(POOL_WORKERS)

    def outer(i: int) -> list[int]:
        if i < POOL_WORKERS:
            gate.wait(10)  # all pool threads busy at once before any nests
        inner = kube.concurrently([lambda j=j: i * 10 + j for j in range(4)])
        return [f.result() for f in inner]

    outcomes = kube.concurrently([lambda i=i: outer(i) for i in range(POOL_WORKERS + 1)])
    assert [f.result() for f in outcomes] == [[i * 10 + j for j in range(4)] for i in range(POOL_WORKERS + 1)]
