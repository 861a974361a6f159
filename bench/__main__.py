"""``python -m bench [NAME ...] [--quick]``: run the benchmarks, one subprocess each, then one table.

Each benchmark runs in its own process (its memory figures are its own, and a failure in one does
not stop the others) and writes ``bench/results/<name>.json``; the table at the end is read back
from those files.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from .common import REPO, RESULTS, progress

BENCHMARKS = {
    "operator": "bench.operator_bench",
    "training": "bench.training_bench",
    "serving": "bench.serving_bench",
    "gpu": "bench.gpu_bench",
    "voicemodel": "bench.voicemodel_bench",
    "scale": "bench.scale_bench",
    "fetch": "bench.fetch",
}
#: run only when named (``python -m bench scale``, ``make bench-scale``): 1500 objects on the dev
#: cluster take minutes and would crowd the other benchmarks' timings on a small machine
ON_REQUEST = frozenset({"scale"})


def print_summary(names: list[str], failed: dict[str, int]) -> None:
    print("\n" + "=" * 100)
    for name in names:
        path = RESULTS / f"{name}.json"
        if name in failed:
            print(f"\n== {name}: FAILED (exit {failed[name]}); see the output above ==")
            continue
        body = json.loads(path.read_text())
        m = body["machine"]
        where = m.get("gpu") or f"{m['cpu']}, {m['cores']} cores"
        print(f"\n== {body['title']} ==  [{where}; load {m['loadavg_at_start']}; {body['seconds']} s]")
        if body["skipped"]:
            print(f"   skipped: {body['skipped']}")
            continue
        print(f"   {'measure':<48} {'value':>14} {'baseline':>10} {'ratio':>7}  goal")
        for r in body["rows"]:
            verdict = "" if r["met"] is None else (" (met)" if r["met"] else " (NOT met)")
            value = f"{_fmt(r['value'])} {r['unit']}"
            base = "" if r["baseline"] is None else _fmt(r["baseline"])
            rat = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
            print(f"   {r['name']:<48} {value:>14} {base:>10} {rat:>7}  {r['goal'] or ''}{verdict}".rstrip())
            if r["note"]:
                print(f"      {r['note']}")
    print()


def _fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.2f}" if abs(x) >= 1 else f"{x:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"of {', '.join(BENCHMARKS)}; default: all but {', '.join(sorted(ON_REQUEST))}",
    )
    parser.add_argument("--quick", action="store_true", help="a short run (same as BENCH_QUICK=1)")
    args = parser.parse_args(argv)
    names = args.names or [n for n in BENCHMARKS if n not in ON_REQUEST]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}: choose from {', '.join(BENCHMARKS)}")
    env = dict(os.environ)
    if args.quick:
        env["BENCH_QUICK"] = "1"
    failed: dict[str, int] = {}
    started = time.monotonic()
    for name in names:
        progress(f"--- {name} ---")
        code = subprocess.call([sys.executable, "-m", BENCHMARKS[name]], cwd=REPO, env=env)
        if code != 0:
            failed[name] = code
    print_summary(names, failed)
    progress(f"all done in {time.monotonic() - started:.0f} s; results in {RESULTS}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
