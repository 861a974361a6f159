"""Runs one kind's reconciles: keys off a ``queue.WorkQueue``, one object by one worker at a time,
and a failed (or ``Waiting``) reconcile retried with ``backoff.Backoff`` instead of waiting for an
event that may not come; plus ``resync_forever``, the paced safety net under the watch events."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, cast

from tts_operator import api
from tts_operator.controller.backoff import Backoff
from tts_operator.controller.queue import EVENT, WorkQueue
from tts_operator.kube.client import Kube

log = logging.getLogger(__name__)

#: reconciles of one kind at once (each is a few sequential API round trips, mostly waiting)
WORKERS = 16

Reconcile = Callable[[str, str, Any], object]


class Waiting(Exception):
    """A reconcile that cannot go on yet and will not be told when it can (a child's name is still
    held by a predecessor's object going away): not an error, the key is retried with backoff."""


class Driver:
    """``trigger`` queues an object; a worker calls ``reconcile(namespace, name, payload)`` for it,
    where ``payload`` is what the trigger carried for a round that may be the object's first."""

    def __init__(self, kind: str, reconcile: Reconcile, workers: int = WORKERS) -> None:
        self.kind = kind
        self._reconcile = reconcile
        self._queue = WorkQueue(f"reconcile-{kind.lower()}", self._handle, workers)
        self._retry = Backoff()
        self._done: dict[Hashable, float] = {}  # key -> when a reconcile last succeeded

    def trigger(
        self, namespace: str, name: str, trigger: str, payload: Any = None, priority: int = EVENT
    ) -> None:
        """Queue a reconcile of this object (returns at once); ``priority``: see ``workqueue``."""
        self._queue.add((namespace, name), trigger, payload, priority)

    def reconciled_within(self, namespace: str, name: str, seconds: float) -> bool:
        """Whether a reconcile of this object succeeded in the last ``seconds``."""
        done = self._done.get((namespace, name))
        return done is not None and time.monotonic() - done < seconds

    def forget(self, namespace: str, name: str) -> None:
        """The object is gone: drop what is kept about it."""
        self._done.pop((namespace, name), None)

    def idle(self) -> bool:
        """Nothing queued or being reconciled (retries may still be scheduled)."""
        return not self._queue.busy()

    def _handle(self, key: Hashable, trigger: str, payload: Any) -> None:
        namespace, name = cast(tuple[str, str], key)
        try:
            self._reconcile(namespace, name, payload)
        except Exception as e:
            delay = self._retry.failed(key, lambda: self._queue.add(key, "retry"))
            if isinstance(e, Waiting):  # expected while a predecessor's children go: no traceback
                log.info("%s %s/%s waits: %s; again in %g s", self.kind, namespace, name, e, delay)
            else:
                log.exception(
                    "reconcile of %s %s/%s (after a %s event) failed; retrying in %g s",
                    self.kind,
                    namespace,
                    name,
                    trigger,
                    delay,
                )
        else:
            self._done[key] = time.monotonic()
            self._retry.succeeded(key)


def resync_forever(
    kube: Callable[[], Kube | None],
    resource: api.Resource,
    namespaces: tuple[str, ...],
    reconcile: Callable[[str, str], None],
    stop: threading.Event,
    interval: float,
    per_second: float,
    wanted: Callable[[dict[str, Any]], bool] = lambda _obj: True,
    driver: Driver | None = None,
    fresh_for: float | None = None,
) -> None:
    """Reconcile every object of ``resource`` (those ``wanted``), ``interval`` seconds after the
    previous round ended, at most ``per_second`` a second: a safety net under the watch events for
    whatever no event reports or a trigger that got lost (kopf timers would add a finalizer). A
    settled object's reconcile writes nothing. An object the ``driver`` reconciled (for an event)
    within the last ``fresh_for`` seconds (default ``interval``) is skipped: it is as fresh as a
    resync would make it, and while objects are being created by the hundred the resync's reads
    would only compete with theirs."""
    fresh = interval if fresh_for is None else fresh_for
    while not stop.wait(interval):
        client = kube()
        if client is None:
            continue
        started = time.monotonic()
        for ns in namespaces or (None,):
            try:
                objs = client.list_objects(resource, ns)
            except Exception:
                log.exception("resync: listing %s in %s failed", resource.plural, ns or "all namespaces")
                continue
            for obj in objs:
                ns_, name = obj["metadata"].get("namespace", ""), obj["metadata"]["name"]
                if not wanted(obj) or (driver is not None and driver.reconciled_within(ns_, name, fresh)):
                    continue
                reconcile(ns_, name)
                # paced: a thousand objects cost the API server a trickle of reads, not a burst
                if stop.wait(1 / per_second):
                    return
        log.debug("resync of %s took %.2f s", resource.plural, time.monotonic() - started)
