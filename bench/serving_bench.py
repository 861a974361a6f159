"""Issue 5: the serving runtime against the model in-process and against coqui-tts's own server.

Same tiny random VITS (``tts-runtime demo-model``) everywhere, CPU, two threads per process:

- overhead at concurrency 1: one in-process ``LoadedModel.synthesize`` call, then the same text
  through ``POST /v1/audio/speech`` (WAV, not streamed) on ``tts-runtime serve``, alternated;
- throughput and p50/p99 latency at concurrency 1, 4 and 16: ours and ``TTS/server/server.py``
  alternated per level (the order flips every round);
- time to first audio: a streamed request's first audio bytes vs the same request not streamed.

VITS, not XTTS: coqui's server serves a VITS checkpoint as is, and a random XTTS never emits its stop
token, so its cost does not follow the text. The GPU section (``gpu_bench``) covers XTTS.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from .common import PeakRss, Report, Row, bench_main, median, percentile, progress, quick, ratio
from .servers import ServerProcess, coqui, ours

SHORT = "Hello there."
STREAM_TEXT = "The first sentence is short. A second one follows it. The third ends it."
OVERHEAD_GOAL = 1.10
THROUGHPUT_GOAL = 1.5


def speech(client: httpx.Client, text: str, stream: bool = False) -> float:
    """One request; its latency in seconds. Fails loudly: a benchmark of errors measures nothing."""
    started = time.perf_counter()
    body = {"model": "tts-1", "input": text, "voice": "default", "response_format": "wav", "stream": stream}
    r = client.post("/v1/audio/speech", json=body)
    elapsed = time.perf_counter() - started
    if r.status_code != 200 or len(r.content) <= 44:
        raise RuntimeError(f"{client.base_url}: HTTP {r.status_code}: {r.text[:300]}")
    return elapsed


def wav_seconds(data: bytes) -> float:
    """Length of a WAV response: a random tiny model speaks for very different lengths per call, so the
    overhead is compared per second of audio (real-time factor), not per request."""
    import io

    import soundfile as sf

    info = sf.info(io.BytesIO(data))
    return info.frames / info.samplerate


def timed_speech(client: httpx.Client, text: str) -> tuple[float, float]:
    """(seconds taken, seconds of audio) for one whole (non-streamed) WAV request."""
    started = time.perf_counter()
    body = {"model": "tts-1", "input": text, "voice": "default", "response_format": "wav", "stream": False}
    r = client.post("/v1/audio/speech", json=body)
    elapsed = time.perf_counter() - started
    if r.status_code != 200:
        raise RuntimeError(f"{client.base_url}: HTTP {r.status_code}: {r.text[:300]}")
    return elapsed, wav_seconds(r.content)


def coqui_speech(client: httpx.Client, text: str, stream: bool = False) -> float:
    # coqui's server has the same OpenAI route (0.28); its "voice" is a speaker name or a path, so
    # send none it could resolve
    started = time.perf_counter()
    r = client.post(
        "/v1/audio/speech", json={"model": "tts-1", "input": text, "voice": "", "response_format": "wav"}
    )
    elapsed = time.perf_counter() - started
    if r.status_code != 200 or len(r.content) <= 44:
        raise RuntimeError(f"coqui server: HTTP {r.status_code}: {r.text[:300]}")
    return elapsed


def load_level(server: ServerProcess, concurrency: int, requests: int, coqui_api: bool) -> dict[str, Any]:
    """``requests`` requests from ``concurrency`` clients at once: throughput and latencies."""
    call = coqui_speech if coqui_api else speech
    latencies: list[float] = []
    lock = threading.Lock()
    per_client = [
        requests // concurrency + (1 if i < requests % concurrency else 0) for i in range(concurrency)
    ]

    def client_loop(n: int) -> None:
        with httpx.Client(base_url=server.url, timeout=900) as c:
            for _ in range(n):
                t = call(c, SHORT)
                with lock:
                    latencies.append(t)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(client_loop, per_client))
    wall = time.perf_counter() - started
    return {"wall": wall, "throughput": requests / wall, "latencies": latencies}


def first_audio(client: httpx.Client, text: str) -> float:
    """Seconds until the first bytes of a streamed raw-PCM response (no header: the first audio)."""
    started = time.perf_counter()
    body = {"model": "tts-1", "input": text, "voice": "default", "response_format": "pcm", "stream": True}
    with client.stream("POST", "/v1/audio/speech", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"stream: HTTP {r.status_code}")
        elapsed = None
        for chunk in r.iter_bytes():  # read to the end: the next request must not queue behind this one
            if chunk and elapsed is None:
                elapsed = time.perf_counter() - started
    if elapsed is not None:
        return elapsed
    raise RuntimeError("the stream ended without audio")


def run(report: Report, workdir: Path) -> None:
    from tts_runtime.demo_model import make_demo_model
    from tts_runtime.models import load_model

    q = quick()
    pairs = 4 if q else 12
    levels = (1, 4, 16)
    per_level = {1: 3, 4: 8, 16: 16} if q else {1: 6, 4: 16, 16: 32}
    rounds = 1 if q else 2
    ttfa_pairs = 2 if q else 6
    report.config = {
        "model": "tiny random VITS (tts-runtime demo-model --engine vits)",
        "device": "cpu",
        "threads": "each process its default (our server: cores // (maxConcurrency + 1))",
        "text": SHORT,
        "streamText": STREAM_TEXT,
        "overheadPairs": pairs,
        "requestsPerLevel": per_level,
        "rounds": rounds,
        "oursMaxConcurrency": 1,
    }

    progress("serving: making the tiny VITS model")
    model_dir = make_demo_model(workdir / "models" / "bench-vits", "vits", seed=0)
    progress("serving: starting tts-runtime serve and coqui's server, loading the model in-process")
    our_server = ours(model_dir, workdir).start()
    their_server = coqui(model_dir, workdir)
    try:
        their_server.start()
        with PeakRss() as rss_inproc:
            model = load_model(model_dir, "cpu")
            model.synthesize("Warming up.")
        with httpx.Client(base_url=our_server.url, timeout=900) as c:
            speech(c, SHORT)  # warm the HTTP path (the server warmed the model itself)
        with httpx.Client(base_url=their_server.url, timeout=900) as c:
            coqui_speech(c, SHORT)  # coqui does not warm up at start

        # --- overhead at concurrency 1 ---------------------------------------------------------
        progress(f"serving: overhead, {pairs} alternated pairs")
        # real-time factors (compute seconds per audio second): the random model's output length varies
        inproc: list[float] = []
        served: list[float] = []
        with httpx.Client(base_url=our_server.url, timeout=900) as c:
            for i in range(pairs):
                order = ("in", "http") if i % 2 == 0 else ("http", "in")
                for side in order:
                    if side == "in":
                        t = time.perf_counter()
                        wav, rate = model.synthesize(SHORT)
                        inproc.append((time.perf_counter() - t) / (len(wav) / rate))
                    else:
                        took, audio = timed_speech(c, SHORT)
                        served.append(took / audio)
        del model
        r = report.add(
            Row(
                "real-time factor at concurrency 1 (median; compute s per audio s)",
                median(served),
                "RTF",
                baseline=median(inproc),
                goal=f"<= {OVERHEAD_GOAL}x in-process",
            )
        )
        r.met = (r.ratio or 99) <= OVERHEAD_GOAL
        report.raw["overhead"] = {"inProcessRtf": inproc, "servedRtf": served}

        # --- throughput against coqui's server ---------------------------------------------------
        levels_raw: dict[str, Any] = {}
        for level in levels:
            ours_runs: list[dict[str, Any]] = []
            theirs_runs: list[dict[str, Any]] = []
            for rnd in range(rounds):
                progress(
                    f"serving: concurrency {level}, round {rnd + 1}/{rounds}, {per_level[level]} requests"
                )
                sides = [(our_server, False, ours_runs), (their_server, True, theirs_runs)]
                for server, is_coqui, sink in sides if rnd % 2 == 0 else reversed(sides):
                    sink.append(load_level(server, level, per_level[level], is_coqui))
            ours_tp = median([x["throughput"] for x in ours_runs])
            theirs_tp = median([x["throughput"] for x in theirs_runs])
            ours_lat = [t for x in ours_runs for t in x["latencies"]]
            theirs_lat = [t for x in theirs_runs for t in x["latencies"]]
            row = report.add(
                Row(
                    f"throughput at concurrency {level}",
                    ours_tp,
                    "req/s",
                    baseline=theirs_tp,
                    goal=f">= {THROUGHPUT_GOAL}x coqui server" if level == 4 else "vs coqui server",
                )
            )
            if level == 4:
                row.met = (row.ratio or 0) >= THROUGHPUT_GOAL
            report.add(
                Row(
                    f"  p50 latency at concurrency {level}",
                    percentile(ours_lat, 50),
                    "s",
                    baseline=percentile(theirs_lat, 50),
                    goal="vs coqui server",
                )
            )
            report.add(
                Row(
                    f"  p99 latency at concurrency {level}",
                    percentile(ours_lat, 99),
                    "s",
                    baseline=percentile(theirs_lat, 99),
                    goal="vs coqui server",
                )
            )
            levels_raw[str(level)] = {"ours": ours_runs, "coqui": theirs_runs}
        report.raw["levels"] = levels_raw

        # --- time to first audio, streamed vs whole --------------------------------------------
        progress(f"serving: time to first audio, {ttfa_pairs} alternated pairs")
        streamed: list[float] = []
        whole: list[float] = []
        with httpx.Client(base_url=our_server.url, timeout=900) as c:
            for i in range(ttfa_pairs):
                if i % 2 == 0:
                    streamed.append(first_audio(c, STREAM_TEXT))
                    whole.append(speech(c, STREAM_TEXT, stream=False))
                else:
                    whole.append(speech(c, STREAM_TEXT, stream=False))
                    streamed.append(first_audio(c, STREAM_TEXT))
        report.add(
            Row(
                "time to first audio, streamed (3 sentences)",
                median(streamed),
                "s",
                baseline=median(whole),
                goal="vs the whole response",
            )
        )
        report.raw["firstAudio"] = {"streamed": streamed, "whole": whole}
        report.add(
            Row(
                "peak RSS, in-process model",
                rss_inproc.peak,
                "MiB",
                note="the bench process with torch, coqui-tts and the tiny VITS loaded",
            )
        )
    finally:
        our_server.stop()
        their_server.stop()
    ratio_c1 = ratio(median(served), median(inproc))
    if ratio_c1 > OVERHEAD_GOAL:
        report.rows[0].note = (
            "includes HTTP, JSON, the worker-thread hand-off and WAV encoding; on a loaded 2-core "
            "machine the server process also competes with the client for the same cores"
        )


def main(argv: list[str] | None = None) -> int:
    return bench_main("serving_bench", "serving", "issue 5: serving (tiny VITS, CPU)", run, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
