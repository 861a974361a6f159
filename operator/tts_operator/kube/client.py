"""The operator's one API client: transport, reads, writes and what it remembers of its own writes.

Everything else in the operator works on plain dicts (camelCase, as the API server returns them):
builders make them, planners read them, reconcilers pass them through here. No policy lives here:
whose a child is, and what to do about one that is someone else's, is ``reconcile.ownership``'s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from functools import cached_property
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from tts_operator import api
from tts_operator.kube.events import event_for

log = logging.getLogger(__name__)

FIELD_MANAGER = "tts-operator"
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"  # JSON is YAML: the client sends the dict as JSON
#: requests one ``Kube`` sends at once on behalf of its callers (``concurrently``)
POOL_WORKERS = 24
#: Events posted at once (``post_event`` returns before its Event is sent)
EVENT_WORKERS = 4
#: applies sent at once on the background lane (``apply_soon``)
LANE_WORKERS = 4
#: the threads of one ``Kube`` that send requests for its callers (each may have one in flight)
SENDERS = POOL_WORKERS + EVENT_WORKERS + LANE_WORKERS
_pool_thread = threading.local()


def _mark_pool_thread() -> None:
    _pool_thread.marked = True


#: how long a namespace's HorizontalPodAutoscalers are taken as known (see ``Kube.autoscaled``)
HPA_CACHE_SECONDS = 10.0
#: ``Kube.apply``'s "the caller did not read the child" (None means it read it and found none)
UNREAD = object()


def _change_marker(obj: dict[str, Any]) -> str:
    """What changes when anyone changes the object's spec: its generation where the kind has one
    (status updates, a Deployment's every few seconds, leave it alone), else its resourceVersion."""
    meta = obj.get("metadata") or {}
    generation = meta.get("generation")
    return f"g{generation}" if generation is not None else f"rv{meta.get('resourceVersion')}"


def _child_key(obj: dict[str, Any]) -> tuple[str, str, str]:
    """(kind, namespace, name): how ``Kube`` keys what it knows of a child."""
    meta = obj["metadata"]
    return obj["kind"], meta["namespace"], meta["name"]


class NoCluster(RuntimeError):
    """No Kubernetes API server to talk to: the message says where the client looked."""


def load_config(kubeconfig: str | None = None) -> client.Configuration:
    """Connection settings from a kubeconfig file, else $KUBECONFIG / ~/.kube/config, else in-cluster.
    ``NoCluster`` (one line: where it looked, what to set) when none of them gives one."""
    import os

    cfg = client.Configuration()
    # $KUBECONFIG is read now, not when the kubernetes package was imported
    path = kubeconfig or os.environ.get("KUBECONFIG") or None
    try:
        config.load_kube_config(config_file=path, client_configuration=cfg)
    except (config.ConfigException, OSError) as e:
        if path:
            raise NoCluster(f"cannot use the kubeconfig {path}: {e}") from e
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException:
            raise NoCluster(
                "no Kubernetes cluster to talk to: $KUBECONFIG is not set, ~/.kube/config has no "
                "cluster and this is not a pod with a ServiceAccount; set KUBECONFIG or pass "
                "--kubeconfig (the local cluster's: `make cluster-up` prints it)"
            ) from e
    return cfg


class ClusterUnreachable(NoCluster):
    """The kubeconfig names an API server that does not answer, or that refuses its credentials."""


def check_reachable(cfg: client.Configuration, kubeconfig: str | None = None, timeout: float = 5.0) -> None:
    """One ``GET /version`` with ``cfg``'s address and credentials, not retried: a command that
    starts against a cluster that is down says so in one line (``ClusterUnreachable``: the server,
    why, what to do) instead of retrying for a minute and ending in a traceback."""
    import copy
    import os

    import urllib3

    probe_cfg = copy.copy(cfg)
    probe_cfg.retries = False  # urllib3: no retries, the first error as it is
    where = f"the Kubernetes API server {cfg.host}"
    source = kubeconfig or os.environ.get("KUBECONFIG")
    if source:
        where += f" (from the kubeconfig {source})"
    probe = client.ApiClient(probe_cfg)
    try:
        client.VersionApi(probe).get_code(_request_timeout=timeout)
    except ApiException as e:
        if e.status in (401, 403):
            raise ClusterUnreachable(
                f"{where} refused this kubeconfig's credentials ({e.status} {e.reason}): "
                "check the user in the kubeconfig, or get a fresh one"
            ) from None
        return  # it answered: whatever else the answer was, the cluster is there
    except urllib3.exceptions.HTTPError as e:
        reason = e.reason if isinstance(e, urllib3.exceptions.MaxRetryError) and e.reason else e
        if isinstance(reason, urllib3.exceptions.SSLError):
            why = f"TLS failed ({reason})"
        elif isinstance(reason, urllib3.exceptions.NameResolutionError):
            why = "its host name does not resolve"
        elif isinstance(reason, urllib3.exceptions.NewConnectionError) and "refused" in str(reason).lower():
            why = "connection refused"
        elif isinstance(reason, urllib3.exceptions.TimeoutError):
            why = f"no answer within {timeout:g}s"
        else:
            why = str(reason)
        raise ClusterUnreachable(
            f"cannot reach {where}: {why}. Is the cluster running? "
            "(the local dev cluster: `make cluster-status`, `make cluster-up`)"
        ) from None
    finally:
        probe.close()


def load_client(kubeconfig: str | None = None, connections: int | None = None) -> client.ApiClient:
    """``connections``: how many connections to the API server to keep open (the client's default
    is five times the CPU count): as many as threads may send at once, or the pool discards the
    extra ones after each request ("Connection pool is full") and every new one costs a TLS
    handshake."""
    cfg = load_config(kubeconfig)
    if connections is not None:
        cfg.connection_pool_maxsize = connections
    return client.ApiClient(cfg)


class Kube:
    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.rbac = client.RbacAuthorizationV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.policy = client.PolicyV1Api(api_client)
        self.autoscaling = client.AutoscalingV2Api(api_client)
        #: (kind, namespace, name) -> (digest of the object last applied, the child's change marker)
        self._applied: dict[tuple[str, str, str], tuple[str, str]] = {}
        #: children this process deleted or found missing (and has not applied since)
        self._absent: set[tuple[str, str, str]] = set()
        #: (kind, namespace, name) -> the resourceVersion this process's last write of it returned
        self._written: dict[tuple[str, str, str], str] = {}
        self._hpa_targets: dict[str, tuple[float, frozenset[str]]] = {}  # namespace -> (when, targets)
        # independent creates go out together: a run's prerequisites cost one round trip, not four
        self._pool = ThreadPoolExecutor(
            max_workers=POOL_WORKERS, thread_name_prefix="kube", initializer=_mark_pool_thread
        )
        # Events go out beside the reconciles, as client-go's event recorder sends them: a
        # reconcile does not wait a round trip for one (its threads are joined at exit, so an
        # Event posted just before a clean exit still goes out)
        self._events = ThreadPoolExecutor(max_workers=EVENT_WORKERS, thread_name_prefix="events")
        # applies nobody waits for at once (``apply_soon``), by (kind, namespace, name)
        self._lane = ThreadPoolExecutor(max_workers=LANE_WORKERS, thread_name_prefix="lane")
        self._on_lane: dict[tuple[str, str, str], Future[dict[str, Any]]] = {}
        self._lane_guard = threading.Lock()

    @staticmethod
    def _json(call: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """``call``'s response as the API server's own JSON. The client's typed models cost more
        than the round trip itself (a Job: ~3 ms to build, ~1 ms to turn back into a dict, on the
        reference machine) and everything here works on dicts anyway. Errors still raise
        ApiException (the client checks the status before handing back the raw response)."""
        out = json.loads(call(*args, _preload_content=False, **kwargs).data)
        assert isinstance(out, dict)
        return out

    def _get(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        """``_json(call, ...)``, or None when the object does not exist (404)."""
        try:
            return self._json(call, *args, **kwargs)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    # --- our own writes, seen again -------------------------------------------------------------

    def _wrote(self, kind: str, namespace: str, name: str, obj: Any) -> None:
        rv = ((obj or {}).get("metadata") or {}).get("resourceVersion") if isinstance(obj, dict) else None
        if rv:
            self._written[(kind, namespace, name)] = rv

    def own_write(self, kind: str, namespace: str, name: str, resource_version: str | None) -> bool:
        """Whether a watch event's object is exactly what this process last wrote to it (the same
        resourceVersion): the echo of a status patch, an apply or a create, which tells the
        reconcile that wrote it nothing new. Any change by anyone else since has another
        resourceVersion and still counts. (An echo that arrives before the write's answer is not
        recognised: it costs one more reconcile, as before. A write that changed nothing answers
        with the resourceVersion of whoever wrote last; that takes someone else's write to have
        set the very same fields meanwhile, and the resync reconciles the object anyway.)"""
        return resource_version is not None and self._written.get((kind, namespace, name)) == resource_version

    def echoes_own_write(self, event_type: str | None, body: Mapping[str, Any]) -> bool:
        """``own_write`` for a watch event (kopf's ``type`` and ``body``); a DELETED event forgets
        the object's last write instead."""
        meta = body.get("metadata") or {}
        key = (str(body.get("kind")), str(meta.get("namespace")), str(meta.get("name")))
        if event_type == "DELETED":
            self._written.pop(key, None)
            return False
        return self.own_write(*key, meta.get("resourceVersion"))

    # --- custom resources ----------------------------------------------------------------------

    def get_object(self, resource: api.Resource, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get(
            self.custom.get_namespaced_custom_object,
            resource.group,
            resource.version,
            namespace,
            resource.plural,
            name,
        )

    def patch_status(self, resource: api.Resource, namespace: str, name: str, status: dict[str, Any]) -> bool:
        """A JSON merge patch of status: keys we do not name (the trainer's) are left alone. False
        when the object is gone (deleted since it was read: nothing left to report on)."""
        try:
            out = self.custom.patch_namespaced_custom_object_status(
                resource.group,
                resource.version,
                namespace,
                resource.plural,
                name,
                {"status": status},
                field_manager=FIELD_MANAGER,
                _content_type=MERGE_PATCH,
            )
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        self._wrote(resource.kind, namespace, name, out)
        return True

    def list_objects(self, resource: api.Resource, namespace: str | None) -> list[dict[str, Any]]:
        """Objects of ``resource`` in ``namespace`` (None: in every namespace)."""
        if namespace is None:
            out = self.custom.list_cluster_custom_object(resource.group, resource.version, resource.plural)
        else:
            out = self.custom.list_namespaced_custom_object(
                resource.group, resource.version, namespace, resource.plural
            )
        assert isinstance(out, dict)
        return list(out.get("items") or [])

    def patch_spec(self, resource: api.Resource, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            resource.group,
            resource.version,
            namespace,
            resource.plural,
            name,
            patch,
            field_manager=FIELD_MANAGER,
            _content_type=MERGE_PATCH,
        )

    # --- children ------------------------------------------------------------------------------

    def _child_api(self, kind: str) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
        """kind -> (create, read, delete) of the namespaced API for the children ``create`` makes."""
        apis: dict[str, tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]] = {
            "ServiceAccount": (
                self.core.create_namespaced_service_account,
                self.core.read_namespaced_service_account,
                self.core.delete_namespaced_service_account,
            ),
            "Role": (
                self.rbac.create_namespaced_role,
                self.rbac.read_namespaced_role,
                self.rbac.delete_namespaced_role,
            ),
            "RoleBinding": (
                self.rbac.create_namespaced_role_binding,
                self.rbac.read_namespaced_role_binding,
                self.rbac.delete_namespaced_role_binding,
            ),
            "Job": (
                self.batch.create_namespaced_job,
                self.batch.read_namespaced_job,
                self.batch.delete_namespaced_job,
            ),
        }
        if kind not in apis:
            raise ValueError(f"kube.create does not know how to create a {kind}")
        return apis[kind]

    def create(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Create ``obj``; None when an object of that name exists already (409: deterministic
        names make that safe). Whose that object is, is for the caller to decide
        (``reconcile.ownership``)."""
        meta = obj["metadata"]
        ns, name = meta["namespace"], meta["name"]
        try:
            made = self._json(self._child_api(obj["kind"])[0], ns, obj, field_manager=FIELD_MANAGER)
        except ApiException as e:
            if e.status == 409:
                return None
            raise
        self._wrote(obj["kind"], ns, name, made)
        return made

    def read_child(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A child of a kind ``create`` makes, or None when there is none."""
        return self._get(self._child_api(kind)[1], name, namespace)

    def delete_child(self, kind: str, namespace: str, name: str) -> None:
        """Delete a child ``create`` made, its dependents in the background; gone already is fine."""
        try:
            self._child_api(kind)[2](name, namespace, propagation_policy="Background")
        except ApiException as e:
            if e.status != 404:
                raise

    def concurrently(self, calls: Sequence[Callable[[], Any]]) -> list[Future[Any]]:
        """Each of ``calls`` at once (independent requests: one round trip's wait, not one each),
        the last in this very thread; returns once all have finished, each outcome in order (its
        ``result()`` returns the value or raises the call's error)."""
        # a call running on the pool runs its own calls one by one: pool threads waiting on work
        # queued behind them on the same (bounded) pool would wait forever
        nested = getattr(_pool_thread, "marked", False)
        futures: list[Future[Any]] = [] if nested else [self._pool.submit(call) for call in calls[:-1]]
        for call in calls[len(futures) :]:
            done: Future[Any] = Future()
            try:
                done.set_result(call())
            except Exception as e:
                done.set_exception(e)
            futures.append(done)
        wait(futures)
        return futures

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.read_child("Job", namespace, name)

    def set_job_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        self.batch.patch_namespaced_job(
            name,
            namespace,
            {"spec": {"suspend": suspend}},
            field_manager=FIELD_MANAGER,
            _content_type=MERGE_PATCH,
        )

    def list_pods(self, namespace: str, label_selector: str, cached: bool = True) -> list[dict[str, Any]]:
        """The pods matching ``label_selector``, by default from the API server's watch cache as it
        is (``resourceVersion=0``). A consistent list is served from that cache too, but first waits
        until the cache has caught up with etcd's latest revision: when pods have not changed since
        other objects did (this reconcile's own creates, say) that wait is a progress notification
        from etcd, up to ~100 ms, measured at ~50 ms per list on the apply -> Job path. A
        reconcile triggered by a pod event sees at least that event's pod (the operator's watch is
        served from the same cache); a read that lags is followed by the event that brings the
        change, and the resync. ``cached=False`` where a reconcile must see its own writes."""
        kwargs: dict[str, Any] = {"resource_version": "0"} if cached else {}
        pods = self._json(self.core.list_namespaced_pod, namespace, label_selector=label_selector, **kwargs)
        return list(pods.get("items") or [])

    # --- server-side apply (the serving children: re-applied on every reconcile) -----------------

    @cached_property
    def _appliers(self) -> dict[str, tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]]:
        """kind -> (patch, read, delete) of the namespaced API for that kind."""
        return {
            "Service": (
                self.core.patch_namespaced_service,
                self.core.read_namespaced_service,
                self.core.delete_namespaced_service,
            ),
            "Deployment": (
                self.apps.patch_namespaced_deployment,
                self.apps.read_namespaced_deployment,
                self.apps.delete_namespaced_deployment,
            ),
            "PodDisruptionBudget": (
                self.policy.patch_namespaced_pod_disruption_budget,
                self.policy.read_namespaced_pod_disruption_budget,
                self.policy.delete_namespaced_pod_disruption_budget,
            ),
        }

    def _applier(self, kind: str) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
        appliers = self._appliers
        if kind not in appliers:
            raise ValueError(f"kube.apply does not know how to apply a {kind}")
        return appliers[kind]

    def _read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get(self._applier(kind)[1], name, namespace)

    def apply_soon(self, obj: dict[str, Any]) -> Future[dict[str, Any]]:
        """``apply(obj)`` on a background lane: the caller goes on without waiting for it. An
        ``apply`` of the same child meanwhile waits for this one first (and then sends nothing when
        the object is the same), so the child is applied once, and whoever applies it next knows
        it is there. For a child whose create is slow for reasons of the API server's own: a
        Service's ClusterIP is allocated one at a time, cluster-wide (kube-apiserver 1.36 holds
        its allocator's lock over the IPAddress write), so a thousand new VoiceModels would
        otherwise queue their Deployments behind their Services."""
        key = _child_key(obj)
        with self._lane_guard:
            pending = self._on_lane.get(key)
            if pending is not None and not pending.done():
                return pending
            future = self._lane.submit(self._apply, obj, UNREAD)
            self._on_lane[key] = future
        future.add_done_callback(lambda done: self._off_lane(key, done))
        return future

    def _off_lane(self, key: tuple[str, str, str], done: Future[dict[str, Any]]) -> None:
        with self._lane_guard:
            if self._on_lane.get(key) is done:
                del self._on_lane[key]

    def apply(self, obj: dict[str, Any], current: dict[str, Any] | object | None = UNREAD) -> dict[str, Any]:
        """Server-side apply of ``obj`` as the operator's field manager: creates or updates, and
        leaves fields other managers own (an HPA's replicas, kubectl annotations) alone.

        An apply that would change nothing is not sent: every reconcile (the resync's too) would
        otherwise write each child, thousands of writes a minute at a thousand VoiceModels. It is
        skipped when this process applied the very same object last and the child has not changed
        since (its ``generation`` where it has one, else its ``resourceVersion``, is the one the
        apply returned), so an edit by someone else is still taken back on the next reconcile.
        ``current``: the child as just read, when the caller has it (else it is read here).
        An apply of the same child still on the background lane (``apply_soon``) is waited for
        first; its error, if it failed, is not raised here: this apply sends it again.
        """
        with self._lane_guard:
            pending = self._on_lane.get(_child_key(obj))
        if pending is not None:
            wait([pending])
            current = UNREAD  # what the caller read may predate it
        return self._apply(obj, current)

    def _apply(self, obj: dict[str, Any], current: dict[str, Any] | object | None) -> dict[str, Any]:
        kind, meta = obj["kind"], obj["metadata"]
        patch = self._applier(kind)[0]
        key = _child_key(obj)
        digest = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
        last = self._applied.get(key)
        if last is not None and last[0] == digest:
            if current is UNREAD:
                current = self._read(kind, meta["namespace"], meta["name"])
            if isinstance(current, dict) and _change_marker(current) == last[1]:
                return current
        out = self._json(
            patch,
            meta["name"],
            meta["namespace"],
            obj,
            field_manager=FIELD_MANAGER,
            force=True,  # the operator owns its children: take fields back from manual edits
            _content_type=APPLY_PATCH,
        )
        self._applied[key] = (digest, _change_marker(out))
        self._absent.discard(key)
        self._wrote(*key, out)
        return out

    def known_absent(self, kind: str, namespace: str, name: str) -> None:
        """Note that a child does not exist without asking (a brand-new owner has none yet): a
        ``delete`` of it then sends nothing."""
        self._absent.add((kind, namespace, name))

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete a child; False when it did not exist. Found by a read (a read is not a write), and
        once this process has found it absent it does not ask again until it applies it: the
        PodDisruptionBudget of every single-replica VoiceModel is "deleted" on every reconcile."""
        key = (kind, namespace, name)
        self._applied.pop(key, None)
        if key in self._absent or self._read(kind, namespace, name) is None:
            self._absent.add(key)
            return False
        try:
            self._applier(kind)[2](name, namespace)
        except ApiException as e:
            if e.status != 404:
                raise
        self._absent.add(key)
        return True

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read("Deployment", namespace, name)

    def annotate_pod(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        try:
            self.core.patch_namespaced_pod(
                name,
                namespace,
                {"metadata": {"annotations": annotations}},
                field_manager=FIELD_MANAGER,
                _content_type=MERGE_PATCH,
            )
        except ApiException as e:
            if e.status != 404:  # the pod went away meanwhile: nothing to record
                raise

    def claim_access_modes(self, namespace: str, name: str) -> list[str] | None:
        """A PersistentVolumeClaim's access modes (its bound volume's, else the requested ones); None
        when the claim does not exist."""
        claim = self._get(self.core.read_namespaced_persistent_volume_claim, name, namespace)
        if claim is None:
            return None
        modes = (claim.get("status") or {}).get("accessModes") or (claim.get("spec") or {}).get("accessModes")
        return [str(m) for m in modes or []]

    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        """One key of a Secret, decoded; None when the Secret or key is missing."""
        import base64

        secret = self._get(self.core.read_namespaced_secret, name, namespace)
        raw = ((secret or {}).get("data") or {}).get(key)
        return base64.b64decode(raw).decode().strip() if raw else None

    def autoscaled(self, namespace: str, deployment: str) -> bool:
        """Whether a HorizontalPodAutoscaler in ``namespace`` scales the Deployment ``deployment``.

        The namespace's HPAs are listed at most every ``HPA_CACHE_SECONDS``: every VoiceModel
        reconcile asks, and a thousand VoiceModels in a namespace made it a LIST each time. A new
        HPA is noticed that much later (until then the operator may set replicas back once)."""
        now = time.monotonic()
        cached = self._hpa_targets.get(namespace)
        if cached is None or now - cached[0] > HPA_CACHE_SECONDS:
            hpas = self._json(self.autoscaling.list_namespaced_horizontal_pod_autoscaler, namespace)
            targets = frozenset(
                ref.get("name", "")
                for h in hpas.get("items") or []
                if (ref := (h.get("spec") or {}).get("scaleTargetRef") or {}).get("kind") == "Deployment"
            )
            cached = self._hpa_targets[namespace] = (now, targets)
        return deployment in cached[1]

    # --- events --------------------------------------------------------------------------------

    def post_event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> Future[None]:
        """A core/v1 Event on ``obj`` (``events.event_for``), sent in the background; the returned
        future is done once it was sent (or failed to be: an Event is a courtesy, a reconcile
        never fails over one)."""
        return self._events.submit(self._send_event, event_for(obj, type_, reason, message))

    def _send_event(self, event: dict[str, Any]) -> None:
        where = event["involvedObject"]
        try:
            # the answer is not read: a typed V1Event built from it costs the operator ~1 ms of CPU
            self.core.create_namespaced_event(where["namespace"], event, _preload_content=False)  # type: ignore[arg-type]
        except Exception as e:  # an API error or a lost connection: logged, never raised
            log.warning(
                "could not post Event %s on %s/%s: %s", event["reason"], where["namespace"], where["name"], e
            )
