"""examples/voicemodel-hpa.yaml: the VoiceModel is valid, the HPA scales the operator's Deployment on
the runtime's in-flight gauge, and while an HPA owns the count the operator's Deployment has none."""

from __future__ import annotations

from pathlib import Path

import yaml

from tts_operator import api
from tts_operator.builders import serving as b
from tts_operator.settings import Settings

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "voicemodel-hpa.yaml"


def test_hpa_example_targets_the_operators_deployment_on_the_in_flight_metric() -> None:
    vm_doc, hpa = list(yaml.safe_load_all(EXAMPLE.read_text()))
    vm = api.VoiceModel.model_validate({**vm_doc, "metadata": {**vm_doc["metadata"], "namespace": "ns"}})
    dep = b.deployment(
        vm, vm.spec.version or "", b.ModelLocation("models", "narrator"), Settings(), autoscaled=True
    )
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (dep["kind"], dep["metadata"]["name"])
    assert "replicas" not in dep["spec"]
    (metric,) = hpa["spec"]["metrics"]
    # the gauge the runtime exports (runtime/tts_runtime/server/metrics.py)
    source = (Path(__file__).resolve().parents[2] / "runtime/tts_runtime/server/metrics.py").read_text()
    assert f'"{metric["pods"]["metric"]["name"]}"' in source
    assert int(metric["pods"]["target"]["averageValue"]) == vm.spec.server.max_concurrency
