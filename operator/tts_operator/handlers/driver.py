"""How both controllers run a reconcile for an event: one at a time per object with bursts folded
(``coalesce``), and a failed one retried with backoff (``retry``) instead of waiting for an event
that may not come. kopf only logs an event handler's error, so it is caught and logged here."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from tts_operator import api
from tts_operator.handlers.coalesce import Coalescer
from tts_operator.handlers.retry import Backoff
from tts_operator.kube import Kube

log = logging.getLogger(__name__)


class Driver:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._coalesce = Coalescer()
        self._retry = Backoff()

    def reconcile(
        self,
        namespace: str,
        name: str,
        trigger: str,
        rounds: Callable[[int], object],
        again: Callable[[int], object] | None = None,
    ) -> None:
        """Run ``rounds(0)``, ``rounds(1)``... for this object (see ``Coalescer.run``); when that
        raises, ``again`` (default ``rounds``) is scheduled with backoff the same way."""
        key = (namespace, name)
        try:
            ran = self._coalesce.run(key, rounds)
        except Exception:
            retry = again or rounds
            delay = self._retry.failed(key, lambda: self.reconcile(namespace, name, "retry", retry))
            log.exception(
                "reconcile of %s %s/%s (after a %s event) failed; retrying in %g s",
                self.kind,
                namespace,
                name,
                trigger,
                delay,
            )
        else:
            if ran:
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
) -> None:
    """Reconcile every object of ``resource`` (those ``wanted``), ``interval`` seconds after the
    previous round ended, at most ``per_second`` a second: a safety net under the watch events for
    whatever no event reports or a trigger that got lost (kopf timers would add a finalizer). A
    settled object's reconcile writes nothing."""
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
                if not wanted(obj):
                    continue
                reconcile(obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
                # paced: a thousand objects cost the API server a trickle of reads, not a burst
                if stop.wait(1 / per_second):
                    return
        log.debug("resync of %s took %.2f s", resource.plural, time.monotonic() - started)
