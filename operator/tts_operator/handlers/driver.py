"""How both controllers run a reconcile for an event: one at a time per object with bursts folded
(``coalesce``), and a failed one retried with backoff (``retry``) instead of waiting for an event
that may not come. kopf only logs an event handler's error, so it is caught and logged here."""

from __future__ import annotations

import logging
from collections.abc import Callable

from tts_operator.handlers.coalesce import Coalescer
from tts_operator.handlers.retry import Backoff

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
