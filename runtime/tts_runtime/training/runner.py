"""One training run, start to finish: dataset, device preflight, model, resume, the coqui loop, export.

coqui's ``Trainer`` runs the steps (optimizers, gradient accumulation, evaluation, TensorBoard); this
module owns everything a pod on a shared cluster needs around it, which coqui 0.28 gets wrong for us
(PINS.md): one run directory per run instead of a dated folder per attempt, checkpoints at epoch
boundaries written atomically, resume without repeating finished epochs, SIGTERM -> checkpoint ->
``ExitCode.INTERRUPTED``, a sample wav per epoch, machine-readable progress. What reaches into
coqui's ``Trainer`` itself (building it, its state in and out of checkpoints) is in coqui_trainer.py.

Run directory (``RunSpec.outputPath``)::

    progress.json          the contract's ProgressReport, replaced atomically every step
    events.jsonl           one line per attempt/epoch start and end: the audit trail of a run
    dataset-report.json    the dataset preflight's findings
    checkpoints/           see checkpoints.py
    samples/epoch_N.wav    one synthesis per finished epoch
    logs/                  coqui's folder: TensorBoard events, trainer_0_log.txt, config.json
    ranks/<N>/             data-parallel runs (ddp.py): rank N's own events.jsonl and coqui log; only
                           rank 0 writes everything else
    voices/                the run's reference voice(s), written at start (reference.py; XTTS only)
    model/                 the best checkpoint as a servable model directory (after the last epoch),
                           with a copy of voices/ (XTTS)
    training.json          summary for export: engine, best epoch, losses, dataset fingerprint

With ``RunSpec.checkpointsUri`` the folder is pod-local and mirrored to object storage (mirror.py):
restored before anything reads it, uploaded after each epoch, after the SIGTERM checkpoint and at
the finish.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from tts_contract.contract import ARTIFACT_REASONS, Engine, ExitCode, RunSpec, SampleRef, now_rfc3339

from ..artifacts.store import ArtifactError
from . import ddp
from .checkpoints import CheckpointInfo, CheckpointStore
from .coqui_trainer import avg_loss, build_trainer, restore_state, trainer_state
from .coqui_trainer import cpu_trainer as _cpu_trainer  # noqa: F401 - importable from here as before
from .dataset import DatasetError, PreparedDataset, prepare_dataset
from .engine import BadInput, EngineTrainer
from .mirror import BEST_EFFORT_RETRY_S, RunMirror
from .progress import ProgressHook, ProgressTracker
from .reference import copy_voices, write_reference_voices

log = logging.getLogger(__name__)

EVENTS = "events.jsonl"
SUMMARY = "training.json"


class StopRequested(Exception):
    """Raised from a trainer callback to leave coqui's loop after SIGTERM."""


def make_engine(spec: RunSpec) -> EngineTrainer:
    if spec.engine == Engine.XTTS:
        from .xtts import XttsTrainer

        return XttsTrainer(spec)
    from .vits import VitsTrainer

    return VitsTrainer(spec)


class TrainingRunner:
    def __init__(
        self, spec: RunSpec, *, hooks: list[ProgressHook] | None = None, show_bar: bool | None = None
    ):
        self.spec = spec
        self.out = Path(spec.output_path)
        #: this process' place in a data-parallel group (ddp.py), None when training alone
        self.dist = ddp.DistEnv.from_environ()
        self.is_main = self.dist is None or self.dist.is_main
        #: ranks > 0 keep their own audit trail and coqui log beside rank 0's
        self.rank_dir = self.out if self.is_main else self.out / "ranks" / str(self.dist.rank)  # type: ignore[union-attr]
        self.hooks = list(hooks or [])
        self.show_bar = show_bar
        self.stop_requested = False
        #: set by the device preflight: train on the GPU only when it chose one
        self._use_gpu = False
        self._steps_since_save = 0
        self._epochs_since_save = 0
        #: the epoch in progress, counted from 1 (0 before the first)
        self._epoch = 0
        #: the run folder's copy in object storage (RunSpec.checkpointsUri), None without one
        self.mirror: RunMirror | None = None

    # --- signals -------------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.warning("received %s: checkpointing after the current step", signal.Signals(signum).name)
        self.stop_requested = True

    def _install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    # --- events log ----------------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"time": now_rfc3339(), "event": kind, **fields})
        with open(self.rank_dir / EVENTS, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _attempt(self) -> int:
        try:
            lines = (self.rank_dir / EVENTS).read_text().splitlines()
        except OSError:
            return 1
        return 1 + sum(1 for line in lines if '"attempt_start"' in line)

    # --- the run -------------------------------------------------------------------------------

    def run(self) -> ExitCode:
        self.rank_dir.mkdir(parents=True, exist_ok=True)
        self._install_signal_handlers()
        try:  # before anything reads the folder: events, checkpoints, progress
            self.mirror = RunMirror.for_run(self.spec, self.dist.rank if self.dist else 0)
            if self.mirror is not None:
                self.mirror.restore()
        except ArtifactError as e:
            print(f"error: cannot restore the run folder: {e}", file=sys.stderr)
            return e.code
        attempt = self._attempt()
        self._event("attempt_start", attempt=attempt, pid=os.getpid(), **self._rank_fields())
        try:
            if self.dist is not None:
                ddp.init_process_group(self.dist)
            code = self._run(attempt)
            if self.mirror is not None and code in (ExitCode.SUCCESS, ExitCode.INTERRUPTED):
                self.mirror.sync(final=True)  # the interrupted checkpoint, or model/ and training.json
        except ArtifactError as e:
            print(f"error: {e}", file=sys.stderr)
            code = e.code
        except BadInput as e:
            print(f"error: {e}", file=sys.stderr)
            code = ExitCode.BAD_INPUT
        except DatasetError as e:
            print(f"error: the dataset cannot be trained on\n{e}", file=sys.stderr)
            code = ExitCode.BAD_INPUT
        except Exception:
            log.exception("training failed")
            code = ExitCode.FAILURE
        finally:
            ddp.destroy_process_group()
        self._event("attempt_end", attempt=attempt, exitCode=int(code))
        if self.mirror is not None and code not in ARTIFACT_REASONS:
            try:  # the audit trail's last lines; the outcome is decided already
                self.mirror.sync(retry_s=BEST_EFFORT_RETRY_S)
            except ArtifactError as e:
                print(f"warning: {e}", file=sys.stderr)
        return code

    def _rank_fields(self) -> dict[str, int]:
        return {"rank": self.dist.rank, "worldSize": self.dist.world_size} if self.dist else {}

    def _agree(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank (just ``flag`` alone): ranks must stop at the same step."""
        return ddp.any_rank(flag) if self.dist is not None else flag

    def _run(self, attempt: int) -> ExitCode:
        spec = self.spec
        # the dataset first: it needs no GPU, and its problems are permanent whatever the node
        engine = self._engine = make_engine(spec)
        dataset = self._prepare_dataset(engine)
        if dataset is None:
            return ExitCode.BAD_INPUT  # rank 0 said why
        if self.is_main:
            print(dataset.report.render(), file=sys.stderr)
        print(
            f"training on {len(dataset.train)} clips, evaluating on {len(dataset.eval)}"
            f" ({dataset.report.resampled} resampled); fingerprint {dataset.fingerprint}",
            file=sys.stderr,
        )
        device_code = self._device_preflight()
        if self._agree(device_code is not None):
            return device_code or ExitCode.PREFLIGHT_FAILED
        if self._agree(self.stop_requested):
            return ExitCode.INTERRUPTED
        store = CheckpointStore(self.out / "checkpoints", spec.training.keep_checkpoints)
        latest = store.latest()
        resumed_from = latest.epochs_completed if latest else None
        if latest and latest.epochs_completed >= spec.training.epochs:
            log.info("all %d epochs are done already: exporting only", spec.training.epochs)
            if self.is_main:
                self._finish(engine, store, dataset)
            return ExitCode.SUCCESS

        model = engine.build_model()
        trainer = self._build_trainer(engine, model, dataset)
        if latest is not None:
            self._restore(trainer, store, latest)
            self._epoch = latest.epochs_completed
            self._event(
                "resumed", fromEpoch=latest.epochs_completed, step=trainer.total_steps_done, file=latest.file
            )
            print(
                f"resuming after epoch {latest.epochs_completed} from {store.path(latest)}", file=sys.stderr
            )

        # progress.json, the bar and status reports are the group's, written by rank 0 alone
        tracker = ProgressTracker(
            self.out,
            epochs=spec.training.epochs,
            attempt=attempt,
            resumed_from_epoch=resumed_from,
            hooks=self.hooks,
            show_bar=self.show_bar,
        ) if self.is_main else None  # fmt: skip
        world = self.dist.world_size if self.dist else 1
        steps_per_epoch = math.ceil(math.ceil(len(dataset.train) / world) / spec.training.batch_size)
        if tracker is not None:
            tracker.report.checkpoints = store.refs()
            tracker.report.best = store.ref(b) if (b := store.best()) else None
            tracker.start(steps_per_epoch, trainer.total_steps_done)
        self._wire_callbacks(trainer, engine, store, tracker, dataset)
        try:
            trainer._fit()  # fit() would delete the run folder and sys.exit() on errors: we handle both
        except StopRequested:
            if self.is_main:
                self._save_interrupted(trainer, store)
            else:
                self._event("interrupted", step=trainer.total_steps_done, saved=False)
            return ExitCode.INTERRUPTED
        finally:
            if tracker is not None:
                tracker.close()
            trainer.dashboard_logger.finish()
        if self.is_main:
            self._finish(engine, store, dataset)
        return ExitCode.SUCCESS

    def _prepare_dataset(self, engine: EngineTrainer) -> PreparedDataset | None:
        """Check, select and resample; in a group rank 0 first (it alone writes the report and cache)."""

        def prepare(report: Path | None) -> PreparedDataset:
            dataset = prepare_dataset(
                self.spec.dataset,
                self.spec.engine,
                self.out / "cache" / "wavs",
                text_check=engine.text_check(),
                report_path=report,
                limits=engine.limits(),
            )
            if report is not None and self.spec.engine == Engine.XTTS:
                # rank 0, before any GPU time (a bad speakerWav fails at once); the export ships it
                write_reference_voices(self.spec, dataset.report.clips, self.out)
            return dataset

        if self.dist is None:
            return prepare(self.out / "dataset-report.json")
        if self.is_main:
            try:
                dataset = prepare(self.out / "dataset-report.json")
            except BaseException:
                ddp.any_rank(True)  # release the others: they give up too
                raise
            ddp.any_rank(False)
            return dataset
        if ddp.any_rank(False):
            return None
        return prepare(None)  # reads rank 0's resampled cache

    def _device_preflight(self) -> ExitCode | None:
        """The GPU self-test (``tts-runtime preflight``) before any model is built."""
        from tts_runtime.preflight import run_preflight

        result = run_preflight(self.spec.device_policy)
        self._use_gpu = result.ok and result.gpu
        if result.ok:
            print(f"device: {result.message}", file=sys.stderr)
            self._event("preflight", device=result.device, message=result.message)
            return None
        print(f"error: device preflight failed: {result.message}", file=sys.stderr)
        self._event("preflight", device=result.device, message=result.message, failed=True)
        return ExitCode(result.exit_code) if result.exit_code else ExitCode.PREFLIGHT_FAILED

    # --- coqui trainer -------------------------------------------------------------------------

    def _build_trainer(self, engine: EngineTrainer, model: Any, dataset: PreparedDataset) -> Any:
        return build_trainer(
            engine,
            model,
            dataset,
            grad_accum_steps=self.spec.training.grad_accum_steps,
            out=self.out,
            logs=self.out / "logs" if self.is_main else self.rank_dir / "logs",
            dist=self.dist,
            use_gpu=self._use_gpu,
            tensorboard=self.spec.tensorboard and self.is_main,
        )

    def _wire_callbacks(
        self,
        trainer: Any,
        engine: EngineTrainer,
        store: CheckpointStore,
        tracker: ProgressTracker | None,
        dataset: PreparedDataset,
    ) -> None:
        from trainer.callbacks import TrainerCallback

        spec = self.spec
        runner = self
        main = self.is_main  # in a group, only rank 0 writes samples, checkpoints and progress

        def on_epoch_start(t: Any) -> None:
            if runner._agree(runner.stop_requested):
                raise StopRequested
            # coqui updates epochs_done only after this callback: count ourselves (from 1, as people do)
            runner._epoch += 1
            epoch = runner._epoch
            if runner.dist is not None:
                t.set_epoch(epoch)
                t.seen.clear()
            runner._event("epoch_start", epoch=epoch, step=t.total_steps_done)
            if tracker is not None:
                tracker.epoch_start(epoch)

        def on_train_step_end(t: Any) -> None:
            runner._steps_since_save += 1
            if tracker is not None:
                tracker.step(t.total_steps_done, avg_loss(t.keep_avg_train))
            if runner._agree(runner.stop_requested):
                raise StopRequested

        def on_epoch_end(t: Any) -> None:
            epoch = runner._epoch
            eval_loss = avg_loss(t.keep_avg_eval)
            train_loss = avg_loss(t.keep_avg_train)
            if runner.dist is not None:
                # each rank averaged its own shard; the group's loss is the mean over ranks
                eval_loss, train_loss = ddp.mean_over_ranks(eval_loss), ddp.mean_over_ranks(train_loss)
                runner._event(
                    "shard",
                    epoch=epoch,
                    clips=t.shard(),
                    trained=sorted(t.seen),
                    weights=ddp.weights_digest(t._get_model()),
                )
            sample = runner._write_sample(t, engine, dataset, epoch) if main else None
            runner._epochs_since_save += 1
            last = epoch >= spec.training.epochs
            if epoch % spec.training.save_every_epochs == 0 or last or runner.stop_requested:
                if main:
                    info = CheckpointInfo("", epoch, t.total_steps_done, eval_loss, train_loss)
                    is_best = store.save_epoch(runner._state(t), info)
                    runner._event(
                        "checkpoint", epoch=epoch, step=t.total_steps_done, file=info.file, best=is_best
                    )
                runner._steps_since_save = runner._epochs_since_save = 0
            runner._event(
                "epoch_end", epoch=epoch, step=t.total_steps_done, loss=train_loss, evalLoss=eval_loss
            )
            if main and runner.mirror is not None:
                # the checkpoint, its sample, TensorBoard; the index last. Before the status names
                # the checkpoint: what status lists survives the node (progress.json goes next time)
                runner.mirror.sync()
            if tracker is not None:
                best = store.best()
                tracker.epoch_end(epoch, eval_loss, store.refs(), store.ref(best) if best else None, sample)
            if runner._agree(runner.stop_requested) and not last:
                raise StopRequested

        callbacks = TrainerCallback()
        callbacks.parse_callbacks_dict(
            {
                "on_epoch_start": on_epoch_start,
                "on_train_step_end": on_train_step_end,
                "on_epoch_end": on_epoch_end,
            }
        )
        # Trainer.__init__ already ran on_init_*; swap in a registry that has ours as well
        callbacks.callbacks_on_init_start = trainer.callbacks.callbacks_on_init_start
        callbacks.callbacks_on_init_end = trainer.callbacks.callbacks_on_init_end
        trainer.callbacks = callbacks

    def _state(self, t: Any) -> dict[str, Any]:
        """The dict coqui's ``save_model`` writes, so coqui's tools can read our checkpoints."""
        return trainer_state(t, self._engine.frozen_prefixes)

    def _restore(self, t: Any, store: CheckpointStore, info: CheckpointInfo) -> None:
        restore_state(t, store, info, self._engine.frozen_prefixes)

    def _save_interrupted(self, t: Any, store: CheckpointStore) -> None:
        if self._steps_since_save == 0 and self._epochs_since_save == 0:
            log.warning("interrupted: the newest checkpoint already holds every finished step")
            self._event("interrupted", step=t.total_steps_done, saved=False)
            return
        # the epoch in progress is not complete: a restart repeats it, from these (newer) weights
        completed = t.epochs_done if self._steps_since_save else t.epochs_done + 1
        info = CheckpointInfo("", completed, t.total_steps_done, None, avg_loss(t.keep_avg_train))
        started = time.monotonic()
        store.save_interrupted(self._state(t), info)
        self._event("interrupted", step=t.total_steps_done, saved=True, epochsCompleted=completed)
        print(
            f"interrupted: checkpoint {store.path(info)} written in {time.monotonic() - started:.1f} s",
            file=sys.stderr,
        )

    # --- samples and export --------------------------------------------------------------------

    def _write_sample(
        self, t: Any, engine: EngineTrainer, dataset: PreparedDataset, epoch: int
    ) -> SampleRef | None:
        import soundfile as sf

        text, speaker = self._sample_inputs(dataset)
        dest = self.out / "samples" / f"epoch_{epoch}.wav"
        dest.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        try:
            wav = engine.synthesize_sample(t._get_model(), text, speaker)
        except Exception:  # a bad sample must not cost the epoch: log it, keep training
            log.exception("epoch %d: sample synthesis failed", epoch)
            return None
        tmp = dest.with_name(f".{dest.name}.tmp.wav")
        sf.write(str(tmp), wav, engine.output_sample_rate)
        os.replace(tmp, dest)
        t.dashboard_logger.add_audio("sample", wav, epoch, engine.output_sample_rate)
        t.dashboard_logger.flush()
        self._event("sample", epoch=epoch, path=str(dest), seconds=round(time.monotonic() - started, 2))
        return SampleRef(epoch=epoch, path=str(dest))

    def _sample_inputs(self, dataset: PreparedDataset) -> tuple[str, Path | None]:
        first = (dataset.eval or dataset.train)[0]
        samples = self.spec.samples
        text = samples.text if samples and samples.text.strip() else first["text"]
        if samples and samples.speaker_wav:
            return text, Path(self.spec.dataset.path) / samples.speaker_wav
        return text, Path(first["audio_file"])

    def _finish(self, engine: EngineTrainer, store: CheckpointStore, dataset: PreparedDataset) -> None:
        """Write the best checkpoint as a servable directory ``model/`` and the summary export reads."""
        best = store.best() or store.latest()
        if best is None:
            raise RuntimeError("training finished without a checkpoint")
        dest = self.out / "model"
        tmp = self.out / ".model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        files = engine.export_servable(store.load(best), tmp)
        files += copy_voices(self.out, tmp)  # the export finds them beside the model, however fetched
        old = self.out / ".model.old"
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
        summary = {
            "engine": str(self.spec.engine),
            "run": self.spec.run.model_dump(mode="json"),
            "epochs": self.spec.training.epochs,
            "bestEpoch": best.epochs_completed,
            "bestStep": best.step,
            "checkpoint": str(store.path(best)),
            "metrics": {
                k: v for k, v in {"evalLoss": best.eval_loss, "trainLoss": best.train_loss}.items() if v
            },
            "datasetFingerprint": dataset.fingerprint,
            "model": str(dest),
            "files": files,
            "finishedAt": now_rfc3339(),
        }
        (self.out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
        self._event("finished", bestEpoch=best.epochs_completed, model=str(dest))
        print(f"done: best epoch {best.epochs_completed}, servable model in {dest}", file=sys.stderr)
