"""Looking for secrets where they must not be: logs, status, Events, answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def secret_like(text: str) -> bool:
    return len(text) >= 16


def leaks(secret: str, texts: dict[str, str]) -> list[str]:
    """Names of the texts containing the secret (or its last half: a truncated token is still a leak)."""
    assert secret_like(secret)
    half = secret[len(secret) // 2 :]
    return [name for name, text in texts.items() if secret in text or half in text]


def restrict_namespace(k8s_api: Any, namespace: str) -> str:
    """Make ``namespace`` enforce (not only warn about) the `restricted` Pod Security Standard."""
    from kubernetes import client

    labels = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    client.CoreV1Api(k8s_api).patch_namespace(namespace, {"metadata": {"labels": labels}})
    return namespace


def pod_tokens(cluster_state: Path, namespace: str) -> tuple[set[str], dict[str, str]]:
    """The projected ServiceAccount tokens the local pod runner mounted into the pods of
    ``namespace``, and their containers' logs (path -> text)."""
    pod_dirs = sorted((cluster_state / "pods").glob(f"{namespace}_*"))
    assert pod_dirs, "the local pod runner left no pod folders"
    tokens = {p.read_text().strip() for d in pod_dirs for p in d.rglob("token") if p.is_file()}
    tokens = {t for t in tokens if secret_like(t)}
    assert tokens, f"no projected ServiceAccount token found under {pod_dirs}"
    logs = {str(p): p.read_text(errors="replace") for d in pod_dirs for p in d.glob("*.log")}
    assert logs, "no container logs"
    return tokens, logs
