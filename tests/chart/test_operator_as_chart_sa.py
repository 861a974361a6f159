"""Proof that the chart's RBAC is enough: the real operator runs with nothing but a token of the
chart's own ServiceAccount (from the TokenRequest API) and takes a TrainingRun from apply to an
exported model, promotes it (mode Direct) into a VoiceModel, and serves that VoiceModel until a
synthesis request returns audio. Its log must show no refused API call."""

from __future__ import annotations

import base64
import io
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from helmchart import render_text
from kubernetes import client

from support.manifests import RTX3090, trained_run_manifest
from support.objects import CustomObjects, conditions, wait_for_phase, wait_for_status
from support.operator_process import OperatorProcess
from tts_operator import api

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


@pytest.fixture
def chart_identity(
    kubectl, kubeconfig: str, k8s_api: client.ApiClient, namespace: str, tmp_path: Path
) -> Iterator[str]:
    """The chart's ServiceAccount and RBAC (namespaced mode, watching the test's namespace) applied for
    real; yields a kubeconfig holding only a TokenRequest token of that ServiceAccount."""
    release = f"sa{uuid.uuid4().hex[:6]}"
    docs = [
        d
        for d in yaml.safe_load_all(
            render_text(release, namespace, {"watchNamespaces": [namespace], "crds.enabled": False})
        )
        if d and d["kind"] in RBAC_KINDS
    ]
    manifest = tmp_path / "rbac.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    kubectl("apply", "--server-side", "--field-manager=chart-test", "-f", str(manifest))
    (sa,) = [d for d in docs if d["kind"] == "ServiceAccount"]
    token = (
        client.CoreV1Api(k8s_api)
        .create_namespaced_service_account_token(
            sa["metadata"]["name"],
            namespace,
            client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
            ),
        )
        .status.token
    )
    admin = yaml.safe_load(Path(kubeconfig).read_text())
    cluster = admin["clusters"][0]["cluster"]
    ca = (
        cluster.get("certificate-authority-data")
        or base64.b64encode(Path(cluster["certificate-authority"]).read_bytes()).decode()
    )
    kubeconfig = tmp_path / "chart-sa.kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "c", "cluster": {"server": cluster["server"], "certificate-authority-data": ca}}
                ],
                "users": [{"name": "chart-sa", "user": {"token": token}}],
                "contexts": [
                    {"name": "c", "context": {"cluster": "c", "user": "chart-sa", "namespace": namespace}}
                ],
                "current-context": "c",
            }
        )
    )
    yield str(kubeconfig)
    for d in docs:  # the namespace takes its own objects; the cluster-scoped ones are ours to remove
        if d["kind"].startswith("Cluster"):
            kubectl("delete", d["kind"].lower(), d["metadata"]["name"], "--ignore-not-found", check=False)


def _can_i(kubectl, kubeconfig: str, namespace: str, *what: str) -> bool:
    out = kubectl("--kubeconfig", kubeconfig, "auth", "can-i", "-n", namespace, *what, check=False)
    return out.stdout.strip() == "yes"


def test_operator_with_the_charts_serviceaccount_trains_exports_promotes_and_serves(
    kubectl,
    k8s_api: client.ApiClient,
    crds: list,
    namespace: str,
    run_volumes: dict[str, Path],
    dev_cluster,
    chart_identity: str,
    tmp_path: Path,
) -> None:
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.skip("espeak-ng and sox are needed to speak the dataset")
    from support.datasets import SPEAKER_REF, make_ljspeech_dataset
    from tts_devcluster.volumes import create_volume
    from tts_runtime.demo_model import make_demo_model

    # the identity really is limited: what the operator needs, and nothing it does not
    assert _can_i(kubectl, chart_identity, namespace, "create", "jobs.batch")
    assert not _can_i(kubectl, chart_identity, namespace, "get", "secrets")
    assert not _can_i(kubectl, chart_identity, namespace, "create", "trainingruns.tts-operator.dev")
    assert not _can_i(kubectl, chart_identity, "default", "create", "jobs.batch")  # other namespaces

    make_ljspeech_dataset(run_volumes["data"] / "narrator", n_clips=4)
    create_volume(dev_cluster, "base", namespace, make_demo_model(tmp_path / "xtts-base", "xtts", seed=0))

    runs = CustomObjects(k8s_api, namespace, "trainingruns")
    voicemodels = CustomObjects(k8s_api, namespace, "voicemodels")
    core = client.CoreV1Api(k8s_api)

    operator = OperatorProcess(chart_identity, namespace, tmp_path / "operator.log").start()
    try:
        # the VoiceModel comes first: it waits for the run's model; promotion Direct then patches it
        voicemodels.create(
            {
                "apiVersion": api.API_GROUP_VERSION,
                "kind": "VoiceModel",
                "metadata": {"name": "narrator"},
                "spec": {
                    "engine": "xtts",
                    "model": {"trainingRun": "narrator-ft"},
                    "replicas": 1,
                    "devicePolicy": "PreferGPU",
                    "resources": {"gpus": 1, "gpuProduct": RTX3090},
                    "rollout": {"progressDeadlineSeconds": 300},
                },
            }
        )
        runs.create(
            trained_run_manifest(
                "narrator-ft",
                engine="xtts",
                dataset={"evalSplit": 0.25},
                promote={"voiceModel": "narrator", "mode": "Direct"},
            )
        )

        run_status = wait_for_phase(runs, "narrator-ft", "Succeeded", 480, interval=1)
        version = run_status["output"]["version"]
        assert run_status["promotion"]["voiceModel"] == "narrator"
        assert run_status["promotion"]["applied"] is True  # get + patch of the VoiceModel

        vm_status = wait_for_status(
            voicemodels,
            "narrator",
            lambda st: (
                conditions(st).get("Ready", {}).get("status") == "True"
                and st.get("servingVersion") == version
            ),
            400,
            "Ready on the version",
            interval=1,
            failed="Failed",
        )
        assert vm_status["readyReplicas"] == 1
        (pod,) = [
            p
            for p in core.list_namespaced_pod(
                namespace, label_selector=f"{api.API_GROUP}/voicemodel=narrator"
            ).items
            if p.status.phase == "Running"
        ]
        base = f"http://{pod.status.pod_ip}:8005"
        ref = (run_volumes["data"] / "narrator" / SPEAKER_REF).read_bytes()
        with httpx.Client(base_url=base, timeout=120) as http:
            r = http.post(
                "/v1/audio/voices", data={"name": "narrator"}, files={"file": ("ref.wav", ref, "audio/wav")}
            )
            assert r.status_code == 201, r.text
            r = http.post(
                "/v1/audio/speech",
                json={
                    "model": version,
                    "input": "Hello from the chart.",
                    "voice": "narrator",
                    "response_format": "wav",
                },
            )
            assert r.status_code == 200, r.text
        import soundfile

        audio, rate = soundfile.read(io.BytesIO(r.content))
        assert rate > 0 and len(audio) > rate // 10
    finally:
        operator.stop()
        log = operator.log()
        print(f"--- operator log (tail) ---\n{log[-6000:]}")
    # a 403 status, not the digits inside a timestamp such as 04:00:04.403332
    status_403 = re.compile(r"(?<![\d.:])403(?!\d)")
    refused = [
        line
        for line in log.splitlines()
        if status_403.search(line) or "Forbidden" in line or "Not enough permissions" in line
    ]
    assert not refused, "the operator was refused API calls:\n" + "\n".join(refused[:20])
