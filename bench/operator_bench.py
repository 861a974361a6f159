"""Issue 3: the operator's apply -> Job latency against a bare API round trip, and its RSS at scale.

Against the local dev cluster (``make cluster-up``; kubeconfig ``.cluster/kubeconfig`` or
``$KUBECONFIG``), in a fresh namespace that is deleted at the end, with the real ``tts-operator run``
as a subprocess scoped to it:

- latency: create a TrainingRun (1 GPU on the ``gpu-sim-*`` H100 nodes) and time until its
  training Job appears in a watch; alternated with the baseline, a ConfigMap create until it
  appears in a watch on the same API server. p50 and p99 of each, ratio at p50 (goal <= 3x);
- RSS: the operator's resident memory idle, and once it has reconciled 500 TrainingRuns (each has a
  status phase). The 100 of the latency phase have Jobs (and pods on the simulated nodes); the other
  400 are created suspended, which the operator reconciles without a Job, so the simulated nodes
  are not asked to run hundreds of pods on a two-core machine.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

from tests.support.manifests import H100, trainingrun_manifest

from .common import (
    PeakRss,
    Report,
    Row,
    bench_main,
    dev_cluster_api,
    median,
    percentile,
    progress,
    quick,
)

P50_GOAL = 3.0
__all__ = ["H100", "Seen", "run_body"]


class Seen:
    """A watch on one kind in the namespace: when each name was first seen (monotonic seconds)."""

    def __init__(self, list_fn: Any, namespace: str) -> None:
        self.times: dict[str, float] = {}
        self._cond = threading.Condition()
        self._list, self._ns = list_fn, namespace
        self._stop = False
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> Seen:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the watch did not start")
        return self

    def _loop(self) -> None:
        from kubernetes import watch

        rv = self._list(self._ns).metadata.resource_version
        while not self._stop:
            w = watch.Watch()
            self._ready.set()
            # raw events, timed as they arrive: the client's typed models would add the cost of
            # deserialising a Job (a big model, milliseconds) to one side and a ConfigMap to the other
            events = w.stream(
                self._list, self._ns, resource_version=rv, timeout_seconds=30, deserialize=False
            )
            try:
                for event in events:
                    now = time.perf_counter()
                    obj = event["object"]
                    rv = obj["metadata"]["resourceVersion"]
                    with self._cond:
                        self.times.setdefault(obj["metadata"]["name"], now)
                        self._cond.notify_all()
                    if self._stop:
                        w.stop()
                        break
            except KeyError:
                # an ERROR event (raw, it has no "raw_object" for the client to read): the
                # resourceVersion expired, so the watch starts again from now
                rv = self._list(self._ns).metadata.resource_version

    def wait(self, name: str, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        with self._cond:
            while name not in self.times:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{name} not seen within {timeout:g} s")
                self._cond.wait(left)
            return self.times[name]

    def stop(self) -> None:
        self._stop = True


def run_body(name: str, suspend: bool = False) -> dict[str, Any]:
    """One epoch of VITS on one simulated H100 (tests/support/manifests.py)."""
    return trainingrun_manifest(name, suspend=suspend)


def run(report: Report, workdir: Path) -> None:
    from kubernetes import client
    from tests.support.objects import CustomObjects, wait_for_phase
    from tests.support.operator_process import OperatorProcess
    from tests.support.waiting import Pending, wait_for

    from tts_devcluster.volumes import create_volume, delete_volumes
    from tts_operator.builders.training import job_name

    q = quick()
    samples = 20 if q else 100
    total = 100 if q else 500
    report.config = {
        "latencySamples": samples,
        "trainingRunsForRss": total,
        "runsWithJobs": samples,
        "runsSuspended": total - samples,
        "gpusPerRun": 1,
        "nodes": "gpu-sim-*",
    }
    found = dev_cluster_api(report)
    if found is None:
        return
    cluster, kubeconfig, apic = found
    core, batch = client.CoreV1Api(apic), client.BatchV1Api(apic)
    ns = f"bench-op-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    runs = CustomObjects(apic, ns, "trainingruns")
    operator = OperatorProcess(kubeconfig, ns, workdir / "operator.log")
    watches: list[Seen] = []
    try:
        for vol in ("data", "ckpt", "models"):
            create_volume(cluster, vol, ns)
        progress(f"operator: starting tts-operator run on namespace {ns}")
        operator.start()
        assert operator.proc is not None
        rss = PeakRss(operator.proc.pid)
        time.sleep(2)  # let kopf finish its start-up listing before the idle sample
        idle = rss.sample()
        jobs = Seen(batch.list_namespaced_job, ns).start()
        cms = Seen(core.list_namespaced_config_map, ns).start()
        watches += [jobs, cms]

        def create_run(name: str, suspend: bool = False) -> None:
            runs.create(run_body(name, suspend))

        def settled(name: str) -> None:
            """Until the run's pod has come and gone on its kwok node and the operator has said so
            (the pod "succeeds" at once, so the run ends Failed: ExportReportMissing): every sample
            starts from a quiet cluster, not in the wake of the previous run's Job, pod and status
            churn (throughput under load is ``make bench-scale``'s subject)."""
            wait_for_phase(runs, name, ("Failed", "Succeeded"), 60, interval=0.05)

        progress(f"operator: {samples} alternated pairs of TrainingRun -> Job and ConfigMap round trips")
        subject: list[float] = []
        baseline: list[float] = []
        for i in range(samples):
            for side in ("run", "cm") if i % 2 == 0 else ("cm", "run"):
                t0 = time.perf_counter()
                if side == "run":
                    create_run(f"lat-{i}")
                    subject.append(jobs.wait(job_name(f"lat-{i}")) - t0)
                    settled(f"lat-{i}")
                else:
                    core.create_namespaced_config_map(
                        ns,
                        client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"cm-{i}"), data={"i": str(i)}),
                    )
                    baseline.append(cms.wait(f"cm-{i}") - t0)
        p50 = report.add(
            Row(
                "apply -> Job created, p50",
                percentile(subject, 50) * 1000,
                "ms",
                baseline=percentile(baseline, 50) * 1000,
                goal=f"<= {P50_GOAL:g}x ConfigMap round trip",
            )
        )
        p50.met = (p50.ratio or 99) <= P50_GOAL
        report.add(
            Row(
                "apply -> Job created, p99",
                percentile(subject, 99) * 1000,
                "ms",
                baseline=percentile(baseline, 99) * 1000,
                goal="vs ConfigMap round trip",
            )
        )
        report.raw["latency"] = {"trainingRunToJob": subject, "configMapRoundTrip": baseline}

        progress(
            f"operator: {total - samples} more TrainingRuns (suspended), waiting for all {total} reconciled"
        )

        def all_reconciled() -> bool | Pending:
            done = sum(1 for r in runs.list().values() if (r.get("status") or {}).get("phase"))
            return done >= total or Pending(f"{done} of {total} reconciled")

        with rss:
            for i in range(total - samples):
                create_run(f"bulk-{i}", suspend=True)
            wait_for(all_reconciled, 300 if q else 900, f"the operator to reconcile {total} TrainingRuns", 1)
            time.sleep(5)  # a few seconds of steady state after the last one (rss samples meanwhile)
        steady = rss.sample()
        report.add(Row("operator RSS, idle", idle, "MiB"))
        report.add(
            Row(
                f"operator RSS with {total} TrainingRuns (peak)",
                rss.peak,
                "MiB",
                note=f"steady after the last Job: {steady:.0f} MiB",
            )
        )
        report.raw["rss"] = {"idleMiB": idle, "peakMiB": rss.peak, "steadyMiB": steady}
        report.raw["medians_ms"] = {"run": median(subject) * 1000, "configMap": median(baseline) * 1000}
    finally:
        for w in watches:
            w.stop()
        operator.stop()
        progress(f"operator: deleting namespace {ns}")
        core.delete_namespace(ns, propagation_policy="Background")
        delete_volumes(cluster, ns)
        apic.close()


def main(argv: list[str] | None = None) -> int:
    return bench_main(
        "operator_bench", "operator", "issue 3: operator (local dev cluster)", run, __doc__, argv
    )


if __name__ == "__main__":
    raise SystemExit(main())
