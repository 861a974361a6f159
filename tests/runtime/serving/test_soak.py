"""Soak: `tts-runtime serve` on the tiny VITS under 8 concurrent clients for SOAK_SECONDS (CI: 60 s,
about 2,000 requests; `make soak`: 1800 s). It asserts what a soak can prove, not speed: zero errors,
and memory that stops growing once warm.

The memory bound: the server process' RSS is sampled every second. The first half of the soak is the
warm-up (allocator arenas, torch caches and per-format encoders settle); the baseline is the median RSS
around the midpoint, and no sample in the second half may exceed it by more than 15 %. A leak of a
few kB per request (a latents cache without a bound, a buffer kept per stream) shows up as steady
growth there; noise of a few MB does not trip it.

Figures go to stdout, and as JSON to $SOAK_REPORT when set (for docs/proof.md).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from support.model_versions import add_version
from support.processes import ChildProcess, free_port, http_ok

pytestmark = pytest.mark.slow

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "60"))
CONCURRENCY = 8
MAX_GROWTH = 0.15
TEXTS = (
    "Hello there.",
    "The quick brown fox jumps over the lazy dog.",
    "A soak finds slow leaks.",
    "Numbers like 42 are spoken too.",
)
#: (response_format, stream, the bytes every answer of that format starts with)
REQUESTS = (("wav", False, b"RIFF"), ("mp3", False, b""), ("pcm", False, b""), ("wav", True, b"RIFF"))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Tally:
    ok: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, error: str | None) -> None:
        with self.lock:
            if error is None:
                self.ok += 1
            elif len(self.errors) < 50:
                self.errors.append(error)
            else:
                self.errors.append("...")


def client_loop(url: str, worker: int, stop: threading.Event, tally: Tally) -> None:
    """One client: requests back to back, cycling texts, formats and streaming, checking each answer."""
    i = worker
    with httpx.Client(base_url=url, timeout=960) as http:
        while not stop.is_set():
            fmt, stream, magic = REQUESTS[i % len(REQUESTS)]
            body: dict[str, object] = {
                "model": "tts-1",
                "voice": "default",
                "input": TEXTS[i % len(TEXTS)],
                "response_format": fmt,
            }
            if stream:
                body["stream"] = True
            i += 1
            try:
                r = http.post("/v1/audio/speech", json=body)
            except httpx.HTTPError as e:
                tally.add(f"{fmt}: {type(e).__name__}: {e}")
                continue
            if r.status_code != 200:
                tally.add(f"{fmt}: HTTP {r.status_code}: {r.text[:200]}")
            elif len(r.content) < 100 or not r.content.startswith(magic):
                tally.add(f"{fmt}: a {len(r.content)}-byte answer that is not {fmt} audio")
            else:
                tally.add(None)


def test_soak_no_errors_and_bounded_memory(vits_source: Path, tmp_path: Path) -> None:
    add_version(vits_source, tmp_path / "models", "v1")
    port = free_port()
    # max concurrency 2 + queue 16 >= 8 clients: every request is admitted, so any error is a real one;
    # the request deadline is long because a soak proves stability, not speed (CI machines are shared)
    argv = [sys.executable, "-m", "tts_runtime.cli", "--log-level", "WARNING", "serve",
            "--model-dir", str(tmp_path / "models" / "v1"), "--device-policy", "CPU", "--host", "127.0.0.1",
            "--port", str(port), "--max-concurrency", "2", "--max-queue", "16",
            "--request-timeout", "900"]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    server = ChildProcess(
        argv, tmp_path / "server.log", name="the server", ready=http_ok(f"{url}/readyz"), stop_grace=60
    )
    stop = threading.Event()
    tally = Tally()
    samples: list[tuple[float, int]] = []
    server.start(timeout=180)
    try:
        workers = [
            threading.Thread(target=client_loop, args=(url, w, stop, tally), daemon=True)
            for w in range(CONCURRENCY)
        ]
        t0 = time.monotonic()
        for w in workers:
            w.start()
        while (elapsed := time.monotonic() - t0) < SOAK_SECONDS:
            assert server.proc is not None and server.proc.poll() is None, (
                f"the server died:\n{server.log()[-3000:]}"
            )
            samples.append((elapsed, rss_bytes(server.pid)))
            stop.wait(1.0)
        stop.set()
        for w in workers:
            w.join(timeout=960)
        duration = time.monotonic() - t0
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    finally:
        stop.set()
        server.stop()

    mid = SOAK_SECONDS / 2
    around_mid = [r for t, r in samples if abs(t - mid) <= max(5.0, SOAK_SECONDS * 0.05)]
    second_half = [r for t, r in samples if t >= mid]
    assert around_mid and second_half, f"too few RSS samples: {len(samples)}"
    baseline = statistics.median(around_mid)
    peak = max(second_half)
    growth = peak / baseline - 1
    figures = {
        "seconds": round(duration, 1),
        "concurrency": CONCURRENCY,
        "requests_ok": tally.ok,
        "errors": len(tally.errors),
        "requests_per_second": round(tally.ok / duration, 2),
        "rss_start_mb": round(samples[0][1] / 2**20, 1),
        "rss_warm_mb": round(baseline / 2**20, 1),
        "rss_peak_second_half_mb": round(peak / 2**20, 1),
        "rss_end_mb": round(samples[-1][1] / 2**20, 1),
        "rss_growth_second_half_pct": round(100 * growth, 2),
    }
    # the RSS curve, about 60 points, for the report (not printed: it is long)
    step = max(1, len(samples) // 60)
    curve = [[round(t), round(r / 2**20, 1)] for t, r in samples[::step]]
    print(f"soak figures: {json.dumps(figures)}")
    if report := os.environ.get("SOAK_REPORT"):
        Path(report).write_text(json.dumps({**figures, "rss_curve_s_mb": curve}, indent=2) + "\n")
    assert tally.errors == [], f"{len(tally.errors)} errors, first ones: {tally.errors[:5]}"
    assert tally.ok >= CONCURRENCY, f"only {tally.ok} requests completed in {duration:.0f} s"
    assert growth < MAX_GROWTH, f"RSS grew {100 * growth:.1f} % in the second half: {figures}"
