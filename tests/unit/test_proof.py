"""docs/proof.md's renderer (bench/proof.py) on a small set of results written here: no benchmark runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from bench import proof

MACHINE = proof.Machine(host="box", cpu="Test CPU 9000", cores=2, memory_gib=7.75, gpu=None)


def result(name: str, rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "benchmark": name,
        "title": f"the {name} bench",
        "quick": False,
        "machine": {
            "host": "box",
            "cpu": "Test CPU 9000",
            "cores": 2,
            "gpu": None,
            "loadavg_at_start": [0.5],
        },
        "startedAt": f"2026-01-0{len(name) % 9 + 1}T10:00:00Z",
        "seconds": 12.3,
        "skipped": None,
        "config": {},
        "rows": rows,
        **extra,
    }


def row(name: str, value: float, **extra: Any) -> dict[str, Any]:
    return {"name": name, "value": value, "unit": "ms", "baseline": None, "ratio": None, "goal": None,
            "met": None, "note": None, **extra}  # fmt: skip


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "results"
    folder.mkdir()
    scale = result(
        "scale",
        [
            row("all reconciled", 41.5, unit="s", goal="<= 60 s", met=True),
            row(
                "writes while idle", 823.0, unit="per minute", goal="0", met=False, note="apply a|b: 206/min"
            ),
            row("p50", 0.01234),
        ],
        config={"commit": "abc1234"},
    )
    serving = result("serving", [row("throughput", 24.24, unit="req/s", baseline=2.09, ratio=11.6)])
    gpu = result("gpu", [], skipped="no CUDA device")
    for body in (scale, serving, gpu):
        (folder / f"{body['benchmark']}.json").write_text(json.dumps(body))
    return folder


def test_renders_every_result_with_goals_dates_and_missing_commands(
    results_dir: Path, tmp_path: Path
) -> None:
    soak = tmp_path / "soak.json"
    figures = {"seconds": 120.4, "concurrency": 8, "errors": 0, "rss_growth_second_half_pct": 21.5}
    soak.write_text(json.dumps({**figures, "rss_curve_s_mb": [[0, 1.0]]}))
    text = proof.render(proof.load_results(results_dir), proof.load_soak(soak), "abc1234", MACHINE)

    assert "Rendered at commit `abc1234` on box: Test CPU 9000, 2 cores, 7.8 GiB memory, GPU: none." in text
    # goals: the scale bench's two and the soak's two, one of each not met
    assert "**Goals: 2 of 4 met.**" in text
    assert "Not met: the scale bench: writes while idle; serving soak: rss_growth_second_half_pct." in text
    assert "| all reconciled | 41.50 s |  |  | <= 60 s | met |  |" in text
    # a pipe in a note must not split the Markdown cell
    assert "| writes while idle | 823 per minute |  |  | 0 | **NOT met** | apply a\\|b: 206/min |" in text
    assert "| p50 | 0.012 ms |" in text
    assert "| throughput | 24.24 req/s | 2.09 | 11.60x |" in text
    assert "commit abc1234" in text and "measured 2026-01-06T10:00:00Z" in text
    assert "Skipped: no CUDA device." in text
    # expected benchmarks without a result say how to get one; the soak's curve is not a table row
    assert "- `operator`: not measured; run `python -m bench operator` (part of make bench)." in text
    assert "- `scale`" not in text and "serving soak: not measured" not in text
    assert "rss_curve_s_mb" not in text
    assert "| errors | 0 | 0 | met |" in text
    # results in the expected order: serving before gpu before scale
    assert text.index("`serving`)") < text.index("`gpu`)") < text.index("`scale`)")


def test_same_inputs_same_file_and_missing_soak_named(results_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "proof.md"
    args = ["--render-only", "--results", str(results_dir), "--soak", str(tmp_path / "none.json")]
    assert proof.main([*args, "--out", str(out)]) == 0
    first = out.read_text()
    assert proof.main([*args, "--out", str(out)]) == 0
    assert out.read_text() == first
    assert "- serving soak: not measured; run `make soak` (30 minutes;" in first


def test_numbers_are_formatted_by_size() -> None:
    assert [proof.fmt(x) for x in (0.0, 0.01234, 2.5, 823.0, 46614.2, 1764, float("nan"), None)] == [
        "0", "0.012", "2.50", "823", "46,614", "1,764", "n/a", "",
    ]  # fmt: skip


def test_a_file_that_is_not_a_result_is_refused(tmp_path: Path) -> None:
    (tmp_path / "junk.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match=r"junk\.json is not a benchmark result"):
        proof.load_results(tmp_path)
