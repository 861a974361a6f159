"""What the runner needs from an engine (XTTS, VITS): a config, a model, a sample, a servable export."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tts_contract.contract import RunSpec

from .dataset import EngineLimits, TextCheck

if TYPE_CHECKING:
    import numpy as np
    from torch import nn


class BadInput(Exception):
    """A spec or base-model problem: the run ends with ``ExitCode.BAD_INPUT`` (retrying cannot help)."""


#: steps and epochs coqui must never reach on its own: checkpoints, best and samples are ours
NEVER = 10**12


def apply_trainer_settings(config: Any, spec: RunSpec, *, loader_workers: int) -> None:
    """Settings shared by both engines: hand checkpointing and test sentences over to the runner."""
    t = spec.training
    config.run_name = spec.run.name or "run"
    config.output_path = spec.output_path
    config.epochs = t.epochs
    config.batch_size = t.batch_size
    config.eval_batch_size = t.batch_size
    config.run_eval = True
    config.print_eval = False
    config.print_step = 1
    config.plot_step = 1
    config.save_step = NEVER
    config.save_checkpoints = False
    config.save_n_checkpoints = 1
    config.save_all_best = False
    config.save_best_after = NEVER  # coqui's own best_model_<step>.pth: the store keeps ours
    config.log_model_step = NEVER
    config.test_delay_epochs = NEVER  # the runner writes one sample wav per epoch itself
    config.test_sentences = []
    config.num_loader_workers = loader_workers
    config.num_eval_loader_workers = loader_workers
    config.dashboard_logger = "tensorboard"
    config.mixed_precision = False


class EngineTrainer(abc.ABC):
    """One engine's glue to coqui. Built before the dataset preflight (cheap); the model comes after."""

    #: state-dict prefixes of modules that never train and are rebuilt from the base model at start:
    #: left out of checkpoints (XTTS' DVAE alone is ~200 MB per checkpoint)
    frozen_prefixes: tuple[str, ...] = ()

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.config: Any = self.build_config()

    @abc.abstractmethod
    def build_config(self) -> Any: ...

    @abc.abstractmethod
    def limits(self) -> EngineLimits: ...

    def text_check(self) -> TextCheck | None:
        return None

    @abc.abstractmethod
    def build_model(self) -> nn.Module: ...

    @property
    @abc.abstractmethod
    def output_sample_rate(self) -> int: ...

    @abc.abstractmethod
    def synthesize_sample(self, model: nn.Module, text: str, speaker_wav: Path | None) -> np.ndarray: ...

    @abc.abstractmethod
    def export_servable(self, checkpoint: dict[str, Any], dest: Path) -> list[str]:
        """Write a directory the serving runtime loads (config.json, model.pth, ...); return file names."""
