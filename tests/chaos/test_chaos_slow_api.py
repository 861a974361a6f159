"""The operator behind a slow, throttling API server: no tight retry loops, and convergence after.

The operator talks to kube-apiserver only through tests/support/throttle_proxy.py, which counts its
requests. The test creates TrainingRuns, lets them settle, then throttles the API (a share of the
requests answered ``429`` + ``Retry-After`` at once, the rest delayed, the open watch streams cut)
while it creates, suspends, resumes, updates and deletes runs. Then the throttling stops and every
run must converge: exactly its children, one training Job, a status that matches its spec.

Why the request-rate bound is what it is: everything the operator sends comes from a fixed number
of sequential callers: the reconcile workers of each kind (each running one reconcile after
another), the pool that sends a reconcile's independent requests together, kopf's handler pool, one
kopf watcher per watched resource, and the two resync threads.
A caller that waits as it is told makes at most one request per ``delay`` (the proxy's latency) and
none for ``Retry-After`` seconds after a 429. So ``callers / delay`` requests per second is the most
a well-behaved operator can send, however many runs there are. A caller that retries a refused
request at once (answered in about a millisecond) would exceed it many times over. While idle (no
spec changes, nothing running), the operator must not write anything: its watches and the slow
resyncs' reads (VoiceModels every 30 s, unfinished TrainingRuns every 60 s) are all it sends.
"""

# kubernetes models type every field Optional; the tests check presence by using them
# mypy: disable-error-code="union-attr"
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from support.convergence import PLURAL, Api, Want, run_body, wait_converged
from support.operator_process import OperatorProcess
from support.throttle_proxy import Seen, Throttle, ThrottleProxy, per_second
from tts_operator import api
from tts_operator.manager import configure_kopf

pytestmark = pytest.mark.chaos

G, V = api.API_GROUP, api.API_VERSION
THROTTLE = Throttle(reject_share=0.5, retry_after=2, delay=0.3)
THROTTLED_SECONDS = 40


def request_callers() -> int:
    """The operator's threads that can each have one request in flight: both kinds' reconcile
    workers, Kube's senders (the pool that sends a reconcile's independent requests together, the
    Event senders, the background lane), kopf's handler pool (the login handler) and the two
    resync threads (watches are counted apart)."""
    import kopf

    from tts_operator.controller.driver import WORKERS
    from tts_operator.kube.client import SENDERS

    settings = kopf.OperatorSettings()
    configure_kopf(settings)
    assert settings.execution.max_workers is not None, "unbounded workers: no bound to derive"
    return 2 * WORKERS + SENDERS + settings.execution.max_workers + 2


def summarize(seen: list[Seen]) -> str:
    by = Counter(f"{s.method} {'watch ' if s.watch else ''}{s.path} -> {s.status}" for s in seen)
    return "\n  ".join(f"{n:4d} {what}" for what, n in by.most_common(25))


def watch_retries_too_soon(seen: list[Seen], retry_after: float) -> list[str]:
    """Watch requests sent sooner than ``retry_after`` after a 429 on the same watch (kopf runs one
    watcher per resource and namespace, so the same path is the same caller)."""
    last_refused: dict[str, float] = {}
    problems = []
    for s in seen:
        if not s.watch:
            continue
        refused_at = last_refused.pop(s.path, None)
        if refused_at is not None and s.at - refused_at < retry_after * 0.9:
            problems.append(f"{s.path}: {s.at - refused_at:.2f}s after a 429")
        if s.status == 429:
            last_refused[s.path] = s.at
    return problems


@pytest.fixture
def proxy(chaos_cluster: Any) -> Any:
    pki = chaos_cluster.pki
    p = ThrottleProxy(
        f"https://127.0.0.1:{chaos_cluster.ports.apiserver}",
        pki / "ca.crt",
        pki / "admin.crt",
        pki / "admin.key",
    ).start()
    yield p
    p.stop()


def test_throttled_api_no_tight_loops_then_converges(
    chaos_cluster: Any, chaos_ns: str, proxy: ThrottleProxy, tmp_path: Path
) -> None:
    kube = Api(str(chaos_cluster.kubeconfig), chaos_ns)  # the test itself is not throttled
    via_proxy = proxy.write_kubeconfig(chaos_cluster.kubeconfig, tmp_path / "via-proxy.kubeconfig")
    op = OperatorProcess(str(via_proxy), chaos_ns, tmp_path / "operator.log").start()
    want: dict[str, Want] = {}

    def create(name: str, w: Want) -> None:
        kube.custom.create_namespaced_custom_object(G, V, chaos_ns, PLURAL, run_body(name, w))
        want[name] = w

    def patch(name: str, spec: dict[str, Any]) -> None:
        kube.custom.patch_namespaced_custom_object(G, V, chaos_ns, PLURAL, name, {"spec": spec})
        want[name].suspend = spec.get("suspend", want[name].suspend)

    try:
        # 9 GPUs: Pending for good (no node has that many); 1 GPU on a kwok node: ends Failed
        for i in range(8):
            create(f"run-{i}", Want(gpus=1 if i < 2 else 9))
        wait_converged(kube, want, timeout=120)

        # idle: nothing changes, nothing runs -> the watches and the resyncs' reads, no write
        idle_from = time.monotonic()
        wait_until_elapsed(idle_from, 15)
        idle = [s for s in proxy.seen(idle_from, time.monotonic()) if not s.watch and s.method != "GET"]
        assert not idle, f"writes while idle ({len(want)} runs):\n  {summarize(idle)}"

        throttled_from = time.monotonic()
        proxy.throttle(THROTTLE, cut_watches=True)
        create("run-8", Want(gpus=9))
        create("run-9", Want(gpus=1))
        create("run-10", Want(gpus=9, suspend=True))
        patch("run-2", {"suspend": True})
        patch("run-3", {"backoffLimit": 5})
        kube.custom.delete_namespaced_custom_object(G, V, chaos_ns, PLURAL, "run-4")
        del want["run-4"]
        wait_until_elapsed(throttled_from, THROTTLED_SECONDS / 2)
        patch("run-2", {"suspend": False})
        patch("run-5", {"suspend": True})
        create("run-11", Want(gpus=9))
        wait_until_elapsed(throttled_from, THROTTLED_SECONDS)
        throttled_until = time.monotonic()
        proxy.unthrottle()

        seen = proxy.seen(throttled_from, throttled_until)
        refused = [s for s in seen if s.status == 429]
        watch_paths = {s.path for s in proxy.seen() if s.watch}
        callers = request_callers() + len(watch_paths)
        bound = callers / THROTTLE.delay
        rates = per_second(seen, throttled_from)
        report = {
            "requests": len(seen),
            "refused": len(refused),
            "maxPerSecond": max(rates.values(), default=0),
            "meanPerSecond": round(len(seen) / THROTTLED_SECONDS, 2),
            "boundPerSecond": round(bound, 1),
            "callers": callers,
            "watchRequests": sum(1 for s in seen if s.watch),
            "runs": len(want),
        }
        print("throttled window:", json.dumps(report), f"\n  {summarize(seen)}")
        assert refused, "the proxy refused nothing: the test did not throttle"
        assert max(rates.values()) <= bound, f"{rates} exceeds {bound:.0f}/s:\n  {summarize(seen)}"
        too_soon = watch_retries_too_soon(seen, THROTTLE.retry_after)
        assert not too_soon, f"watch reconnects that ignored Retry-After: {too_soon}"

        # the throttling is over: everything converges (one Job per run, statuses right)
        wait_converged(kube, want, timeout=150)
        assert op.proc is not None and op.proc.poll() is None, "the operator exited under throttling"
    finally:
        op.stop()
        print(f"--- operator log (tail) ---\n{op.log()[-4000:]}")


def wait_until_elapsed(start: float, seconds: float) -> None:
    """The test's own clock: a fixed observation window is the point here, not a condition."""
    remaining = start + seconds - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)
