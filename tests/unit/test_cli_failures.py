"""The CLIs' common failures that need no cluster end in one line naming the cause (the path, the
port, the object) and what to do, a non-zero exit code, and no traceback: `tts-operator` without a
kubeconfig or with one whose cluster is down, a dev cluster that is down or half up, ports taken,
`tts-runtime` pointed at a model directory it cannot use. The ones that need a cluster are in
tests/cluster/test_cli_failures_on_cluster.py."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tts_devcluster.cluster import COMPONENTS
from tts_devcluster.procs import _start_time

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = [sys.executable, "-m", "tts_operator.cli"]
RUNTIME = [sys.executable, "-m", "tts_runtime.cli"]


def run(argv: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``argv`` from the checkout with no KUBECONFIG, $HOME in ``tmp_path`` unless given (no
    ~/.kube/config) and the dev cluster's state in ``tmp_path/cluster`` (nothing running there)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    clean.update(HOME=str(tmp_path), TTS_CLUSTER_DIR=str(tmp_path / "cluster"), OMP_NUM_THREADS="1")
    return subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=120, env={**clean, **env}, check=False
    )


def one_error_line(out: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The failure's one line on stderr (make's own "make: ***" line aside): it holds ``needles``."""
    said = out.stdout + out.stderr
    assert out.returncode != 0, said
    assert "Traceback" not in said, said
    lines = [ln for ln in out.stderr.splitlines() if ln.strip() and not ln.startswith("make")]
    assert len(lines) == 1, said
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def listening() -> Iterator[int]:
    """A port some other process (this test) listens on."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        yield s.getsockname()[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kubeconfig_for(tmp_path: Path, server: str) -> Path:
    """A kubeconfig naming ``server`` (nothing answers there)."""
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    return path


# --- tts-operator: no cluster to talk to ---------------------------------------------------------


def test_promote_without_a_kubeconfig_says_where_it_looked(tmp_path: Path) -> None:
    manifest = tmp_path / "vm.yaml"
    manifest.write_text((ROOT / "examples" / "voicemodel.yaml").read_text())
    out = run([*OPERATOR, "promote", "narrator-ft-2", "--voicemodel", str(manifest)], tmp_path)
    one_error_line(out, "$KUBECONFIG is not set", "set KUBECONFIG or pass --kubeconfig")


@pytest.mark.parametrize("command", ["run", "promote"])
def test_a_cluster_that_is_down_is_named_at_once(command: str, tmp_path: Path) -> None:
    port = free_port()
    kubeconfig = kubeconfig_for(tmp_path, f"https://127.0.0.1:{port}")
    manifest = tmp_path / "vm.yaml"
    manifest.write_text((ROOT / "examples" / "voicemodel.yaml").read_text())
    argv = {
        "run": ["run", "--metrics-port", "0"],
        "promote": ["promote", "narrator-ft-2", "--voicemodel", str(manifest)],
    }[command]
    out = run([*OPERATOR, *argv], tmp_path, KUBECONFIG=str(kubeconfig))
    one_error_line(
        out, f"cannot reach the Kubernetes API server https://127.0.0.1:{port}", str(kubeconfig), "refused"
    )
    assert "make cluster-up" in out.stderr


@pytest.mark.parametrize(
    "flags",
    [["--metrics-port", "{port}"], ["--metrics-port", "0", "--liveness", "http://0.0.0.0:{port}/healthz"]],
    ids=["metrics", "liveness"],
)
def test_operator_port_in_use(flags: list[str], listening: int, tmp_path: Path) -> None:
    argv = [f.format(port=listening) for f in flags]
    out = run([*OPERATOR, "run", *argv], tmp_path)  # said before it looks for a cluster
    line = one_error_line(out, f"port {listening}", "already in use")
    assert ("--metrics-port" if "metrics" in line else "--liveness") in line


# --- the dev cluster: down, half up, its ports taken ----------------------------------------------


def write_state(state: Path, alive: dict[str, int]) -> None:
    """PID files for every component: ``alive`` (name -> pid of a running process) as they are,
    the others naming a process that has exited (a crash, a reboot)."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    (state / "pids").mkdir(parents=True)
    for name in COMPONENTS:
        pid = alive.get(name, dead.pid)
        start = _start_time(pid) if name in alive else 1
        entry = {"name": name, "pid": pid, "start_time": start, "log": str(state / "logs" / f"{name}.log")}
        (state / "pids" / f"{name}.json").write_text(json.dumps(entry))


@pytest.fixture
def half_up(tmp_path: Path) -> Iterator[Path]:
    """A state folder whose etcd and kube-apiserver "run" (a process that is alive) while the
    rest died."""
    keeper = subprocess.Popen(["sleep", "120"])
    try:
        write_state(tmp_path / "cluster", {"etcd": keeper.pid, "kube-apiserver": keeper.pid})
        yield tmp_path / "cluster"
    finally:
        keeper.kill()
        keeper.wait()


@pytest.mark.parametrize(
    "argv",
    [
        [*OPERATOR, "dev", "cluster", "status"],
        [*OPERATOR, "dev", "volume", "create", "models"],
        [*OPERATOR, "dev", "volume", "delete", "--all"],
        ["make", "--no-print-directory", "cluster-status"],
    ],
    ids=["status", "volume-create", "volume-delete", "make-cluster-status"],
)
@pytest.mark.parametrize("state", ["down", "dead-pids", "half-up"])
def test_a_cluster_down_or_half_up_is_named(
    argv: list[str], state: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if state == "dead-pids":
        write_state(tmp_path / "cluster", {})
    elif state == "half-up":
        request.getfixturevalue("half_up")
    out = run(argv, tmp_path)
    if state == "half-up":
        one_error_line(out, "the dev cluster is half up", "kube-controller-manager (pid", "make cluster-up")
        assert "etcd" not in out.stderr.split("half up:", 1)[1].split("not running")[0]
    else:
        one_error_line(out, "the dev cluster is not running", str(tmp_path / "cluster"), "make cluster-up")


def test_make_env_says_the_cluster_is_down_but_still_prints_the_lines(tmp_path: Path) -> None:
    out = run(["make", "-s", "env"], tmp_path, HOME=os.environ.get("HOME", "/root"))
    assert out.returncode == 0 and "Traceback" not in out.stderr
    assert out.stdout.count("export ") == 2
    assert out.stderr.strip().startswith("# the dev cluster is not running")


def test_cluster_up_names_who_holds_its_port(tmp_path: Path) -> None:
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    bins = subprocess.run(
        ["bash", str(ROOT / "hack" / "build-control-plane.sh"), "print-bin"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if not bins or not (Path(bins.splitlines()[-1]) / "etcd").exists():
        pytest.skip("the control plane is not built here (`make setup`)")
    offset = 7313  # no checkout's or test's cluster
    with socket.socket() as s:  # a foreign process on the cluster's etcd port
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 23790 + offset))
        s.listen()
        out = run(
            [*OPERATOR, "dev", "cluster", "up", "--no-build"],
            tmp_path,
            HOME=os.environ.get("HOME", "/root"),
            TTS_CLUSTER_PORT_OFFSET=str(offset),
        )
    line = one_error_line(out, f"port 127.0.0.1:{23790 + offset} is in use by pid {os.getpid()}")
    assert f"TTS_CLUSTER_PORT_OFFSET={offset + 1000}" in line


# --- tts-runtime: model directories it cannot use, ports taken ------------------------------------


def _without_dac_override() -> list[str]:
    """A prefix that makes root subject to file permissions (root reads anything otherwise)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("root ignores file permissions and setpriv is not here to drop that")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.fixture
def dirs(tmp_path: Path) -> Iterator[dict[str, Path]]:
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("not a directory")
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "manifest.json").write_text("{}")
    (tmp_path / "locked").chmod(0)
    yield {
        "missing": tmp_path / "nope",
        "no-manifest": tmp_path / "empty",
        "a-file": tmp_path / "a-file",
        "unreadable": tmp_path / "locked",
    }
    (tmp_path / "locked").chmod(0o755)


SAYS = {
    "missing": "no such directory",
    "no-manifest": "no manifest.json",
    "a-file": "a file, not a directory",
    "unreadable": "permission denied",
}


@pytest.mark.parametrize("case", list(SAYS))
@pytest.mark.parametrize("command", ["serve", "verify"])
def test_runtime_model_dir_it_cannot_use(command: str, case: str, dirs: dict[str, Path], tmp_path) -> None:
    prefix = _without_dac_override() if case == "unreadable" else []
    path = dirs[case]
    argv = {"serve": ["serve", "--model-dir", str(path), "--port", "0"], "verify": ["verify", str(path)]}
    out = run([*prefix, *RUNTIME, *argv[command]], tmp_path)
    assert out.returncode == 65, out.stderr
    one_error_line(out, str(path), SAYS[case])
    if case != "unreadable":
        assert "manifest.json" in out.stderr  # what to pass instead


def test_export_from_a_missing_source(tmp_path: Path) -> None:
    out = run([*RUNTIME, "export", str(tmp_path / "nope"), str(tmp_path / "models")], tmp_path)
    assert out.returncode == 65
    one_error_line(out, f"{tmp_path / 'nope'}: does not exist", "training run folder")


@pytest.mark.parametrize(
    "argv,says",
    [
        (["serve"], "nothing to serve: pass --spec FILE"),
        (["serve", "--spec", "/nonexistent/serve.json"], "--spec /nonexistent/serve.json: cannot read it"),
    ],
    ids=["nothing", "spec-missing"],
)
def test_serve_without_something_to_serve(argv: list[str], says: str, tmp_path: Path) -> None:
    out = run([*RUNTIME, *argv], tmp_path)
    assert out.returncode == 65
    one_error_line(out, says)


def test_serve_port_in_use(listening: int, tmp_path: Path) -> None:
    version = tmp_path / "v1"
    version.mkdir()
    (version / "manifest.json").write_text("{}")  # the loader verifies it; the port is said first
    out = run([*RUNTIME, "serve", "--model-dir", str(version), "--port", str(listening)], tmp_path)
    one_error_line(out, f"port {listening} on 0.0.0.0 is already in use", "--port")
