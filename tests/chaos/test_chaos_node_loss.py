"""A node deleted under a training pod: the run's retry resumes from its checkpoint and succeeds,
with no shared volume: base model, dataset, checkpoints and export all live in the cluster's S3.

A TrainingRun fine-tunes a tiny random XTTS for real on one of the two local nodes, both labelled
as the run's node pool (the local pod runner runs the trainer as a process, on the CPU); its run
folder is the pod's own emptyDir, mirrored to the bucket as each epoch ends. Once an epoch
checkpoint is in status, the test deletes the pod's Node
(``kubectl delete node``), on a throwaway chaos cluster of its own (deleting the shared cluster's only
local GPU node would break everyone's tests). What follows is the cluster's own machinery:

1. the pod garbage collector (kube-controller-manager) finds the pod bound to a node that no longer
   exists, marks it Failed with a ``DisruptionTarget`` condition and deletes it (after a 40 s
   quarantine);
2. the pod runner treats the deleted node as a lost machine: the trainer is killed on the spot
   (SIGKILL, no checkpoint on the way out; nothing reported, so the pod object stays until the GC),
   and the node is registered again once no pod is bound to it (devtools/tts_devcluster/nodekeeper.py);
3. the Job controller replaces the pod; the training Job's ``podFailurePolicy`` ignores disruptions,
   so the node loss does not count against ``backoffLimit``;
4. the node comes back as a new machine would, without the pool's label, so the new pod lands on
   the other node, with an empty run folder, and the trainer restores the newest complete
   checkpoint from the bucket and resumes from it: no finished epoch is trained again.
"""

# kubernetes models type every field Optional; the tests check presence by using them
# mypy: disable-error-code="union-attr"
from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from support.manifests import trained_run_manifest
from support.objects import CustomObjects, wait_for_phase, wait_for_status
from support.operator_process import OperatorProcess
from support.waiting import wait_for
from tts_devcluster import s3
from tts_devcluster.nodes import GPU_TAINT, LOCAL_NODE_LABEL
from tts_operator.builders import training as builders

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

RUN = "narrator-xtts"
#: the run's node pool: both local nodes get it; a node registered again does not have it
POOL_LABEL = "chaos.tts-operator.dev/pool"
SECRET = "tts-s3"


@pytest.fixture
def training_data(chaos_cluster: Any, tmp_path: Path) -> tuple[str, str]:
    """(namespace, s3://tts/<prefix>): six spoken clips and a tiny random XTTS in the chaos cluster's
    S3, and the Secret with its keys in the namespace."""
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.fail("espeak-ng and sox are needed to speak the dataset (make setup installs them)")
    from support.datasets import make_ljspeech_dataset
    from tts_runtime.demo_model import make_demo_model

    ns = "node-loss"
    chaos_cluster.kubectl("create", "namespace", ns)
    endpoint = chaos_cluster.s3_endpoint()
    chaos_cluster.kubectl("apply", "-f", "-", input=json.dumps(s3.secret_manifest(endpoint, ns, SECRET)))
    root = f"s3://{endpoint.bucket}/node-loss-{uuid.uuid4().hex[:8]}"
    client_ = s3.boto3_client(endpoint)
    s3.copy(client_, str(make_ljspeech_dataset(tmp_path / "narrator", n_clips=6)), f"{root}/data/narrator")
    s3.copy(client_, str(make_demo_model(tmp_path / "xtts-base", "xtts", seed=0)), f"{root}/base")
    return ns, root


def test_node_deleted_under_training_pod_retry_resumes_from_checkpoint(
    chaos_cluster: Any, training_data: tuple[str, str], tmp_path: Path
) -> None:
    ns, root = training_data
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(chaos_cluster.kubeconfig), client_configuration=cfg)
    k8s = client.ApiClient(cfg)
    core, batch = client.CoreV1Api(k8s), client.BatchV1Api(k8s)
    runs = CustomObjects(k8s, ns, "trainingruns")
    local_nodes = [n.metadata.name for n in core.list_node(label_selector=f"{LOCAL_NODE_LABEL}=true").items]
    assert len(local_nodes) == 2, local_nodes
    for name in local_nodes:
        chaos_cluster.kubectl("label", "node", name, f"{POOL_LABEL}=train")
    body = trained_run_manifest(
        RUN,
        engine="xtts",
        training={"epochs": 2, "batchSize": 2, "keepCheckpoints": 2, "learningRate": 1e-4},
        backoffLimit=1,
        devicePolicy="CPU",
        # either local node (the GPU node tolerated), none of the simulated ones
        scheduling={
            "nodeSelector": {LOCAL_NODE_LABEL: "true", POOL_LABEL: "train"},
            "tolerations": [{"key": GPU_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}],
        },
    )
    ref = {"secretRef": {"name": SECRET}}
    spec = body["spec"]
    spec["resources"] = {"gpus": 0}
    spec["baseModel"] = {"uri": f"{root}/base", **ref}
    spec["dataset"] = {"uri": f"{root}/data/narrator", "evalSplit": 0.2, **ref}
    spec["checkpoints"] = {"uri": f"{root}/runs", **ref}
    spec["export"] = {"uri": f"{root}/models", **ref}

    def training_pods() -> list[client.V1Pod]:
        selector = f"{builders.RUN_LABEL}={RUN},app.kubernetes.io/component=training"
        return list(core.list_namespaced_pod(ns, label_selector=selector).items)

    op = OperatorProcess(str(chaos_cluster.kubeconfig), ns, tmp_path / "operator.log").start()
    try:
        runs.create(body)
        st = wait_for_status(
            runs,
            RUN,
            lambda s: s.get("checkpoints") and s.get("phase") == "Running",
            300,
            "a first epoch checkpoint in status",
            interval=1,
            failed="Failed",
        )
        checkpointed = max(c["epoch"] for c in st["checkpoints"])
        (first,) = [p for p in training_pods() if p.status.phase == "Running"]
        # the run's folder is the pod's own: nothing but the bucket survives the node
        assert not any(v.persistent_volume_claim for v in first.spec.volumes)
        node = first.spec.node_name
        old_node_uid = core.read_node(node).metadata.uid

        chaos_cluster.kubectl("delete", "node", node, "--wait=true")

        # the pod GC removes the orphaned pod; the runner registers the node again after that
        def first_pod_gone() -> bool:
            pods = {p.metadata.uid: p for p in training_pods()}
            old = pods.get(first.metadata.uid)
            # the training died with the "machine": it never finishes on the lost node
            assert old is None or old.status.phase != "Succeeded", "training ended on the deleted node"
            return old is None

        wait_for(first_pod_gone, 150, "the pod GC deleting the pod of the deleted node", interval=1)
        new_node = wait_for(
            lambda: core.list_node(field_selector=f"metadata.name={node}").items,
            60,
            "the node registered again",
            interval=1,
        )[0]
        assert new_node.metadata.uid != old_node_uid
        assert POOL_LABEL not in (new_node.metadata.labels or {})
        retry = wait_for(
            lambda: [p for p in training_pods() if p.status.phase == "Running"],
            120,
            "the retry pod running",
            interval=1,
        )[0]
        (other,) = set(local_nodes) - {node}
        assert retry.spec.node_name == other, (node, retry.spec.node_name)
        print(f"first attempt on {node}, the retry on {retry.spec.node_name}")
        done = wait_for_phase(runs, RUN, "Succeeded", 400, interval=2)
        progress = done["progress"]
        # a second attempt that started from a checkpoint, not from scratch
        assert progress["attempt"] >= 2, progress
        assert progress.get("resumedFromEpoch", 0) >= checkpointed, (
            progress,
            checkpointed,
            _trainer_logs(chaos_cluster),
        )
        assert progress["epoch"] == 2 and done["progressText"] == "2/2"
        # the run's audit trail, as the bucket keeps it: no epoch finished in the first attempt was
        # started again in the second
        s3c = s3.boto3_client(chaos_cluster.s3_endpoint())
        bucket, _, prefix = f"{root}/runs/{ns}/{RUN}".removeprefix("s3://").partition("/")
        body = s3c.get_object(Bucket=bucket, Key=f"{prefix}/events.jsonl")["Body"].read().decode()
        attempts: list[list[dict[str, Any]]] = []
        for event in map(json.loads, body.splitlines()):
            if event["event"] == "attempt_start":
                attempts.append([])
            attempts[-1].append(event)
        assert len(attempts) == 2, [a[0] for a in attempts]
        finished = {e["epoch"] for e in attempts[0] if e["event"] == "checkpoint"}
        started_again = {e["epoch"] for e in attempts[1] if e["event"] == "epoch_start"}
        assert finished and not finished & started_again, (finished, started_again)
        assert done["output"]["version"] == RUN
        assert done["output"]["path"] == f"{root}/models/{RUN}"
        # one training Job; the node loss was a disruption, not a failure of the run
        job = batch.read_namespaced_job(builders.job_name(RUN), ns)
        assert not job.status.failed, f"the node loss counted against backoffLimit: {job.status}"
        jobs = batch.list_namespaced_job(ns, label_selector=f"{builders.RUN_LABEL}={RUN}").items
        assert sorted(str(j.metadata.name) for j in jobs) == sorted(
            [builders.job_name(RUN), builders.export_job_name(RUN)]
        )
    finally:
        op.stop()
        print(f"--- operator log (tail) ---\n{op.log()[-4000:]}")


def _trainer_logs(cluster: Any) -> str:
    """The trainer's log of every training pod the chaos cluster ran (its tail), for a failure."""
    return "\n".join(
        f"--- {log.parent.name} ---\n{log.read_text(errors='replace')[-3000:]}"
        for log in sorted((cluster.state / "pods").glob("*/*.log"))
        if "train" in log.parent.name
    )
