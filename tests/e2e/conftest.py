"""E2E fixtures: the real operator running against the dev cluster, and volumes for its runs."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from operator_process import OperatorProcess


@pytest.fixture
def tts_operator(kubeconfig: str, namespace: str, crds: list, tmp_path: Path) -> Iterator[OperatorProcess]:
    """`tts-operator run` scoped to the test's namespace (so parallel sessions never collide)."""
    proc = OperatorProcess(kubeconfig, namespace, tmp_path / "operator.log").start()
    yield proc
    proc.stop()
    print(f"--- operator log (tail) ---\n{proc.log()[-6000:]}")  # shown when the test failed


@pytest.fixture
def run_volumes(dev_cluster, namespace: str) -> dict[str, Path]:
    """PVCs `data`, `ckpt`, `models` (folders under .cluster/volumes/<namespace>/)."""
    from tts_operator.devcluster.volumes import create_volume

    return {name: create_volume(dev_cluster, name, namespace) for name in ("data", "ckpt", "models")}
