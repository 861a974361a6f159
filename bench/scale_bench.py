"""Issue 8: the operator at scale - 1000 VoiceModels and 500 TrainingRuns created in bursts.

Against the local dev cluster (``.cluster/`` of the checkout, or ``TTS_CLUSTER_DIR``; kubeconfig
``$KUBECONFIG`` or the cluster's), in a fresh namespace deleted at the end, with the real
``tts-operator run`` as a subprocess scoped to it. The operator talks to the API server through a
counting proxy (``bench.api_counter``), so its own requests can be told from those of kcm, the
scheduler, kwok and the pod runner. Every object asks for 1 GPU of the simulated H100 nodes
(``gpu-sim-*``, 16 GPUs in all): most pods stay Pending, as a queue of work on a busy cluster does;
it is the operator's load that is measured, not the simulated nodes'. TrainingRuns are created
unsuspended (``--suspend`` to create them suspended): a Job per run is what users submit.

Measured:
- the time from the first create until every object is reconciled (``status.phase`` set and
  ``status.observedGeneration == metadata.generation``), goal <= 60 s on 2 cores;
- apply -> child created (Deployment for a VoiceModel, Job for a TrainingRun), p50 and p99;
- the operator's RSS (peak during the bursts, steady while idle; goal <= 300 MB) and CPU seconds
  (utime + stime of ``/proc/PID/stat``);
- once everything has settled, the operator's API requests for ``--idle-seconds``: per minute, per
  object, and how many are writes (goal: zero writes per minute when nothing changes).

``--profile`` (or ``BENCH_SCALE_PROFILE=1``) runs the operator under ``bench.sampling_profiler`` and
puts where its CPU went into the result's ``raw.profile``; ``--profile-memory`` adds its live objects
by type once idle (``raw.memory``). The profiler costs the operator CPU: take the figures of a run
without it.

Sizes: ``--voicemodels``/``--trainingruns`` (env ``SCALE_VOICEMODELS``/``SCALE_TRAININGRUNS``;
defaults 1000 and 500, ``BENCH_QUICK=1``: 100 and 50).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.support.operator_process import OperatorProcess
from tests.support.processes import ChildProcess, free_port
from tests.support.waiting import Pending, WaitTimeout, wait_for

from .api_counter import diff, is_write
from .common import REPO, PeakRss, Report, Row, dev_cluster_api, median, percentile, progress, quick
from .operator_bench import H100, Seen, run_body

RECONCILE_GOAL_S = 60.0
RSS_GOAL_MIB = 300.0 * 1e6 / 2**20  # the 300 MB, in MiB as RSS is reported
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def voicemodel_body(name: str) -> dict[str, Any]:
    from tts_operator import api

    return {
        "apiVersion": api.API_GROUP_VERSION,
        "kind": "VoiceModel",
        "metadata": {"name": name},
        "spec": {
            "engine": "vits",
            "model": {"volume": {"claimName": "models", "subPath": "voices"}},
            "version": "v1",
            "replicas": 1,
            "resources": {"gpus": 1, "gpuProduct": H100},
        },
    }


def is_reconciled(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation")
    return bool(status.get("phase")) and status.get("observedGeneration") == generation


class Reconciled:
    """A watch on one custom resource: when each object was first seen reconciled (perf_counter)."""

    def __init__(self, custom: Any, namespace: str, plural: str) -> None:
        from tts_operator import api

        self.times: dict[str, float] = {}
        self._list = functools.partial(
            custom.list_namespaced_custom_object, api.API_GROUP, api.API_VERSION, namespace, plural
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"reconciled-{plural}", daemon=True)

    def start(self) -> Reconciled:
        self._thread.start()
        return self

    def _loop(self) -> None:
        from kubernetes import watch

        while not self._stop.is_set():
            try:
                listed = self._list()
                for obj in listed["items"]:
                    if is_reconciled(obj):
                        self.times.setdefault(obj["metadata"]["name"], time.perf_counter())
                rv = listed["metadata"]["resourceVersion"]
                while not self._stop.is_set():
                    w = watch.Watch()
                    for event in w.stream(self._list, resource_version=rv, timeout_seconds=30):
                        obj = event["object"]
                        rv = obj["metadata"]["resourceVersion"]
                        if is_reconciled(obj):
                            self.times.setdefault(obj["metadata"]["name"], time.perf_counter())
                        if self._stop.is_set():
                            w.stop()
                            break
            except Exception as e:  # an expired resourceVersion (410) or a dropped watch: list again
                progress(f"scale: re-listing after a watch error: {type(e).__name__}: {str(e)[:120]}")
                self._stop.wait(1)

    def stop(self) -> None:
        self._stop.set()


class ApiCounter(ChildProcess):
    """``bench.api_counter`` as a subprocess: the operator's API requests, counted. Ready once it has
    written the kubeconfig its clients use."""

    name = "the API counter"
    ready_timeout = 30
    stop_grace = 10

    def __init__(self, kubeconfig: str, workdir: Path) -> None:
        self.port = free_port()
        self.client_kubeconfig = workdir / "operator-kubeconfig"
        argv = [sys.executable, "-m", "bench.api_counter", "--kubeconfig", kubeconfig]
        argv += ["--port", str(self.port), "--client-kubeconfig", str(self.client_kubeconfig)]
        super().__init__(argv, workdir / "api-counter.log", cwd=REPO)

    def ready(self) -> bool:
        return self.client_kubeconfig.exists()

    def counts(self) -> dict[str, int]:
        return dict(self._snapshot()["byVerb"])

    def seconds(self) -> dict[str, float]:
        """The time the operator waited on each kind of request so far (watches left out)."""
        return dict(self._snapshot()["secondsByVerb"])

    def _snapshot(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/__counts", timeout=10) as r:
            body: dict[str, Any] = json.loads(r.read())
        return body


def _operator(
    kubeconfig: str, namespace: str, workdir: Path, profile: Path | None, memory: Path | None
) -> OperatorProcess:
    """The real ``tts-operator run`` (tests/support's OperatorProcess), under the sampling profiler if
    asked (``python -m bench.sampling_profiler --out PROFILE -m tts_operator.cli run ...``)."""
    launcher: list[str] = []
    if profile is not None:
        launcher = ["-m", "bench.sampling_profiler", "--out", str(profile)]
        launcher += ["--memory", str(memory)] if memory is not None else []
    return OperatorProcess(kubeconfig, namespace, workdir / "operator.log", launcher=launcher)


class _NullProcess(ChildProcess):
    """``bench.null_controller`` as a subprocess, in place of the operator (same start/stop)."""

    name = "the null controller"
    stop_grace = 10

    def __init__(self, kubeconfig: str, namespace: str, log_path: Path) -> None:
        argv = [sys.executable, "-m", "bench.null_controller", "--kubeconfig", kubeconfig]
        super().__init__([*argv, "--namespace", namespace], log_path, cwd=REPO)


def _null_rows(
    report: Report,
    total: int,
    done: int,
    reconciled_s: float,
    creating_s: float,
    others: dict[str, float],
    cpu: float,
) -> None:
    row = report.add(
        Row(
            f"all {total} objects reconciled by the null controller, from the first create",
            reconciled_s,
            "s",
            note=f"{done} of {total} reconciled; creating them took {creating_s:.1f} s",
        )
    )
    row.met = None
    report.add(
        Row(
            "CPU of the rest, bursts until all reconciled",
            sum(others.values()),
            "s",
            note=", ".join(f"{k} {v:.0f} s" for k, v in sorted(others.items(), key=lambda kv: -kv[1])),
        )
    )
    report.add(Row("null controller CPU, bursts until all reconciled", cpu, "s"))


def _sizes(args: argparse.Namespace) -> tuple[int, int]:
    q = quick()
    vms = args.voicemodels if args.voicemodels is not None else int(os.environ.get("SCALE_VOICEMODELS", 0))
    trs = args.trainingruns if args.trainingruns is not None else int(os.environ.get("SCALE_TRAININGRUNS", 0))
    return vms or (100 if q else 1000), trs or (50 if q else 500)


def run(report: Report, workdir: Path, args: argparse.Namespace) -> None:
    from kubernetes import client

    from tts_devcluster.volumes import create_volume
    from tts_operator import api
    from tts_operator.builders.serving import deployment_name
    from tts_operator.builders.training import job_name

    n_vm, n_tr = _sizes(args)
    bursts = max(1, args.bursts)
    idle_s = args.idle_seconds if args.idle_seconds is not None else (40.0 if quick() else 90.0)
    deadline_s = args.deadline if args.deadline is not None else (300.0 if quick() else 900.0)
    profile = workdir / "profile.json" if args.profile or args.profile_memory else None
    memory = workdir / "memory.json" if args.profile_memory else None
    report.config = {
        "voiceModels": n_vm,
        "trainingRuns": n_tr,
        "bursts": bursts,
        "burstGapSeconds": args.burst_gap,
        "trainingRunsSuspended": args.suspend,
        "createThreads": args.threads,
        "idleSeconds": idle_s,
        "gpusPerObject": 1,
        "nodes": "gpu-sim-* (kwok, 16 simulated H100)",
        "profiled": bool(profile),
        "memoryTraced": bool(memory),
        "commit": _commit(),
    }
    # the pool: the create threads and the watches
    found = dev_cluster_api(report, pool_size=max(args.threads, 4) + 4)
    if found is None:
        return
    cluster, kubeconfig, apic = found
    core, apps, batch = client.CoreV1Api(apic), client.AppsV1Api(apic), client.BatchV1Api(apic)
    custom = client.CustomObjectsApi(apic)
    ns = f"bench-scale-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    counter = ApiCounter(kubeconfig, workdir)
    null = args.controller == "null"
    operator = (
        _NullProcess(str(counter.client_kubeconfig), ns, workdir / "operator.log")
        if null
        else _operator(str(counter.client_kubeconfig), ns, workdir, profile, memory)
    )
    stoppable: list[Any] = []
    try:
        for vol in ("data", "ckpt", "models"):
            create_volume(cluster, vol, ns)
        counter.start()
        progress(f"scale: starting tts-operator run on namespace {ns} (API requests counted by a proxy)")
        operator.start()
        pid = operator.pid
        time.sleep(2)  # kopf's start-up listing, before the idle baseline
        rss = PeakRss(pid, interval=0.1)
        rss_start = rss.sample()
        deployments = Seen(apps.list_namespaced_deployment, ns).start()
        jobs = Seen(batch.list_namespaced_job, ns).start()
        vm_done = Reconciled(custom, ns, "voicemodels").start()
        tr_done = Reconciled(custom, ns, "trainingruns").start()
        stoppable += [deployments, jobs, vm_done, tr_done]

        created_at: dict[tuple[str, str], float] = {}

        def create(kind: str, name: str) -> None:
            if kind == "VoiceModel":
                plural, body = "voicemodels", voicemodel_body(name)
            else:
                plural, body = "trainingruns", run_body(name, suspend=args.suspend)
            t0 = time.perf_counter()
            custom.create_namespaced_custom_object(api.API_GROUP, api.API_VERSION, ns, plural, body)
            created_at[kind, name] = t0

        # each burst: its share of both kinds, interleaved (a GitOps sync applies a folder of both)
        plan: list[list[tuple[str, str]]] = [[] for _ in range(bursts)]
        for i in range(n_vm):
            plan[i * bursts // n_vm].append(("VoiceModel", f"vm-{i}"))
        for i in range(n_tr):
            plan[i * bursts // n_tr].append(("TrainingRun", f"tr-{i}"))
        for b in plan:
            b.sort(key=lambda kn: int(kn[1].split("-")[1]) * (2 if kn[0] == "TrainingRun" else 1))

        counts_start, waited_start = counter.counts(), counter.seconds()
        cpu_start = cpu_seconds(pid)
        others = _other_pids(cluster, counter)
        others_start = {name: _cpu_or_zero(p) for name, p in others.items()}
        total = n_vm + n_tr
        progress(f"scale: creating {n_vm} VoiceModels and {n_tr} TrainingRuns in {bursts} bursts")
        with rss, ThreadPoolExecutor(args.threads) as pool:
            t_first = time.perf_counter()
            for i, burst in enumerate(plan):
                list(pool.map(lambda kn: create(*kn), burst))
                progress(f"scale: burst {i + 1}/{bursts} created ({len(burst)} objects)")
                if i + 1 < bursts:
                    time.sleep(args.burst_gap)
            t_created = time.perf_counter()

            def all_reconciled() -> bool | Pending:
                done = len(vm_done.times) + len(tr_done.times)
                return done >= total or Pending(f"{done}/{total} reconciled")

            def report_progress(last: Any, _elapsed: float) -> None:
                progress(
                    f"scale: {last} after {time.perf_counter() - t_first:.0f} s "
                    f"(RSS {rss.sample():.0f} MiB, CPU {cpu_seconds(pid) - cpu_start:.0f} s)"
                )

            # past the deadline, the figures say how many were reconciled within it
            with contextlib.suppress(WaitTimeout):
                wait_for(
                    all_reconciled,
                    deadline_s,
                    "every object reconciled",
                    0.2,
                    progress=report_progress,
                    progress_every=5,
                )
            all_times = list(vm_done.times.values()) + list(tr_done.times.values())
            done = len(all_times)
            reconciled_s = (max(all_times) - t_first) if done == total else time.perf_counter() - t_first
            cpu_burst = cpu_seconds(pid) - cpu_start
            others_burst = {
                name: round(max(0.0, _cpu_or_zero(p) - others_start[name]), 1) for name, p in others.items()
            }
            counts_burst = counter.counts()
            waited_burst = {k: round(v - waited_start.get(k, 0.0), 2) for k, v in counter.seconds().items()}
            if null:
                _null_rows(report, total, done, reconciled_s, t_created - t_first, others_burst, cpu_burst)
                report.raw.update(
                    {"namespace": ns, "reconciledSeconds": reconciled_s, "reconciledCount": done}
                )
                report.raw["apiRequests"] = {"bursts": diff(counts_burst, counts_start)}
                report.raw["cpuSeconds"] = {"bursts": cpu_burst, "othersDuringBursts": others_burst}
                return
            progress(
                f"scale: {done}/{total} reconciled in {reconciled_s:.1f} s; settling before the idle window"
            )
            # idle means nothing changes: first the controller manager must have caught up with the
            # Deployments (on 2 cores it trails the operator by minutes), then the operator go quiet
            settled_s = _deployments_settled(apps, ns, timeout=deadline_s)
            settled_s += _settle(counter, quiet=10.0, timeout=60.0)
        peak = rss.peak

        # the idle window: nothing changes, so the operator should neither write nor burn CPU
        progress(f"scale: counting the operator's API requests for {idle_s:.0f} s of idle")
        before, cpu_idle_0 = counter.counts(), cpu_seconds(pid)
        metrics_before = _reconciles(operator)
        idle_rss: list[float] = []
        t_idle = time.monotonic()
        while (elapsed := time.monotonic() - t_idle) < idle_s:
            idle_rss.append(rss.sample())
            time.sleep(min(1.0, max(0.0, idle_s - elapsed)))
        idle_elapsed = time.monotonic() - t_idle
        idle_counts = diff(counter.counts(), before)
        cpu_idle = cpu_seconds(pid) - cpu_idle_0
        # where the CPU went and where the steady memory is, asked for before the operator shuts down
        # (a busy one may not exit within its grace period, and then writes nothing at exit)
        for path, sig, key in ((memory, signal.SIGUSR1, "memory"), (profile, signal.SIGUSR2, "profile")):
            if path is not None:
                report.raw[key] = _ask_for_file(pid, sig, path)
        reconciles_idle = {k: v - metrics_before.get(k, 0) for k, v in _reconciles(operator).items()}
        per_min = 60.0 / idle_elapsed
        idle_total = sum(idle_counts.values()) * per_min
        idle_writes = sum(n for k, n in idle_counts.items() if is_write(k)) * per_min

        # --- figures ---------------------------------------------------------------------------
        row = report.add(
            Row(
                f"all {total} objects reconciled, from the first create",
                reconciled_s,
                "s",
                goal=f"<= {RECONCILE_GOAL_S:g} s",
                note=f"{done} of {total} reconciled"
                + (f" within the {deadline_s:g} s deadline" if done < total else "")
                + f"; creating them took {t_created - t_first:.1f} s",
            )
        )
        row.met = done == total and reconciled_s <= RECONCILE_GOAL_S
        vm_lat = [
            deployments.times[deployment_name(n)] - t
            for (k, n), t in created_at.items()
            if k == "VoiceModel" and deployment_name(n) in deployments.times
        ]
        tr_lat = [
            jobs.times[job_name(n)] - t
            for (k, n), t in created_at.items()
            if k == "TrainingRun" and job_name(n) in jobs.times
        ]
        # suspended runs get no Job: then there is no TrainingRun latency to report
        for child, lat, want in (("Deployment", vm_lat, n_vm), ("Job", tr_lat, 0 if args.suspend else n_tr)):
            if not want:
                continue
            missing = f"; {want - len(lat)} of {want} never got one" if len(lat) < want else ""
            for q in (50, 99):
                report.add(
                    Row(
                        f"apply -> {child} created, p{q}",
                        percentile(lat, q) * 1000,
                        "ms",
                        note=f"{len(lat)} samples{missing}" if q == 50 else "",
                    )
                )
        rss_steady = median(idle_rss)
        rss_row = report.add(
            Row(
                "operator RSS, peak during the bursts",
                peak,
                "MiB",
                goal="<= 300 MB (286 MiB)",
                note=f"at start {rss_start:.0f} MiB",
            )
        )
        rss_row.met = peak <= RSS_GOAL_MIB
        steady_row = report.add(
            Row("operator RSS, steady (idle, median)", rss_steady, "MiB", goal="<= 300 MB")
        )
        steady_row.met = rss_steady <= RSS_GOAL_MIB
        report.add(
            Row(
                "operator CPU, bursts until all reconciled",
                cpu_burst,
                "s",
                note=f"{cpu_burst / max(reconciled_s, 1e-9):.2f} cores on average",
            )
        )
        busiest = sorted(others_burst.items(), key=lambda kv: -kv[1])
        report.add(
            Row(
                "CPU of the rest, bursts until all reconciled",
                sum(others_burst.values()),
                "s",
                note=", ".join(f"{name} {sec:.0f} s" for name, sec in busiest),
            )
        )
        report.add(Row("operator CPU while idle", 100 * cpu_idle / idle_elapsed, "% of a core"))
        burst_requests = diff(counts_burst, counts_start)
        burst_writes = sum(n for k, n in burst_requests.items() if is_write(k))
        report.add(
            Row(
                "operator API requests per object, bursts",
                sum(burst_requests.values()) / total,
                "requests",
                note=f"writes {burst_writes / total:.1f} per object",
            )
        )
        report.add(
            Row(
                "operator API requests while idle",
                idle_total,
                "per minute",
                note=f"counted for {idle_elapsed:.0f} s, after {settled_s:.0f} s for the cluster to settle",
            )
        )
        report.add(Row("operator API requests per object while idle", idle_total / total, "per minute"))
        writes = report.add(
            Row(
                "operator API writes while idle",
                idle_writes,
                "per minute",
                goal="0 (no hot loops)",
                note=", ".join(f"{k}: {n * per_min:.0f}/min" for k, n in idle_counts.items() if is_write(k)),
            )
        )
        writes.met = idle_writes == 0
        report.raw |= {
            "namespace": ns,
            "reconciledSeconds": reconciled_s,
            "reconciledCount": done,
            "creatingSeconds": t_created - t_first,
            "settleSeconds": settled_s,
            "latencySeconds": {"voiceModelToDeployment": sorted(vm_lat), "trainingRunToJob": sorted(tr_lat)},
            "reconciledAfterFirstCreate": sorted(t - t_first for t in all_times),
            "apiRequests": {"bursts": burst_requests, "idle": idle_counts, "idleSeconds": idle_elapsed},
            # where the operator's reconciles waited: seconds summed per kind of request, bursts
            "apiSecondsWaited": {"bursts": {k: v for k, v in waited_burst.items() if v > 0}},
            "reconcilesWhileIdle": reconciles_idle,
            "rss": {"startMiB": rss_start, "peakMiB": peak, "idleMiB": idle_rss},
            "cpuSeconds": {"bursts": cpu_burst, "idle": cpu_idle, "othersDuringBursts": others_burst},
        }
    finally:
        for s in stoppable:
            s.stop()
        operator.stop()
        counter.stop()
        _delete_namespace(core, custom, ns, timeout=deadline_s)
        for vol in ("data", "ckpt", "models"):
            cluster.kubectl("delete", "pv", f"{ns}-{vol}", "--ignore-not-found", "--wait=false", check=False)
        shutil.rmtree(cluster.state / "volumes" / ns, ignore_errors=True)
        apic.close()


def _ask_for_file(pid: int, sig: int, path: Path, timeout: float = 120) -> Any:
    """Signal the profiled operator to write ``path`` (JSON) and read it; None if it does not in time."""
    path.unlink(missing_ok=True)
    os.kill(pid, sig)
    try:
        # not there yet, or half written: OSError, ValueError
        read = wait_for(
            lambda: (json.loads(path.read_text()),), timeout, path.name, 0.5, retry_on=(OSError, ValueError)
        )
    except WaitTimeout:
        progress(f"scale: the operator wrote no {path.name} within {timeout:.0f} s")
        return None
    return read[0]


def _deployments_settled(apps: Any, ns: str, timeout: float) -> float:
    """Wait until every Deployment in ``ns`` has been rolled out by the controller manager (all
    replicas updated, its generation observed): the last changes the operator is told about."""
    started = time.monotonic()

    def rolled_out() -> bool | Pending:
        items = apps.list_namespaced_deployment(ns, _request_timeout=60).items
        behind = [
            d.metadata.name
            for d in items
            if (d.status.observed_generation or 0) < d.metadata.generation
            or (d.status.updated_replicas or 0) < (d.spec.replicas or 0)
        ]
        return not behind or Pending(f"{len(behind)} Deployments not rolled out")

    def report(last: Any, _elapsed: float) -> None:
        progress(f"scale: waiting for the controller manager: {last}")

    with contextlib.suppress(WaitTimeout):  # past the timeout, the idle window shows a cluster still busy
        wait_for(rolled_out, timeout, "the Deployments rolled out", 2, retry_on=(), progress=report)
    return time.monotonic() - started


def _settle(counter: ApiCounter, quiet: float, timeout: float) -> float:
    """Wait until the operator has written nothing for ``quiet`` seconds (the children's last status
    updates die down), at most ``timeout``; returns how long it took. An operator that never stops
    writing is what the idle window then shows."""
    started = time.monotonic()

    def writes() -> int:
        return sum(n for k, n in counter.counts().items() if is_write(k))

    last = {"writes": writes(), "changed": started}

    def quiet_for_long_enough() -> bool:
        now = writes()
        if now != last["writes"]:
            last.update(writes=now, changed=time.monotonic())
        return time.monotonic() - last["changed"] >= quiet

    with contextlib.suppress(WaitTimeout):
        wait_for(quiet_for_long_enough, timeout, f"{quiet:g} s without a write", 0.5, retry_on=())
    return time.monotonic() - started


def _other_pids(cluster: Any, counter: ApiCounter) -> dict[str, int]:
    """The control plane's processes and the counting proxy: what else the bursts cost the machine."""
    out = {name: proc.pid for name, proc in cluster.processes().items() if proc is not None}
    if counter.proc is not None:
        out["api-counter proxy"] = counter.proc.pid
    return out


def _cpu_or_zero(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:  # it ended: its CPU is not ours to count any more
        return 0.0


def _commit() -> str:
    """The commit measured, ``+dirty`` when the working tree differs from it (the operator runs from it)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "operator"], cwd=REPO, capture_output=True, text=True
    )
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _reconciles(operator: Any) -> dict[str, float]:
    """tts_operator_reconciles_total by kind, from the operator's /metrics."""
    out: dict[str, float] = {}
    for line in operator.metrics().splitlines():
        if line.startswith("tts_operator_reconciles_total{"):
            kind = line.split('kind="', 1)[1].split('"', 1)[0]
            out[kind] = float(line.rsplit(" ", 1)[1])
    return out


def _delete_namespace(core: Any, custom: Any, ns: str, timeout: float) -> None:
    """Delete the namespace and wait for it to go (thousands of children take a while), with progress."""
    from kubernetes.client.rest import ApiException

    progress(f"scale: deleting namespace {ns}")
    started = time.monotonic()
    try:
        core.delete_namespace(ns, propagation_policy="Background")
    except ApiException as e:
        if e.status != 404:
            raise

    def gone() -> bool:
        try:
            core.read_namespace(ns)
        except ApiException as e:
            if e.status == 404:
                return True
            raise
        return False

    def report(_last: Any, _elapsed: float) -> None:
        pods = len(core.list_namespaced_pod(ns, limit=500, _request_timeout=30).items)
        progress(f"scale: namespace {ns} still terminating ({pods}{'+' if pods >= 500 else ''} pods left)")

    try:
        wait_for(gone, timeout, f"namespace {ns} gone", 1, retry_on=(), progress=report)
    except WaitTimeout:
        progress(f"scale: namespace {ns} still there after {timeout:.0f} s: it goes on being deleted")
        return
    progress(f"scale: namespace {ns} gone after {time.monotonic() - started:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--voicemodels", type=int, help="VoiceModels to create (default 1000; quick 100)")
    parser.add_argument("--trainingruns", type=int, help="TrainingRuns to create (default 500; quick 50)")
    parser.add_argument("--bursts", type=int, default=10, help="create them in this many bursts (default 10)")
    parser.add_argument("--burst-gap", type=float, default=1.0, help="seconds between bursts (default 1)")
    parser.add_argument(
        "--threads", type=int, default=8, help="concurrent creates within a burst (default 8)"
    )
    parser.add_argument("--suspend", action="store_true", help="create the TrainingRuns suspended (no Jobs)")
    parser.add_argument(
        "--controller",
        choices=("operator", "null"),
        default="operator",
        help="operator: tts-operator run (default); null: bench.null_controller, the least any "
        "controller does (one child and one status patch an object): the baseline the cluster allows",
    )
    parser.add_argument("--idle-seconds", type=float, help="the idle window counted (default 90; quick 40)")
    parser.add_argument(
        "--deadline", type=float, help="give up waiting after this many seconds (default 900)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        default=os.environ.get("BENCH_SCALE_PROFILE", "") not in ("", "0"),
        help="profile the operator (bench.sampling_profiler) into raw.profile (BENCH_SCALE_PROFILE=1)",
    )
    parser.add_argument(
        "--profile-memory",
        action="store_true",
        help="--profile, and the operator's live objects by type once idle into raw.memory",
    )
    args = parser.parse_args(argv)
    for flag in ("voicemodels", "trainingruns", "bursts", "threads"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1, not {getattr(args, flag)}")
    if args.burst_gap < 0 or (args.idle_seconds is not None and args.idle_seconds <= 0):
        parser.error("--burst-gap must not be negative and --idle-seconds must be positive")
    report = (
        Report("scale-baseline", "issue 8: scale baseline: the null controller (local dev cluster)")
        if args.controller == "null"
        else Report("scale", "issue 8: operator at scale (local dev cluster)")
    )
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        try:
            run(report, Path(tmp), args)
        finally:
            log = Path(tmp) / "operator.log"
            if log.exists():  # kept for a look at what the operator said (the scratch folder goes)
                shutil.copy(log, Path(tempfile.gettempdir()) / "bench-scale-operator.log")
    path = report.write()
    report.print_table()
    print(f"   -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
