"""The one module that talks to the API server (through the official ``kubernetes`` client).

Everything else in the operator works on plain dicts (camelCase, as the API server returns them):
builders make them, status logic reads them, handlers pass them through here.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from tts_operator import api

log = logging.getLogger(__name__)

FIELD_MANAGER = "tts-operator"
EVENT_SOURCE = "tts-operator"
MERGE_PATCH = "application/merge-patch+json"


def load_config(kubeconfig: str | None = None) -> client.Configuration:
    """Connection settings from a kubeconfig file, else $KUBECONFIG / ~/.kube/config, else in-cluster."""
    import os

    cfg = client.Configuration()
    # $KUBECONFIG is read now, not when the kubernetes package was imported
    path = kubeconfig or os.environ.get("KUBECONFIG") or None
    try:
        config.load_kube_config(config_file=path, client_configuration=cfg)
    except config.ConfigException:
        if path:
            raise
        config.load_incluster_config(client_configuration=cfg)
    return cfg


def load_client(kubeconfig: str | None = None) -> client.ApiClient:
    return client.ApiClient(load_config(kubeconfig))


class Kube:
    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.rbac = client.RbacAuthorizationV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    def _dict(self, obj: Any) -> dict[str, Any]:
        out = self.api_client.sanitize_for_serialization(obj)
        assert isinstance(out, dict)
        return out

    # --- custom resources ----------------------------------------------------------------------

    def get_object(self, resource: api.Resource, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj = self.custom.get_namespaced_custom_object(
                resource.group, resource.version, namespace, resource.plural, name
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        assert isinstance(obj, dict)
        return obj

    def patch_status(self, resource: api.Resource, namespace: str, name: str, status: dict[str, Any]) -> None:
        """A JSON merge patch of status: keys we do not name (the trainer's) are left alone."""
        self.custom.patch_namespaced_custom_object_status(
            resource.group,
            resource.version,
            namespace,
            resource.plural,
            name,
            {"status": status},
            field_manager=FIELD_MANAGER,
            _content_type=MERGE_PATCH,
        )

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

    def _creator(self, kind: str) -> Callable[[str, dict[str, Any]], Any]:
        creators: dict[str, Callable[..., Any]] = {
            "ServiceAccount": self.core.create_namespaced_service_account,
            "ConfigMap": self.core.create_namespaced_config_map,
            "Role": self.rbac.create_namespaced_role,
            "RoleBinding": self.rbac.create_namespaced_role_binding,
            "Job": self.batch.create_namespaced_job,
        }
        if kind not in creators:
            raise ValueError(f"kube.create does not know how to create a {kind}")
        fn = creators[kind]
        return lambda ns, body: fn(ns, body, field_manager=FIELD_MANAGER)

    def create(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Create ``obj``; None when it already exists (409: deterministic names make that safe)."""
        meta = obj["metadata"]
        try:
            return self._dict(self._creator(obj["kind"])(meta["namespace"], obj))
        except ApiException as e:
            if e.status == 409:
                return None
            raise

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._dict(self.batch.read_namespaced_job(name, namespace))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def set_job_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        self.batch.patch_namespaced_job(
            name,
            namespace,
            {"spec": {"suspend": suspend}},
            field_manager=FIELD_MANAGER,
            _content_type=MERGE_PATCH,
        )

    def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        pods = self.core.list_namespaced_pod(namespace, label_selector=label_selector)
        return [self._dict(p) for p in pods.items]

    # --- events --------------------------------------------------------------------------------

    def post_event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on ``obj`` (what ``kubectl describe`` and ``kubectl events`` show)."""
        meta = obj["metadata"]
        now = datetime.now(UTC)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        event: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": EVENT_SOURCE},
            "reportingComponent": EVENT_SOURCE,
            "reportingInstance": EVENT_SOURCE,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], event)  # type: ignore[arg-type]
        except ApiException as e:
            # an Event is a courtesy: never fail a reconcile over one
            log.warning(
                "could not post Event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], e.reason
            )
