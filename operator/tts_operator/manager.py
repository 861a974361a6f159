"""``tts-operator run``: kopf configured for this operator, both controllers started, metrics served."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Iterable

import kopf

from tts_operator import metrics
from tts_operator.kube.client import Kube, load_client, load_config
from tts_operator.settings import ANNOTATION_PREFIX, FINALIZER, MANAGED_SELECTOR, Settings

log = logging.getLogger(__name__)


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf's change detection, turned off. Every handler here is an event handler (``on.event``:
    they queue a key, the reconcile reads what it needs), so nothing compares an object with the
    last state handled; kopf still built that state for every watch event, a deep copy of the
    whole body (what it cost: docs/architecture.md). Nothing is stored on the objects either way.
    A change handler (``on.create``/``on.update``) would need the real storage back:
    ``tests/unit/test_manager.py`` fails when one is registered."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[kopf.FieldSpec] | None = None
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def configure_kopf(kopf_settings: kopf.OperatorSettings) -> None:
    """Our names instead of kopf's defaults, and latency/load settings that suit one small operator."""
    kopf_settings.persistence.finalizer = FINALIZER
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    kopf_settings.persistence.diffbase_storage = NoDiffBase()
    # the event handlers are async and only queue keys (controller/ has the reconcile workers):
    # kopf's thread pool runs just the login handler
    kopf_settings.execution.max_workers = 2
    # kopf's per-object worker keeps the last event (a whole body) until it has been idle this long
    kopf_settings.queueing.idle_timeout = 1.0
    kopf_settings.posting.enabled = False  # we post our own Events (kopf's are handler log lines)
    # only our own children: every Job and Pod in the cluster otherwise
    kopf_settings.watching.label_selectors["batch", "jobs"] = MANAGED_SELECTOR
    kopf_settings.watching.label_selectors["v1", "pods"] = MANAGED_SELECTOR
    kopf_settings.watching.label_selectors["apps", "deployments"] = MANAGED_SELECTOR
    kopf_settings.watching.server_timeout = 300
    kopf_settings.watching.client_timeout = 330


def _connection(kubeconfig: str | None) -> kopf.ConnectionInfo:
    """kopf's credentials from the same kubeconfig our own client uses (kopf would otherwise try
    in-cluster first and read $KUBECONFIG as it was when the kubernetes package was imported)."""
    cfg = load_config(kubeconfig)
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0] if parts else None)
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        scheme=scheme,
        token=token,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
    )


def _fewer_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread that allocates its own malloc arena (up to 8 per core); the handler
    threads parse JSON all day and every arena keeps its own high-water mark, so the operator's
    RSS grows with its thread count, not its work. Two arenas bound that (as MALLOC_ARENA_MAX=2
    would, but the chart, the dev cluster and a plain `tts-operator run` would each have to
    remember the variable; it wins when set). Must run before other threads start; a no-op where
    the C library is not glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or os.environ.get("MALLOC_ARENA_MAX"):
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def run(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM. Returns the exit code."""
    _fewer_malloc_arenas()
    if settings.kubeconfig:
        # kopf's own login (kubernetes client) reads the same variable
        os.environ["KUBECONFIG"] = settings.kubeconfig
    kopf.configure(
        verbose=settings.verbose,
        log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    logging.getLogger("tts_operator").setLevel(logging.DEBUG if settings.verbose else logging.INFO)
    if not settings.verbose:
        # kopf says "Handler ... succeeded." for every event of every object (13,000 lines in a
        # minute at 1500 objects); our handlers log what changed, and kopf's errors still show
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)

    from tts_operator.controller.driver import WORKERS
    from tts_operator.kube.client import SENDERS
    from tts_operator.reconcile import trainingrun, voicemodel

    controllers = (voicemodel.CONTROLLER, trainingrun.CONTROLLER)
    # the reconcile workers of every kind, Kube's own senders and one resync thread per kind
    connections = len(controllers) * (WORKERS + 1) + SENDERS
    kube = Kube(load_client(settings.kubeconfig, connections=connections))
    for controller in controllers:
        controller.bind(kube, settings)

    @kopf.on.login()
    def _login(**_: object) -> kopf.ConnectionInfo:
        return _connection(settings.kubeconfig)

    kopf_settings = kopf.OperatorSettings()
    configure_kopf(kopf_settings)
    metrics.serve(settings.metrics_port)
    log.info(
        "tts-operator starting: namespaces=%s runtime image=%s gpu resource=%s metrics port=%s",
        ",".join(settings.namespaces) or "(all)",
        settings.runtime_image,
        settings.gpu_resource,
        settings.metrics_port or "off",
    )
    # VoiceModels and unfinished TrainingRuns are also reconciled on slow timers: what no event
    # reports (a pod that stops answering between probes) or a trigger lost to an API error is
    # still noticed; kopf's own timers would add a finalizer
    stop_resync = threading.Event()
    for controller in controllers:
        threading.Thread(
            target=controller.resync_forever,
            args=(settings.namespaces, stop_resync),
            name=f"{controller.kind.lower()}-resync",
            daemon=True,
        ).start()
    try:
        asyncio.run(
            kopf.operator(
                clusterwide=not settings.namespaces,
                namespaces=list(settings.namespaces),
                standalone=True,
                settings=kopf_settings,
                liveness_endpoint=settings.liveness,
            )
        )
    finally:
        stop_resync.set()
    return 0
