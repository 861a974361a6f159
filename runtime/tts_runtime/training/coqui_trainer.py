"""coqui's ``Trainer`` fitted to our runs: building it (device, fixed folder, DDP), its state in and out.

The runner (runner.py) drives the run around it; this module holds what touches coqui's internals:
the ``Trainer`` kept off the GPU unless the preflight chose one, one run folder instead of a dated
folder per attempt, the dict ``save_model`` would write (so coqui's tools read our checkpoints) and
its restore, and coqui's loss averages.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tts_contract.contract import now_rfc3339

from . import ddp
from .checkpoints import CheckpointInfo, CheckpointStore
from .dataset import PreparedDataset
from .engine import EngineTrainer


@contextlib.contextmanager
def fixed_run_folder(folder: Path) -> Iterator[None]:
    """Make coqui's Trainer use ``folder`` instead of a new ``<run>-<date>-<hash>`` folder per attempt.

    ``Trainer.__init__`` calls ``get_experiment_folder_path`` unless it continues a run, and continuing
    (``continue_path``) also replaces the code's config with the folder's config.json and repeats the
    epoch in progress: we restore state ourselves and only need the folder name fixed.
    """
    import trainer.trainer as coqui_trainer

    original = coqui_trainer.get_experiment_folder_path
    coqui_trainer.get_experiment_folder_path = lambda root, name: folder  # type: ignore[assignment]
    try:
        yield
    finally:
        coqui_trainer.get_experiment_folder_path = original


def build_trainer(
    engine: EngineTrainer,
    model: Any,
    dataset: PreparedDataset,
    *,
    grad_accum_steps: int,
    out: Path,
    logs: Path,
    dist: ddp.DistEnv | None,
    use_gpu: bool,
    tensorboard: bool,
) -> Any:
    """coqui's Trainer for ``model``, writing its logs (and TensorBoard events if ``tensorboard``) in
    ``logs``; in a data-parallel group wrapped for DDP, with its shard of the training clips."""
    from trainer import Trainer, TrainerArgs
    from trainer.logging import DummyLogger

    args = TrainerArgs(grad_accum_steps=grad_accum_steps)
    logs.mkdir(parents=True, exist_ok=True)
    # coqui's Trainer uses CUDA whenever torch sees a GPU; the preflight's verdict decides instead
    # (policy CPU, or PreferGPU that fell back because the GPU stack is broken)
    if dist is not None:
        args.rank = dist.rank
        trainer_cls = ddp.ddp_trainer_class(Trainer, use_cuda=use_gpu)
    else:
        trainer_cls = Trainer if use_gpu else cpu_trainer(Trainer)
    if not use_gpu:
        from tts_runtime.models import use_cpu_kernels_for_variable_lengths

        use_cpu_kernels_for_variable_lengths()
    with fixed_run_folder(logs):
        trainer = trainer_cls(
            args,
            engine.config,
            output_path=str(out),
            model=model,
            train_samples=dataset.train,
            eval_samples=dataset.eval,
            parse_command_line_args=False,  # our CLI's flags are not coqui's
            dashboard_logger=None if tensorboard else DummyLogger(),
        )
    if dist is not None:
        trainer.wrap(dist.local_rank)
        trainer.build_train_loader(dist.rank, dist.world_size)
    return trainer


def cpu_trainer(trainer_cls: Any) -> Any:
    """coqui's Trainer, kept off the GPU: `setup_training_environment` is its hook for the device."""

    class CpuTrainer(trainer_cls):
        @staticmethod
        def setup_training_environment(args: Any, config: Any, gpu: int | None) -> tuple[bool, int]:
            trainer_cls.setup_training_environment(args=args, config=config, gpu=None)  # seeds and flags
            return False, 0

    return CpuTrainer


def trainer_state(t: Any, frozen: tuple[str, ...]) -> dict[str, Any]:
    """The dict coqui's ``save_model`` writes, so coqui's tools can read our checkpoints.

    ``frozen``: state-dict prefixes left out (``EngineTrainer.frozen_prefixes``)."""
    model = {k: v for k, v in t._get_model().state_dict().items() if not (frozen and k.startswith(frozen))}
    return {
        "config": t.config.to_dict(),
        "model": model,
        "optimizer": [o.state_dict() for o in t.optimizer],
        "scheduler": [s.state_dict() for s in t.scheduler if s is not None],
        "scaler": t.scaler.state_dict() if t.scaler is not None else None,
        "step": t.total_steps_done,
        "epoch": t.epochs_done,
        "model_loss": {
            "train_loss": avg_loss(t.keep_avg_train),
            "eval_loss": avg_loss(t.keep_avg_eval),
        },
        "date": now_rfc3339(),
    }


def restore_state(t: Any, store: CheckpointStore, info: CheckpointInfo, frozen: tuple[str, ...]) -> None:
    """Load checkpoint ``info`` into trainer ``t``: weights (all but ``frozen``), optimizers,
    schedulers, scaler, and the step and epoch counters coqui's loop continues from."""
    state = store.load(info)
    missing, unexpected = t._get_model().load_state_dict(state["model"], strict=False)
    missing = [k for k in missing if not (frozen and k.startswith(frozen))]
    if missing or unexpected:
        raise RuntimeError(
            f"{store.path(info)} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for optimizer, saved in zip(t.optimizer, state.get("optimizer") or [], strict=False):
        optimizer.load_state_dict(saved)
    schedulers = [s for s in t.scheduler if s is not None]
    for scheduler, saved in zip(schedulers, state.get("scheduler") or [], strict=False):
        scheduler.load_state_dict(saved)
    if t.scaler is not None and state.get("scaler"):
        t.scaler.load_state_dict(state["scaler"])
    t.total_steps_done = int(state["step"])
    # _fit() loops over range(epochs_done, epochs): start with the first epoch not completed
    t.epochs_done = int(state["epochs_completed"])


def avg_loss(keep_avg: Any) -> float | None:
    """The average loss of coqui's ``KeepAverage`` (``keep_avg_train``/``keep_avg_eval``), if any."""
    if keep_avg is None:
        return None
    value = keep_avg.avg_values.get("avg_loss")
    if value is None:  # GAN engines (VITS) report avg_loss_<optimizer>: coqui averages them, so do we
        parts = [v for k, v in keep_avg.avg_values.items() if re.fullmatch(r"avg_loss_\d+", k)]
        value = sum(parts) / len(parts) if parts else None
    return float(value) if value is not None else None
