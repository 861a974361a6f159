"""The chart as the tests see it: `helm` (built from the Go module proxy with the control plane) and
renders parsed into manifests."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tts-operator"
#: the local control plane's version (hack/versions.env): a helm built from source has no version
#: stamp and would otherwise render for Kubernetes v1.20
KUBE_VERSION = "1.36.3"


class Yaml12Loader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where ``5e-06`` (no dot) is a string; Go's YAML (Helm, kubectl, the API
    server) reads it as the float it is. Helm's toYaml writes floats that way, so read them as Go does."""


Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"
    ),
    list("-+0123456789."),
)


def control_plane_bin() -> Path:
    out = subprocess.run(
        ["bash", str(ROOT / "hack" / "build-control-plane.sh"), "print-bin"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


def helm_path() -> Path:
    return control_plane_bin() / "helm"


def run_helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([str(helm_path()), *args], capture_output=True, text=True)
    if check and out.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({out.returncode}):\n{out.stderr}{out.stdout}")
    return out


def template_args(release: str, namespace: str, values: dict[str, Any] | None, *extra: str) -> list[str]:
    args = ["template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION]
    for key, value in (values or {}).items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    return [*args, *extra]


def render_text(
    release: str = "tts", namespace: str = "tts-system", values: dict[str, Any] | None = None, *extra: str
) -> str:
    return run_helm(*template_args(release, namespace, values, *extra)).stdout


def render(
    release: str = "tts", namespace: str = "tts-system", values: dict[str, Any] | None = None, *extra: str
) -> list[dict[str, Any]]:
    """The chart's manifests for these values (``--set-json key=value`` each)."""
    return [
        d for d in yaml.load_all(render_text(release, namespace, values, *extra), Loader=Yaml12Loader) if d
    ]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]
