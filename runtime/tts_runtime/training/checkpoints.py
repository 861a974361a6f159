"""Checkpoints a restarted pod can trust: epoch-numbered, written atomically, pruned, with a best copy.

coqui's Trainer names checkpoints by step, writes them in place (a pod killed mid-write leaves a
truncated file that ``continue_path`` then picks), saves the epoch number *in progress* (so a resume
repeats an epoch that had finished) and starts a new dated run folder per attempt. This store keeps
the state dict coqui writes (``config``, ``model``, ``optimizer``, ``scheduler``, ``scaler``,
``step``, ``epoch``, ``model_loss``) so coqui's tools can still read the files, and adds
``epochs_completed``: the number of epochs whose training *and* evaluation are in the weights.

Layout under ``<outputPath>/checkpoints/``::

    epoch_0003.pth         after epoch 3 (the newest ``keepCheckpoints`` are kept)
    interrupted.pth        written on SIGTERM mid-epoch; superseded by the next epoch checkpoint
    best_model.pth         a hard link (or copy) of the epoch checkpoint with the lowest eval loss
    index.json             epoch, step and losses of each file (the files remain the truth)
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tts_contract.contract import CheckpointRef

_EPOCH_FILE = re.compile(r"^epoch_(\d+)\.pth$")
INTERRUPTED = "interrupted.pth"
BEST = "best_model.pth"
INDEX = "index.json"


@dataclass
class CheckpointInfo:
    file: str
    epochs_completed: int
    step: int
    eval_loss: float | None
    train_loss: float | None

    @property
    def loss(self) -> float | None:
        """The loss "best" is judged by: eval when the run evaluates, train otherwise."""
        return self.eval_loss if self.eval_loss is not None else self.train_loss


def atomic_torch_save(state: dict[str, Any], dest: Path) -> None:
    """Write to a temporary name, fsync, rename: a reader sees the old file or the whole new one."""
    import torch

    tmp = dest.with_name(f".{dest.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write_text(dest: Path, text: str) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, dest)


class CheckpointStore:
    def __init__(self, directory: Path, keep: int) -> None:
        self.dir = directory
        self.keep = keep
        self.dir.mkdir(parents=True, exist_ok=True)
        # leftovers of a write the previous attempt did not finish: never complete, never picked
        for tmp in self.dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        self._index: dict[str, CheckpointInfo] = self._read_index()

    # --- reading -------------------------------------------------------------------------------

    def _read_index(self) -> dict[str, CheckpointInfo]:
        try:
            raw = json.loads((self.dir / INDEX).read_text())
            entries = {k: CheckpointInfo(**v) for k, v in raw.get("files", {}).items()}
        except (OSError, ValueError, TypeError):
            entries = {}
        # the files are the truth: a file the index missed (killed between rename and index write)
        # is complete all the same, so describe it from its name; drop entries whose file is gone
        for path in self.dir.iterdir():
            m = _EPOCH_FILE.match(path.name)
            if m and path.name not in entries:
                entries[path.name] = CheckpointInfo(path.name, int(m.group(1)), -1, None, None)
        return {k: v for k, v in entries.items() if (self.dir / k).is_file()}

    def _write_index(self) -> None:
        payload = {"files": {k: asdict(v) for k, v in sorted(self._index.items())}}
        _atomic_write_text(self.dir / INDEX, json.dumps(payload, indent=2) + "\n")

    def epoch_checkpoints(self) -> list[CheckpointInfo]:
        return sorted(
            (v for k, v in self._index.items() if _EPOCH_FILE.match(k)), key=lambda c: c.epochs_completed
        )

    def latest(self) -> CheckpointInfo | None:
        """The checkpoint a restart resumes from: the most trained complete file."""
        candidates = list(self._index.values())
        candidates = [c for c in candidates if c.file != BEST]
        if not candidates:
            return None
        # an interrupted checkpoint has more steps than the epoch checkpoint before it
        return max(candidates, key=lambda c: (c.epochs_completed, c.step))

    def best(self) -> CheckpointInfo | None:
        return self._index.get(BEST)

    def path(self, info: CheckpointInfo) -> Path:
        return self.dir / info.file

    def load(self, info: CheckpointInfo) -> dict[str, Any]:
        import torch

        # our own files hold optimizer state and coqpit dicts: not loadable with weights_only
        state: dict[str, Any] = torch.load(self.path(info), map_location="cpu", weights_only=False)
        return state

    # --- writing -------------------------------------------------------------------------------

    def save_epoch(self, state: dict[str, Any], info: CheckpointInfo) -> bool:
        """Save an end-of-epoch checkpoint, prune old ones, update best. Returns whether it is the best."""
        info.file = f"epoch_{info.epochs_completed:04d}.pth"
        state = {**state, "epochs_completed": info.epochs_completed}
        atomic_torch_save(state, self.dir / info.file)
        self._index[info.file] = info
        # an interrupted checkpoint from inside this epoch is now stale
        if INTERRUPTED in self._index:
            (self.dir / INTERRUPTED).unlink(missing_ok=True)
            del self._index[INTERRUPTED]
        is_best = self._update_best(info)
        self._prune()
        self._write_index()
        return is_best

    def save_interrupted(self, state: dict[str, Any], info: CheckpointInfo) -> None:
        info.file = INTERRUPTED
        state = {**state, "epochs_completed": info.epochs_completed}
        atomic_torch_save(state, self.dir / INTERRUPTED)
        self._index[INTERRUPTED] = info
        self._write_index()

    def _update_best(self, info: CheckpointInfo) -> bool:
        best = self.best()
        loss = info.loss
        if loss is None or (best is not None and best.loss is not None and best.loss <= loss):
            return False
        tmp = self.dir / f".{BEST}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(self.dir / info.file, tmp)  # no copy of a multi-GB file when the volume allows it
        except OSError:
            shutil.copyfile(self.dir / info.file, tmp)
        os.replace(tmp, self.dir / BEST)
        self._index[BEST] = CheckpointInfo(
            BEST, info.epochs_completed, info.step, info.eval_loss, info.train_loss
        )
        return True

    def _prune(self) -> None:
        epochs = self.epoch_checkpoints()
        for old in epochs[: max(0, len(epochs) - self.keep)]:
            (self.dir / old.file).unlink(missing_ok=True)
            del self._index[old.file]

    # --- reporting -----------------------------------------------------------------------------

    def ref(self, info: CheckpointInfo) -> CheckpointRef:
        return CheckpointRef(
            epoch=info.epochs_completed,
            step=max(info.step, 0),
            path=str(self.path(info)),
            eval_loss=info.loss,
        )

    def refs(self) -> list[CheckpointRef]:
        return [self.ref(c) for c in self.epoch_checkpoints()]
