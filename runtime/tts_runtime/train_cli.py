"""``tts-runtime train``: the trainer a TrainingRun's Job runs, and a person can run by hand.

The input is the contract's RunSpec (``--spec FILE`` or ``$TTS_RUN_SPEC``, as the operator mounts it);
flags build one by hand or override single fields of a spec file. Exit codes are the contract's:
0 done, 65 bad input (dataset, spec, base model; do not retry), 69 device preflight failed,
75 interrupted after a checkpoint (a retry resumes), 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from tts_contract.contract import Defaults, DevicePolicy, Engine, ExitCode, Paths, RunSpec


def _wire_path(dotted: str) -> tuple[str, ...]:
    """``"dataset.eval_split"`` -> ``("dataset", "evalSplit")``: a RunSpec field's path in the spec's
    JSON, from its Python names. A name RunSpec does not have fails here, at import."""
    model: type[BaseModel] | None = RunSpec
    path = []
    for name in dotted.split("."):
        if model is None or name not in model.model_fields:
            raise KeyError(f"RunSpec has no field {dotted!r}")
        field = model.model_fields[name]
        path.append(field.alias or name)
        model = next(
            (
                t
                for t in (field.annotation, *get_args(field.annotation))
                if isinstance(t, type) and issubclass(t, BaseModel)
            ),
            None,
        )
    return tuple(path)


#: flag dest -> the RunSpec field (Python names) it overrides; build_spec applies them all alike
_OVERRIDES: dict[str, tuple[str, ...]] = {
    dest: _wire_path(field)
    for dest, field in {
        "engine": "engine",
        "dataset": "dataset.path",
        "language": "dataset.language",
        "max_samples": "dataset.max_samples",
        "eval_split": "dataset.eval_split",
        "seed": "dataset.seed",
        "resample": "dataset.resample",
        "epochs": "training.epochs",
        "batch_size": "training.batch_size",
        "grad_accum_steps": "training.grad_accum_steps",
        "learning_rate": "training.learning_rate",
        "save_every_epochs": "training.save_every_epochs",
        "keep_checkpoints": "training.keep_checkpoints",
        "sample_text": "samples.text",
        "sample_speaker_wav": "samples.speaker_wav",
        "base_model": "base_model_path",
        "output": "output_path",
        "device_policy": "device_policy",
        "gpus": "gpus",
        "tensorboard": "tensorboard",
        "report_status": "report_status",
        "run_name": "run.name",
        "namespace": "run.namespace",
    }.items()
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Fine-tune XTTS (GPT part, from a base model directory) or train VITS on an LJSpeech dataset "
        "(metadata.csv with id|text|normalized_text, wavs/<id>.wav). The dataset is checked first; a "
        "broken one ends with one report and exit code 65. Checkpoints, per-epoch sample wavs, "
        "TensorBoard logs and progress.json go to the output folder; running the same command again "
        "resumes after the last finished epoch."
    )
    parser.epilog = (
        "examples:\n"
        "  tts-runtime train --engine vits --dataset ./narrator --output ./runs/narrator --epochs 100 "
        "--device-policy PreferGPU\n"
        "  tts-runtime train --engine xtts --base-model ./xtts-v2 --dataset ./narrator --language pt "
        "--output ./runs/ft --epochs 10 --batch-size 3 --grad-accum-steps 84\n"
        f"  tts-runtime train --spec {Paths.RUN_SPEC}   (what the operator's Job runs)"
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    src = parser.add_argument_group("spec")
    src.add_argument("--spec", type=Path, help=f"a RunSpec JSON file (default: ${Paths.RUN_SPEC_ENV} if set)")
    src.add_argument("--engine", choices=[e.value for e in Engine])
    src.add_argument("--run-name", help="the TrainingRun's name (default: the output folder's name)")
    src.add_argument("--namespace", help="the TrainingRun's namespace (default: default)")
    data = parser.add_argument_group("dataset")
    data.add_argument("--dataset", help="LJSpeech folder: metadata.csv + wavs/")
    data.add_argument(
        "--language", help=f"language of the transcripts (XTTS language code, default {Defaults.LANGUAGE})"
    )
    data.add_argument(
        "--max-samples", type=int, help="train on at most N clips, drawn with --seed (default: all)"
    )
    data.add_argument(
        "--eval-split",
        type=float,
        help=f"fraction of clips held out for evaluation (default {Defaults.EVAL_SPLIT})",
    )
    data.add_argument(
        "--seed", type=int, help=f"seed of the sample selection and the eval split (default {Defaults.SEED})"
    )
    data.add_argument(
        "--no-resample",
        dest="resample",
        action="store_false",
        default=None,
        help="reject clips whose sample rate differs from the model's instead of resampling them",
    )
    train = parser.add_argument_group("training")
    train.add_argument(
        "--base-model",
        help="base model directory (XTTS: model.pth config.json vocab.json "
        "dvae.pth mel_stats.pth; VITS: optional config.json [+ model.pth])",
    )
    train.add_argument("--output", help="the run folder: checkpoints, samples, logs, progress.json")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int, help=f"default {Defaults.BATCH_SIZE}")
    train.add_argument("--grad-accum-steps", type=int, help=f"default {Defaults.GRAD_ACCUM_STEPS}")
    train.add_argument("--learning-rate", type=float, help="default 5e-6 for XTTS, 2e-4 for VITS")
    train.add_argument("--save-every-epochs", type=int, help=f"default {Defaults.SAVE_EVERY_EPOCHS}")
    train.add_argument(
        "--keep-checkpoints",
        type=int,
        help=f"epoch checkpoints kept besides the best (default {Defaults.KEEP_CHECKPOINTS})",
    )
    train.add_argument("--sample-text", help="text of the per-epoch sample (default: an eval clip's text)")
    train.add_argument("--sample-speaker-wav", help="XTTS reference clip, relative to the dataset")
    dev = parser.add_argument_group("device and reporting")
    dev.add_argument(
        "--device-policy",
        choices=[p.value for p in DevicePolicy],
        help=f"default {Defaults.DEVICE_POLICY.value}",
    )
    dev.add_argument(
        "--gpus",
        type=int,
        help=f"GPUs to train on (default {Defaults.GPUS}); "
        "more than one trains data-parallel, one process per GPU",
    )
    dev.add_argument(
        "--nproc",
        type=int,
        help="data-parallel worker processes (default: --gpus); with --ddp-backend gloo this trains "
        "data-parallel on CPU",
    )
    dev.add_argument(
        "--ddp-backend",
        choices=["gloo", "nccl"],
        help="collective backend of a data-parallel run (default: gloo with --device-policy CPU, else nccl)",
    )
    dev.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", default=None)
    dev.add_argument(
        "--report-status",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="patch TrainingRun.status through the pod's ServiceAccount (default: on inside a cluster)",
    )
    dev.add_argument(
        "--progress-bar",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar on stderr (default: when stderr is a terminal)",
    )
    dev.add_argument("-v", "--verbose", action="store_true", help="log coqui's own output at INFO level")


def build_spec(args: argparse.Namespace) -> RunSpec:
    """The spec file (if any) with the flags given laid over it. Raises ValueError with a readable message."""
    path = args.spec or (Path(os.environ[Paths.RUN_SPEC_ENV]) if os.environ.get(Paths.RUN_SPEC_ENV) else None)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = json.loads(path.read_text())
        except OSError as e:
            raise ValueError(f"cannot read the run spec {path}: {e.strerror}") from e
        except json.JSONDecodeError as e:
            raise ValueError(f"the run spec {path} is not JSON: {e}") from e
    for dest, field_path in _OVERRIDES.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        target = data
        for key in field_path[:-1]:
            target = target.setdefault(key, {})
        target[field_path[-1]] = value
    if "outputPath" in data:
        run = data.setdefault("run", {})
        run.setdefault("name", Path(data["outputPath"]).name or "run")
        run.setdefault("namespace", "default")
    if args.report_status is None and path is None:
        data.setdefault("reportStatus", False)  # by hand, outside a cluster
    if path is None and "outputPath" not in data:
        raise ValueError(
            "give --spec FILE (or $TTS_RUN_SPEC), or at least --engine, --dataset, --output, --epochs"
        )
    try:
        return RunSpec.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ValueError(f"invalid run spec: {problems}") from e


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("tts_runtime").setLevel(logging.INFO)
    try:
        spec = build_spec(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return int(ExitCode.BAD_INPUT)

    from tts_runtime.training import ddp

    try:
        dist_env = ddp.DistEnv.from_environ()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return int(ExitCode.BAD_INPUT)
    if args.nproc is not None and args.nproc < 1:
        print("error: --nproc must be at least 1", file=sys.stderr)
        return int(ExitCode.BAD_INPUT)
    nproc = args.nproc if args.nproc is not None else spec.gpus
    if dist_env is None and nproc > 1:
        return _launch_group(spec, nproc, args)

    from tts_runtime.training.runner import TrainingRunner
    from tts_runtime.training.status_reporter import StatusReporter

    # in a data-parallel group, rank 0 alone reports (ranks > 0 would only repeat it)
    report = spec.report_status and (dist_env is None or dist_env.is_main)
    reporter = StatusReporter.from_environment(spec.run) if report else None
    if report and reporter is None:
        logging.getLogger(__name__).info("not inside a cluster: progress goes to progress.json only")
    runner = TrainingRunner(spec, hooks=[reporter] if reporter else [], show_bar=args.progress_bar)
    try:
        return int(runner.run())
    finally:
        if reporter is not None:
            reporter.close()


def _launch_group(spec: RunSpec, nproc: int, args: argparse.Namespace) -> int:
    """Start ``nproc`` workers (ddp.py) on the effective spec: the file with the flags laid over it."""
    import tempfile

    from tts_runtime.training import ddp

    backend = args.ddp_backend or ("gloo" if spec.device_policy == DevicePolicy.CPU else "nccl")
    worker_args = ["-v"] if args.verbose else []
    if args.progress_bar is not None:
        worker_args.append("--progress-bar" if args.progress_bar else "--no-progress-bar")
    elif sys.stderr.isatty():
        worker_args.append("--progress-bar")  # rank 0 shares this terminal
    with tempfile.TemporaryDirectory(prefix="tts-ddp-") as tmp:
        spec_file = Path(tmp) / "run-spec.json"
        spec_file.write_text(spec.model_dump_json(by_alias=True))
        return ddp.launch(spec_file, nproc, backend, worker_args)


def main(argv: list[str] | None = None) -> int:
    """``python -m tts_runtime.train_cli`` (the same as ``tts-runtime train``)."""
    parser = argparse.ArgumentParser(prog="tts-runtime train")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
