"""Security end to end: Pod Security `restricted`, secrets kept out of logs and status.

- Every pod the operator creates for a TrainingRun (training Job, export Job) is admitted in a namespace
  that enforces the `restricted` Pod Security Standard (the API server's PodSecurity admission plugin);
  a pod that breaks the standard is refused there, so the namespace really enforces it.
- The server's bearer token (right or wrong) never shows up in the server's log or answers. (The
  training pod's ServiceAccount token, which the trainer uses to patch status, never showing up in
  the pods' logs, the operator's log, the run's status or its Events: checked on the real run of
  tests/e2e/test_trainingrun_training.py, in a restricted namespace too.)

Path traversal is covered elsewhere and not repeated here: subPaths and versions at admission
(tests/support/admission_cases.py), voice names (tests/runtime/serving/test_xtts_server.py), dataset
entries (tests/runtime/training/test_dataset_preflight.py).
"""

# kubernetes models type every field Optional; the tests check presence by using them
# mypy: disable-error-code="union-attr"
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from support.manifests import trainingrun_manifest
from support.objects import CustomObjects
from support.operator_process import OperatorProcess
from support.processes import ChildProcess, free_port, http_ok
from support.secrets import leaks
from support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
RUN_LABEL = "tts-operator.dev/trainingrun"


def _job(batch: client.BatchV1Api, ns: str, name: str) -> client.V1Job | None:
    try:
        return batch.read_namespaced_job(name, ns)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def _pod_from_template(job: client.V1Job, api_client: client.ApiClient) -> dict[str, Any]:
    template = api_client.sanitize_for_serialization(job.spec.template)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "psa-check-"},
        "spec": template["spec"],
    }


def _refused_pod_creations(core: client.CoreV1Api, ns: str) -> list[str]:
    """Job controller events saying a pod could not be created (how a PodSecurity refusal shows)."""
    events = core.list_namespaced_event(ns, field_selector="reason=FailedCreate").items
    return [str(e.message) for e in events]


def test_pod_security_restricted_admits_every_operator_pod(
    k8s_api: client.ApiClient,
    restricted: str,
    run_volumes: dict[str, Path],
    tts_operator: OperatorProcess,
) -> None:
    ns = restricted
    core, batch = client.CoreV1Api(k8s_api), client.BatchV1Api(k8s_api)

    # the control: a pod with no security settings is refused here, so admission below means something
    plain = client.V1Pod(
        metadata=client.V1ObjectMeta(name="plain"),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")]),
    )
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(ns, plain)
    assert refused.value.status == 403 and "violates PodSecurity" in str(refused.value.body)

    body = trainingrun_manifest(
        "psa", checkpoints={"volume": {"claimName": "ckpt", "subPath": "runs"}}
    )  # one GPU on a kwok node: the pod "runs" at once
    CustomObjects(k8s_api, ns, "trainingruns").create(body)

    for job_name, component in (("psa-train", "training"), ("psa-export", "export")):
        job = wait_for(lambda n=job_name: _job(batch, ns, n), 60, f"the Job {job_name}")
        # admission said yes to a real pod of this Job ...
        pods = wait_for(
            lambda j=job_name: core.list_namespaced_pod(ns, label_selector=f"job-name={j}").items,
            60,
            f"a pod of {job_name} admitted",
        )
        assert all(p.spec.node_name is None or p.spec.node_name.startswith("gpu-sim-") for p in pods)
        # ... and says yes again when asked directly (server-side dry run runs the admission plugins)
        manifest = _pod_from_template(job, k8s_api)
        core.create_namespaced_pod(ns, manifest, dry_run="All")  # type: ignore[arg-type]  # a dict is fine
        assert job.spec.template.metadata.labels["app.kubernetes.io/component"] == component
    assert _refused_pod_creations(core, ns) == []


@pytest.mark.slow
def test_server_token_never_reaches_logs_or_answers(tmp_path: Path) -> None:
    """`tts-runtime serve` at DEBUG with a bearer token: requests with the right and a wrong token, and
    nothing the server writes or answers contains either."""
    from tts_runtime.demo_model import make_demo_model

    model = make_demo_model(tmp_path / "models" / "v1", "vits", seed=0)
    token, wrong = "tok-" + os.urandom(16).hex(), "bad-" + os.urandom(16).hex()
    token_file = tmp_path / "secret" / "token"
    token_file.parent.mkdir()
    token_file.write_text(token + "\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = ChildProcess(
        [sys.executable, "-m", "tts_runtime.cli", "--log-format", "json", "--log-level", "DEBUG", "serve",
         "--model-dir", str(model), "--device-policy", "CPU", "--host", "127.0.0.1", "--port", str(port),
         "--voices-dir", str(tmp_path / "voices"), "--auth-token-file", str(token_file)],
        tmp_path / "server.log",
        name="the server",
        ready=http_ok(f"{url}/readyz"),
        stop_grace=60,
    )  # fmt: skip
    answers: dict[str, str] = {}
    server.start(timeout=180)
    try:
        good, bad = {"Authorization": f"Bearer {token}"}, {"Authorization": f"Bearer {wrong}"}
        speech = {"model": "tts-1", "input": "Hello there.", "voice": "default", "response_format": "wav"}
        with httpx.Client(base_url=url, timeout=120) as http:
            ok = http.post("/v1/audio/speech", json=speech, headers=good)
            assert ok.status_code == 200 and ok.content[:4] == b"RIFF"
            denied = http.post("/v1/audio/speech", json=speech, headers=bad)
            assert denied.status_code == 401
            answers["401 body"] = denied.text + json.dumps(dict(denied.headers))
            assert http.get("/v1/audio/voices", headers={"Authorization": wrong}).status_code == 401
            for path in ("/info", "/metrics", "/v1/audio/voices", "/readyz"):
                r = http.get(path, headers=good)
                assert r.status_code == 200, (path, r.text)
                answers[path] = r.text
    finally:
        server.stop()
    server_log = server.log()
    assert "/v1/audio/speech" in server_log or '"level"' in server_log  # the log is really there
    texts = {"server log": server_log, **answers}
    assert leaks(token, texts) == [] and leaks(wrong, texts) == []
