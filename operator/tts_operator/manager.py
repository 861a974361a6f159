"""``tts-operator run``: kopf configured for this operator, both controllers started, metrics served."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import threading
import urllib.parse
from collections.abc import Iterable

import kopf

from tts_operator import metrics
from tts_operator.kube.client import Kube, check_reachable, load_client, load_config
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


class PortInUse(RuntimeError):
    """A port the operator would serve on (metrics, liveness) is taken: the message names it and
    the flag that moves it."""


def _port_in_use(host: str, port: int, what: str, flag: str) -> PortInUse:
    return PortInUse(
        f"port {port} ({what}, on {host}) is already in use by another process: stop it, or pick "
        f"another port with {flag}"
    )


def _check_port_free(host: str, port: int, what: str, flag: str) -> None:
    """Bind ``host:port`` once and let go: a taken port is said in one line before anything starts
    (kopf's liveness server would find out inside the running operator, in a traceback)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise _port_in_use(host, port, what, flag) from None
            raise PortInUse(f"cannot listen on {host}:{port} ({what}): {e.strerror}; see {flag}") from None


def _check_ports(settings: Settings) -> None:
    if settings.metrics_port:
        _check_port_free(
            "0.0.0.0",
            settings.metrics_port,
            "metrics",
            "--metrics-port or TTS_OPERATOR_METRICS_PORT (0: off)",
        )
    if settings.liveness:
        parts = urllib.parse.urlsplit(settings.liveness)
        if parts.scheme == "http":  # kopf's own defaults for what the URL leaves out
            host, port = parts.hostname or "localhost", parts.port or 80
            _check_port_free(host, port, "liveness", "--liveness or TTS_OPERATOR_LIVENESS")


def _warn_missing_namespaces(kube: Kube, namespaces: Iterable[str]) -> None:
    """A watched namespace that does not exist is allowed (it may be created later) but is most
    often a typo: say so once at start. A list, as kopf's namespace observer makes (the chart
    grants list and watch on namespaces in namespaced mode, not get); without it, say nothing."""
    from kubernetes.client.rest import ApiException

    for ns in namespaces:
        try:
            found = kube.core.list_namespace(field_selector=f"metadata.name={ns}")
        except ApiException:
            continue
        if not found.items:
            log.warning(
                "namespace %s does not exist (yet): watching it anyway; nothing happens there until "
                "it is created (kubectl create namespace %s)",
                ns,
                ns,
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
    """Run until SIGINT/SIGTERM. Returns the exit code. Raises ``NoCluster`` (no kubeconfig, or its
    API server does not answer) and ``PortInUse`` before anything starts."""
    _fewer_malloc_arenas()
    _check_ports(settings)
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
    api_client = load_client(settings.kubeconfig, connections=connections)
    check_reachable(api_client.configuration, settings.kubeconfig)
    kube = Kube(api_client)
    _warn_missing_namespaces(kube, settings.namespaces)
    for controller in controllers:
        controller.bind(kube, settings)

    @kopf.on.login()
    def _login(**_: object) -> kopf.ConnectionInfo:
        return _connection(settings.kubeconfig)

    kopf_settings = kopf.OperatorSettings()
    configure_kopf(kopf_settings)
    try:
        metrics.serve(settings.metrics_port)
    except OSError as e:  # taken since _check_ports looked
        if e.errno != errno.EADDRINUSE:
            raise
        raise _port_in_use("0.0.0.0", settings.metrics_port, "metrics", "--metrics-port") from None
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
