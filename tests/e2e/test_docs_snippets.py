"""Every ``bash``, ``sh`` and ``python`` block of README.md and docs/*.md runs, as a reader would run
it, unless it is marked ``<!-- not run: REASON -->`` (the convention: tests/support/doc_snippets.py,
docs/development.md "Docs that run"). A block that fails is a doc bug.

One world serves every block, made once for the module (about a minute):

- the dev cluster with the CRDs, and the operator watching a fresh namespace, which the blocks'
  kubeconfig selects (so ``kubectl get vmodel narrator`` needs no ``-n``);
- the VoiceModel ``narrator`` serving a tiny random XTTS version (``narrator-ft-1``) from the PVC
  ``models``, with the voice ``narrator`` in its ``spec.voices`` and a bearer token from the Secret
  ``tts-token``: the blocks reach it through ``$TTS_URL`` and ``$TTS_TOKEN``, as the docs say;
- the TrainingRun ``narrator-ft-2``, Pending with reason ``VolumeNotFound`` (its claims do not
  exist): what the troubleshooting blocks look at;
- ``PATH`` with the project's kubectl, helm and CLIs first (``tts-operator dev env``), and a work
  folder that links the checkout's top-level files (``examples/``, ``charts/``...) so relative paths
  work and whatever a block writes stays out of the checkout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.doc_snippets import REPO, Block, runnable_blocks
from support.operator_process import OperatorProcess
from support.voicemodels import READY_TIMEOUT, VoiceModels
from support.waiting import wait_for

pytestmark = pytest.mark.slow

NAME = "narrator"
VERSION = "narrator-ft-1"
PENDING_RUN = "narrator-ft-2"
TOKEN = "docs-" + uuid.uuid4().hex[:16]
#: the longest a single block may take (a python block synthesises a few sentences on the CPU)
BLOCK_TIMEOUT = 180


@dataclass
class World:
    namespace: str
    env: dict[str, str]
    workdir: Path


def _served_model(models: Path) -> None:
    """A tiny XTTS version with a reference clip for the voice ``narrator``, its manifest covering it."""
    from support.datasets import speak
    from tts_contract.contract import Engine
    from tts_runtime.demo_model import make_demo_model
    from tts_runtime.versions import build_manifest, write_manifest

    version_dir = make_demo_model(models / NAME / VERSION, "xtts", seed=0)
    speak(
        "This is the narrator's reference voice, a few seconds long.", version_dir / "voices" / "narrator.wav"
    )
    write_manifest(version_dir, build_manifest(version_dir, VERSION, Engine.XTTS))


def _voicemodel() -> dict[str, Any]:
    return {
        "apiVersion": "tts-operator.dev/v1alpha1",
        "kind": "VoiceModel",
        "metadata": {"name": NAME},
        "spec": {
            "engine": "xtts",
            "model": {"volume": {"claimName": "models", "subPath": NAME}},
            "version": VERSION,
            "devicePolicy": "PreferGPU",
            "resources": {"gpus": 1, "gpuProduct": "NVIDIA-GeForce-RTX-3090"},
            "voices": [{"name": "narrator", "wav": "voices/narrator.wav"}],
            "server": {"authSecretRef": {"name": "tts-token"}, "maxConcurrency": 1},
        },
    }


def _pending_run() -> dict[str, Any]:
    return {
        "apiVersion": "tts-operator.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": PENDING_RUN},
        "spec": {
            "engine": "xtts",
            "baseModel": {"volume": {"claimName": "base-models", "subPath": "xtts-v2"}},
            "dataset": {"volume": {"claimName": "datasets", "subPath": NAME}},
            "training": {"epochs": 1},
            "checkpoints": {"volume": {"claimName": "checkpoints"}},
            "export": {"volume": {"claimName": "models", "subPath": NAME}},
            "devicePolicy": "PreferGPU",
            "resources": {"gpus": 1, "gpuProduct": "NVIDIA-GeForce-RTX-3090"},
        },
    }


def _workdir(tmp: Path) -> Path:
    work = tmp / "work"
    work.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in (".git", ".cluster"):
            (work / entry.name).symlink_to(entry)
    return work


def _env(dev_cluster: Any, namespace: str, tmp: Path, url: str) -> dict[str, str]:
    out = subprocess.run(
        [str(REPO / ".venv" / "bin" / "tts-operator"), "dev", "env"],
        capture_output=True,
        text=True,
        check=True,
    )
    path = next(line for line in out.stdout.splitlines() if line.startswith("export PATH="))
    prefix = path.removeprefix("export PATH=").split(":")[:-1]  # the last item is "$PATH"
    kubeconfig = tmp / "kubeconfig"
    config = yaml.safe_load(Path(dev_cluster.kubeconfig).read_text())
    for context in config.get("contexts", []):
        context["context"]["namespace"] = namespace
    kubeconfig.write_text(yaml.safe_dump(config))
    return {
        **os.environ,
        "PATH": ":".join([*prefix, str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "KUBECONFIG": str(kubeconfig),
        # the work folder looks like a checkout (hack/ is linked) but has no .cluster/ of its own:
        # `tts-operator dev s3 ...` must find the running cluster's (its S3 keys)
        "TTS_CLUSTER_DIR": str(dev_cluster.state),
        "TTS_URL": url,
        "TTS_TOKEN": TOKEN,
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="module")
def world(dev_cluster: Any, crds: list, k8s_api: Any, kubectl: Any, tmp_path_factory: Any) -> Iterator[World]:
    from kubernetes import client

    from support.datasets import MissingToolError, speak
    from tts_devcluster.volumes import create_volume, delete_volumes

    try:
        speak("check", tmp_path_factory.mktemp("probe") / "probe.wav")
    except MissingToolError as e:
        pytest.skip(str(e))
    tmp = tmp_path_factory.mktemp("docs")
    namespace = f"docs-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(k8s_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    operator = OperatorProcess(str(dev_cluster.kubeconfig), namespace, tmp / "operator.log")
    try:
        _served_model(create_volume(dev_cluster, "models", namespace))
        core.create_namespaced_secret(
            namespace,
            client.V1Secret(metadata=client.V1ObjectMeta(name="tts-token"), string_data={"token": TOKEN}),
        )
        operator.start()
        models = VoiceModels(k8s_api, namespace, kubectl)
        models.apply(_voicemodel())
        kubectl("-n", namespace, "apply", "-f", "-", input=yaml.safe_dump(_pending_run()))
        wait_for(lambda: _serving(models), READY_TIMEOUT, f"VoiceModel {NAME} serving {VERSION}")
        wait_for(
            lambda: _ready_reason(kubectl, namespace) == "VolumeNotFound",
            120,
            f"TrainingRun {PENDING_RUN} pending with reason VolumeNotFound",
        )
        (url,) = models.ready_endpoints(NAME)
        yield World(namespace, _env(dev_cluster, namespace, tmp, url), _workdir(tmp))
    finally:
        operator.stop()
        print(f"--- operator log (tail) ---\n{operator.log()[-4000:]}")
        core.delete_namespace(namespace, propagation_policy="Background")
        delete_volumes(dev_cluster, namespace)


def _serving(models: VoiceModels) -> bool:
    status = models.get(NAME).get("status") or {}
    assert status.get("phase") != "Failed", f"VoiceModel {NAME} failed: {status}"
    return models.serving(NAME, VERSION)


def _ready_reason(kubectl: Any, namespace: str) -> str:
    out = kubectl("-n", namespace, "get", "trun", PENDING_RUN, "-o", "json")
    conditions = json.loads(out.stdout).get("status", {}).get("conditions", [])
    return next((c.get("reason", "") for c in conditions if c["type"] == "Ready"), "")


BLOCKS = runnable_blocks()


@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_doc_block_runs(world: World, block: Block) -> None:
    if block.language == "python":
        argv = [sys.executable, "-c", block.code]
    else:
        argv = ["bash", "-e", "-o", "pipefail", "-c", block.code]
    try:
        out = subprocess.run(
            argv, cwd=world.workdir, env=world.env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(
            f"{block.where}: still running after {BLOCK_TIMEOUT} s:\n{block.code}\n{e.stdout}{e.stderr}"
        )
    assert out.returncode == 0, (
        f"{block.where} failed (exit {out.returncode}); fix the doc, or mark the block "
        f"<!-- not run: REASON -->:\n{block.code}\n--- stdout ---\n{out.stdout[-3000:]}\n"
        f"--- stderr ---\n{out.stderr[-3000:]}"
    )
