"""``tts-runtime``: the command the training and serving pods run, and that people run by hand.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported only for the subcommand being run, so ``tts-runtime --help`` stays fast and never
imports torch (which takes seconds): the help texts live here, not in the modules.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

from tts_contract.contract import ExitCode

log = logging.getLogger("tts_runtime")


@dataclass(frozen=True)
class Subcommand:
    name: str
    module: str
    help: str
    description: str


SUBCOMMANDS = (
    Subcommand(
        "train",
        "tts_runtime.train_cli",
        "fine-tune XTTS or train VITS from a run spec or flags",
        "Train a model: XTTS GPT fine-tuning from a base model directory, or VITS from scratch. "
        "Checkpoints, a sample wav per epoch and TensorBoard logs go to the run's output folder; "
        "a restarted run resumes from its latest complete checkpoint.",
    ),
    Subcommand(
        "serve",
        "tts_runtime.serve",
        "serve a model version over HTTP (OpenAI-compatible speech API)",
        "Serve a model version directory over HTTP: POST /v1/audio/speech, voices, health and metrics.",
    ),
    Subcommand(
        "preflight",
        "tts_runtime.preflight",
        "self-test the device: the STFT/mel shapes XTTS runs, a matmul, versions",
        "Run the operations XTTS depends on (speaker-encoder mel at 16 kHz, conditioning STFTs with "
        "n_fft 2048 and 4096, a conv1d and a matmul) on the device the policy picks, check each "
        "output and time it. Exit code 69 when the policy is RequireGPU and the GPU fails.",
    ),
    Subcommand(
        "export",
        "tts_runtime.export",
        "turn a checkpoint or training run folder into a servable, checksummed version directory",
        "Copy a coqui checkpoint (a training run folder, a checkpoint file or a model directory) into "
        "DST/<version>/ as a servable model version: config.json, model.pth, vocab.json (XTTS) and a "
        "manifest.json with the sha256 of every file. Written to a temporary directory, verified, then "
        "renamed into place; an existing version is never overwritten.",
    ),
    Subcommand(
        "verify",
        "tts_runtime.verify",
        "check a version directory's files against its manifest",
        "Recompute the sha256 of every file listed in DIR/manifest.json. Exit code 65 on any mismatch.",
    ),
    Subcommand(
        "fetch",
        "tts_runtime.artifacts.fetch",
        "download an artifact (s3://, hf://, https://) into a directory, resumable and checked",
        "Download an s3 prefix or object, a Hugging Face hub repository at a revision (resolved to its "
        "commit) or an https file or archive (its sha256 required) into DIR. Files already complete are "
        "skipped and an interrupted download resumes where it stopped. With --manifest (a model "
        "version) manifest.json must exist, only the files it lists are fetched and each is checked "
        "against its sha256. Exit codes: 66 not found, 68 storage unreachable (after retries), 74 "
        "checksum mismatch, 77 access denied.",
    ),
    Subcommand(
        "publish",
        "tts_runtime.artifacts.publish",
        "upload a version directory to an s3:// prefix, never over an existing version",
        "Upload a version directory (verified against its manifest first) to s3://bucket/prefix/<version>: "
        "every file in parallel, manifest.json last, so a version with a manifest is complete. An "
        "existing version is never overwritten (exit code 73).",
    ),
    Subcommand(
        "demo-model",
        "tts_runtime.demo_model",
        "write a tiny randomly initialised model in the real file layout",
        "Write a tiny randomly initialised XTTS or VITS model as a servable version directory (with a "
        "manifest), so a cluster's plumbing (scheduling, probes, rollouts) can be proven before "
        "multi-GB weights are downloaded. It speaks noise. The XTTS one also works as a fine-tuning "
        "base (dvae.pth, mel_stats.pth).",
    ),
)


def _add_global_flags(parser: argparse.ArgumentParser, defaults: bool) -> None:
    # also accepted after the subcommand (``tts-runtime serve --log-format json``), where an absent
    # flag must not override one given before it
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text" if defaults else argparse.SUPPRESS,
        help="text for people, json (one object per line) for log pipelines (default: text)",
    )
    parser.add_argument(
        "--log-level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        type=str.upper,
        default="INFO" if defaults else argparse.SUPPRESS,
        help="default: INFO",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tts-runtime",
        description="Train, export and serve Coqui TTS models (XTTS, VITS) for tts-operator.",
        epilog="Run 'tts-runtime COMMAND --help' for a command's options.",
    )
    _add_global_flags(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in SUBCOMMANDS:
        sub.add_parser(cmd.name, help=cmd.help, description=cmd.description, add_help=False)
    return parser


def _load(cmd: Subcommand) -> ModuleType | None:
    try:
        return importlib.import_module(cmd.module)
    except ModuleNotFoundError as e:
        if e.name != cmd.module:
            raise  # the module exists but something it imports does not: that is a real error
        return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # First pass: global flags and the subcommand's name only. The subcommand's own flags are parsed
    # by a parser its module fills in, so that importing one module never imports all of them.
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return ExitCode.BAD_INPUT if argv else ExitCode.SUCCESS
    cmd = next(c for c in SUBCOMMANDS if c.name == args.command)
    module = _load(cmd)
    if module is None:
        print(
            f"tts-runtime {cmd.name}: not available in this build (module {cmd.module} is not installed)",
            file=sys.stderr,
        )
        return ExitCode.FAILURE
    sub_parser = argparse.ArgumentParser(prog=f"tts-runtime {cmd.name}", description=cmd.description)
    module.add_arguments(sub_parser)
    _add_global_flags(sub_parser, defaults=False)
    sub_args = sub_parser.parse_args(rest)
    for key, value in vars(args).items():
        if not hasattr(sub_args, key):
            setattr(sub_args, key, value)

    from .logs import setup_logging

    setup_logging(args.log_format, args.log_level)
    from .errors import RuntimeCommandError

    try:
        return int(module.run(sub_args))
    except RuntimeCommandError as e:
        log.error("%s", e)
        return int(e.exit_code)
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
