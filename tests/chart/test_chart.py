"""The Helm chart: lint, render in every mode, the values schema, the CRD copies, and the render
applied to the real control plane with a server-side dry run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helmchart import CHART, KUBE_VERSION, ROOT, by_kind, render, render_text, run_helm

CRDS = ROOT / "crds"
CHART_CRDS = CHART / "files" / "crds"


def test_helm_lint_strict() -> None:
    out = run_helm("lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION)
    assert "0 chart(s) failed" in out.stdout
    # the optional parts that need no extra API (Kueue and ServiceMonitor need theirs: rendered below)
    run_helm(
        "lint",
        str(CHART),
        "--strict",
        "--kube-version",
        KUBE_VERSION,
        "--set",
        "priorityClasses.create=true,watchNamespaces={a,b},crds.keep=false",
    )


def test_chart_crds_are_the_repositorys_crds() -> None:
    """files/crds/ is a copy of crds/ (Helm cannot read outside the chart): `make chart-crds` syncs it."""
    ours = sorted(p.name for p in CRDS.glob("*.yaml"))
    assert ours, "crds/ is empty"
    assert sorted(p.name for p in CHART_CRDS.glob("*.yaml")) == ours
    for name in ours:
        assert (CHART_CRDS / name).read_bytes() == (CRDS / name).read_bytes(), (
            f"charts/tts-operator/files/crds/{name} is stale: run `make chart-crds`"
        )


def test_default_render_cluster_wide() -> None:
    docs = render()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "ClusterRoleBinding",
            "Deployment",
            "Service",
        ]
    )
    # the CRDs are the generated ones, kept on uninstall, labelled as the release's
    crds = {d["metadata"]["name"]: d for d in by_kind(docs, "CustomResourceDefinition")}
    for path in CRDS.glob("*.yaml"):
        source = yaml.safe_load(path.read_text())
        rendered = crds[source["metadata"]["name"]]
        assert rendered["spec"] == source["spec"]
        assert rendered["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert rendered["metadata"]["labels"]["app.kubernetes.io/instance"] == "tts"
    assert not by_kind(docs, "Role")


def test_deployment_shape() -> None:
    (dep,) = by_kind(
        render(values={"runtimeImage": {"repository": "reg.local/rt", "tag": "9"}}), "Deployment"
    )
    spec = dep["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "ghcr.io/tts-operator/tts-operator:0.1.0"  # appVersion
    assert "--liveness=http://0.0.0.0:8080/healthz" in c["args"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["TTS_OPERATOR_RUNTIME_IMAGE"] == "reg.local/rt:9"
    assert env["TTS_OPERATOR_GPU_RESOURCE"] == "nvidia.com/gpu"
    assert env["TTS_OPERATOR_LOG_FORMAT"] == "json"
    assert env["TTS_OPERATOR_METRICS_PORT"] == "9090"
    assert "TTS_OPERATOR_NAMESPACES" not in env
    # Pod Security Standard "restricted"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert c["resources"]["limits"]["memory"]


def test_namespaced_mode_has_no_cluster_wide_rights() -> None:
    docs = render(values={"watchNamespaces": ["team-a", "team-b"], "metrics.enabled": False})
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    bindings = by_kind(docs, "RoleBinding")
    assert all(b["subjects"][0]["namespace"] == "tts-system" for b in bindings)
    # the only ClusterRole is kopf's discovery: CRDs and namespaces, read-only
    (cluster_role,) = by_kind(docs, "ClusterRole")
    for rule in cluster_role["rules"]:
        assert set(rule["verbs"]) <= {"list", "watch"}
        assert set(rule["resources"]) <= {"customresourcedefinitions", "namespaces"}
    (dep,) = by_kind(docs, "Deployment")
    env = {e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["TTS_OPERATOR_NAMESPACES"] == "team-a,team-b"
    assert env["TTS_OPERATOR_METRICS_PORT"] == "0"
    assert not by_kind(docs, "Service")


def test_optional_parts() -> None:
    docs = render(
        "tts",
        "tts-system",
        {
            "crds.enabled": False,
            "priorityClasses.create": True,
            "metrics.serviceMonitor.enabled": True,
            "kueue.enabled": True,
            "gpu.resourceName": "amd.com/gpu",
        },
        "--api-versions",
        "monitoring.coreos.com/v1",
        "--api-versions",
        "kueue.x-k8s.io/v1beta1",
    )
    assert not by_kind(docs, "CustomResourceDefinition")
    pcs = {p["metadata"]["name"]: p["value"] for p in by_kind(docs, "PriorityClass")}
    assert pcs["tts-serving"] > pcs["tts-training"]  # serving preempts training, never the reverse
    (sm,) = by_kind(docs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    (cq,) = by_kind(docs, "ClusterQueue")
    assert "amd.com/gpu" in cq["spec"]["resourceGroups"][0]["coveredResources"]
    (lq,) = by_kind(docs, "LocalQueue")
    assert lq["spec"]["clusterQueue"] == cq["metadata"]["name"]
    assert by_kind(docs, "ResourceFlavor")


def test_argocd_health_check_configmap_carries_the_lua() -> None:
    (cm,) = by_kind(render(values={"argocd.healthChecks": True}), "ConfigMap")
    lua = (CHART / "argocd-health.lua").read_text()
    assert cm["data"]["resource.customizations.health.tts-operator.dev_VoiceModel"].strip() == lua.strip()
    assert not by_kind(render(), "ConfigMap")  # off by default


def test_crds_keep_off() -> None:
    for crd in by_kind(render(values={"crds.keep": False}), "CustomResourceDefinition"):
        assert "helm.sh/resource-policy" not in (crd["metadata"].get("annotations") or {})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"gpu.resourceName": "gpu"}, "/gpu/resourceName"),
        ({"operator.logFormat": "xml"}, "/operator/logFormat"),
        ({"watchNamespaces": ["Bad_NS"]}, "/watchNamespaces/0"),
        ({"metrics.port": 70000}, "/metrics/port"),
        ({"replicaCount": 2}, "additional properties 'replicaCount' not allowed"),
    ],
)
def test_schema_rejects_bad_values(values: dict, message: str) -> None:
    args = ["template", "t", str(CHART), "--kube-version", KUBE_VERSION]
    for k, v in values.items():
        args += ["--set-json", f"{k}={json.dumps(v)}"]
    out = run_helm(*args, check=False)
    assert out.returncode != 0
    assert message in out.stderr


def test_optional_integrations_fail_clearly_without_their_apis() -> None:
    out = run_helm(
        "template",
        "t",
        str(CHART),
        "--kube-version",
        KUBE_VERSION,
        "--set",
        "kueue.enabled=true",
        check=False,
    )
    assert out.returncode != 0 and "install Kueue first" in out.stderr
    out = run_helm(
        "template",
        "t",
        str(CHART),
        "--kube-version",
        KUBE_VERSION,
        "--set",
        "metrics.serviceMonitor.enabled=true",
        check=False,
    )
    assert out.returncode != 0 and "monitoring.coreos.com/v1" in out.stderr


@pytest.mark.cluster
def test_helm_install_dry_run_against_the_cluster(kubeconfig: str, namespace: str) -> None:
    """helm's own install path (capability checks, kubeVersion, NOTES.txt) against the real API server."""
    out = run_helm(
        "install",
        "tts",
        str(CHART),
        "--dry-run=server",
        "--kubeconfig",
        kubeconfig,
        "--namespace",
        namespace,
        "--set",
        # the session's CRDs were applied by kubectl: helm refuses to adopt objects it did not create
        # (docs/configuration.md shows how to adopt them); the dry-run above covers the CRD render
        f"watchNamespaces={{{namespace}}},crds.enabled=false",
    )
    assert f"watches the namespaces {namespace}" in out.stdout
    assert "kubectl get trainingruns -w" in out.stdout
    # Kueue is not installed locally: asking for its queues fails with the reason, not a raw API error
    out = run_helm(
        "install",
        "tts",
        str(CHART),
        "--dry-run=server",
        "--kubeconfig",
        kubeconfig,
        "--namespace",
        namespace,
        "--set",
        "kueue.enabled=true",
        check=False,
    )
    assert out.returncode != 0 and "install Kueue first" in out.stderr


@pytest.mark.cluster
@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_render_server_side_dry_run(kubectl, namespace: str, tmp_path: Path, mode: str) -> None:
    """The whole render, validated by the real API server (schemas, RBAC objects, CRDs) without storing."""
    values = {"priorityClasses.create": True}
    if mode == "namespaced":
        values["watchNamespaces"] = [namespace]
    manifest = tmp_path / "render.yaml"
    manifest.write_text(render_text(f"rel-{mode}", namespace, values))
    out = kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "--force-conflicts",
        "--field-manager=chart-test",
        "-f",
        str(manifest),
    )
    applied = out.stdout
    for kind in (
        "customresourcedefinition",
        "deployment.apps",
        "clusterrole",
        "serviceaccount",
        "priorityclass",
    ):
        assert kind in applied, applied
    if mode == "namespaced":
        assert "role.rbac.authorization.k8s.io" in applied
