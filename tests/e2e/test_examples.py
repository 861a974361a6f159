"""Every file in examples/ is applied: for real where the cluster serves its kind (our CRDs, core
kinds), and where it does not (Kueue, Argo CD are not installed locally) through checks of its
structure and cross-references. A kind with neither fails the test, so a new example cannot slip by."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

Doc = dict[str, Any]


def _docs(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _all_docs() -> list[Doc]:
    return [d for p in EXAMPLES for d in _docs(p)]


# --- checks for kinds the local cluster does not serve ------------------------------------------


def _check_kueue(doc: Doc, everything: list[Doc]) -> None:
    assert doc["apiVersion"] == "kueue.x-k8s.io/v1beta1"
    kind, spec = doc["kind"], doc["spec"]
    flavors = {d["metadata"]["name"] for d in everything if d["kind"] == "ResourceFlavor"}
    cluster_queues = {d["metadata"]["name"] for d in everything if d["kind"] == "ClusterQueue"}
    if kind == "ResourceFlavor":
        assert set(spec) <= {"nodeLabels", "nodeTaints", "tolerations", "topologyName"}
        for tol in spec.get("tolerations", []):
            assert tol["operator"] in ("Exists", "Equal") and tol.get("effect") in ("NoSchedule", "NoExecute")
    elif kind == "ClusterQueue":
        assert spec["preemption"]["withinClusterQueue"] in (
            "Never",
            "LowerPriority",
            "LowerOrNewerEqualPriority",
        )
        for group in spec["resourceGroups"]:
            covered = group["coveredResources"]
            assert "nvidia.com/gpu" in covered
            for flavor in group["flavors"]:
                assert flavor["name"] in flavors, f"ClusterQueue names unknown flavor {flavor['name']}"
                # Kueue requires each flavor to list exactly the covered resources, in that order
                assert [r["name"] for r in flavor["resources"]] == covered
    elif kind == "LocalQueue":
        assert "namespace" not in doc["metadata"], "namespaced example: applied with -n"
        assert spec["clusterQueue"] in cluster_queues
    else:
        raise AssertionError(f"unexpected Kueue kind {kind}")


def _check_argocd_application(doc: Doc, everything: list[Doc]) -> None:
    assert doc["apiVersion"] == "argoproj.io/v1alpha1"
    spec = doc["spec"]
    assert spec["project"] and spec["destination"]["namespace"]
    assert spec["source"]["repoURL"].startswith("https://") and spec["source"]["path"]
    assert "ServerSideApply=true" in spec["syncPolicy"]["syncOptions"]


NOT_SERVED_LOCALLY: dict[str, Callable[[Doc, list[Doc]], None]] = {
    "kueue.x-k8s.io/ResourceFlavor": _check_kueue,
    "kueue.x-k8s.io/ClusterQueue": _check_kueue,
    "kueue.x-k8s.io/LocalQueue": _check_kueue,
    "argoproj.io/Application": _check_argocd_application,
}


def _key(doc: Doc) -> str:
    return f"{doc['apiVersion'].split('/')[0]}/{doc['kind']}"


def test_examples_exist() -> None:
    names = {p.name for p in EXAMPLES}
    for required in (
        "trainingrun.yaml",
        "voicemodel.yaml",
        "kueue-queues.yaml",
        "priorityclasses.yaml",
        "argocd-application.yaml",
    ):
        assert required in names


def test_examples_reference_each_other() -> None:
    """The example VoiceModel serves what the example TrainingRun exports; queues and classes match."""
    everything = _all_docs()
    (run,) = [d for d in everything if d["kind"] == "TrainingRun"]
    models = [d for d in everything if d["kind"] == "VoiceModel"]
    assert any(m["spec"]["model"].get("trainingRun") == run["metadata"]["name"] for m in models)
    assert run["spec"]["promote"]["voiceModel"] in {m["metadata"]["name"] for m in models}
    classes = {d["metadata"]["name"]: d["value"] for d in everything if d["kind"] == "PriorityClass"}
    assert classes["tts-serving"] > classes["tts-training"]
    local_queues = {d["metadata"]["name"] for d in everything if d["kind"] == "LocalQueue"}
    assert "gpu-training" in local_queues  # the queue name the docs and the trainingrun comments use
    # local-cluster friendly: the GPU node of the dev cluster runs pods on the CPU
    (served,) = _docs(ROOT / "examples" / "voicemodel.yaml")
    for obj in [run, served]:
        assert obj["spec"]["devicePolicy"] == "PreferGPU"
        assert obj["spec"]["resources"]["gpuProduct"] == "NVIDIA-GeForce-RTX-3090"


def _served(kubectl, api_version: str, kind: str) -> bool:
    group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
    out = kubectl("api-resources", f"--api-group={group}", "--no-headers", check=False)
    # columns: NAME [SHORTNAMES] APIVERSION NAMESPACED KIND
    return any(
        line.split()[-1] == kind and api_version in line.split()
        for line in out.stdout.splitlines()
        if line.strip()
    )


@pytest.mark.cluster
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_applies(path: Path, kubectl, crds: list, namespace: str) -> None:
    everything = _all_docs()
    applied = 0
    for doc in _docs(path):
        key = _key(doc)
        if _served(kubectl, doc["apiVersion"], doc["kind"]):
            # served: a real, stored apply (namespaced kinds land in the test's namespace)
            out = kubectl(
                "apply",
                "--server-side",
                "--field-manager=examples-test",
                "-n",
                namespace,
                "-f",
                "-",
                input=yaml.safe_dump(doc),
            )
            assert "serverside-applied" in out.stdout, out.stdout
            applied += 1
        else:
            assert key in NOT_SERVED_LOCALLY, (
                f"{path.name}: {key} is not served by the local cluster and has no structural check"
            )
            NOT_SERVED_LOCALLY[key](doc, everything)
    if path.name in ("trainingrun.yaml", "voicemodel.yaml", "priorityclasses.yaml"):
        assert applied, f"{path.name} must be applied for real"
