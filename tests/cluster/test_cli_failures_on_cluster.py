"""The CLIs' common failures that need a cluster end in one line naming the cause and what to do, a
non-zero exit code and no traceback (tests/unit/test_cli_failures.py has those that need none):

- on the session's cluster: a volume that exists, one whose PV was Released (its claim deleted, as
  deleting its namespace does), a claim of that name that is not a dev volume, a namespace that does
  not exist; `promote` of a TrainingRun or in a namespace that does not exist;
- on a private cluster of its own (its components are killed): half up, then its API server down,
  and `dev cluster up` putting it right.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = [sys.executable, "-m", "tts_operator.cli"]
#: the private cluster's ports: the defaults shifted by this (none is a port of a checkout's cluster
#: at an offset of N * 1000, nor of the chaos or lifecycle tests' clusters); its CLI calls get it as
#: TTS_CLUSTER_PORT_OFFSET
PRIVATE_OFFSET = 4005


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*OPERATOR, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **env},
        check=False,
    )


def one_error_line(out: subprocess.CompletedProcess[str], *needles: str) -> str:
    said = out.stdout + out.stderr
    assert out.returncode != 0, said
    assert "Traceback" not in said, said
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, said
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def ok(out: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stdout + out.stderr
    return out


# --- volumes and promote on the session's cluster --------------------------------------------------


def test_volume_that_exists_is_reused(dev_cluster, namespace: str) -> None:
    first = ok(cli("dev", "volume", "create", "data", "-n", namespace))
    path = Path(first.stdout.strip())
    (path / "clip.wav").write_text("kept")
    again = ok(cli("dev", "volume", "create", "data", "-n", namespace))
    assert again.stdout.strip() == str(path)
    (note,) = again.stderr.splitlines()
    assert f"volume {namespace}/data exists: reusing it and its data" in note


def test_volume_whose_claim_was_deleted_is_bound_again(dev_cluster, namespace: str, kubectl) -> None:
    """What `make demo` met on its second run: the namespace (and so the claim) deleted, the PV
    left Released, a new claim of that name Pending until the bind wait timed out in a traceback."""
    path = Path(ok(cli("dev", "volume", "create", "models", "-n", namespace)).stdout.strip())
    (path / "v1").mkdir()
    kubectl("-n", namespace, "delete", "pvc", "models")
    pv = f"{namespace}-models"
    wait_for(
        lambda: kubectl("get", "pv", pv, "-o", "jsonpath={.status.phase}").stdout == "Released",
        30,
        f"PV {pv} Released",
    )
    again = ok(cli("dev", "volume", "create", "models", "-n", namespace))
    (note,) = again.stderr.splitlines()
    assert f"PersistentVolume {pv} was Released" in note and "dev volume delete models" in note
    assert (path / "v1").is_dir()  # the data the PV kept
    phase = kubectl("-n", namespace, "get", "pvc", "models", "-o", "jsonpath={.status.phase}").stdout
    assert phase == "Bound"
    # and `delete` removes it for good: claim, PV and folder
    assert ok(cli("dev", "volume", "delete", "models", "-n", namespace)).stdout.startswith("deleted volume")
    assert kubectl("get", "pv", pv, "--ignore-not-found", "-o", "name").stdout == ""
    assert not path.exists()


def test_volume_named_like_a_claim_that_is_not_a_dev_volume(namespace: str, kubectl) -> None:
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    kubectl("-n", namespace, "apply", "-f", "-", input=yaml.safe_dump(claim))
    out = cli("dev", "volume", "create", "data", "-n", namespace)
    one_error_line(out, f"PersistentVolumeClaim {namespace}/data already exists and is not a dev volume")
    assert f"kubectl -n {namespace} delete pvc data" in out.stderr


def test_volume_in_a_namespace_that_does_not_exist(dev_cluster, kubectl) -> None:
    ns = f"nope-{uuid.uuid4().hex[:6]}"
    out = cli("dev", "volume", "create", "data", "-n", ns)
    one_error_line(out, f"namespace {ns} does not exist", f"kubectl create namespace {ns}")
    # nothing made on the way
    assert kubectl("get", "pv", f"{ns}-data", "--ignore-not-found", "-o", "name").stdout == ""


@pytest.mark.parametrize("where", ["unknown-run", "unknown-namespace"])
def test_promote_what_does_not_exist(
    where: str, crds: list, kubeconfig: str, namespace: str, tmp_path
) -> None:
    manifest = tmp_path / "vm.yaml"
    manifest.write_text((ROOT / "examples" / "voicemodel.yaml").read_text())
    ns = namespace if where == "unknown-run" else f"nope-{uuid.uuid4().hex[:6]}"
    out = cli("promote", "nope", "-n", ns, "--voicemodel", str(manifest), KUBECONFIG=kubeconfig)
    if where == "unknown-run":
        one_error_line(out, f"TrainingRun {ns}/nope not found", f"kubectl -n {ns} get trainingruns")
    else:
        one_error_line(out, f"namespace {ns} does not exist")
    assert manifest.read_text() == (ROOT / "examples" / "voicemodel.yaml").read_text()


# --- a private cluster, half up, then down, then put right -----------------------------------------


@pytest.fixture(scope="module")
def private_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    from tts_devcluster.cluster import DevCluster, Ports

    d = Ports()
    ports = Ports(*(port + PRIVATE_OFFSET for port in (d.etcd, d.etcd_peer, d.apiserver,
                                                       d.controller_manager, d.scheduler)))  # fmt: skip
    cluster = DevCluster(state_dir=tmp_path_factory.mktemp("cli-failures-cluster"), ports=ports)
    try:
        cluster.up(progress=lambda m: None, build=False)
        yield cluster
    finally:
        cluster.down(progress=lambda m: None)


def test_half_up_then_down_then_put_right(private_cluster, tmp_path: Path) -> None:
    cluster = private_cluster
    env = {"TTS_CLUSTER_DIR": str(cluster.state), "TTS_CLUSTER_PORT_OFFSET": str(PRIVATE_OFFSET)}
    runner = cluster.procs.get("pod-runner")
    runner.stop(grace=5.0)

    # half up: the API answers, the pod runner is gone
    status = cli("dev", "cluster", "status", **env)
    one_error_line(status, "the dev cluster is half up", f"pod-runner (pid {runner.pid})", "make cluster-up")
    assert json.loads(status.stdout)["apiReady"] is True
    out = cli("dev", "volume", "create", "data", "-n", "default", **env)
    one_error_line(out, "half up", "pod-runner")

    # its API server gone too: the operator's commands say the cluster does not answer
    apiserver = cluster.procs.get("kube-apiserver")
    apiserver.stop(grace=5.0)
    one_error_line(cli("dev", "cluster", "status", **env), "kube-apiserver", "pod-runner")
    manifest = tmp_path / "vm.yaml"
    manifest.write_text((ROOT / "examples" / "voicemodel.yaml").read_text())
    port = cluster.ports.apiserver
    kube = {**env, "KUBECONFIG": str(cluster.kubeconfig)}
    for argv in (
        ["run", "--metrics-port", "0"],
        ["promote", "narrator-ft-2", "--voicemodel", str(manifest)],
    ):
        out = cli(*argv, **kube)
        one_error_line(out, f"cannot reach the Kubernetes API server https://127.0.0.1:{port}", "refused")

    # `up` puts it right: what still ran is stopped, a fresh cluster starts
    up = ok(cli("dev", "cluster", "up", "--no-build", **env))
    assert "the cluster is half up (kube-apiserver" in up.stderr
    assert up.stdout.strip() == str(cluster.kubeconfig)
    status = ok(cli("dev", "cluster", "status", **env))
    assert json.loads(status.stdout)["problem"] is None
