"""Every pod the operator builds can be started: no volume is mounted inside another, read-only one.

A mount point inside a read-only volume cannot be created (runc, and the dev cluster's pod runner,
fail with "read-only file system"), so such a pod never starts. A VoiceModel with
spec.server.authSecretRef once mounted its token Secret under the read-only serve-spec volume and
crash-looped before serving a request.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import pytest

from tts_operator import api
from tts_operator.builders import serving, training
from tts_operator.settings import Settings

SETTINGS = Settings()


def _voicemodel() -> api.VoiceModel:
    return api.VoiceModel.model_validate(
        {
            "metadata": {"name": "narrator", "namespace": "voices", "uid": "u"},
            "spec": {
                "engine": "xtts",
                "model": {"volume": {"claimName": "models", "subPath": "narrator"}},
                "version": "v1",
                "voices": [{"name": "narrator", "wav": "voices/narrator.wav"}],
                "server": {"authSecretRef": {"name": "tts-token"}},
            },
        }
    )


def _run() -> api.TrainingRun:
    return api.TrainingRun.model_validate(
        {
            "metadata": {"name": "narrator-ft-1", "namespace": "voices", "uid": "u"},
            "spec": {
                "engine": "xtts",
                "baseModel": {"volume": {"claimName": "base", "subPath": "xtts-v2"}},
                "dataset": {"volume": {"claimName": "datasets"}},
                "training": {"epochs": 1},
                "checkpoints": {"volume": {"claimName": "checkpoints"}},
                "export": {"volume": {"claimName": "models", "subPath": "narrator"}},
            },
        }
    )


def _pod_specs() -> dict[str, dict[str, Any]]:
    deployment = serving.deployment(
        _voicemodel(), "v1", serving.ModelLocation("models", "narrator"), SETTINGS
    )
    return {
        "serving (with auth)": deployment["spec"]["template"]["spec"],
        "training": training.training_job(_run(), SETTINGS)["spec"]["template"]["spec"],
        "export": training.export_job(_run(), SETTINGS)["spec"]["template"]["spec"],
    }


@pytest.mark.parametrize("which", list(_pod_specs()))
def test_no_mount_inside_a_read_only_mount(which: str) -> None:
    for container in _pod_specs()[which]["containers"]:
        mounts = container["volumeMounts"]
        for inner in mounts:
            for outer in mounts:
                if inner is outer or not outer.get("readOnly"):
                    continue
                assert not PurePosixPath(inner["mountPath"]).is_relative_to(outer["mountPath"]), (
                    f"{which}: {inner['name']} at {inner['mountPath']} is inside the read-only "
                    f"{outer['name']} at {outer['mountPath']}: its mount point cannot be created"
                )
