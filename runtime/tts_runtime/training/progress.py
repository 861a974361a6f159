"""Progress for people (a tqdm bar on a terminal) and for machines (progress.json plus hooks).

``progress.json`` holds the contract's ``ProgressReport`` and is replaced atomically after every step,
so a reader (the operator's status patch, a person with ``cat``) never sees half a file. Hooks get the
same report; the status reporter is one of them. A failing hook is logged and ignored: reporting must
never stop training.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tts_contract.contract import (
    MAX_STATUS_CHECKPOINTS,
    MAX_STATUS_SAMPLES,
    CheckpointRef,
    Progress,
    ProgressReport,
    SampleRef,
    now_rfc3339,
)

log = logging.getLogger(__name__)

PROGRESS_FILE = "progress.json"
ProgressHook = Callable[[ProgressReport], None]


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def read_progress(output: Path) -> ProgressReport | None:
    try:
        return ProgressReport.model_validate_json((output / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None


class ProgressTracker:
    def __init__(
        self,
        output: Path,
        *,
        epochs: int,
        attempt: int,
        resumed_from_epoch: int | None,
        hooks: list[ProgressHook] | None = None,
        show_bar: bool | None = None,
    ) -> None:
        self.output = output
        self.hooks = list(hooks or [])
        previous = read_progress(output)
        # checkpoints, best and samples of earlier attempts stay in the report
        self.report = ProgressReport(
            progress=Progress(
                epoch=resumed_from_epoch or 0,
                epochs=epochs,
                attempt=attempt,
                resumed_from_epoch=resumed_from_epoch,
            ),
            samples=previous.samples if previous else [],
        )
        self.show_bar = sys.stderr.isatty() if show_bar is None else show_bar
        self._bar: Any = None  # a tqdm bar, imported only when one is shown
        self._steps_per_epoch = 0
        self._t0 = time.monotonic()
        self._steps_this_attempt = 0

    # --- events from the trainer ---------------------------------------------------------------

    def start(self, steps_per_epoch: int, step: int) -> None:
        self._steps_per_epoch = max(1, steps_per_epoch)
        p = self.report.progress
        p.step = step
        if self.show_bar:
            from tqdm import tqdm

            done = (p.resumed_from_epoch or 0) * self._steps_per_epoch
            self._bar = tqdm(
                total=p.epochs * self._steps_per_epoch,
                initial=done,
                unit="step",
                desc="training",
                file=sys.stderr,
            )
        self._publish()

    def epoch_start(self, epoch: int) -> None:
        self.report.progress.epoch = epoch
        self._publish()

    def step(self, step: int, loss: float | None) -> None:
        p = self.report.progress
        p.step = step
        p.loss = loss
        self._steps_this_attempt += 1
        elapsed = time.monotonic() - self._t0
        steps_left = (p.epochs - p.epoch) * self._steps_per_epoch + max(
            0, self._steps_per_epoch - self._step_in_epoch(step)
        )
        if self._steps_this_attempt:
            p.eta = format_eta(elapsed / self._steps_this_attempt * steps_left)
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(
                epoch=f"{p.epoch}/{p.epochs}", loss=f"{loss:.4f}" if loss is not None else "-"
            )
        self._publish()

    def _step_in_epoch(self, step: int) -> int:
        return step % self._steps_per_epoch if self._steps_per_epoch else 0

    def epoch_end(
        self,
        epoch: int,
        eval_loss: float | None,
        checkpoints: list[CheckpointRef],
        best: CheckpointRef | None,
        sample: SampleRef | None,
    ) -> None:
        p = self.report.progress
        p.epoch = epoch
        p.eval_loss = eval_loss
        if epoch >= p.epochs:
            p.eta = "0s"
        self.report.checkpoints = checkpoints[-MAX_STATUS_CHECKPOINTS:]
        self.report.best = best
        if sample is not None:
            samples = [s for s in self.report.samples if s.epoch != sample.epoch] + [sample]
            self.report.samples = samples[-MAX_STATUS_SAMPLES:]
        self._publish()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # --- output --------------------------------------------------------------------------------

    def _publish(self) -> None:
        self.report.progress.updated_at = now_rfc3339()
        self.output.mkdir(parents=True, exist_ok=True)
        dest = self.output / PROGRESS_FILE
        tmp = dest.with_name(f".{PROGRESS_FILE}.tmp")
        tmp.write_text(
            json.dumps(self.report.model_dump(by_alias=True, mode="json", exclude_none=True)) + "\n"
        )
        os.replace(tmp, dest)
        for hook in self.hooks:
            try:
                hook(self.report.model_copy(deep=True))
            except Exception:  # a reporting failure must never kill training
                log.exception("progress hook %r failed", hook)
