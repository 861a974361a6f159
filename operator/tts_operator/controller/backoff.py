"""Failed reconciles are tried again, with a growing delay per object, until one succeeds.

Reconciles run from watch events, and a failed one used to wait for the object's next event. A
run that is Pending (or a VoiceModel that is settled) may get none for a long time, so a reconcile
that failed while the API server was throttling or restarting left it half done: children missing,
status empty. ``Backoff`` schedules the retry itself: 1 s, 2 s, 4 s ... up to a minute apart, and
forgets the object once a reconcile of it succeeds (a retry still pending then does no harm: a
reconcile of a settled object changes nothing).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable


class Backoff:
    def __init__(self, first: float = 1.0, cap: float = 60.0) -> None:
        self.first, self.cap = first, cap
        self._delay: dict[Hashable, float] = {}  # key -> the delay of the last retry scheduled
        self._timers: dict[Hashable, threading.Timer] = {}
        self._guard = threading.Lock()

    def failed(self, key: Hashable, retry: Callable[[], object]) -> float:
        """Schedule ``retry()`` for ``key`` (once: a retry already pending stays); returns the delay."""
        with self._guard:
            delay = min(self.cap, self._delay[key] * 2) if key in self._delay else self.first
            self._delay[key] = delay
            if key not in self._timers:
                timer = threading.Timer(delay, self._fire, (key, retry))
                timer.daemon = True
                timer.name = f"retry {key}"
                self._timers[key] = timer
                timer.start()
            return delay

    def succeeded(self, key: Hashable) -> None:
        with self._guard:
            self._delay.pop(key, None)
            timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def _fire(self, key: Hashable, retry: Callable[[], object]) -> None:
        with self._guard:
            self._timers.pop(key, None)
        retry()
