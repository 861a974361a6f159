"""A work queue of keys, not events: controller-runtime's workqueue, in small.

kopf hands every watch event to an event handler and holds that event (the object's whole body,
managedFields and all) until the handler returns. A handler that reconciled right there would keep
kopf's per-object workers waiting for a handful of threads, and with them every body that arrived
meanwhile: at a thousand objects created in bursts that is hundreds of megabytes of parsed JSON,
and Python's allocator keeps most of the pages afterwards. So the handlers only *add* the object's
key here and return at once; a fixed set of worker threads takes keys off the queue.

- A key is in the queue at most once: triggers for a key already waiting fold into that one.
- A key is handled by one worker at a time; triggers that arrive while it is being handled fold
  into one more round, queued behind the keys already waiting (a starting Job and its pod produce a
  burst of events: they cost one more reconcile, not one each).
- The first trigger's ``payload`` rides along (a new object's ADDED body, say); a round added
  while the key was being handled carries none: it reads everything afresh.
- Keys wait by priority: objects never reconciled first (``NEW``), then every other trigger
  (``EVENT``), then the resync (``RESYNC``). When a thousand objects arrive at once, each gets its
  children and a status before the follow-up rounds of those created earlier (their Deployments'
  and pods' progress) take the workers; those follow once the arrivals are served. controller-
  runtime's priority queue makes the same choice (its initial listing waits behind live events).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


#: priorities, most urgent first: an object never reconciled (its ADDED event), then everything
#: else, then the resync's safety-net rounds
NEW, EVENT, RESYNC = 0, 1, 2
_LEVELS = 3


@dataclass
class _Item:
    trigger: str
    payload: Any = None
    priority: int = EVENT


class WorkQueue:
    def __init__(self, name: str, handle: Callable[[Hashable, str, Any], object], workers: int) -> None:
        if workers < 1:
            raise ValueError(f"a work queue needs at least one worker, not {workers}")
        self.name, self.workers = name, workers
        self._handle = handle
        # waiting keys by priority, oldest first within one (dicts keep insertion order)
        self._pending: list[dict[Hashable, _Item]] = [{} for _ in range(_LEVELS)]
        self._level: dict[Hashable, int] = {}  # waiting key -> its priority
        self._active: set[Hashable] = set()  # being handled
        self._again: dict[Hashable, _Item] = {}  # triggered while being handled: one more round
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._stopped = False

    def add(self, key: Hashable, trigger: str, payload: Any = None, priority: int = EVENT) -> None:
        """Queue ``key`` (see the module's docstring for how triggers fold) at ``priority``: a key
        waiting at a lower one moves up. Never blocks for long: safe to call from kopf's event loop.
        The workers start with the first key."""
        if not 0 <= priority < _LEVELS:
            raise ValueError(f"priority {priority} is not one of NEW, EVENT, RESYNC")
        with self._cond:
            if self._stopped:
                return
            if key in self._active:
                again = self._again.get(key)
                if again is None or priority < again.priority:
                    self._again[key] = _Item(trigger, None, priority)
                return
            level = self._level.get(key)
            if level is not None:
                if priority < level:  # more urgent now: move up, keeping the first payload
                    item = self._pending[level].pop(key)
                    item.priority = priority
                    self._pending[priority][key] = item
                    self._level[key] = priority
                return
            self._pending[priority][key] = _Item(trigger, payload, priority)
            self._level[key] = priority
            if not self._threads:
                self._start()
            self._cond.notify()

    def depth(self) -> int:
        """Keys waiting (not counting those being handled)."""
        with self._cond:
            return len(self._level)

    def busy(self) -> bool:
        with self._cond:
            return bool(self._level or self._active or self._again)

    def stop(self, timeout: float = 10.0) -> None:
        """No more keys; the workers finish what they are handling and exit."""
        with self._cond:
            self._stopped = True
            for level in self._pending:
                level.clear()
            self._level.clear()
            self._again.clear()
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    def _start(self) -> None:
        for i in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"{self.name}-{i}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._level and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                waiting = next(level for level in self._pending if level)
                key = next(iter(waiting))
                item = waiting.pop(key)
                del self._level[key]
                self._active.add(key)
            try:
                self._handle(key, item.trigger, item.payload)
            except Exception:  # a worker must not die of one
                log.exception("%s: handling %s failed", self.name, key)
            finally:
                with self._cond:
                    self._active.discard(key)
                    again = self._again.pop(key, None)
                    if again is not None and not self._stopped:
                        self._pending[again.priority][key] = again
                        self._level[key] = again.priority
                        self._cond.notify()
