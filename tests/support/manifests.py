"""TrainingRun and VoiceModel manifests for the tests and benches that run the operator.

Each builder starts from a small valid object and takes spec fields as keywords: a dict given for a
field that is a dict by default is merged into it (one level: ``resources={"gpus": 9}`` keeps the GPU
product), anything else replaces the default.
"""

from __future__ import annotations

import copy
from typing import Any

#: the simulated nodes (kwok, ``gpu-sim-*``): pods there "run" at once and do nothing
H100 = "NVIDIA-H100-80GB-HBM3"
#: the local GPU node (``gpu-local-0``): the local pod runner really runs its pods, on the CPU
RTX3090 = "NVIDIA-GeForce-RTX-3090"

Obj = dict[str, Any]


def _manifest(kind: str, name: str, spec: Obj, overrides: Obj) -> Obj:
    from tts_operator import api

    spec = copy.deepcopy(spec)
    for key, value in copy.deepcopy(overrides).items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return {"apiVersion": api.API_GROUP_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}


def trainingrun_manifest(name: str, **spec: Any) -> Obj:
    """A VITS run on PVCs ``data``, ``ckpt`` and ``models`` asking for one simulated H100 and training
    one epoch: a Job for the operator to make, nothing really trained (kwok "runs" the pod)."""
    return _manifest(
        "TrainingRun",
        name,
        {
            "engine": "vits",
            "dataset": {"volume": {"claimName": "data"}},
            "training": {"epochs": 1},
            "checkpoints": {"volume": {"claimName": "ckpt"}},
            "export": {"volume": {"claimName": "models"}},
            "resources": {"gpus": 1, "gpuProduct": H100},
        },
        spec,
    )


def trained_run_manifest(name: str, engine: str = "vits", **spec: Any) -> Obj:
    """A run trained for real on ``gpu-local-0`` (the pod runner runs the trainer on the CPU): a tiny
    base model on PVC ``base``, the spoken clips under ``data/narrator``, the export under
    ``models/narrator``."""
    return _manifest(
        "TrainingRun",
        name,
        {
            "engine": engine,
            "baseModel": {"volume": {"claimName": "base"}},
            "dataset": {"volume": {"claimName": "data", "subPath": "narrator"}, "evalSplit": 0.2},
            "training": {"epochs": 1, "batchSize": 2, "learningRate": 1e-4},
            "checkpoints": {"volume": {"claimName": "ckpt"}},
            "export": {"volume": {"claimName": "models", "subPath": "narrator"}},
            "resources": {"gpus": 1, "gpuProduct": RTX3090},
            "devicePolicy": "PreferGPU",
        },
        spec,
    )


def voicemodel_manifest(name: str, version: str | None = None, **spec: Any) -> Obj:
    """A VITS VoiceModel serving ``models/narrator`` (version ``version``) with one replica on one GPU
    of ``gpu-local-0`` (the pod runner really serves it, on the CPU), rolled out by Availability."""
    if version is not None:
        spec = {"version": version, **spec}
    return _manifest(
        "VoiceModel",
        name,
        {
            "engine": "vits",
            "model": {"volume": {"claimName": "models", "subPath": "narrator"}},
            "replicas": 1,
            "resources": {"gpus": 1, "gpuProduct": RTX3090},
            "devicePolicy": "PreferGPU",
            "rollout": {"strategy": "Availability", "progressDeadlineSeconds": 120},
        },
        spec,
    )
