"""Issue 4: the runtime's trainer against a plain coqui Trainer loop on the same config and data.

Tiny random XTTS base (``tts-runtime demo-model``), GPT fine-tune, six espeak-ng clips, CPU. Runs
alternate in one process: ``TrainingRunner`` (ours: preflight, progress, per-epoch checkpoints and
sample wavs, events), then coqui's ``Trainer.fit`` built from the very config, model class and
prepared samples ours uses, then ours again... Every ``Trainer.train_step`` call is timed (a
class-level wrapper, so both sides are timed by the same code); the first step of each run is
left out (lazy initialisation). Per-epoch sample generation comes from our runner's events, peak RSS
from a sampler around each run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .common import PeakRss, Report, Row, bench_main, median, progress, quick

STEP_GOAL = 1.05
EPOCHS = 2


class StepTimer:
    """Wraps ``trainer.Trainer.train_step`` (class level: coqui's and our CPU subclass alike)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __enter__(self) -> StepTimer:
        from trainer import Trainer

        self._original = original = Trainer.train_step
        timer = self

        def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(self, *args, **kwargs)
            finally:
                timer.times.append(time.perf_counter() - started)

        Trainer.train_step = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        from trainer import Trainer

        Trainer.train_step = self._original  # type: ignore[method-assign]


def make_spec(dataset: Path, base: Path, out: Path) -> Any:
    from tts_contract.contract import RunSpec

    return RunSpec.model_validate(
        {
            "run": {"namespace": "bench", "name": "bench-train"},
            "engine": "xtts",
            "dataset": {"path": str(dataset), "evalSplit": 0.2},
            "training": {"epochs": EPOCHS, "batchSize": 2},
            "baseModelPath": str(base),
            "outputPath": str(out),
            "devicePolicy": "CPU",
            "reportStatus": False,
        }
    )


def run_ours(spec: Any) -> dict[str, Any]:
    from tts_runtime.training.runner import TrainingRunner

    with StepTimer() as timer, PeakRss() as rss:
        started = time.perf_counter()
        code = TrainingRunner(spec, show_bar=False).run()
        wall = time.perf_counter() - started
    if int(code) != 0:
        raise RuntimeError(f"our trainer exited {int(code)} (output: {spec.output_path})")
    events = [json.loads(x) for x in (Path(spec.output_path) / "events.jsonl").read_text().splitlines()]
    samples = [e["seconds"] for e in events if e.get("event") == "sample"]
    return {"steps": timer.times, "wall": wall, "peakRssMiB": rss.peak, "sampleSeconds": samples}


def run_plain(spec: Any) -> dict[str, Any]:
    """coqui's own loop: ``Trainer(...).fit()`` on our engine's config, model and prepared samples."""
    from trainer import Trainer, TrainerArgs

    from tts_runtime.training.dataset import prepare_dataset
    from tts_runtime.training.runner import make_engine

    out = Path(spec.output_path)
    out.mkdir(parents=True, exist_ok=True)
    with StepTimer() as timer, PeakRss() as rss:
        started = time.perf_counter()
        engine = make_engine(spec)
        dataset = prepare_dataset(
            spec.dataset, spec.engine, out / "cache", text_check=engine.text_check(), limits=engine.limits()
        )
        trainer = Trainer(
            TrainerArgs(),
            engine.config,
            output_path=str(out),
            model=engine.build_model(),
            train_samples=dataset.train,
            eval_samples=dataset.eval,
            parse_command_line_args=False,
        )
        trainer.fit()
        wall = time.perf_counter() - started
    return {"steps": timer.times, "wall": wall, "peakRssMiB": rss.peak}


def run(report: Report, workdir: Path) -> None:
    from tests.support.datasets import make_ljspeech_dataset  # the tests' espeak-ng dataset maker

    from tts_runtime.demo_model import make_demo_model

    pairs = 1 if quick() else 2
    report.config = {
        "engine": "xtts (GPT fine-tune), tiny random base",
        "clips": 6,
        "evalSplit": 0.2,
        "batchSize": 2,
        "epochs": EPOCHS,
        "pairs": pairs,
        "device": "cpu",
    }
    progress("training: speaking a dataset with espeak-ng, making the tiny XTTS base")
    dataset = make_ljspeech_dataset(workdir / "dataset", n_clips=6)
    base = make_demo_model(workdir / "base", "xtts", seed=0)
    ours: list[dict[str, Any]] = []
    plain: list[dict[str, Any]] = []
    for i in range(pairs):
        order = ("ours", "plain") if i % 2 == 0 else ("plain", "ours")
        for side in order:
            progress(f"training: pair {i + 1}/{pairs}, {side} ({EPOCHS} epochs)")
            spec = make_spec(dataset, base, workdir / f"{side}-{i}")
            (ours if side == "ours" else plain).append(run_ours(spec) if side == "ours" else run_plain(spec))

    def steady(runs: list[dict[str, Any]]) -> list[float]:
        return [t for r in runs for t in r["steps"][1:]]

    row = report.add(
        Row(
            "time per training step (median)",
            median(steady(ours)),
            "s",
            baseline=median(steady(plain)),
            goal=f"<= {STEP_GOAL}x plain coqui Trainer",
        )
    )
    row.met = (row.ratio or 99) <= STEP_GOAL
    report.add(
        Row(
            "wall time per run (median)",
            median([r["wall"] for r in ours]),
            "s",
            baseline=median([r["wall"] for r in plain]),
            goal="vs plain coqui Trainer",
            note="ours adds preflight, a checkpoint and a sample wav per epoch, the servable export",
        )
    )
    report.add(
        Row(
            "sample generation per epoch (median)", median([s for r in ours for s in r["sampleSeconds"]]), "s"
        )
    )
    report.add(
        Row(
            "peak RSS during a run (max)",
            max(r["peakRssMiB"] for r in ours),
            "MiB",
            baseline=max(r["peakRssMiB"] for r in plain),
            goal="vs plain coqui Trainer",
            note="one process runs both: the baseline's peak includes what earlier runs left allocated",
        )
    )
    report.raw = {"ours": ours, "plain": plain}


def main(argv: list[str] | None = None) -> int:
    return bench_main(
        "training_bench",
        "training",
        "issue 4: training step (tiny XTTS GPT fine-tune, CPU)",
        run,
        __doc__,
        argv,
    )


if __name__ == "__main__":
    raise SystemExit(main())
