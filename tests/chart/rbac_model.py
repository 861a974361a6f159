"""What the operator's RBAC must be, derived from the operator's code rather than written down twice.

- every Kubernetes client call in ``tts_operator/kube.py`` (``self.core.create_namespaced_event`` ->
  create events), read from its syntax tree;
- every custom-object call site (``kube.get_object(api.VOICEMODEL, ...)`` -> get voicemodels) in the
  operator's modules (the ``promote`` CLI runs with the user's credentials and is left out);
- kopf's own calls for each registered handler: a watch (list, watch) per watched resource, plus
  patch for change handlers, daemons and timers (kopf stores finalizers and progress on the object);
- the rules of the Roles the operator itself creates (RBAC lets one grant only what one holds);
- kopf's observers (CRDs; namespaces in namespaced mode), which degrade to a warning without them.

A permission is (apiGroup, resource, verb).
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path
from typing import Any

Permission = tuple[str, str, str]

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "tts_operator"

#: the Kube attribute holding each typed client API -> its API group
CLIENT_GROUPS = {
    "core": "",
    "batch": "batch",
    "rbac": "rbac.authorization.k8s.io",
    "apps": "apps",
    "policy": "policy",
    "autoscaling": "autoscaling",
    "networking": "networking.k8s.io",
    "coordination": "coordination.k8s.io",
}
CLIENT_VERBS = {"create": "create", "read": "get", "patch": "patch", "delete": "delete", "list": "list"}
CLIENT_VERBS |= {"replace": "update"}
#: Kube's custom-object helpers -> (verb, subresource)
CUSTOM_HELPERS = {
    "get_object": ("get", ""),
    "list_objects": ("list", ""),
    "patch_status": ("patch", "/status"),
    "patch_spec": ("patch", ""),
}
#: files whose kube calls run with someone else's credentials (the user's CLI, the dev cluster)
NOT_THE_OPERATOR = ("cli.py", "promote.py")


def _plural(snake: str) -> str:
    """``pod_disruption_budget`` -> ``poddisruptionbudgets`` (every kind the operator touches is regular)."""
    word = snake.replace("_", "")
    return word + ("es" if word.endswith("s") else "s")


def client_call_permissions() -> dict[Permission, str]:
    """Typed client calls in kube.py, each with the method that makes it."""
    tree = ast.parse((PACKAGE / "kube" / "client.py").read_text())
    found: dict[Permission, str] = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)):
            continue
        holder = node.value
        if not (isinstance(holder.value, ast.Name) and holder.value.id == "self"):
            continue
        if holder.attr not in CLIENT_GROUPS:
            continue  # self.custom: resolved at the call sites below
        m = re.fullmatch(r"(create|read|patch|delete|list|replace)_namespaced_(\w+?)(_status)?", node.attr)
        if m is None:
            raise AssertionError(
                f"kube.py calls {holder.attr}.{node.attr}: teach tests/chart/rbac_model.py it"
            )
        resource = _plural(m.group(2)) + ("/status" if m.group(3) else "")
        found[(CLIENT_GROUPS[holder.attr], resource, CLIENT_VERBS[m.group(1)])] = f"kube.py: {node.attr}"
    # server-side apply (a PATCH with the apply content type) creates what does not exist yet, and the
    # API server checks `create` for that: every patch method kube.apply dispatches to needs it too
    if "APPLY_PATCH" in (PACKAGE / "kube" / "client.py").read_text():
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef) and fn.name == "_appliers":
                for node in ast.walk(fn):
                    if isinstance(node, ast.Attribute) and node.attr.startswith("patch_namespaced_"):
                        assert isinstance(node.value, ast.Attribute)
                        res = _plural(node.attr.removeprefix("patch_namespaced_"))
                        found[(CLIENT_GROUPS[node.value.attr], res, "create")] = f"kube.apply via {node.attr}"
    return found


def custom_call_permissions() -> dict[Permission, str]:
    """``kube.<helper>(api.<RESOURCE>, ...)`` call sites in the operator's own modules."""
    from tts_operator import api

    resources = {name: value for name, value in vars(api).items() if isinstance(value, api.Resource)}
    found: dict[Permission, str] = {}
    pattern = re.compile(r"\.(" + "|".join(CUSTOM_HELPERS) + r")\(\s*api\.([A-Z_]+)")
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "kube/client.py" or any(rel.startswith(p) for p in NOT_THE_OPERATOR):
            continue
        for helper, const in pattern.findall(path.read_text()):
            verb, sub = CUSTOM_HELPERS[helper]
            res = resources[const]
            found[(res.group, res.plural + sub, verb)] = f"{rel}: kube.{helper}(api.{const})"
    return found


def _handler_modules() -> list[str]:
    """The reconcilers: each registers its controller's kopf handlers when imported."""
    import tts_operator.reconcile as pkg

    return [f"tts_operator.reconcile.{m.name}" for m in pkgutil.iter_modules(pkg.__path__)]


def kopf_permissions() -> dict[Permission, str]:
    """kopf's watches and patches for every handler the operator registers."""
    import kopf

    for mod in _handler_modules():
        importlib.import_module(mod)
    registry = kopf.get_default_registry()
    found: dict[Permission, str] = {}

    def resource(sel: Any) -> tuple[str, str]:
        assert sel is not None, "a kopf handler without a resource selector"
        return str(sel.group or ""), str(sel.plural or sel.any_name)

    for h in registry._watching.get_all_handlers():
        group, plural = resource(h.selector)
        for verb in ("list", "watch"):
            found[(group, plural, verb)] = f"kopf watch for {h.id}"
    changing: list[Any] = [*registry._changing.get_all_handlers(), *registry._spawning.get_all_handlers()]
    for h in changing:
        group, plural = resource(h.selector)
        for verb in ("list", "watch", "patch"):
            found[(group, plural, verb)] = f"kopf handler {h.id}"
    return found


def granted_by_operator_roles() -> dict[Permission, str]:
    """Rules of the Roles the operator creates: it must hold them itself (RBAC escalation check)."""
    from tts_operator.builders import training

    role = training.trainer_role(training.RunIdentity("run", "ns", "uid"))
    found: dict[Permission, str] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                for verb in rule["verbs"]:
                    found[(group, res, verb)] = (
                        "granted to each run's trainer by builders.training.trainer_role"
                    )
    return found


def required(namespaced: bool) -> dict[Permission, str]:
    out: dict[Permission, str] = {}
    for part in (client_call_permissions(), custom_call_permissions(), kopf_permissions()):
        out |= part
    out |= granted_by_operator_roles()
    # kopf's observers: CRDs always; namespaces when it watches a list of them
    out[("apiextensions.k8s.io", "customresourcedefinitions", "list")] = "kopf resource observer"
    out[("apiextensions.k8s.io", "customresourcedefinitions", "watch")] = "kopf resource observer"
    if namespaced:
        out[("", "namespaces", "list")] = "kopf namespace observer"
        out[("", "namespaces", "watch")] = "kopf namespace observer"
    return out


def rule_permissions(rules: list[dict[str, Any]]) -> set[Permission]:
    return {
        (g, r, v)
        for rule in rules
        for g in rule.get("apiGroups", [])
        for r in rule.get("resources", [])
        for v in rule.get("verbs", [])
    }
