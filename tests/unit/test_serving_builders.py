"""The VoiceModel's children as manifests: pure builders, spec in, dict out."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tts_contract.contract import Paths, ServeSpec
from tts_operator import api
from tts_operator.builders import serving as b
from tts_operator.settings import Settings

LOCATION = b.ModelLocation("models", "narrator")


def voicemodel(name: str = "narrator", **spec: Any) -> api.VoiceModel:
    body: dict[str, Any] = {
        "metadata": {"name": name, "namespace": "voices", "uid": "uid-1", "generation": 3},
        "spec": {
            "engine": "vits",
            "model": {"volume": {"claimName": "models", "subPath": "narrator"}},
            "version": "v1",
            **spec,
        },
    }
    return api.VoiceModel.model_validate(body)


def container(dep: dict[str, Any]) -> dict[str, Any]:
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return dict(c)


def test_deployment_runs_the_given_version_with_probes_on_the_runtime_endpoints() -> None:
    dep = b.deployment(voicemodel(), "v7", LOCATION, Settings(runtime_image="img:1"))
    assert dep["metadata"]["name"] == "narrator" and dep["metadata"]["namespace"] == "voices"
    owner = dep["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "VoiceModel" and owner["uid"] == "uid-1" and owner["controller"] is True
    template = dep["spec"]["template"]
    assert template["metadata"]["labels"][b.VERSION_LABEL] == "v7"
    assert template["metadata"]["annotations"][b.VERSION_LABEL] == "v7"
    # the template labels include the selector (else the API server rejects the Deployment)
    assert dep["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    c = container(dep)
    assert c["image"] == "img:1"
    assert c["command"] == ["tts-runtime", "serve", "--spec", Paths.SERVE_SPEC, "--version", "v7"]
    assert c["args"] == ["--host", "$(POD_IP)", "--port", "8005"]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert c["ports"] == [{"name": "http", "containerPort": 8005, "protocol": "TCP"}]


def test_model_volume_is_read_only_and_security_context_restricted() -> None:
    dep = b.deployment(voicemodel(), "v1", b.ModelLocation("exports", "runs/a"), Settings())
    pod = dep["spec"]["template"]["spec"]
    models = next(v for v in pod["volumes"] if v["name"] == "models")
    assert models["persistentVolumeClaim"] == {"claimName": "exports", "readOnly": True}
    mounts = {m["name"]: m for m in container(dep)["volumeMounts"]}
    assert mounts["models"] == {
        "name": "models",
        "mountPath": Paths.MODEL,
        "readOnly": True,
        "subPath": "runs/a",
    }
    assert mounts["serve-spec"]["readOnly"] is True
    sc = container(dep)["securityContext"]
    assert (
        sc["readOnlyRootFilesystem"]
        and not sc["allowPrivilegeEscalation"]
        and sc["capabilities"]["drop"] == ["ALL"]
    )
    assert (
        pod["securityContext"]["runAsNonRoot"]
        and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    )
    assert pod["automountServiceAccountToken"] is False


def test_graceful_drain_outlasts_the_longest_request() -> None:
    dep = b.deployment(voicemodel(), "v1", LOCATION, Settings())
    pod = dep["spec"]["template"]["spec"]
    pre_stop = container(dep)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop > 0
    assert pod["terminationGracePeriodSeconds"] > b.request_timeout_seconds() + pre_stop


@pytest.mark.parametrize(
    ("strategy", "surge", "unavailable"),
    [("Availability", 1, 0), ("ResourceAware", 0, 1), ("HotSwap", 1, 0)],
)
def test_rollout_strategies(strategy: str, surge: int, unavailable: int) -> None:
    vm = voicemodel(rollout={"strategy": strategy, "progressDeadlineSeconds": 90})
    dep = b.deployment(vm, "v1", LOCATION, Settings())
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": surge, "maxUnavailable": unavailable}
    assert dep["spec"]["progressDeadlineSeconds"] == 90


def test_gpu_scheduling_and_resources() -> None:
    vm = voicemodel(
        resources={"gpus": 2, "gpuProduct": "NVIDIA-H100-80GB-HBM3", "cpu": "4", "memory": "16Gi"},
        scheduling={
            "priorityClassName": "serving",
            "tolerations": [{"key": "dedicated", "operator": "Exists"}],
        },
    )
    dep = b.deployment(vm, "v1", LOCATION, Settings(gpu_resource="example.com/gpu"))
    pod = dep["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["priorityClassName"] == "serving"
    keys = [t.get("key") for t in pod["tolerations"]]
    assert keys == ["nvidia.com/gpu", "dedicated"]
    assert container(dep)["resources"] == {
        "requests": {"cpu": "4", "memory": "16Gi"},
        "limits": {"cpu": "4", "memory": "16Gi", "example.com/gpu": "2"},
    }


def test_cpu_model_has_no_gpu_toleration() -> None:
    dep = b.deployment(voicemodel(resources={"gpus": 0}, devicePolicy="CPU"), "v1", LOCATION, Settings())
    pod = dep["spec"]["template"]["spec"]
    assert "tolerations" not in pod and "resources" not in container(dep)


def serve_spec_of(dep: dict[str, Any]) -> str:
    """The serve spec a Deployment's pods read: their template's annotation, via the downward API."""
    template = dep["spec"]["template"]
    (volume,) = [v for v in template["spec"]["volumes"] if v["name"] == "serve-spec"]
    (item,) = volume["downwardAPI"]["items"]
    assert item == {
        "path": b.SERVE_SPEC_KEY,
        "fieldRef": {"fieldPath": f"metadata.annotations['{b.SERVE_SPEC_ANNOTATION}']"},
    }
    assert {"name": "serve-spec", "mountPath": Paths.SPEC_DIR, "readOnly": True} in container(dep)[
        "volumeMounts"
    ]
    text: str = template["metadata"]["annotations"][b.SERVE_SPEC_ANNOTATION]
    return text


def test_serve_spec_on_the_pod_template_and_auth_secret() -> None:
    vm = voicemodel(server={"port": 9000, "maxConcurrency": 2, "authSecretRef": {"name": "tok", "key": "t"}})
    spec = ServeSpec.model_validate_json(serve_spec_of(b.deployment(vm, "v5", LOCATION, Settings())))
    assert spec.version == "v5" and spec.models_root == Paths.MODEL and spec.engine.value == "vits"
    assert spec.server.port == 9000 and spec.server.max_concurrency == 2
    assert spec.server.auth_token_file == f"{Paths.AUTH_TOKEN_DIR}/token"
    dep = b.deployment(vm, "v5", LOCATION, Settings())
    auth = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "auth")
    assert auth["secret"] == {"secretName": "tok", "items": [{"key": "t", "path": "token"}]}
    assert {"name": "auth", "mountPath": Paths.AUTH_TOKEN_DIR, "readOnly": True} in container(dep)[
        "volumeMounts"
    ]
    assert b.endpoint(vm) == "http://narrator.voices.svc:9000"


def test_no_auth_means_no_token_file() -> None:
    spec = json.loads(serve_spec_of(b.deployment(voicemodel(), "v1", LOCATION, Settings())))
    assert "authTokenFile" not in spec["server"]


def test_service_and_pdb() -> None:
    svc = b.service(voicemodel())
    assert svc["spec"]["selector"] == b.selector(b.Identity("narrator", "voices", "uid-1"))
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    assert b.pod_disruption_budget(voicemodel(replicas=1)) is None
    pdb = b.pod_disruption_budget(voicemodel(replicas=3))
    assert pdb is not None and pdb["spec"]["maxUnavailable"] == 1


def test_autoscaled_leaves_replicas_to_the_hpa_and_failed_rollout_is_annotated() -> None:
    vm = voicemodel(replicas=4)
    assert b.deployment(vm, "v1", LOCATION, Settings())["spec"]["replicas"] == 4
    dep = b.deployment(vm, "v1", LOCATION, Settings(), autoscaled=True, failed=("v2", 3, "BadModel: x"))
    assert "replicas" not in dep["spec"]
    ann = dep["metadata"]["annotations"]
    assert ann[b.FAILED_VERSION_ANNOTATION] == "v2" and ann[b.FAILED_GENERATION_ANNOTATION] == "3"


def test_each_template_carries_the_serve_spec_of_its_own_version() -> None:
    vm = voicemodel(voices=[{"name": "a", "wav": "voices/a.wav"}])
    old, new = (b.deployment(vm, v, LOCATION, Settings()) for v in ("v1", "v2"))
    assert ServeSpec.model_validate_json(serve_spec_of(old)).version == "v1"
    assert ServeSpec.model_validate_json(serve_spec_of(new)).version == "v2"
    # a change of voices changes the template (the pods read their spec once, at start): they roll
    more = voicemodel(voices=[{"name": "a", "wav": "voices/a.wav"}, {"name": "b", "wav": "voices/b.wav"}])
    assert b.deployment(more, "v1", LOCATION, Settings())["spec"]["template"] != old["spec"]["template"]
    assert b.deployment(vm, "v1", LOCATION, Settings()) == old  # and nothing else does
