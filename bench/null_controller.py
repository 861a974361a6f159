"""The least a controller of VoiceModels and TrainingRuns can do: the scale benchmark's baseline.

``python -m bench.null_controller --kubeconfig K --namespace NS``: watches both kinds in ``NS`` and,
for each object without a phase, creates the one child that makes the cluster work (the very
Deployment or training Job ``tts-operator`` would build, so the controller manager, scheduler and
simulated nodes do the same work after it) and patches ``status.phase`` and
``status.observedGeneration``: two requests an object, from 16 threads. Nothing else: no
ServiceAccount, Role, RoleBinding or ConfigMap, no Service, no Events, no reads, no follow-up
reconciles, no resync. The Job's pods run as the namespace's default ServiceAccount (the per-run one
does not exist here).

``python -m bench.scale_bench --controller null`` runs the same bursts against it: on the same
machine, the time it needs is what the cluster itself (API server, etcd, kcm, scheduler, the
simulated nodes, the benchmark and its counting proxy) leaves for any controller.
"""

from __future__ import annotations

import argparse
import json
import queue
import signal
import threading
from typing import Any

from kubernetes import client, watch

from tts_operator import api
from tts_operator.builders import serving as serving_builders
from tts_operator.builders import training as training_builders
from tts_operator.kube.client import load_client
from tts_operator.reconcile.voicemodel_plan import resolve_source
from tts_operator.settings import Settings

MERGE_PATCH = "application/merge-patch+json"


def child_and_phase(kind: str, body: dict[str, Any], settings: Settings) -> tuple[dict[str, Any], str]:
    if kind == "VoiceModel":
        vm = api.VoiceModel.model_validate(body)
        source = resolve_source(vm, None)
        assert source.location is not None and source.version, "the baseline serves volume models only"
        return serving_builders.deployment(vm, source.version, source.location, settings), "Deploying"
    run = api.TrainingRun.model_validate(body)
    job = training_builders.training_job(run, settings)
    job["spec"]["template"]["spec"]["serviceAccountName"] = "default"
    return job, "Pending"


class NullController:
    def __init__(self, apic: client.ApiClient, namespace: str, threads: int = 16) -> None:
        self.custom, self.apps, self.batch = (
            client.CustomObjectsApi(apic),
            client.AppsV1Api(apic),
            client.BatchV1Api(apic),
        )
        self.namespace, self.threads = namespace, threads
        self.settings = Settings()
        self.work: queue.Queue[tuple[api.Resource, dict[str, Any]]] = queue.Queue()
        self.stop = threading.Event()

    def watch(self, resource: api.Resource) -> None:
        list_fn = self.custom.list_namespaced_custom_object
        args = (resource.group, resource.version, self.namespace, resource.plural)
        rv = list_fn(*args)["metadata"]["resourceVersion"]
        while not self.stop.is_set():
            try:
                for event in watch.Watch().stream(list_fn, *args, resource_version=rv, timeout_seconds=30):
                    obj = event["object"]
                    rv = obj["metadata"]["resourceVersion"]
                    if event["type"] == "ADDED" and not (obj.get("status") or {}).get("phase"):
                        self.work.put((resource, obj))
            except Exception as e:  # an expired resourceVersion: go on from now
                print(json.dumps({"message": f"watch of {resource.plural} restarts: {e}"}), flush=True)
                rv = list_fn(*args)["metadata"]["resourceVersion"]

    def handle(self) -> None:
        while True:
            resource, body = self.work.get()
            try:
                self._handle(resource, body)
            except Exception as e:  # counted by the benchmark as never reconciled
                print(json.dumps({"message": f"{body['metadata']['name']}: {e}"}), flush=True)

    def _handle(self, resource: api.Resource, body: dict[str, Any]) -> None:
        child, phase = child_and_phase(resource.kind, body, self.settings)
        create = (
            self.apps.create_namespaced_deployment
            if child["kind"] == "Deployment"
            else self.batch.create_namespaced_job
        )
        create(self.namespace, child, _preload_content=False)
        meta = body["metadata"]
        self.custom.patch_namespaced_custom_object_status(
            resource.group,
            resource.version,
            self.namespace,
            resource.plural,
            meta["name"],
            {"status": {"phase": phase, "observedGeneration": meta.get("generation")}},
            _content_type=MERGE_PATCH,
        )

    def run(self) -> None:
        for resource in (api.VOICEMODEL, api.TRAININGRUN):
            threading.Thread(target=self.watch, args=(resource,), daemon=True).start()
        for _ in range(self.threads):
            threading.Thread(target=self.handle, daemon=True).start()
        print(json.dumps({"message": f"null controller watching {self.namespace}"}), flush=True)
        self.stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.null_controller", description=__doc__)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    controller = NullController(load_client(args.kubeconfig, connections=args.threads + 4), args.namespace)
    signal.signal(signal.SIGTERM, lambda *_: controller.stop.set())
    controller.run()


if __name__ == "__main__":
    main()
