"""``python -m bench.proof``: run the benchmarks, then write ``docs/proof.md``, every figure in one place.

``--render-only`` skips the runs (``python -m bench``, then ``python -m bench scale``: many minutes
on two cores) and renders the results there are. Either way it reads the benchmark results
(``bench/results/*.json``) and the soak's figures (``soak.json`` from ``make soak``), and renders one
table per result with the date and machine each was measured on, goal and met columns where a
figure has a goal, and a line for every result that is missing saying which command produces it.
The soak is not run here (30 minutes of its own: ``make soak``).

The output depends only on its inputs, the commit and the machine it is rendered on (no "rendered
at" clock), so rendering the same results twice gives the same file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import REPO, RESULTS

DOC = REPO / "docs" / "proof.md"
SOAK = REPO / "soak.json"
#: the benchmarks the proof expects, in the order it shows them: (the command that makes each, a hint)
EXPECTED: dict[str, tuple[str, str]] = {
    "operator": ("python -m bench operator", "part of make bench"),
    "training": ("python -m bench training", "part of make bench"),
    "serving": ("python -m bench serving", "part of make bench"),
    "voicemodel": ("python -m bench voicemodel", "part of make bench"),
    "gpu": ("python -m bench gpu", "part of make bench; needs a GPU"),
    "scale": ("python -m bench scale", "make bench-scale; needs the dev cluster"),
}
#: "issue 3: ..." at the start of a result's title (the benchmarks name their tracker entry): the
#: proof is read by people who never saw the tracker, so headings name the figures only
_TRACKER_PREFIX = re.compile(r"^\s*issue\s+\d+[^:]*:\s*", re.IGNORECASE)
SOAK_COMMAND = ("make soak", "30 minutes; SOAK_SECONDS=120 make soak for the short one")
#: soak figures that have a goal (from tests/runtime/serving/test_soak.py): key -> (goal, met?)
SOAK_GOALS: dict[str, tuple[str, Any]] = {
    "errors": ("0", lambda v: v == 0),
    "rss_growth_second_half_pct": ("< 15 % (second half over the warm median)", lambda v: v < 15),
}


@dataclass(frozen=True)
class Machine:
    """Where ``docs/proof.md`` was rendered (results carry where each was measured)."""

    host: str
    cpu: str
    cores: int
    memory_gib: float
    gpu: str | None

    def describe(self) -> str:
        return f"{self.cpu}, {self.cores} cores, {self.memory_gib:.1f} GiB memory, GPU: {self.gpu or 'none'}"


def this_machine() -> Machine:
    from .common import machine

    info = machine()
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return Machine(
        host=str(info["host"]),
        cpu=str(info["cpu"]),
        cores=int(info["cores"] or 0),
        memory_gib=mem_kib / 2**20,
        gpu=info.get("gpu"),
    )


def current_commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True)
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def load_results(folder: Path) -> dict[str, dict[str, Any]]:
    """Every ``NAME.json`` in ``folder`` by benchmark name; a file that is not a result is an error."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.json")):
        body = json.loads(path.read_text())
        if not isinstance(body, dict) or "rows" not in body or "title" not in body:
            raise ValueError(f"{path} is not a benchmark result (no title and rows)")
        out[str(body.get("benchmark") or path.stem)] = body
    return out


def load_soak(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    body = json.loads(path.read_text())
    if not isinstance(body, dict):
        raise ValueError(f"{path} is not the soak's figures (a JSON object)")
    # soak.json has no date of its own: the file's modification time is when the soak ended
    body.setdefault("_endedAt", _utc(path.stat().st_mtime))
    return body


def _utc(ts: float) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def fmt(x: Any) -> str:
    """Numbers the way the bench table prints them: 3 significant-ish digits, no noise."""
    if x is None:
        return ""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if not isinstance(x, int | float):
        return str(x)
    if isinstance(x, float) and math.isnan(x):
        return "n/a"
    if x == 0:
        return "0"
    if isinstance(x, int) or (float(x).is_integer() and abs(x) >= 1):
        return f"{int(x):,}"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _cell(text: Any) -> str:
    """Markdown table cells: no pipes or newlines from the data."""
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def _met(met: bool | None) -> str:
    return "" if met is None else ("met" if met else "**NOT met**")


def title(name: str, body: dict[str, Any]) -> str:
    """The heading of benchmark ``name``: the result's title without a tracker prefix."""
    return _TRACKER_PREFIX.sub("", str(body.get("title") or name))


def render_result(body: dict[str, Any]) -> list[str]:
    m = body.get("machine") or {}
    where = f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, GPU: {m.get('gpu') or 'none'}"
    meta = [f"measured {body.get('startedAt', '?')}", f"on {m.get('host', '?')} ({where})"]
    if m.get("loadavg_at_start"):
        meta.append(f"load at start {', '.join(fmt(x) for x in m['loadavg_at_start'])}")
    if (body.get("config") or {}).get("commit"):
        meta.append(f"commit {body['config']['commit']}")
    meta.append(f"took {fmt(body.get('seconds'))} s")
    if body.get("quick"):
        meta.append("**quick run** (BENCH_QUICK=1: fewer samples)")
    name = str(body.get("benchmark"))
    lines = [f"### {title(name, body)} (`{name}`)", "", "; ".join(meta) + ".", ""]
    if body.get("skipped"):
        return [*lines, f"Skipped: {body['skipped']}.", ""]
    lines += [
        "| Measure | Value | Baseline | Ratio | Goal | Met | Note |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for r in body["rows"]:
        value = f"{fmt(r.get('value'))} {r.get('unit') or ''}".strip()
        ratio = "" if r.get("ratio") is None else f"{r['ratio']:.2f}x"
        cells = [r["name"], value, fmt(r.get("baseline")), ratio, r.get("goal") or "", _met(r.get("met"))]
        lines.append("| " + " | ".join(_cell(c) for c in [*cells, r.get("note") or ""]) + " |")
    return [*lines, ""]


def soak_rows(soak: dict[str, Any]) -> list[tuple[str, Any, str, bool | None]]:
    """(figure, value, goal, met) for each plain figure of the soak (its RSS curve is no table row)."""
    out: list[tuple[str, Any, str, bool | None]] = []
    for key in sorted(k for k in soak if not k.startswith("_") and not isinstance(soak[k], list | dict)):
        goal, check = SOAK_GOALS.get(key, ("", None))
        out.append((key, soak[key], goal, None if check is None else bool(check(soak[key]))))
    return out


def render_soak(soak: dict[str, Any]) -> list[str]:
    lines = [
        "### serving soak (`soak.json`)",
        "",
        f"ended {soak['_endedAt']}; `tts-runtime serve` on the tiny VITS, CPU, "
        f"concurrency {fmt(soak.get('concurrency'))} for {fmt(soak.get('seconds'))} s "
        "(the soak does not record its machine: see the header).",
        "",
        "| Measure | Value | Goal | Met |",
        "|---|---:|---|---|",
    ]
    for key, value, goal, met in soak_rows(soak):
        lines.append("| " + " | ".join(_cell(c) for c in (key, fmt(value), goal, _met(met))) + " |")
    return [*lines, ""]


def render(
    results: dict[str, dict[str, Any]], soak: dict[str, Any] | None, commit: str, rendered_on: Machine
) -> str:
    """The whole of ``docs/proof.md``."""
    names = [n for n in EXPECTED if n in results] + sorted(n for n in results if n not in EXPECTED)
    missing = [n for n in EXPECTED if n not in results]
    # (where, figure, met) of every figure with a goal
    verdicts = [(title(n, results[n]), r["name"], r.get("met")) for n in names for r in results[n]["rows"]]
    if soak is not None:
        verdicts += [("serving soak", key, met) for key, _, _, met in soak_rows(soak)]
    goals = [v for v in verdicts if v[2] is not None]
    unmet = [f"{where}: {name}" for where, name, met in goals if met is False]
    dates = sorted(str(results[n].get("startedAt", "")) for n in names)
    if soak is not None:
        dates.append(soak["_endedAt"])
    lines = [
        "# Proof: measured figures",
        "",
        "<!-- generated by `python -m bench.proof` (`make proof`) from bench/results/*.json and soak.json;"
        " do not edit by hand -->",
        "",
        f"Rendered at commit `{commit}` on {rendered_on.host}: {rendered_on.describe()}. "
        f"Results measured {dates[0][:10] if dates else '-'} to {max(dates)[:10] if dates else '-'}; each "
        "table says when, on which machine and at which load it was measured.",
        "",
        f"**Goals: {len(goals) - len(unmet)} of {len(goals)} met.**"
        + (" Not met: " + "; ".join(unmet) + "." if unmet else ""),
        "",
    ]
    if missing or soak is None:
        lines += ["## Missing results", ""]
        lines += [f"- `{n}`: not measured; run `{EXPECTED[n][0]}` ({EXPECTED[n][1]})." for n in missing]
        if soak is None:
            lines.append(f"- serving soak: not measured; run `{SOAK_COMMAND[0]}` ({SOAK_COMMAND[1]}).")
        lines.append("")
    lines += ["## Results", ""]
    for n in names:
        lines += render_result(results[n])
    if soak is not None:
        lines += render_soak(soak)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.proof", description=__doc__)
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of NAME.json results")
    parser.add_argument("--soak", type=Path, default=SOAK, help="the soak's figures (make soak)")
    parser.add_argument("--out", type=Path, default=DOC, help="where to write (default docs/proof.md)")
    parser.add_argument(
        "--render-only", action="store_true", help="render the results there are; run no benchmark"
    )
    args = parser.parse_args(argv)
    failed = 0
    if not args.render_only:
        from .common import progress

        # one subprocess per step, as `python -m bench` runs them: memory figures stay their own
        for step in (["-m", "bench"], ["-m", "bench", "scale"]):
            progress(f"proof: python {' '.join(step)}")
            if code := subprocess.call([sys.executable, *step], cwd=REPO):
                progress(f"proof: python {' '.join(step)} failed (exit {code}); rendering what there is")
                failed = code
    text = render(load_results(args.results), load_soak(args.soak), current_commit(), this_machine())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {os.path.relpath(args.out, Path.cwd())}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
