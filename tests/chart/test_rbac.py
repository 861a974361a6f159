"""The chart's RBAC is least privilege: no wildcard, no Secret access unless auth Secrets are named,
and every permission justified by something the operator's code does (tests/chart/rbac_model.py).
That it is *enough* is proven by tests/chart/test_operator_as_chart_sa.py, which runs the operator
with nothing but this ServiceAccount's token."""

from __future__ import annotations

from typing import Any

import pytest
import rbac_model
from helmchart import by_kind, render

SECRETS = ("", "secrets", "get")


def _roles(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return by_kind(docs, "ClusterRole") + by_kind(docs, "Role")


def _granted(docs: list[dict[str, Any]]) -> set[rbac_model.Permission]:
    return {p for role in _roles(docs) for p in rbac_model.rule_permissions(role["rules"])}


MODES = {
    "cluster-wide": {},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
}


@pytest.mark.parametrize("mode", MODES)
def test_no_wildcards(mode: str) -> None:
    for role in _roles(render(values=MODES[mode])):
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(key, []), (role["metadata"]["name"], rule)
            assert not rule.get("nonResourceURLs"), rule
            # escalate/bind/impersonate would let the operator grant itself anything
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule


@pytest.mark.parametrize("mode", MODES)
def test_every_permission_is_justified_by_the_code(mode: str) -> None:
    required = rbac_model.required(namespaced=mode == "namespaced")
    granted = _granted(render(values=MODES[mode]))
    unjustified = granted - set(required)
    assert not unjustified, f"granted but the operator never does it: {sorted(unjustified)}"


@pytest.mark.parametrize("mode", MODES)
def test_every_call_of_the_code_is_granted(mode: str) -> None:
    """The static half of "enough": a new client call in kube.py fails here before any cluster test."""
    required = rbac_model.required(namespaced=mode == "namespaced")
    granted = _granted(render(values=MODES[mode]))
    missing = {p: why for p, why in required.items() if p not in granted and p != SECRETS}
    assert not missing, f"the operator does these without RBAC for them: {missing}"


def test_secrets_only_by_name_and_only_when_auth_is_configured() -> None:
    for mode, values in MODES.items():
        assert SECRETS not in _granted(render(values=values)), mode
    docs = render(values={"rbac.authSecretNames": ["tts-token"], "watchNamespaces": ["team-a"]})
    rules = [r for role in _roles(docs) for r in role["rules"] if "secrets" in r["resources"]]
    assert rules and all(r["resourceNames"] == ["tts-token"] and r["verbs"] == ["get"] for r in rules)


def test_cluster_scope_is_read_only_in_namespaced_mode() -> None:
    docs = render(values=MODES["namespaced"])
    for role in by_kind(docs, "ClusterRole"):
        assert {v for _, _, v in rbac_model.rule_permissions(role["rules"])} <= {"list", "watch"}


def test_the_model_sees_the_operators_calls() -> None:
    """Guards the derivation itself: calls we know the operator makes are found."""
    required = rbac_model.required(namespaced=False)
    for known in [
        ("batch", "jobs", "create"),  # kube.create of the training Job
        ("", "events", "create"),  # post_event
        ("tts-operator.dev", "trainingruns/status", "patch"),  # patch_status
        ("tts-operator.dev", "trainingruns", "watch"),  # kopf's watch
        ("rbac.authorization.k8s.io", "roles", "create"),  # the trainer's Role
    ]:
        assert known in required, known
