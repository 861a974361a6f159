"""The project's custom objects as the tests see them (plain dicts, as the API returns them), and waiting
on them: for a phase, a condition, a status that passes a check, an object or its children gone."""

# kubernetes models type every field Optional; the helpers check presence by using them
# mypy: disable-error-code="union-attr"
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .waiting import Pending, wait_for

Obj = dict[str, Any]


class CustomObjects:
    """One kind of the project's custom objects (``trainingruns``, ``voicemodels``) in one namespace."""

    def __init__(self, k8s_api: Any, namespace: str, plural: str) -> None:
        from kubernetes import client

        from tts_operator import api

        self.k8s_api, self.ns, self.plural = k8s_api, namespace, plural
        self.custom = client.CustomObjectsApi(k8s_api)
        self._gv = (api.API_GROUP, api.API_VERSION)

    def create(self, body: Obj) -> Obj:
        out = self.custom.create_namespaced_custom_object(*self._gv, self.ns, self.plural, body)
        assert isinstance(out, dict)
        return out

    def get(self, name: str) -> Obj:
        obj = self.custom.get_namespaced_custom_object(*self._gv, self.ns, self.plural, name)
        assert isinstance(obj, dict)
        return obj

    def find(self, name: str) -> Obj | None:
        """The object, or None when there is none of that name."""
        from kubernetes.client.rest import ApiException

        try:
            return self.get(name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def list(self) -> dict[str, Obj]:
        """Every object of the kind in the namespace, by name."""
        listed: Any = self.custom.list_namespaced_custom_object(*self._gv, self.ns, self.plural)
        return {o["metadata"]["name"]: o for o in listed["items"]}

    def status(self, name: str) -> Obj:
        return self.get(name).get("status") or {}

    def condition(self, name: str, ctype: str) -> Obj:
        """The condition ``ctype`` of the object's status ({} when it has none)."""
        return conditions(self.status(name)).get(ctype) or {}

    def patch(self, name: str, patch: Obj, merge: bool = False) -> Obj:
        kw = {"_content_type": "application/merge-patch+json"} if merge else {}
        out = self.custom.patch_namespaced_custom_object(*self._gv, self.ns, self.plural, name, patch, **kw)
        assert isinstance(out, dict)
        return out

    def patch_spec(self, name: str, spec: Obj) -> Obj:
        """A merge patch of the spec, as ``kubectl patch --type=merge`` sends it."""
        return self.patch(name, {"spec": spec}, merge=True)

    def patch_status(self, name: str, status: Obj) -> Obj:
        """A merge patch of the status subresource (what the trainer sends)."""
        out = self.custom.patch_namespaced_custom_object_status(
            *self._gv,
            self.ns,
            self.plural,
            name,
            {"status": status},
            _content_type="application/merge-patch+json",
        )
        assert isinstance(out, dict)
        return out

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(*self._gv, self.ns, self.plural, name)


def conditions(status: Obj) -> dict[str, Obj]:
    """The conditions of a status, by type."""
    return {c["type"]: c for c in status.get("conditions") or []}


def wait_for_status(
    objects: CustomObjects,
    name: str,
    check: Callable[[Obj], Any],
    timeout: float,
    what: str,
    interval: float = 0.1,
    *,
    failed: str | None = None,
) -> Obj:
    """Until ``check(status)`` holds; returns that status. ``failed``: a phase that ends the wait at
    once, with the status' ``failure`` (a TrainingRun's Failed is final: waiting longer changes nothing)."""

    def current() -> Obj | Pending:
        st = objects.status(name)
        if failed is not None:
            assert st.get("phase") != failed, (
                f"{objects.plural}/{name} is {failed}: {st.get('failure') or st}"
            )
        return st if check(st) else Pending(f"status {st}")

    st = wait_for(current, timeout, f"{objects.plural}/{name}: {what}", interval)
    assert isinstance(st, dict)
    return st


def wait_for_phase(
    objects: CustomObjects,
    name: str,
    phase: str | Iterable[str],
    timeout: float,
    interval: float = 0.1,
    *,
    failed: str | None = "Failed",
) -> Obj:
    """Until the object's ``status.phase`` is ``phase`` (or one of them); returns its status. Reaching
    the phase ``failed`` instead fails at once (pass None when waiting through it is right)."""
    phases = {phase} if isinstance(phase, str) else set(phase)
    return wait_for_status(
        objects,
        name,
        lambda st: st.get("phase") in phases,
        timeout,
        f"phase {' or '.join(sorted(phases))}",
        interval,
        failed=None if failed in phases else failed,
    )


def wait_for_condition(
    objects: CustomObjects,
    name: str,
    ctype: str,
    timeout: float,
    *,
    status: str | None = "True",
    reason: str | None = None,
    interval: float = 0.1,
) -> Obj:
    """Until the object's condition ``ctype`` has ``status`` (None: any) and, if given, ``reason``;
    returns the condition."""

    def current() -> Obj | Pending:
        cond = objects.condition(name, ctype)
        if (status is None or cond.get("status") == status) and (
            reason is None or cond.get("reason") == reason
        ):
            return cond
        return Pending(f"{ctype} is {cond or 'absent'}")

    want = " ".join(f"{k}={v}" for k, v in (("status", status), ("reason", reason)) if v is not None)
    cond = wait_for(current, timeout, f"{objects.plural}/{name}: condition {ctype} {want}", interval)
    assert isinstance(cond, dict)
    return cond


def event_reasons(k8s_api: Any, namespace: str, name: str) -> list[str]:
    """The reasons of the Events about the object ``name`` (any kind), oldest first as listed."""
    return [str(e.reason) for e in events(k8s_api, namespace, name)]


def events(k8s_api: Any, namespace: str, name: str, reason: str | None = None) -> list[Any]:
    """The Events about the object ``name`` (any kind), those with ``reason`` if given."""
    from kubernetes import client

    core = client.CoreV1Api(k8s_api)
    items = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    return [e for e in items if reason is None or e.reason == reason]


#: the kinds the operator makes children of (and their own children: ReplicaSets, pods)
_OWNED_KINDS = (
    ("apps/v1", "Deployment", "AppsV1Api", "list_namespaced_deployment"),
    ("apps/v1", "ReplicaSet", "AppsV1Api", "list_namespaced_replica_set"),
    ("v1", "Service", "CoreV1Api", "list_namespaced_service"),
    ("v1", "ConfigMap", "CoreV1Api", "list_namespaced_config_map"),
    ("v1", "Secret", "CoreV1Api", "list_namespaced_secret"),
    ("v1", "ServiceAccount", "CoreV1Api", "list_namespaced_service_account"),
    ("v1", "Pod", "CoreV1Api", "list_namespaced_pod"),
    ("policy/v1", "PodDisruptionBudget", "PolicyV1Api", "list_namespaced_pod_disruption_budget"),
    ("batch/v1", "Job", "BatchV1Api", "list_namespaced_job"),
    ("rbac.authorization.k8s.io/v1", "Role", "RbacAuthorizationV1Api", "list_namespaced_role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding", "RbacAuthorizationV1Api", "list_namespaced_role_binding"),
)


def owned_by(k8s_api: Any, namespace: str, owner_uid: str) -> list[str]:
    """``Kind/name`` of every object in the namespace with an owner reference to ``owner_uid``, of the
    kinds the operator's children (and theirs) are."""
    from kubernetes import client

    found = []
    for _version, kind, api_class, list_method in _OWNED_KINDS:
        items = getattr(getattr(client, api_class)(k8s_api), list_method)(namespace).items
        for obj in items:
            if any(o.uid == owner_uid for o in obj.metadata.owner_references or []):
                found.append(f"{kind}/{obj.metadata.name}")
    return sorted(found)
