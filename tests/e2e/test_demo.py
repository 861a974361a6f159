"""`make demo` end to end, as a user meets it: the same script (hack/demo.sh) twice in a row in one
namespace (the second run deletes what the first left, its volume and its S3 prefix, and must be as
clean), ending with a wav that decodes; then every command its "What to try next" block prints, run
as written. Runs the whole product (cluster, operator, the dataset and base model fetched from the
cluster's S3, real training on the CPU, the version published to S3, a serving pod fetching it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import soundfile

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _demo(env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    out = subprocess.run(
        ["bash", str(ROOT / "hack" / "demo.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,  # the promise: under 10 minutes once setup is done
    )
    return out, time.monotonic() - started


def suggested_commands(stdout: str) -> list[str]:
    """The commands of the "What to try next" block: its indented lines up to "Docs:", without
    their comments; lines that are only a comment (the page to open in a browser) are not commands."""
    block = stdout.split("What to try next", 1)[1].split("\nDocs:", 1)[0]
    commands = []
    for line in block.splitlines():
        if not line.startswith("  ") or line.strip().startswith("#"):
            continue
        commands.append(re.sub(r"\s+#\s.*$", "", line).strip())
    return commands


def test_demo_twice_in_one_namespace_then_what_it_suggests(
    dev_cluster, crds: list, kubectl, tmp_path: Path
) -> None:
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.skip("espeak-ng and sox are needed to speak the dataset")
    from tts_devcluster.s3 import boto3_client, remove
    from tts_devcluster.volumes import delete_volumes

    ns = f"demo-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "DEMO_NAMESPACE": ns, "DEMO_OUT": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    try:
        # the first run only leaves what an earlier demo leaves: one epoch is enough for that
        first, first_s = _demo({**env, "DEMO_EPOCHS": "1"})
        log = first.stdout + first.stderr
        assert first.returncode == 0, log[-8000:]
        assert "Traceback" not in log, log[-8000:]
        # `make demo` again, as a user would: the namespace and volumes of the first run are replaced
        second, second_s = _demo(env)
        log = second.stdout + second.stderr
        assert second.returncode == 0, log[-8000:]
        assert "Traceback" not in log, log[-8000:]
        print(f"demo took {first_s:.0f} s, then {second_s:.0f} s")
        prefix = f"s3://tts/{ns}"
        assert f"namespace {ns} exists from an earlier demo" in second.stdout
        assert f"deleted 1 dev volume(s) of namespace {ns}" in second.stdout  # checkpoints
        # the first run's dataset, base model and published version, gone before they are copied again
        removed = re.search(rf"removed (\d+) object\(s\), \d+ bytes, under {prefix}\n", second.stdout)
        assert removed is not None and int(removed.group(1)) >= 15, second.stdout[:4000]

        # live progress: the watch printed the run moving through its phases, epoch by epoch
        watch = log.split("kubectl get trun -w", 1)[1].split("6/8", 1)[0]
        assert "Running" in watch and "2/2" in watch, watch
        assert "Succeeded" in log
        # the version went to S3 (manifest.json last), and the serving pod fetched it from there
        run = json.loads(kubectl("-n", ns, "get", "trun", "narrator-demo", "-o", "json").stdout)
        version_uri = f"{prefix}/models/narrator/narrator-demo"
        assert run["status"]["output"]["path"] == version_uri, run["status"]
        listing = second.stdout.split(f"tts-operator dev s3 ls {version_uri}\n", 1)[1].split("==>", 1)[0]
        assert f"  {version_uri}/manifest.json" in listing and f"  {version_uri}/model.pth" in listing
        pods = json.loads(
            kubectl(
                "-n", ns, "get", "pods", "-l", "tts-operator.dev/voicemodel=narrator", "-o", "json"
            ).stdout
        )["items"]
        fetched = [
            cs["state"]["terminated"]
            for pod in pods
            for cs in pod["status"].get("initContainerStatuses", [])
            if cs["name"] == "fetch-model" and "terminated" in cs["state"]
        ]
        assert fetched and all(t["exitCode"] == 0 for t in fetched), pods

        # the wav on disk decodes to audio
        wav = tmp_path / "narrator.wav"
        audio, rate = soundfile.read(str(wav))
        assert rate > 0 and len(audio) > rate // 10, (rate, len(audio))

        # what to try next, as written: in a shell with none of the project's tools on PATH and no
        # KUBECONFIG, from the checkout, after the block's own first line
        commands = suggested_commands(second.stdout)
        assert commands[0] == 'eval "$(make -s env)"', commands
        assert len(commands) >= 7, commands
        shell_env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        shell_env["PATH"] = "/usr/bin:/bin"
        for command in commands[1:]:
            if command.split()[0] == "curl" and not shutil.which("curl"):
                continue
            out = subprocess.run(
                ["bash", "-c", f"set -e\n{commands[0]}\n{command}"],
                cwd=ROOT,
                env=shell_env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            said = out.stdout + out.stderr
            assert out.returncode == 0, f"{command}\n{said[-3000:]}"
            assert "Traceback" not in said, f"{command}\n{said[-3000:]}"
    finally:
        kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False)
        delete_volumes(dev_cluster, ns)
        remove(boto3_client(dev_cluster.s3_endpoint()), f"s3://tts/{ns}", recursive=True)
