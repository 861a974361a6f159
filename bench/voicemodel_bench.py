"""Issue 6: VoiceModel rollouts per strategy against a bare Deployment, and reconcile latency at scale.

Against the local dev cluster (``make cluster-up``; kubeconfig ``.cluster/kubeconfig`` or
``$KUBECONFIG``), each part in a fresh namespace that is deleted at the end, with the real
``tts-operator run`` as a subprocess scoped to it:

- rollouts: one VoiceModel per strategy (Availability, ResourceAware, HotSwap; 1 replica, 1 GPU on
  ``gpu-local-0``, devicePolicy PreferGPU), whose pods really run the runtime server on a tiny
  random VITS (the local pod runner runs them on the CPU). Each repetition changes ``spec.version``
  to a new version and times until ``status.servingVersion`` names it (for the current generation).
  Baseline, alternated with them: the same server as a bare Deployment (the operator's own pod
  template, without the operator), whose template's ``--version`` is changed, timed until the
  rollout is complete as ``kubectl rollout status`` sees it;
- scale: VoiceModels (1 H100 each) created in bursts on the ``gpu-sim-*`` nodes (kwok: pods there
  run nothing, and only 16 GPUs exist, so most pods stay Pending: these are operator-side figures).
  create -> Deployment appears (watch), and until every VoiceModel has a ``status.phase``; then,
  with all of them present, a spec change -> Deployment updated. Baseline for both: a ConfigMap
  create seen by a watch on the same API server, alternated with the subject.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from .operator_bench import H100, Seen

STRATEGIES = ("Availability", "ResourceAware", "HotSwap")
#: a pod start on a busy two-core machine (imports, model load, warm-up), with margin
ROLLOUT_TIMEOUT = 300.0

Obj = dict[str, Any]


# --- watching for conditions ---------------------------------------------------------------------


@dataclass
class Expectation:
    """A condition on one object, evaluated at every watch event for it; ``at``: when it first held."""

    name: str
    holds: Callable[[Obj], bool]
    at: float | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def wait(self, timeout: float) -> float:
        if not self.done.wait(timeout):
            raise TimeoutError(f"{self.name}: the condition did not hold within {timeout:g} s")
        assert self.at is not None
        return self.at


class Tracker:
    """A watch on one kind in the namespace that times conditions on its objects.

    Register an ``expect`` before the change it waits for: the condition is checked on each event
    as it arrives (``perf_counter`` at arrival), so the time is that of the first event where it
    held, not of whenever the waiter looked.
    """

    def __init__(self, list_fn: Callable[..., Any], namespace: str, serialize: Callable[[Any], Obj]) -> None:
        self._list, self._ns, self._serialize = list_fn, namespace, serialize
        self._pending: dict[str, list[Expectation]] = {}
        self._lock = threading.Lock()
        self._stop = False
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> Tracker:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the watch did not start")
        return self

    def expect(self, name: str, holds: Callable[[Obj], bool]) -> Expectation:
        exp = Expectation(name, holds)
        with self._lock:
            self._pending.setdefault(name, []).append(exp)
        return exp

    def _loop(self) -> None:
        from kubernetes import watch

        rv: str | None = None
        while not self._stop:
            if rv is None:
                listed = self._serialize(self._list(self._ns))
                if self._ready.is_set():  # a list after an expired watch: changes may have been missed
                    now = time.perf_counter()
                    for item in listed.get("items") or []:
                        self._check(item, now)
                rv = listed["metadata"]["resourceVersion"]
            w = watch.Watch()
            self._ready.set()
            for event in w.stream(self._list, self._ns, resource_version=rv, timeout_seconds=30):
                now = time.perf_counter()
                obj = self._serialize(event["object"])
                if event["type"] == "ERROR":  # the resourceVersion expired: list again
                    rv = None
                    break
                rv = obj["metadata"]["resourceVersion"]
                self._check(obj, now)
                if self._stop:
                    w.stop()
                    break

    def _check(self, obj: Obj, now: float) -> None:
        name = obj["metadata"]["name"]
        with self._lock:
            waiting = self._pending.get(name) or []
            for exp in [e for e in waiting if e.holds(obj)]:
                exp.at = now
                exp.done.set()
                waiting.remove(exp)

    def stop(self) -> None:
        self._stop = True


# --- predicates ----------------------------------------------------------------------------------


def serving(version: str, after_generation: int) -> Callable[[Obj], bool]:
    """A VoiceModel whose status, for a generation newer than ``after_generation``, serves ``version``."""

    def holds(obj: Obj) -> bool:
        gen = int(obj["metadata"].get("generation") or 0)
        st = obj.get("status") or {}
        return (
            gen > after_generation
            and st.get("observedGeneration") == gen
            and st.get("servingVersion") == version
        )

    return holds


def rolled_out(after_generation: int) -> Callable[[Obj], bool]:
    """A Deployment whose rollout is complete, as ``kubectl rollout status`` decides: the controller
    saw the new template, every replica is updated and available, and no old replica is left."""

    def holds(obj: Obj) -> bool:
        gen = int(obj["metadata"].get("generation") or 0)
        want = int((obj.get("spec") or {}).get("replicas", 1))
        st = obj.get("status") or {}
        return (
            gen > after_generation
            and int(st.get("observedGeneration") or 0) >= gen
            and int(st.get("updatedReplicas") or 0) == want
            and int(st.get("replicas") or 0) == want
            and int(st.get("availableReplicas") or 0) == want
            and int(st.get("readyReplicas") or 0) == want
        )

    return holds


def has_phase(obj: Obj) -> bool:
    return bool((obj.get("status") or {}).get("phase"))


def reconcile_counters(metrics_text: str, kind: str = "VoiceModel") -> tuple[float, float]:
    """(reconciles run, seconds spent in them) for ``kind`` from the operator's /metrics."""
    count = seconds = 0.0
    for line in metrics_text.splitlines():
        if f'kind="{kind}"' not in line:
            continue
        if line.startswith("tts_operator_reconciles_total{"):
            count = float(line.rsplit(" ", 1)[1])
        elif line.startswith("tts_operator_reconcile_duration_seconds_sum{"):
            seconds = float(line.rsplit(" ", 1)[1])
    return count, seconds


# --- the cluster ---------------------------------------------------------------------------------


@dataclass
class Cluster:
    """The API clients of one benchmark run, and the dev cluster they talk to."""

    dev: Any
    kubeconfig: str
    apic: Any
    core: Any
    apps: Any
    custom: Any

    def serialize(self, obj: Any) -> Obj:
        out = obj if isinstance(obj, dict) else self.apic.sanitize_for_serialization(obj)
        assert isinstance(out, dict)
        return out

    def list_voicemodels(self, namespace: str, **kw: Any) -> Any:
        from tts_operator import api

        return self.custom.list_namespaced_custom_object(
            api.API_GROUP, api.API_VERSION, namespace, "voicemodels", **kw
        )

    def create_voicemodel(self, namespace: str, body: Obj) -> Obj:
        from tts_operator import api

        out = self.custom.create_namespaced_custom_object(
            api.API_GROUP, api.API_VERSION, namespace, "voicemodels", body
        )
        assert isinstance(out, dict)
        return out

    def get_voicemodel(self, namespace: str, name: str) -> Obj:
        from tts_operator import api

        out = self.custom.get_namespaced_custom_object(
            api.API_GROUP, api.API_VERSION, namespace, "voicemodels", name
        )
        assert isinstance(out, dict)
        return out

    def patch_voicemodel(self, namespace: str, name: str, patch: Obj) -> Obj:
        from tts_operator import api

        out = self.custom.patch_namespaced_custom_object(
            api.API_GROUP, api.API_VERSION, namespace, "voicemodels", name, patch
        )
        assert isinstance(out, dict)
        return out

    def create_configmap(self, namespace: str, name: str) -> None:
        from kubernetes import client

        self.core.create_namespaced_config_map(
            namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data={"k": name})
        )


@contextlib.contextmanager
def scratch_namespace(
    c: Cluster, prefix: str, volumes: tuple[str, ...]
) -> Iterator[tuple[str, dict[str, Path]]]:
    """A fresh namespace with dev volumes; deleted at the end, with the volumes' PVs and folders."""
    from kubernetes import client

    from tts_devcluster.volumes import create_volume, delete_volumes

    ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
    c.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    try:
        yield ns, {vol: create_volume(c.dev, vol, ns) for vol in volumes}
    finally:
        progress(f"voicemodel: deleting namespace {ns}")
        c.core.delete_namespace(ns, propagation_policy="Background")
        delete_volumes(c.dev, ns)


@contextlib.contextmanager
def operator_in(c: Cluster, ns: str, workdir: Path) -> Iterator[Any]:
    from tests.support.operator_process import OperatorProcess

    operator = OperatorProcess(c.kubeconfig, ns, workdir / f"operator-{ns}.log")
    progress(f"voicemodel: starting tts-operator run on namespace {ns}")
    operator.start()
    try:
        yield operator
    except BaseException:
        # the log lives in the benchmark's scratch folder, which goes away: show why it failed
        print(f"--- operator log (tail) ---\n{operator.log()[-4000:]}", file=sys.stderr)
        raise
    finally:
        operator.stop()


# --- part 1: rollouts per strategy ---------------------------------------------------------------


def bare_deployment(ns: str, version: str) -> Obj:
    """The Deployment the operator would make for a 1-replica VoiceModel ``bare`` (Availability:
    surge one, never fewer ready), relabelled so that the operator ignores it."""
    from tests.support.manifests import voicemodel_manifest

    from tts_operator import api
    from tts_operator.builders import serving as builders
    from tts_operator.settings import Settings

    manifest = voicemodel_manifest("bare", version)
    manifest["metadata"] = {"name": "bare", "namespace": ns, "uid": "bench-bare"}
    vm = api.VoiceModel.model_validate(manifest)
    location = builders.ModelLocation("models", "narrator")
    dep = builders.deployment(vm, version, location, Settings())
    labels = {"app": "bench-bare"}
    dep["metadata"]["labels"] = dict(labels)
    dep["metadata"].pop("ownerReferences", None)
    dep["spec"]["selector"] = {"matchLabels": dict(labels)}
    dep["spec"]["template"]["metadata"]["labels"] = dict(labels)
    return dep


def version_patch(ns: str, version: str) -> Obj:
    """A strategic merge patch that changes the bare Deployment's template to serve ``version``, as
    the operator's template for it does (its version annotations, serve spec and command)."""
    template = bare_deployment(ns, version)["spec"]["template"]
    (container,) = template["spec"]["containers"]
    return {
        "spec": {
            "template": {
                "metadata": {"annotations": template["metadata"]["annotations"]},
                "spec": {"containers": [{"name": container["name"], "command": container["command"]}]},
            }
        }
    }


def measure_rollouts(report: Report, c: Cluster, workdir: Path) -> None:
    from tests.support.manifests import voicemodel_manifest
    from tests.support.model_versions import add_version

    from tts_runtime.demo_model import make_demo_model

    reps = 1 if quick() else 3
    versions = [f"v{i + 1}" for i in range(reps + 1)]
    report.config["rollouts"] = {
        "repetitions": reps,
        "replicas": 1,
        "gpusPerPod": 1,
        "node": "gpu-local-0",
        "model": "tiny random VITS",
        "versions": versions,
    }
    with scratch_namespace(c, "bench-vm-roll", ("models",)) as (ns, vols):
        progress("voicemodel: a tiny random VITS and its versions")
        scratch = vols["models"].parent / "_source"  # beside the volume: same filesystem, hard links
        scratch.mkdir(parents=True, exist_ok=True)
        source = make_demo_model(scratch / "src", "vits", seed=0)
        for v in versions:
            add_version(source, vols["models"] / "narrator", v)
        shutil.rmtree(scratch, ignore_errors=True)  # the versions hold hard links of its files

        vms = Tracker(c.list_voicemodels, ns, c.serialize).start()
        deps = Tracker(c.apps.list_namespaced_deployment, ns, c.serialize).start()
        try:
            with operator_in(c, ns, workdir):
                names = {s: f"roll-{s.lower()}" for s in STRATEGIES}
                progress(f"voicemodel: {len(STRATEGIES)} VoiceModels and a bare Deployment on {versions[0]}")
                waits = []
                for strategy, name in names.items():
                    waits.append(vms.expect(name, serving(versions[0], 0)))
                    body = voicemodel_manifest(
                        name, versions[0], rollout={"strategy": strategy, "progressDeadlineSeconds": 600}
                    )
                    c.create_voicemodel(ns, body)
                waits.append(deps.expect("bare", rolled_out(0)))
                c.apps.create_namespaced_deployment(ns, bare_deployment(ns, versions[0]))
                for w in waits:
                    w.wait(ROLLOUT_TIMEOUT * 2)

                times: dict[str, list[float]] = {s: [] for s in ("bare", *STRATEGIES)}
                for i in range(reps):
                    target = versions[i + 1]
                    sides = ["bare", *STRATEGIES]
                    sides = sides[i % len(sides) :] + sides[: i % len(sides)]  # rotate the order
                    for side in sides:
                        if side == "bare":
                            gen = c.apps.read_namespaced_deployment("bare", ns).metadata.generation
                            exp = deps.expect("bare", rolled_out(gen))
                            t0 = time.perf_counter()
                            c.apps.patch_namespaced_deployment("bare", ns, version_patch(ns, target))
                        else:
                            name = names[side]
                            obj = c.get_voicemodel(ns, name)
                            exp = vms.expect(name, serving(target, int(obj["metadata"]["generation"])))
                            t0 = time.perf_counter()
                            c.patch_voicemodel(ns, name, {"spec": {"version": target}})
                        seconds = exp.wait(ROLLOUT_TIMEOUT) - t0
                        times[side].append(seconds)
                        progress(f"voicemodel: {side} -> {target}: {seconds:.1f} s")
        finally:
            vms.stop()
            deps.stop()

    base = median(times["bare"])
    for strategy in STRATEGIES:
        values = times[strategy]
        report.add(
            Row(
                f"version change -> servingVersion, {strategy}",
                median(values),
                "s",
                baseline=base,
                goal="vs a bare Deployment's rollout",
                note=f"median of {len(values)}: {', '.join(f'{v:.1f}' for v in values)} s; "
                f"bare Deployment: {', '.join(f'{v:.1f}' for v in times['bare'])} s",
            )
        )
    report.raw["rollouts_s"] = times


# --- part 2: reconcile latency at scale ----------------------------------------------------------


def sim_voicemodel(name: str, version: str) -> Obj:
    from tests.support.manifests import voicemodel_manifest

    return voicemodel_manifest(name, version, resources={"gpus": 1, "gpuProduct": H100})


def measure_scale(report: Report, c: Cluster, workdir: Path) -> None:
    from tts_operator.builders import serving as builders

    q = quick()
    total = 50 if q else 200
    burst = 25
    changes = 10 if q else 20
    report.config["scale"] = {
        "voiceModels": total,
        "burst": burst,
        "specChanges": changes,
        "gpusPerModel": 1,
        "nodes": "gpu-sim-* (kwok, 16 GPUs in all)",
    }
    with scratch_namespace(c, "bench-vm-scale", ("models",)) as (ns, _vols):
        vms = Tracker(c.list_voicemodels, ns, c.serialize).start()
        dep_changes = Tracker(c.apps.list_namespaced_deployment, ns, c.serialize).start()
        deps = Seen(c.apps.list_namespaced_deployment, ns).start()
        cms = Seen(c.core.list_namespaced_config_map, ns).start()
        try:
            with operator_in(c, ns, workdir) as operator:
                rss = PeakRss(operator.proc.pid)
                idle = rss.sample()
                counters = [reconcile_counters(operator.metrics())]
                create_to_dep: list[float] = []
                create_to_phase: list[float] = []
                cm_round_trip: list[float] = []
                progress(f"voicemodel: {total} VoiceModels in bursts of {burst}, alternated with ConfigMaps")
                first = time.perf_counter()
                phases: list[tuple[float, Expectation]] = []
                with rss:
                    for start in range(0, total, burst):
                        sent: list[tuple[str, str, float]] = []
                        for i in range(start, min(start + burst, total)):
                            for side in ("vm", "cm") if i % 2 == 0 else ("cm", "vm"):
                                if side == "vm":
                                    name = f"sim-{i}"
                                    exp = vms.expect(name, has_phase)
                                    t0 = time.perf_counter()
                                    c.create_voicemodel(ns, sim_voicemodel(name, "v1"))
                                    phases.append((t0, exp))
                                    sent.append(("vm", builders.deployment_name(name), t0))
                                else:
                                    t0 = time.perf_counter()
                                    c.create_configmap(ns, f"cm-{i}")
                                    sent.append(("cm", f"cm-{i}", t0))
                        # the next burst comes once this one's Deployments exist
                        for side, name, t0 in sent:
                            if side == "vm":
                                create_to_dep.append(deps.wait(name, timeout=300) - t0)
                            else:
                                cm_round_trip.append(cms.wait(name) - t0)
                        progress(f"voicemodel: {min(start + burst, total)} created")
                    for t0, exp in phases:
                        create_to_phase.append(exp.wait(600) - t0)
                    all_phased = max(exp.wait(0) for _t0, exp in phases) - first
                    counters.append(reconcile_counters(operator.metrics()))

                    progress(f"voicemodel: {changes} spec changes with {total} VoiceModels present")
                    change_to_dep: list[float] = []
                    change_cm: list[float] = []
                    for i in range(changes):
                        for side in ("vm", "cm") if i % 2 == 0 else ("cm", "vm"):
                            if side == "vm":
                                name = f"sim-{i * (total // changes)}"
                                exp = dep_changes.expect(
                                    builders.deployment_name(name),
                                    lambda d: (
                                        (d["metadata"].get("annotations") or {}).get(builders.VERSION_LABEL)
                                        == "v2"
                                    ),
                                )
                                t0 = time.perf_counter()
                                c.patch_voicemodel(ns, name, {"spec": {"version": "v2"}})
                                change_to_dep.append(exp.wait(120) - t0)
                            else:
                                t0 = time.perf_counter()
                                c.create_configmap(ns, f"cm-change-{i}")
                                change_cm.append(cms.wait(f"cm-change-{i}") - t0)
                steady = rss.sample()
                counters.append(reconcile_counters(operator.metrics()))
        finally:
            for w in (vms, dep_changes, deps, cms):
                w.stop()

    report.add(
        Row(
            f"create -> Deployment, p50 ({total} in bursts of {burst})",
            percentile(create_to_dep, 50) * 1000,
            "ms",
            baseline=percentile(cm_round_trip, 50) * 1000,
            goal="vs ConfigMap round trip",
        )
    )
    report.add(
        Row(
            f"create -> Deployment, p99 ({total} in bursts of {burst})",
            percentile(create_to_dep, 99) * 1000,
            "ms",
            baseline=percentile(cm_round_trip, 99) * 1000,
            goal="vs ConfigMap round trip",
        )
    )
    report.add(
        Row(
            f"create -> status.phase, p50 ({total})",
            percentile(create_to_phase, 50) * 1000,
            "ms",
            note=f"p99 {percentile(create_to_phase, 99) * 1000:.0f} ms",
        )
    )
    report.add(Row(f"first create -> all {total} have a phase", all_phased, "s"))
    report.add(
        Row(
            f"spec change -> Deployment updated, p50 ({total} present)",
            percentile(change_to_dep, 50) * 1000,
            "ms",
            baseline=percentile(change_cm, 50) * 1000,
            goal="vs ConfigMap round trip",
            note=f"p99 {percentile(change_to_dep, 99) * 1000:.0f} ms over {len(change_to_dep)} changes",
        )
    )
    (n0, s0), (n1, s1), (n2, s2) = counters
    report.add(
        Row(
            f"reconciles per VoiceModel, creating {total}",
            (n1 - n0) / total,
            "",
            note=f"{n1 - n0:.0f} reconciles, mean {1000 * (s1 - s0) / max(n1 - n0, 1):.0f} ms each",
        )
    )
    report.add(
        Row(
            f"reconciles during the {changes} spec changes",
            n2 - n1,
            "",
            note=f"mean {1000 * (s2 - s1) / max(n2 - n1, 1):.0f} ms each; the 30 s resync of all "
            f"{total} VoiceModels among them",
        )
    )
    report.raw["reconciles"] = {"count": [n for n, _ in counters], "seconds": [t for _, t in counters]}
    report.add(Row("operator RSS, idle", idle, "MiB"))
    report.add(
        Row(
            f"operator RSS with {total} VoiceModels (peak)",
            rss.peak,
            "MiB",
            note=f"at the end: {steady:.0f} MiB",
        )
    )
    report.raw["scale_s"] = {
        "createToDeployment": create_to_dep,
        "configMapRoundTrip": cm_round_trip,
        "createToPhase": create_to_phase,
        "allPhased": all_phased,
        "changeToDeployment": change_to_dep,
        "changeConfigMapRoundTrip": change_cm,
    }


# --- the benchmark -------------------------------------------------------------------------------


def run(report: Report, workdir: Path) -> None:
    from kubernetes import client

    found = dev_cluster_api(report)
    if found is None:
        return
    dev, kubeconfig, apic = found
    c = Cluster(
        dev, kubeconfig, apic, client.CoreV1Api(apic), client.AppsV1Api(apic), client.CustomObjectsApi(apic)
    )
    try:
        measure_rollouts(report, c, workdir)
        measure_scale(report, c, workdir)
    finally:
        apic.close()


def main(argv: list[str] | None = None) -> int:
    return bench_main(
        "voicemodel_bench",
        "voicemodel",
        "issue 6: VoiceModel rollouts and scale (local dev cluster)",
        run,
        __doc__,
        argv,
    )


if __name__ == "__main__":
    raise SystemExit(main())
