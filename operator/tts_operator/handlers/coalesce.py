"""One reconcile at a time per object, and bursts of triggers folded into one more round.

A run's Job and pod produce a burst of events when it starts (created, scheduled, running, Job
status) and each would otherwise re-read the run and its children in turn, one after another. A
trigger that finds its object being reconciled only marks it dirty and returns, freeing kopf's
worker thread; the reconcile in progress then goes round once more, reading everything afresh.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable


class Coalescer:
    def __init__(self) -> None:
        self._dirty: dict[Hashable, bool] = {}  # key -> a trigger arrived during the running round
        self._guard = threading.Lock()

    def run(self, key: Hashable, reconcile: Callable[[int], object]) -> bool:
        """``reconcile(0)``, then ``reconcile(1)``, ... for as long as triggers for ``key`` arrived
        during the previous round. False when a reconcile of ``key`` was already running (it will
        go round again for this trigger). An exception ends the rounds and propagates."""
        with self._guard:
            if key in self._dirty:
                self._dirty[key] = True
                return False
            self._dirty[key] = False
        try:
            round_ = 0
            while True:
                reconcile(round_)
                round_ += 1
                with self._guard:
                    if not self._dirty[key]:
                        del self._dirty[key]
                        return True
                    self._dirty[key] = False
        except BaseException:
            with self._guard:
                self._dirty.pop(key, None)
            raise
