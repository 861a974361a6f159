"""E2E fixtures: the real operator running against the dev cluster, and model versions to serve
(``run_volumes`` is in tests/conftest.py: the chart tests use it too)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.operator_process import OperatorProcess


@pytest.fixture
def tts_operator(kubeconfig: str, namespace: str, crds: list, tmp_path: Path) -> Iterator[OperatorProcess]:
    """`tts-operator run` scoped to the test's namespace (so parallel sessions never collide)."""
    proc = OperatorProcess(kubeconfig, namespace, tmp_path / "operator.log").start()
    yield proc
    proc.stop()
    print(f"--- operator log (tail) ---\n{proc.log()[-6000:]}")  # shown when the test failed


@pytest.fixture(scope="session")
def vits_source(dev_cluster) -> Iterator[Path]:
    """One tiny random VITS model for the session, on the volumes' filesystem so versions made from
    it are hard links (a tiny VITS is ~200 MB)."""
    import shutil
    import uuid

    from tts_runtime.demo_model import make_demo_model

    root = dev_cluster.state / "volumes" / f"_vits-source-{uuid.uuid4().hex[:6]}"
    root.mkdir(parents=True)
    yield make_demo_model(root / "source", "vits", seed=0)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def model_versions(dev_cluster, namespace: str, vits_source: Path) -> Path:
    """PVC `models` with the folder `narrator/` holding versions v1, v2, v3 and v4-broken (a wrong
    checksum in its manifest)."""
    from support.model_versions import add_version
    from tts_devcluster.volumes import create_volume

    root = create_volume(dev_cluster, "models", namespace) / "narrator"
    for version in ("v1", "v2", "v3"):
        add_version(vits_source, root, version)
    add_version(vits_source, root, "v4-broken", break_checksum=True)
    return root


@pytest.fixture
def restricted(k8s_api, namespace: str) -> str:
    """The test namespace, enforcing (not only warning about) the `restricted` Pod Security Standard."""
    from support.secrets import restrict_namespace

    return restrict_namespace(k8s_api, namespace)
