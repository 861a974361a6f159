"""Prometheus metrics of the operator (``/metrics`` on ``--metrics-port``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter("tts_operator_reconciles_total", "Reconciles run, by kind.", ["kind"])
ERRORS = Counter("tts_operator_reconcile_errors_total", "Reconciles that raised, by kind.", ["kind"])
DURATION = Histogram(
    "tts_operator_reconcile_duration_seconds",
    "Time one reconcile took, by kind.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
OBJECTS = Gauge("tts_operator_objects", "Objects the operator manages, by kind and phase.", ["kind", "phase"])


class PhaseBook:
    """Each object's last known phase, so the by-phase gauge counts objects, not transitions."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._phases: dict[str, str] = {}
        self._lock = threading.Lock()

    def set(self, key: str, phase: str | None) -> None:
        with self._lock:
            if phase is None:
                self._phases.pop(key, None)
            else:
                self._phases[key] = phase
            counts: dict[str, int] = {}
            for p in self._phases.values():
                counts[p] = counts.get(p, 0) + 1
            seen = set(counts)
            for p, n in counts.items():
                OBJECTS.labels(self.kind, p).set(n)
            for labels in list(OBJECTS._metrics):
                if labels[0] == self.kind and labels[1] not in seen:
                    OBJECTS.labels(*labels).set(0)


@contextmanager
def reconciling(kind: str) -> Iterator[None]:
    RECONCILES.labels(kind).inc()
    started = time.perf_counter()
    try:
        yield
    except Exception:
        ERRORS.labels(kind).inc()
        raise
    finally:
        DURATION.labels(kind).observe(time.perf_counter() - started)


def serve(port: int) -> None:
    if port:
        start_http_server(port)
