"""Data-parallel training: one worker process per GPU (or per CPU process over gloo), gradients all-reduced.

Two halves:

* ``launch`` runs in the process the Job (or a person) started. It starts N workers the way torchrun
  does: the same CLI again, with ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``
  in the environment (rendezvous ``env://``). Fresh interpreters rather than ``torch.multiprocessing``
  forks: no CUDA state or pickled runner crosses a process boundary, coqui's own ``get_rank()`` reads
  ``RANK`` from the environment (it hands ranks > 0 a dummy dashboard logger), and a worker started
  by torchrun or a multi-node launcher behaves the same. The launcher forwards SIGTERM/SIGINT to every
  worker (Kubernetes signals PID 1 only), prefixes the output of ranks > 0 with ``[rank N]``, and ends
  the others when one worker fails: the survivors would otherwise wait in a collective until gloo's
  or NCCL's timeout.

* The rest runs inside each worker. coqui-tts-trainer 0.4.0 cannot do this part for us: its DDP path
  asserts CUDA (``init_distributed``), passes CUDA ``device_ids``, and keeps ``ddp_model.module``,
  i.e. the bare model, whose ``train_step`` it then calls directly. DDP's gradient hooks only fire
  after a forward *through the DDP wrapper* (``prepare_for_backward``), so coqui's wrapping never
  all-reduces a gradient. We tell coqui there is one device (so it stays out of it), own the process
  group, and route ``train_step`` through ``DistributedDataParallel`` with ``TrainStep`` as its
  ``forward``. coqui's data loaders already switch to a ``DistributedSampler`` once a process group
  exists, on CPU too.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from tts_contract.contract import ExitCode

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

BACKENDS = ("gloo", "nccl")
#: the worker's environment names the backend; the rest is torchrun's vocabulary
BACKEND_ENV = "TTS_DDP_BACKEND"
#: how long the launcher lets the other workers stop after one failed, before it kills them
STOP_GRACE_S = 10.0


@dataclass(frozen=True)
class DistEnv:
    """This worker's place in the group."""

    rank: int
    local_rank: int
    world_size: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> DistEnv | None:
        """The group this process was started into, or None for a single-process run."""
        env = os.environ if environ is None else environ
        world = int(env.get("WORLD_SIZE", "1") or 1)
        if world <= 1 or "RANK" not in env:
            return None
        backend = env.get(BACKEND_ENV) or "nccl"
        if backend not in BACKENDS:
            raise ValueError(f"${BACKEND_ENV}={backend!r}: expected one of {', '.join(BACKENDS)}")
        rank = int(env["RANK"])
        return cls(rank, int(env.get("LOCAL_RANK", rank)), world, backend)


# --- launcher (the parent process) ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def combine_exit_codes(codes: list[int]) -> int:
    """One exit code for the group: a real failure wins, then an interruption, else success."""
    failures = [c for c in codes if c not in (ExitCode.SUCCESS, ExitCode.INTERRUPTED)]
    if failures:
        return failures[0]
    if ExitCode.INTERRUPTED in codes:
        return int(ExitCode.INTERRUPTED)
    return int(ExitCode.SUCCESS)


def _pump(stream: IO[str], prefix: str) -> None:
    for line in stream:
        sys.stderr.write(prefix + line)
        sys.stderr.flush()


def launch(spec_file: Path, nproc: int, backend: str, worker_args: list[str]) -> int:
    """Run ``nproc`` workers of ``tts-runtime train --spec spec_file`` and wait for all of them."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    port = free_port()
    procs: list[subprocess.Popen[str]] = []
    pumps: list[threading.Thread] = []
    for rank in range(nproc):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(nproc),
            "LOCAL_WORLD_SIZE": str(nproc),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            BACKEND_ENV: backend,
            "PYTHONUNBUFFERED": "1",
        }
        cmd = [sys.executable, "-m", "tts_runtime.train_cli", "--spec", str(spec_file), *worker_args]
        # rank 0 keeps the terminal (its progress bar, unprefixed output, as a single process would)
        piped = rank > 0
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=subprocess.PIPE if piped else None,
            stderr=subprocess.STDOUT if piped else None,
            text=True,
        )
        procs.append(proc)
        if piped and proc.stdout is not None:
            pump = threading.Thread(target=_pump, args=(proc.stdout, f"[rank {rank}] "), daemon=True)
            pump.start()
            pumps.append(pump)
    print(f"data-parallel: {nproc} workers over {backend} (pids {[p.pid for p in procs]})", file=sys.stderr)

    def forward(signum: int, frame: FrameType | None) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        codes = _wait_all(procs)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for pump in pumps:
            pump.join(timeout=5)
    return combine_exit_codes(codes)


def _wait_all(procs: list[subprocess.Popen[str]]) -> list[int]:
    stop_at: float | None = None
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            return [int(c) for c in codes if c is not None]
        failed = [
            (rank, c)
            for rank, c in enumerate(codes)
            if c is not None and c not in (ExitCode.SUCCESS, ExitCode.INTERRUPTED)
        ]
        if failed and stop_at is None:
            rank, code = failed[0]
            log.error("rank %d exited with %d: stopping the other workers", rank, code)
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            stop_at = time.monotonic() + STOP_GRACE_S
        if stop_at is not None and time.monotonic() > stop_at:
            # blocked in a collective with a dead peer, a worker never sees its stop flag
            for p in procs:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.2)


# --- inside a worker ------------------------------------------------------------------------------


def init_process_group(dist_env: DistEnv) -> None:
    import torch
    import torch.distributed as dist

    if dist_env.backend == "nccl":
        if not torch.cuda.is_available():
            raise RuntimeError("the nccl backend needs GPUs; use gloo to train data-parallel on CPU")
        torch.cuda.set_device(dist_env.local_rank)
    dist.init_process_group(
        dist_env.backend, init_method="env://", rank=dist_env.rank, world_size=dist_env.world_size
    )


def destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _device() -> Any:
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any: how the group agrees to stop or to give up."""
    import torch
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def mean_over_ranks(value: float | None) -> float | None:
    """The mean of a per-rank value (a shard's average loss); None where any rank has none."""
    import torch
    import torch.distributed as dist

    t = torch.tensor(
        [0.0 if value is None else value, 1.0 if value is None else 0.0],
        dtype=torch.float64,
        device=_device(),
    )
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    if t[1].item() > 0:
        return None
    return float(t[0].item()) / dist.get_world_size()


def weights_digest(model: nn.Module) -> str:
    """sha256 over the trainable parameters: equal on every rank when the all-reduce works."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def batch_items(batch: dict[str, Any]) -> list[str]:
    """The clips in a batch (VITS: audio_files, XTTS: filenames), by file name: a rank's shard."""
    for key in ("audio_files", "filenames", "audio_unique_names"):
        items = batch.get(key)
        if items:
            return [Path(str(i)).name for i in items]
    return []


def _train_step_module(model: nn.Module) -> nn.Module:
    from torch import nn

    class TrainStep(nn.Module):
        """``forward`` = the model's ``train_step``, so DDP's forward arms the gradient all-reduce.

        Only the loss leaves ``forward``: DDP with ``find_unused_parameters`` walks the autograd graph
        from what forward returns. VITS returns its generator outputs even on the discriminator step,
        whose backward never reaches the generator: DDP would then wait for gradients that never come.
        """

        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.last: tuple[Any, Any] = (None, None)

        def forward(self, *args: Any) -> Any:
            outputs, loss_dict = self.inner.train_step(*args)
            self.last = (outputs, loss_dict)
            return loss_dict["loss"] if loss_dict else ()

    return TrainStep(model)


def ddp_trainer_class(trainer_cls: Any, *, use_cuda: bool) -> Any:
    """coqui's Trainer for one rank of a group that we set up: it sees one device and no DDP of its own."""
    from trainer.model import TrainerModel

    class DataParallelTrainer(trainer_cls):
        ddp: Any = None
        #: the clips this rank trained on in the epoch in progress
        seen: set[str]

        @staticmethod
        def setup_training_environment(args: Any, config: Any, gpu: int | None) -> tuple[bool, int]:
            # seeds and flags; use_ddp stops coqui from refusing several visible GPUs
            args.use_ddp = True
            trainer_cls.setup_training_environment(args=args, config=config, gpu=None)
            # one device: coqui's own DDP (CUDA-only, never all-reduces) stays off
            return use_cuda, 1

        def wrap(self, local_rank: int) -> None:
            from torch.nn.parallel import DistributedDataParallel

            if type(self.model).optimize is not TrainerModel.optimize:
                # a model-specific optimize() runs its own forward/backward, past the DDP wrapper
                raise RuntimeError(f"{type(self.model).__name__} has its own optimize(): not data-parallel")
            self.seen = set()
            # broadcasts rank 0's parameters and buffers: every rank starts from the same weights
            self.ddp = DistributedDataParallel(
                _train_step_module(self.model),
                device_ids=[local_rank] if use_cuda else None,
                # GAN engines (VITS) train a different half of the model with each optimizer
                find_unused_parameters=True,
            )

        def _model_train_step(
            self, batch: dict[str, Any], criterion: Any, optimizer_idx: int | None = None
        ) -> Any:
            self.seen.update(batch_items(batch))
            args: list[Any] = [batch, criterion]
            if optimizer_idx is not None:
                args.append(optimizer_idx)
            self.ddp(*args)
            return self.ddp.module.last

        def build_train_loader(self, rank: int, world_size: int) -> None:
            """The loader now, not at the first epoch: ``set_epoch`` reshuffles it before every epoch."""
            self.train_loader = self.get_train_dataloader(self.train_samples)
            dataset = self.train_loader.dataset
            samples = getattr(dataset, "samples", None)
            if isinstance(samples, dict):
                # coqui's XTTSDataset ignores the sampler's index: every item is a random draw from all
                # clips of a random language, seeded alike on every rank, so all ranks would train on
                # the same clips. Each rank draws from its own slice instead: disjoint shards.
                shards = {lang: items[rank::world_size] for lang, items in samples.items()}
                if not all(shards.values()):
                    raise RuntimeError(f"fewer training clips in a language than the {world_size} ranks")
                dataset.samples = shards

        def shard(self) -> list[str]:
            """The clips this rank draws from in the epoch in progress, by file name."""
            loader = self.train_loader
            samples = loader.dataset.samples
            if isinstance(samples, dict):
                items = [s for group in samples.values() for s in group]
            else:
                items = [samples[i] for i in loader.sampler]
            return sorted({Path(str(s["audio_file"])).name for s in items})

        def set_epoch(self, epoch: int) -> None:
            """A new shuffle per epoch (coqui never calls ``set_epoch``: every epoch would be the same)."""
            loader = self.train_loader
            for sampler in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
                set_epoch = getattr(sampler, "set_epoch", None)
                if set_epoch is not None:
                    set_epoch(epoch)

    return DataParallelTrainer
