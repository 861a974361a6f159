"""A VoiceModel served for real (pods on `gpu-local-0`, run by the local pod runner on the CPU):
create -> Ready, a version change applied as an edited manifest rolls with zero failed requests
(Availability), a broken version is rolled back by itself, setting the version back is a fast path,
and deleting the VoiceModel takes its children along.
"""

# kubernetes models type every field Optional; the tests check presence by using them
# mypy: disable-error-code="union-attr"
from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from support.manifests import voicemodel_manifest
from support.objects import owned_by, wait_for_condition
from support.operator_process import OperatorProcess
from support.voicemodels import READY_TIMEOUT, Load, VoiceModels, capture, synthesize
from support.waiting import Pending, wait_for
from tts_operator.builders.serving import deployment_name, service_name

pytestmark = pytest.mark.slow


def test_create_roll_rollback_delete(
    k8s_api: client.ApiClient,
    namespace: str,
    kubectl,
    model_versions: Path,
    tts_operator: OperatorProcess,
) -> None:
    vms = VoiceModels(k8s_api, namespace, kubectl)
    vms.apply(voicemodel_manifest("narrator", "v1"))

    # kubectl wait works on the Ready condition (kstatus / Flux read the same)
    kubectl(
        "-n", namespace, "wait", "--for=condition=Ready", "vmodel/narrator", f"--timeout={READY_TIMEOUT}s"
    )
    obj = vms.get("narrator")
    capture("ready", obj)
    st = obj["status"]
    assert st["phase"] == "Ready" and st["observedGeneration"] == obj["metadata"]["generation"]
    assert st["desiredVersion"] == st["servingVersion"] == st["lastGoodVersion"] == "v1"
    assert st["endpoint"] == f"http://narrator.{namespace}.svc:8005"
    assert st["replicasText"] == "1/1" and st["readyReplicas"] == 1 and st["updatedReplicas"] == 1
    assert st["device"]["torch"] and st["device"]["preflight"].startswith("passed")
    conds = {c["type"]: c["status"] for c in st["conditions"]}
    assert conds == {
        "Ready": "True",
        "Reconciling": "False",
        "Stalled": "False",
        "ModelAvailable": "True",
        "RolledOut": "True",
        "Degraded": "False",
    }
    (pod,) = vms.pods("narrator")
    assert pod.spec.node_name == "gpu-local-0"
    assert pod.metadata.annotations["tts-operator.dev/loaded-version"] == "v1"
    # no PDB for a single replica
    with pytest.raises(ApiException) as e:
        vms.policy.read_namespaced_pod_disruption_budget("narrator", namespace)
    assert e.value.status == 404
    table = kubectl("-n", namespace, "get", "vmodel", "narrator").stdout
    assert "v1" in table and "1/1" in table and f"narrator.{namespace}.svc:8005" in table

    # a synthesis request to the endpoint's pod IP returns audio of the right version
    (url,) = vms.ready_endpoints("narrator")
    assert url == f"http://{pod.status.pod_ip}:8005"
    r = synthesize(url)
    assert r.status_code == 200 and r.content[:4] == b"RIFF" and len(r.content) > 1000
    assert r.headers["x-model-version"] == "v1"

    # GitOps: the edited manifest applied -> rolls under load, never fewer ready pods than replicas
    with Load(vms, "narrator") as load:
        vms.apply(voicemodel_manifest("narrator", "v2"))

        def rolling() -> bool:
            obj = vms.get("narrator")
            if obj["status"].get("phase") == "Deploying" and obj["status"]["observedGeneration"] == 2:
                capture("deploying", obj)
                return True
            return False

        wait_for(rolling, 60, "phase Deploying for generation 2", interval=0.2)
        wait_for(lambda: vms.serving("narrator", "v2"), READY_TIMEOUT, "serving v2", interval=0.5)
        wait_for(lambda: load.ok >= 1 and load.versions[-1] == "v2", 60, "load sees v2")
    assert load.failures == [], load.failures[:5]
    assert load.min_ready >= 1, "ready pods dropped below replicas"
    assert load.versions[0] == "v1" and load.versions[-1] == "v2", load.versions
    st = vms.status("narrator")
    assert st["lastGoodVersion"] == "v2"
    (pod2,) = vms.pods("narrator")
    assert pod2.metadata.uid != pod.metadata.uid  # a rolling update: a new pod
    deployment = vms.apps.read_namespaced_deployment("narrator", namespace)
    assert deployment.spec.strategy.rolling_update.max_unavailable == 0
    assert deployment.spec.strategy.rolling_update.max_surge == 1

    # a broken version: Degraded, rolled back by itself, still serving v2; the spec is not touched
    vms.apply(voicemodel_manifest("narrator", "v4-broken"))
    wait_for_condition(vms, "narrator", "Degraded", READY_TIMEOUT, interval=0.5)

    def rolled_back() -> bool:
        st = vms.status("narrator")
        pods = vms.pods("narrator")
        return (
            st.get("phase") == "Degraded"
            and vms.condition("narrator", "RolledOut").get("reason") == "RolledBack"
            and len(pods) == 1
            and pods[0].metadata.labels["tts-operator.dev/version"] == "v2"
        )

    wait_for(rolled_back, READY_TIMEOUT, "rolled back to v2", interval=0.5)
    obj = vms.get("narrator")
    st = obj["status"]
    assert obj["spec"]["version"] == "v4-broken"
    assert st["servingVersion"] == "v2" and st["desiredVersion"] == "v4-broken"
    degraded = vms.condition("narrator", "Degraded")
    assert degraded["reason"] == "BadModel", degraded
    assert degraded["message"].startswith("desired v4-broken failed: BadModel") and degraded[
        "message"
    ].endswith("; serving v2"), degraded["message"]
    conds = {c["type"]: c["status"] for c in st["conditions"]}
    assert conds["Ready"] == "False" and conds["Stalled"] == "True" and conds["Reconciling"] == "False"
    (url,) = vms.ready_endpoints("narrator")
    assert synthesize(url).headers["x-model-version"] == "v2"
    capture("degraded", obj)

    # setting the version back is the fast path: the pods already run it
    vms.apply(voicemodel_manifest("narrator", "v2"))
    wait_for(lambda: vms.serving("narrator", "v2"), 30, "Ready on v2 again", interval=0.2)
    assert vms.condition("narrator", "Degraded")["status"] == "False"
    assert [p.metadata.uid for p in vms.pods("narrator")] == [pod2.metadata.uid]

    # delete -> children gone (owner references; the garbage collector removes them). What the
    # VoiceModel owns is listed first, so the wait below cannot pass on children that never were.
    uid = vms.get("narrator")["metadata"]["uid"]
    children = owned_by(k8s_api, namespace, uid)
    # (one replica: no PodDisruptionBudget, checked above; the serve spec rides on the pod template)
    expected = {f"Deployment/{deployment_name('narrator')}", f"Service/{service_name('narrator')}"}
    assert expected <= set(children), children
    vms.delete("narrator")

    def children_gone() -> Pending | bool:
        left = owned_by(k8s_api, namespace, uid)
        left += [
            f"Deployment/{d.metadata.name}" for d in vms.apps.list_namespaced_deployment(namespace).items
        ]
        left += [f"Service/{s.metadata.name}" for s in vms.core.list_namespaced_service(namespace).items]
        left += [f"Pod/{p.metadata.name}" for p in vms.pods("narrator")]
        return Pending(f"left: {sorted(set(left))}") if left else True

    wait_for(children_gone, 120, f"the VoiceModel's children {children} and its pods gone", interval=0.5)
