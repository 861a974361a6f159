"""Shared pieces of the benchmarks: statistics, a peak-RSS sampler, result files, the printed table."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


def quick() -> bool:
    """``BENCH_QUICK=1``: fewer repetitions, for a smoke run of the whole suite."""
    return os.environ.get("BENCH_QUICK", "") not in ("", "0", "false", "no")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation; p99 of few samples is near the max."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def machine() -> dict[str, Any]:
    """What the figures were measured on: they mean little without it."""
    info: dict[str, Any] = {
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # the operator benchmark runs without torch
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class PeakRss:
    """Samples a process's resident set size on a thread; ``peak`` is the largest seen, in MiB.

    ``ru_maxrss`` would do for one process and one phase; this measures a window (one run of a
    subject or a baseline in a process that runs both) or another process (the operator).
    """

    def __init__(self, pid: int | None = None, interval: float = 0.02) -> None:
        import psutil

        self._proc = psutil.Process(pid or os.getpid())
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peak = 0.0

    def sample(self) -> float:
        try:
            rss = self._proc.memory_info().rss / 2**20
        except Exception:  # the process ended: keep the peak we saw
            return self.peak
        self.peak = max(self.peak, rss)
        return rss

    def __enter__(self) -> PeakRss:
        def loop() -> None:
            while not self._stop.wait(self._interval):
                self.sample()

        self.sample()
        self._thread = threading.Thread(target=loop, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()


@dataclass
class Row:
    """One line of the printed table: a measured figure, optionally a ratio and its goal."""

    name: str
    value: float
    unit: str
    baseline: float | None = None
    goal: str = ""
    #: did the ratio meet the goal (None: no goal, or not measured)
    met: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return ratio(self.value, self.baseline) if self.baseline is not None else None


@dataclass
class Report:
    """One benchmark's results: rows for the table, raw samples and context for the JSON file."""

    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None
    started: float = field(default_factory=time.time)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def write(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.name}.json"
        body = {
            "benchmark": self.name,
            "title": self.title,
            "quick": quick(),
            "machine": machine(),
            "startedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "seconds": round(time.time() - self.started, 1),
            "skipped": self.skipped,
            "config": self.config,
            "rows": [
                {
                    "name": r.name,
                    "value": _round(r.value),
                    "unit": r.unit,
                    "baseline": _round(r.baseline),
                    "ratio": _round(r.ratio),
                    "goal": r.goal or None,
                    "met": r.met,
                    "note": r.note or None,
                }
                for r in self.rows
            ],
            "raw": self.raw,
        }
        path.write_text(json.dumps(body, indent=2) + "\n")
        return path

    def print_table(self, file: Any = None) -> None:
        out = file or sys.stdout
        print(f"\n== {self.title} ==", file=out)
        if self.skipped:
            print(f"   skipped: {self.skipped}", file=out)
            return
        print(f"   {'measure':<48} {'value':>12} {'baseline':>12} {'ratio':>7}  goal", file=out)
        for r in self.rows:
            verdict = "" if r.met is None else (" met" if r.met else " NOT met")
            base = "" if r.baseline is None else f"{_fmt(r.baseline)}"
            rat = "" if r.ratio is None else f"{r.ratio:.2f}x"
            line = (
                f"   {r.name:<48} {_fmt(r.value) + ' ' + r.unit:>12} {base:>12} {rat:>7}  {r.goal}{verdict}"
            )
            print(line.rstrip(), file=out)
            if r.note:
                print(f"      {r.note}", file=out)


def _round(x: float | None) -> float | None:
    if x is None:
        return None
    return round(x, 4) if abs(x) < 100 else round(x, 1)


def _fmt(x: float) -> str:
    if x != x:  # nan
        return "n/a"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def progress(message: str) -> None:
    """A progress line on stderr (the table goes to stdout)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def bench_main(
    module: str,
    name: str,
    title: str,
    run: Callable[[Report, Path], None],
    doc: str | None,
    argv: list[str] | None,
) -> int:
    """The command line of one benchmark module: run it in a scratch folder, write and print its report."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(prog=f"python -m bench.{module}", description=doc)
    parser.parse_args(argv)
    report = Report(name, title)
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        run(report, Path(tmp))
    path = report.write()
    report.print_table()
    print(f"   -> {path}")
    return 0


def dev_cluster_api(report: Report, pool_size: int | None = None) -> tuple[Any, str, Any] | None:
    """(cluster, kubeconfig path, kubernetes ApiClient) for the dev cluster (``.cluster/`` of this
    checkout, or ``TTS_CLUSTER_DIR``; ``$KUBECONFIG`` wins), with the project's CRDs applied. None,
    with ``report.skipped`` saying why, when that cluster is not running."""
    from kubernetes import client, config

    from tts_devcluster.cluster import DevCluster

    cluster = DevCluster()
    kubeconfig = os.environ.get("KUBECONFIG") or str(cluster.kubeconfig)
    if not cluster.healthy():
        report.skipped = f"the dev cluster in {cluster.state} is not running (make cluster-up)"
        return None
    cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=tts-operator-bench",
        "-f",
        str(REPO / "crds"),
    )
    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    if pool_size:
        cfg.connection_pool_maxsize = pool_size
    return cluster, kubeconfig, client.ApiClient(cfg)
