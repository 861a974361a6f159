"""The dev cluster's nodes (pure builders).

``*-local-*`` nodes are kept alive by the local pod runner, which runs their pods as processes;
``*-sim-*`` nodes are simulated by kwok (label ``type=kwok``) for scale tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
LOCAL_NODE_LABEL = "tts-operator.dev/local-runner"
KWOK_LABEL_SELECTOR = "type=kwok"


@dataclass(frozen=True)
class NodeSpec:
    name: str
    local: bool
    gpus: int = 0
    gpu_product: str | None = None
    cpu: str = "32"
    memory: str = "256Gi"
    labels: dict[str, str] = field(default_factory=dict)


DEV_NODES: tuple[NodeSpec, ...] = (
    NodeSpec("cpu-local-0", local=True, cpu="16", memory="64Gi"),
    NodeSpec(
        "gpu-local-0", local=True, gpus=8, gpu_product="NVIDIA-GeForce-RTX-3090", cpu="32", memory="128Gi"
    ),
    NodeSpec("gpu-sim-0", local=False, gpus=8, gpu_product="NVIDIA-H100-80GB-HBM3", cpu="96", memory="1Ti"),
    NodeSpec("gpu-sim-1", local=False, gpus=8, gpu_product="NVIDIA-H100-80GB-HBM3", cpu="96", memory="1Ti"),
)


def node_manifest(spec: NodeSpec) -> dict:
    """A Node object with status: the API server keeps status on create for Nodes."""
    labels = {
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/os": "linux",
        "kubernetes.io/hostname": spec.name,
        **spec.labels,
    }
    annotations = {"node.alpha.kubernetes.io/ttl": "0"}
    if spec.local:
        labels[LOCAL_NODE_LABEL] = "true"
    else:
        labels["type"] = "kwok"
        annotations["kwok.x-k8s.io/node"] = "fake"
    capacity = {"cpu": spec.cpu, "memory": spec.memory, "pods": "110"}
    taints = []
    if spec.gpus:
        capacity[GPU_RESOURCE] = str(spec.gpus)
        labels["nvidia.com/gpu.present"] = "true"
        labels["nvidia.com/gpu.count"] = str(spec.gpus)
        if spec.gpu_product:
            labels[GPU_PRODUCT_LABEL] = spec.gpu_product
        taints.append(dict(GPU_TAINT))
    node: dict = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": spec.name, "labels": labels, "annotations": annotations},
        "spec": {"taints": taints} if taints else {},
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "local-runner" if spec.local else "kwok",
                "kubeProxyVersion": "",
                "bootID": "",
                "containerRuntimeVersion": "local-process://1" if spec.local else "kwok",
                "kernelVersion": "",
                "machineID": "",
                "osImage": "",
                "systemUUID": "",
            },
            "phase": "Running",
        },
    }
    if spec.local:
        node["status"]["addresses"] = [
            {"type": "InternalIP", "address": "127.0.0.1"},
            {"type": "Hostname", "address": spec.name},
        ]
    return node


def ready_conditions(now: str) -> list[dict]:
    """Node conditions a healthy kubelet reports."""
    conds = []
    for ctype, status, reason in (
        ("Ready", "True", "KubeletReady"),
        ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID"),
        ("NetworkUnavailable", "False", "RouteCreated"),
    ):
        conds.append(
            {
                "type": ctype,
                "status": status,
                "reason": reason,
                "message": "local pod runner",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }
        )
    return conds
