"""Where a Python process spends its CPU, every thread included: ``python -m bench.sampling_profiler
--out PROFILE.json -m MODULE ARGS...`` runs ``MODULE`` as ``__main__`` and writes the profile when it exits.

cProfile sees only the thread that started it, and the operator does its work in kopf's handler
threads and the resync thread; py-spy is not installed. So a thread samples every thread's Python
stack every ``--interval`` seconds and charges it with the CPU time that thread used since the last
sample (``/proc/self/task/TID/stat``): waiting threads cost nothing. Ticks are the kernel's (usually
10 ms) and a thread is mostly caught where it waits, so CPU that a thread burnt just before blocking
in a socket read is charged to that read: read ``self`` for the big buckets and ``cumulative`` for
which operator code they sit under. ``wallOperator`` counts plain samples per operator function
(every thread, waiting included): where the handlers spend their time, mostly on API round trips.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import runpy
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType

TICK = os.sysconf("SC_CLK_TCK")


def _thread_ticks(tid: int) -> int:
    try:
        fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)


def _where(frame: FrameType) -> str:
    code = frame.f_code
    parts = Path(code.co_filename).parts
    # site-packages/kopf/_core/x.py -> kopf/_core/x.py: short, and says which library
    short = (
        "/".join(parts[parts.index("site-packages") + 1 :]) if "site-packages" in parts else code.co_filename
    )
    return f"{short}:{code.co_name}"


class Sampler:
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.self_ticks: Counter[str] = Counter()
        self.cum_ticks: Counter[str] = Counter()
        self.stacks: Counter[str] = Counter()
        self.thread_ticks: Counter[str] = Counter()
        #: samples (not CPU) per operator function on any thread's stack: where the handlers wait
        self.wall_operator: Counter[str] = Counter()
        self.samples = 0
        self._last: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sampling-profiler", daemon=True)
        self.started = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            frames = sys._current_frames()
            threads = {t.ident: t for t in threading.enumerate()}
            self.samples += 1
            for ident, frame in frames.items():
                thread = threads.get(ident)
                if ident == me or thread is None or thread.native_id is None:
                    continue
                stack: list[str] = []
                f: FrameType | None = frame
                while f is not None:
                    stack.append(_where(f))
                    f = f.f_back
                for where in {w for w in stack if "tts_operator/" in w}:
                    self.wall_operator[where] += 1
                ticks = _thread_ticks(thread.native_id)
                used = ticks - self._last.get(ident, ticks)
                self._last[ident] = ticks
                if used <= 0:
                    continue
                self.self_ticks[stack[0]] += used
                for where in set(stack):
                    self.cum_ticks[where] += used
                # the innermost 12 frames, outermost first: enough to tell callers apart
                self.stacks[";".join(reversed(stack[:12]))] += used
                self.thread_ticks[thread.name.split("_")[0]] += used

    def write(self, out: Path, final: bool = True) -> None:
        if final:
            self._stop.set()
        total = sum(self.thread_ticks.values())

        def top(counter: Counter[str], n: int) -> list[list[object]]:
            return [
                [k, round(v / TICK, 2), round(100 * v / max(total, 1), 1)] for k, v in counter.most_common(n)
            ]

        out.write_text(
            json.dumps(
                {
                    "seconds": round(time.monotonic() - self.started, 1),
                    "samples": self.samples,
                    "cpuSecondsSampled": round(total / TICK, 2),
                    "columns": ["where", "cpu seconds", "% of sampled"],
                    "byThread": top(self.thread_ticks, 20),
                    "self": top(self.self_ticks, 40),
                    "cumulative": top(self.cum_ticks, 60),
                    "stacks": top(self.stacks, 30),
                    "wallOperatorColumns": ["where", "thread-seconds on the stack (waiting included)"],
                    "wallOperator": [
                        [k, round(n * self.interval, 1)] for k, n in self.wall_operator.most_common(40)
                    ],
                },
                indent=1,
            )
            + "\n"
        )


def _rss_mib() -> float:
    kib = next(
        int(line.split()[1])
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return round(kib / 1024, 1)


def _allocator_figures() -> dict[str, object]:
    """Where RSS sits beyond the live objects: Python's small-object allocator (its arenas are
    returned only when wholly empty) and glibc's heap (free chunks kept), and the RSS once glibc
    was asked to hand its free pages back (``malloc_trim``): what trimming would win."""
    import ctypes
    import ctypes.util
    import os
    import re
    import tempfile

    figures: dict[str, object] = {}
    # it writes to the C-level stderr (fd 2), so fd 2 is pointed at a scratch file meanwhile
    with tempfile.TemporaryFile(mode="w+") as scratch:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(scratch.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        scratch.seek(0)
        text = scratch.read()
    for key, pattern in (
        ("pymallocArenasNow", r"# arenas allocated current\s*=\s*([\d,]+)"),
        ("pymallocBytesInUse", r"# bytes in allocated blocks\s*=\s*([\d,]+)"),
    ):
        m = re.search(pattern, text)
        if m:
            figures[key] = int(m.group(1).replace(",", ""))

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (f, ctypes.c_size_t)
            for f in (
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            )
        ]

    name = ctypes.util.find_library("c")
    if name:
        try:
            libc = ctypes.CDLL(name)
            libc.mallinfo2.restype = MallInfo2
            info = libc.mallinfo2()
            figures["glibcHeapMiB"] = round((info.arena + info.hblkhd) / 2**20, 1)
            figures["glibcInUseMiB"] = round((info.uordblks + info.hblkhd) / 2**20, 1)
            figures["glibcFreeMiB"] = round(info.fordblks / 2**20, 1)
            libc.malloc_trim(0)
            figures["rssAfterMallocTrimMiB"] = _rss_mib()
        except (OSError, AttributeError):
            pass
    return figures


def memory_census(out: Path, top: int = 30) -> None:
    """The live objects by type (count and shallow size, from the garbage collector's view), against
    the process's RSS: cheap enough for a process with millions of objects, unlike tracemalloc. What
    RSS holds beyond them is the allocator's (freed memory kept, fragmentation) or C extensions'."""
    import gc

    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for obj in gc.get_objects():
        name = type(obj).__qualname__
        counts[name] += 1
        sizes[name] += sys.getsizeof(obj, 0)
    rss_mib = _rss_mib()
    allocator = _allocator_figures()
    out.write_text(
        json.dumps(
            {
                "rssMiB": rss_mib,
                **allocator,
                "gcTrackedObjects": sum(counts.values()),
                "gcTrackedShallowMiB": round(sum(sizes.values()) / 2**20, 1),
                "columns": ["type", "objects", "shallow MiB"],
                "top": [[k, counts[k], round(v / 2**20, 2)] for k, v in sizes.most_common(top)],
            },
            indent=1,
        )
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sampling_profiler", description=__doc__)
    parser.add_argument(
        "--out", type=Path, required=True, help="the profile (JSON), written at exit and on SIGUSR2"
    )
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between samples")
    parser.add_argument(
        "--memory", type=Path, help="on SIGUSR1, write the live objects by type (and RSS) to this file"
    )
    parser.add_argument(
        "-m", dest="module", required=True, help="the module to run as __main__ (then its args)"
    )
    # everything after the module's name is the module's, as with ``python -m``
    argv = sys.argv[1:]
    cut = argv.index("-m") + 2 if "-m" in argv else len(argv)
    args, rest = parser.parse_args(argv[:cut]), argv[cut:]
    sampler = Sampler(args.interval)
    atexit.register(sampler.write, args.out)
    # SIGUSR2: the profile so far, without waiting for an exit that a busy process may not reach in
    # time (its supervisor kills it after a grace period, and atexit never runs)
    signal.signal(signal.SIGUSR2, lambda *_: sampler.write(args.out, final=False))
    if args.memory is not None:
        signal.signal(signal.SIGUSR1, lambda *_: memory_census(args.memory))
    sys.argv = [args.module, *rest]
    sampler.start()
    runpy.run_module(args.module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
