"""One controller runtime for every kind: kopf's watch events queue keys, workers reconcile, a
reconcile that fails or asks to wait is retried with backoff, and a paced resync catches what no
event reports. A kind supplies only its ``reconcile`` function and the events that concern it.

controller-runtime gives each Go reconciler the same queue, retries and resync; this is the same
idea in small. The pieces: ``queue.WorkQueue`` (keys, folding, priorities), ``driver.Driver``
(one reconcile per key at a time, retry with ``backoff.Backoff``), ``driver.resync_forever``.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from tts_operator import api, metrics
from tts_operator.controller.driver import Driver, Waiting, resync_forever
from tts_operator.controller.queue import EVENT, NEW, RESYNC
from tts_operator.kube.client import Kube
from tts_operator.settings import MANAGED_BY, Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What a reconcile says back: the object's phase now (None: it is gone), and whether it must
    be looked at again soon although nothing will send an event (``wait``: why, for the log)."""

    phase: str | None
    wait: str | None = None


@dataclass
class Context:
    """What every reconcile gets: the one API client and the operator's settings."""

    kube: Kube
    settings: Settings
    #: queue another reconcile of an object of the same kind: (namespace, name, why)
    trigger: Callable[[str, str, str], None]


#: reconcile(context, namespace, name, payload) -> Outcome; payload: what the first trigger of a
#: never-reconciled object carried (see ``Controller``), else None
Reconcile = Callable[[Context, str, str, Any], Outcome]


@dataclass(frozen=True)
class Resync:
    interval: float
    per_second: float = 10.0
    wanted: Callable[[dict[str, Any]], bool] = lambda _obj: True


class Controller:
    """One kind: its reconcile, its work queue and retries, its resync, and the kopf handlers that
    queue it. ``payload_of_added``: what an ADDED watch event hands the object's first reconcile
    (kopf's start-up listing has no type, so only objects created while the operator runs get one)."""

    def __init__(
        self,
        resource: api.Resource,
        reconcile: Reconcile,
        resync: Resync,
        payload_of_added: Callable[[Mapping[str, Any]], Any] = lambda _body: None,
        on_event: Callable[[str | None, str, str, Mapping[str, Any]], None] | None = None,
        registry: kopf.OperatorRegistry | None = None,
    ) -> None:
        self.resource, self.kind = resource, resource.kind
        self._reconcile = reconcile
        self._resync = resync
        self._payload_of_added = payload_of_added
        self._on_event = on_event
        self._phases = metrics.PhaseBook(self.kind)
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self.context: Context | None = None
        self.driver = Driver(self.kind, self._run)
        #: where the kopf handlers go (kopf's default registry: the one ``kopf.operator`` runs)
        self.registry = registry or kopf.get_default_registry()
        self._watch_own()

    # --- start-up ------------------------------------------------------------------------------

    def bind(self, kube: Kube, settings: Settings) -> Context:
        """Give the controller its client and settings (once, at start-up); returns its context."""
        self.context = Context(kube, settings, lambda ns, name, why: self.trigger(ns, name, why))
        return self.context

    def resync_forever(self, namespaces: tuple[str, ...], stop: threading.Event) -> None:
        resync_forever(
            lambda: self.context.kube if self.context is not None else None,
            self.resource,
            namespaces,
            lambda ns, name: self.trigger(ns, name, "resync", priority=RESYNC),
            stop,
            self._resync.interval,
            self._resync.per_second,
            wanted=self._resync.wanted,
            driver=self.driver,
        )

    # --- reconciling ---------------------------------------------------------------------------

    def trigger(
        self, namespace: str | None, name: str | None, why: str, payload: Any = None, priority: int = EVENT
    ) -> None:
        """Queue a reconcile of this object (returns at once)."""
        if namespace and name:
            self.driver.trigger(namespace, name, why, payload, NEW if payload is not None else priority)

    def reconcile(self, namespace: str, name: str, payload: Any = None) -> Outcome:
        """Reconcile one object now, in this thread (the workers call this; tests may too). One
        reconcile of an object at a time: a caller waits for one already running."""
        context = self.context
        if context is None:
            raise RuntimeError(f"the {self.kind} controller has no client yet (bind it first)")
        with self._lock(namespace, name), metrics.reconciling(self.kind):
            outcome = self._reconcile(context, namespace, name, payload)
        self._phases.set(f"{namespace}/{name}", outcome.phase)
        return outcome

    def _run(self, namespace: str, name: str, payload: Any) -> None:
        if self.context is None:
            return
        outcome = self.reconcile(namespace, name, payload)
        if outcome.wait is not None:
            raise Waiting(outcome.wait)

    def _lock(self, namespace: str, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault((namespace, name), threading.Lock())

    # --- kopf wiring ---------------------------------------------------------------------------

    def echoes_own_write(self, event_type: str | None, body: Mapping[str, Any]) -> bool:
        """A watch event that is only this process's own write coming back (see ``Kube``)."""
        return self.context is not None and self.context.kube.echoes_own_write(event_type, body)

    def _watch_own(self) -> None:
        """The kind's own events: forget a deleted object, queue the others (never our own echo)."""

        @kopf.on.event(
            self.resource.group,
            self.resource.version,
            self.resource.plural,
            id=f"{self.kind.lower()}",
            registry=self.registry,
        )
        async def own_event(
            type: str, name: str, namespace: str | None, event: Mapping[str, Any], **_: Any
        ) -> None:
            body = event["object"]
            if self.echoes_own_write(type, body):
                return  # our own status patch coming back: nothing new to reconcile
            if self._on_event is not None and namespace:
                self._on_event(type, namespace, name, body)
            if type == "DELETED":
                self._phases.set(f"{namespace}/{name}", None)
                self.driver.forget(namespace or "", name)
                with self._locks_guard:
                    self._locks.pop((namespace or "", name), None)
                return
            payload = self._payload_of_added(body) if type == "ADDED" else None
            self.trigger(namespace, name, self.kind, payload)

    def watch_children(self, group: str, version: str, plural: str, owner_label: str, kind: str) -> None:
        """Events of this operator's children of one kind, found by ``owner_label`` (whose value is
        the owner's name), queue their owner. Our own write of a child coming back queues nothing."""

        @kopf.on.event(
            group,
            version,
            plural,
            labels={"app.kubernetes.io/managed-by": MANAGED_BY, owner_label: kopf.PRESENT},
            id=f"{self.kind.lower()}-{plural}",
            registry=self.registry,
        )
        async def child_event(
            type: str, body: Mapping[str, Any], labels: Mapping[str, str], namespace: str | None, **_: Any
        ) -> None:
            if not self.echoes_own_write(type, body):
                self.trigger(namespace, labels.get(owner_label), kind)

    def watch_related(
        self, resource: api.Resource, related: Callable[[str, str], list[str]], why: str
    ) -> None:
        """Events of another kind queue the objects of this kind that ``related(namespace, name)``
        names (a TrainingRun that exports changes what the VoiceModels serving from it can do)."""

        @kopf.on.event(
            resource.group,
            resource.version,
            resource.plural,
            id=f"{self.kind.lower()}-{why}",
            registry=self.registry,
        )
        async def related_event(name: str, namespace: str | None, **_: Any) -> None:
            if namespace:
                for target in related(namespace, name):
                    self.trigger(namespace, target, why)


def copy_of_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """A payload of an ADDED event that outlives the event (kopf reuses its body)."""
    return copy.deepcopy(dict(body))
