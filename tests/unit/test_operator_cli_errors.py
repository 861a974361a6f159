"""`tts-operator`'s common failures end in one line naming the cause and what to do, a non-zero exit
code, and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _operator(*args: str, home: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """``tts-operator ARGS`` with no KUBECONFIG (and ``home`` as $HOME: no ~/.kube, no tool cache)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    if home is not None:
        clean["HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "tts_operator.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **env},
    )


def test_run_without_a_kubeconfig_says_where_it_looked(tmp_path: Path) -> None:
    out = _operator("run", "--metrics-port", "0", home=tmp_path)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr + out.stdout
    (line,) = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert "$KUBECONFIG is not set" in line and "set KUBECONFIG or pass --kubeconfig" in line


def test_run_with_a_missing_kubeconfig_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    out = _operator("run", "--metrics-port", "0", home=tmp_path, KUBECONFIG=str(missing))
    assert out.returncode == 1
    assert "Traceback" not in out.stderr + out.stdout
    assert f"error: cannot use the kubeconfig {missing}" in out.stderr


def test_dev_env_puts_the_projects_tools_first_on_path(tmp_path: Path) -> None:
    # no tools built for this $HOME: said in one line
    out = _operator("dev", "env", home=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error: no kubectl in ") and out.stderr.strip().endswith(
        "run `make setup` first"
    )
    out = _operator("dev", "env")
    assert out.returncode == 0, out.stderr
    path_line, kubeconfig_line = out.stdout.splitlines()
    assert path_line.startswith("export PATH=") and path_line.endswith(':"$PATH"')
    assert kubeconfig_line.startswith("export KUBECONFIG=") and kubeconfig_line.endswith("kubeconfig")
    shell = subprocess.run(
        ["bash", "-c", f'{out.stdout}\ncommand -v kubectl; echo "$KUBECONFIG"'],
        capture_output=True,
        text=True,
        check=True,
    )
    kubectl, kubeconfig = shell.stdout.split()
    assert kubectl.endswith("/bin/kubectl") and "tts-operator/control-plane" in kubectl
    assert kubeconfig == kubeconfig_line.split("=", 1)[1]
