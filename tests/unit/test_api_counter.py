"""The scale benchmark's counting proxy (bench/api_counter.py): how it names a request, and its diff."""

from __future__ import annotations

import pytest
from bench.api_counter import classify, diff, is_write

CR = "/apis/tts-operator.dev/v1alpha1/namespaces/ns/voicemodels"


@pytest.mark.parametrize(
    ("method", "path", "query", "content_type", "expected"),
    [
        ("GET", CR, "", "", "list voicemodels"),
        ("GET", CR, "watch=true&resourceVersion=5", "", "watch voicemodels"),
        ("GET", f"{CR}/vm-1", "", "", "get voicemodels"),
        ("PATCH", f"{CR}/vm-1/status", "", "application/merge-patch+json", "patch voicemodels/status"),
        (
            "PATCH",
            "/api/v1/namespaces/ns/configmaps/c",
            "force=true",
            "application/apply-patch+yaml",
            "apply configmaps",
        ),
        ("POST", "/api/v1/namespaces/ns/events", "", "", "create events"),
        (
            "DELETE",
            "/apis/policy/v1/namespaces/ns/poddisruptionbudgets/p",
            "",
            "",
            "delete poddisruptionbudgets",
        ),
        ("DELETE", "/api/v1/namespaces/ns/pods", "", "", "deletecollection pods"),
        ("GET", "/api/v1/namespaces/ns", "", "", "get namespaces"),
        (
            "GET",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            "watch=1",
            "",
            "watch customresourcedefinitions",
        ),
        ("GET", "/version", "", "", "get /version"),
    ],
)
def test_classify(method: str, path: str, query: str, content_type: str, expected: str) -> None:
    assert classify(method, path, query, content_type) == expected


def test_writes_and_window() -> None:
    assert [is_write(k) for k in ("apply configmaps", "patch x/status", "get x", "watch x", "list x")] == [
        True, True, False, False, False,
    ]  # fmt: skip
    before = {"get x": 3, "apply y": 1}
    after = {"get x": 5, "apply y": 1, "create events": 2}
    assert diff(after, before) == {"create events": 2, "get x": 2}
