"""``tts-runtime export SRC DST``: a servable, checksummed, immutable version directory.

SRC is one of:

- a training run folder (the coqui Trainer's ``<run>-<date>-<hash>/`` or the folder holding it):
  the checkpoint is ``best_model.pth`` (or ``--checkpoint latest`` / a file name), with the run's
  ``config.json``;
- a checkpoint file (``.pth``) with a ``config.json`` beside it;
- a model directory (``model.pth`` + ``config.json`` [+ ``vocab.json`` ...]), e.g. an original XTTS
  release or another version directory.

The result is ``DST/<version>/`` holding what ``tts_runtime.models.load_model`` serves:

- VITS: ``config.json`` and a ``model.pth`` with the weights only (the optimizer state a Trainer
  checkpoint carries is as large as the model and useless for serving);
- XTTS: a GPT fine-tune checkpoint is a ``GPTTrainer`` state (``xtts.``-prefixed keys, plus the DVAE
  and mel front ends used only for training). It becomes a full ``Xtts`` state dict; its
  ``GPTTrainerConfig`` becomes a plain ``XttsConfig`` (the training-only fields dropped); the tokenizer
  ``vocab.json`` (the run only records its path) and, when found, ``dvae.pth`` and ``mel_stats.pth``
  come from the base model, so the version can itself be fine-tuned again. Legacy XTTS checkpoints
  whose config is a pickled object are rewritten with a plain dict config (torch 2.4 cannot load them
  safely otherwise).

XTTS versions carry their reference voices: the clips the trainer kept in the run's ``voices/``
folder (``training/reference.py``; found beside SRC or in it), or those a version given as SRC
lists in its manifest, go to ``voices/<name>.wav`` and into the manifest's ``voices`` and
``defaultVoice``, so serving pods can speak before anyone uploads a clip. VITS versions have none.

Then a ``manifest.json`` with the sha256 of every file, verification of every file, a test load
(``--no-load-check`` skips it), and an atomic rename into place. An existing version is never touched.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tts_contract.contract import (
    MANIFEST_NAME,
    Engine,
    ManifestSource,
    ManifestVoice,
    ModelManifest,
    sha256_file,
)

from .errors import BadInputError, RuntimeCommandError
from .models import CONFIG_NAME, MODEL_NAME, VOCAB_NAME, read_engine
from .versions import build_manifest, check_version_name, staged_version, write_manifest

log = logging.getLogger(__name__)

#: XTTS files a fine-tuning base needs besides the servable ones (PINS.md)
XTTS_TRAINING_FILES = ("dvae.pth", "mel_stats.pth")
#: optional files copied from a model directory when present
XTTS_OPTIONAL_FILES = (*XTTS_TRAINING_FILES, "speakers_xtts.pth")
_CHECKPOINT_RE = re.compile(r"^(checkpoint|best_model)_(\d+)\.pth$")
#: keys of a GPTTrainer state dict that belong to the training front end, not to the Xtts model
_TRAINING_ONLY_PREFIXES = ("dvae.", "torch_mel_spectrogram_style_encoder.", "torch_mel_spectrogram_dvae.")


@dataclass
class ExportSource:
    """What SRC turned out to be."""

    engine: Engine
    config_path: Path
    #: a Trainer checkpoint to convert, or None when SRC is a model directory copied file by file
    checkpoint: Path | None = None
    model_dir: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def _checkpoints_in(folder: Path) -> list[Path]:
    return [p for p in folder.glob("*.pth") if _CHECKPOINT_RE.match(p.name) or p.name == "best_model.pth"]


def _pick_checkpoint(folder: Path, which: str) -> Path:
    """``best``: best_model.pth or the newest best_model_<step>; ``latest``: the highest step."""
    found = _checkpoints_in(folder)

    def step(p: Path) -> int:
        m = _CHECKPOINT_RE.match(p.name)
        return int(m.group(2)) if m else -1

    if which == "best":
        if (folder / "best_model.pth").is_file():
            return folder / "best_model.pth"
        best = [p for p in found if p.name.startswith("best_model_")]
        if best:
            return max(best, key=step)
        log.warning("%s: no best_model*.pth, exporting the latest checkpoint instead", folder)
    numbered = [p for p in found if step(p) >= 0]
    if not numbered:
        raise BadInputError(f"{folder}: no checkpoint_<step>.pth or best_model*.pth")
    return max(numbered, key=step)


def find_source(src: Path, checkpoint: str = "best") -> ExportSource:
    if not src.exists():
        raise BadInputError(
            f"{src}: does not exist; pass a training run folder, a checkpoint (.pth) or a model directory"
        )
    if src.is_file():
        config = src.parent / CONFIG_NAME
        if not config.is_file():
            raise BadInputError(f"{src}: no {CONFIG_NAME} beside the checkpoint")
        return ExportSource(read_engine(config), config, checkpoint=src)
    if checkpoint not in ("best", "latest"):
        # a file name inside the run folder
        return find_source(src / checkpoint, "best")
    if _checkpoints_in(src):
        return ExportSource(
            read_engine(src / CONFIG_NAME), src / CONFIG_NAME, _pick_checkpoint(src, checkpoint)
        )
    if (src / MODEL_NAME).is_file() and (src / CONFIG_NAME).is_file():
        return ExportSource(read_engine(src / CONFIG_NAME), src / CONFIG_NAME, model_dir=src)
    # the folder the run's output went to: the Trainer made one run folder inside it; take the newest
    runs = sorted(
        (d for d in src.iterdir() if d.is_dir() and _checkpoints_in(d) and (d / CONFIG_NAME).is_file()),
        key=lambda d: d.stat().st_mtime,
    )
    if runs:
        if len(runs) > 1:
            log.info("%s holds %d run folders; exporting the newest, %s", src, len(runs), runs[-1].name)
        return find_source(runs[-1], checkpoint)
    raise BadInputError(
        f"{src}: neither a training run folder (checkpoint_<step>.pth, best_model.pth), "
        f"nor a model directory ({MODEL_NAME} + {CONFIG_NAME})"
    )


def _copy_verified(src: Path, dest: Path) -> None:
    """Copy a file and prove the copy equals the original (the manifest is computed from the copy)."""
    expected = sha256_file(src)
    shutil.copyfile(src, dest)
    if sha256_file(dest) != expected:
        raise RuntimeCommandError(f"copying {src} to {dest}: the copy differs from the original")


def _has_pickled_xtts_config(model_path: Path) -> bool:
    """Whether a checkpoint pickles an XttsConfig object (original XTTS releases) instead of a dict.

    Looks at the pickle inside the zip only (small: tensors are stored beside it) instead of loading
    gigabytes of weights.
    """
    try:
        with zipfile.ZipFile(model_path) as zf:
            pkl = next((n for n in zf.namelist() if n.endswith("/data.pkl")), None)
            return pkl is not None and b"XttsConfig" in zf.read(pkl)
    except zipfile.BadZipFile:
        return False


def _save_weights(dest: Path, state: dict[str, Any], config: dict[str, Any]) -> None:
    import torch

    torch.save({"model": state, "config": config}, dest)


def _xtts_config_from_run(run_config: dict[str, Any]) -> Any:
    """A plain XttsConfig from a GPTTrainerConfig dict: the training-only fields dropped."""
    from TTS.tts.configs.xtts_config import XttsArgs, XttsConfig

    top = {f.name for f in dataclasses.fields(XttsConfig)}
    args = {f.name for f in dataclasses.fields(XttsArgs)}
    cleaned = {k: v for k, v in run_config.items() if k in top}
    cleaned["model_args"] = {k: v for k, v in run_config.get("model_args", {}).items() if k in args}
    cleaned["model_args"]["tokenizer_file"] = ""  # vocab.json sits beside model.pth
    cleaned["model"] = "xtts"
    config = XttsConfig()
    config.from_dict(cleaned)
    return config


def _base_file(name: str, recorded: str | None, base: Path | None) -> Path | None:
    """A base-model file: from --base first, else the path the run's config recorded, if it exists."""
    if base is not None and (base / name).is_file():
        return base / name
    if recorded and "://" not in recorded and Path(recorded).is_file():
        return Path(recorded)
    return None


def _export_xtts_checkpoint(source: ExportSource, staging: Path, base: Path | None) -> None:
    from .models import read_checkpoint

    assert source.checkpoint is not None
    run_config = json.loads(source.config_path.read_text())
    model_args = run_config.get("model_args", {})
    vocab = _base_file(VOCAB_NAME, model_args.get("tokenizer_file"), base)
    if vocab is None:
        raise BadInputError(
            f"{source.checkpoint}: cannot find the tokenizer {VOCAB_NAME} (the run recorded "
            f"{model_args.get('tokenizer_file')!r}); pass the base model directory with --base"
        )
    checkpoint = read_checkpoint(source.checkpoint)
    state = {}
    for key, tensor in checkpoint["model"].items():
        key = key.removeprefix("xtts.")
        if not key.startswith(_TRAINING_ONLY_PREFIXES):
            state[key] = tensor
    config = _xtts_config_from_run(run_config)
    _save_weights(staging / MODEL_NAME, state, config.to_dict())
    config.save_json(str(staging / CONFIG_NAME))
    _copy_verified(vocab, staging / VOCAB_NAME)
    recorded = {
        "dvae.pth": model_args.get("dvae_checkpoint"),
        "mel_stats.pth": model_args.get("mel_norm_file"),
    }
    for name in XTTS_TRAINING_FILES:
        if found := _base_file(name, recorded[name], base):
            _copy_verified(found, staging / name)
        else:
            log.warning("%s not found: the export serves, but cannot be a fine-tuning base", name)


def _export_vits_checkpoint(source: ExportSource, staging: Path) -> None:
    from .models import read_checkpoint

    assert source.checkpoint is not None
    checkpoint = read_checkpoint(source.checkpoint)
    config = json.loads(source.config_path.read_text())
    _save_weights(staging / MODEL_NAME, checkpoint["model"], config)
    _copy_verified(source.config_path, staging / CONFIG_NAME)


def _export_model_dir(source: ExportSource, staging: Path) -> None:
    from .models import read_checkpoint

    assert source.model_dir is not None
    src = source.model_dir
    model_path = src / MODEL_NAME
    if source.engine is Engine.XTTS and _has_pickled_xtts_config(model_path):
        log.info(
            "%s: legacy XTTS checkpoint with a pickled config; rewriting it with a plain dict", model_path
        )
        checkpoint = read_checkpoint(model_path)
        _save_weights(staging / MODEL_NAME, checkpoint["model"], checkpoint["config"])
    else:
        _copy_verified(model_path, staging / MODEL_NAME)
    _copy_verified(src / CONFIG_NAME, staging / CONFIG_NAME)
    if source.engine is Engine.XTTS:
        if not (src / VOCAB_NAME).is_file():
            raise BadInputError(f"{src}: no {VOCAB_NAME} (XTTS needs its tokenizer)")
        for name in (VOCAB_NAME, *XTTS_OPTIONAL_FILES):
            if (src / name).is_file():
                _copy_verified(src / name, staging / name)


#: a reference clip the server accepts (``server.settings``: min/max voice seconds)
_VOICE_SECONDS = (0.33, 60.0)


@dataclass(frozen=True)
class VoiceClip:
    name: str
    path: Path


def find_voices(src: Path) -> tuple[list[VoiceClip], str | None]:
    """The reference voices that go with SRC, and the default's name.

    A version directory's own (its manifest's ``voices``); else the trainer's ``voices/`` folder
    (``voices.json`` + clips) in SRC or beside it: the operator exports ``<run>/model``, whose
    voices are in ``<run>/voices``.
    """
    from .training.reference import VOICE_NAME, VOICES_DIR, read_index

    start = src if src.is_dir() else src.parent
    if (start / MANIFEST_NAME).is_file():
        try:
            manifest = ModelManifest.load(start)
        except ValueError:
            manifest = None
        if manifest is not None and manifest.voices:
            clips = [
                VoiceClip(v.name, start / v.wav) for v in manifest.voices if VOICE_NAME.fullmatch(v.name)
            ]
            return clips, manifest.default_voice
    for folder in (start / VOICES_DIR, start.parent / VOICES_DIR):
        voices, default = read_index(folder)
        if voices:
            return [VoiceClip(v.name, folder / v.wav) for v in voices], default or voices[0].name
    return [], None


def _add_voices(src: Path, engine: Engine, staging: Path) -> tuple[list[ManifestVoice], str | None]:
    """Copy SRC's reference voices into ``staging/voices/`` (XTTS only); their manifest entries."""
    import soundfile as sf

    clips, default = find_voices(src)
    if not clips:
        if engine is Engine.XTTS:
            log.warning("%s: no reference voice found: the version speaks only in voices given to it", src)
        return [], None
    if engine is not Engine.XTTS:
        log.info("%s: %s models do not clone voices: reference clips left out", src, engine.value)
        return [], None
    (staging / "voices").mkdir(exist_ok=True)
    voices = []
    for clip in clips:
        try:
            info = sf.info(str(clip.path))
        except (OSError, RuntimeError) as e:
            raise BadInputError(f"reference voice {clip.name}: {clip.path}: cannot read it ({e})") from None
        seconds = info.frames / info.samplerate if info.samplerate else 0.0
        lo, hi = _VOICE_SECONDS
        if not lo <= seconds <= hi:
            raise BadInputError(
                f"reference voice {clip.name}: {clip.path} lasts {seconds:.2f} s; "
                f"a reference needs {lo}-{hi} s"
            )
        rel = f"voices/{clip.name}.wav"
        _copy_verified(clip.path, staging / rel)
        voices.append(ManifestVoice(name=clip.name, wav=rel))
    names = [v.name for v in voices]
    return voices, default if default in names else names[0]


def _checkpoint_metrics(path: Path) -> dict[str, float]:
    """Step, epoch and loss a Trainer checkpoint records (cheap: the pickle only, not the tensors)."""
    import torch

    try:
        ckpt = torch.load(path, map_location="meta", weights_only=True, mmap=True)
    except Exception:  # metrics are a nicety; a checkpoint we cannot read fails loudly later anyway
        return {}
    metrics: dict[str, float] = {}
    for key, name in (("step", "step"), ("epoch", "epoch"), ("model_loss", "evalLoss")):
        value = ckpt.get(key) if isinstance(ckpt, dict) else None
        if isinstance(value, dict):  # model_loss may be {"train_loss":..., "eval_loss":...}
            value = value.get("eval_loss", value.get("train_loss"))
        if isinstance(value, int | float):
            metrics[name] = float(value)
    return metrics


def default_version(src: Path, source_run: str | None) -> str:
    name = source_run.split("/")[-1] if source_run else src.name if src.is_dir() else src.parent.name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._")[:63] or "model"


def export_model(
    src: Path,
    dst_root: Path,
    version: str | None = None,
    source_run: str | None = None,
    checkpoint: str = "best",
    base: Path | None = None,
    dataset_fingerprint: str | None = None,
    load_check: bool = True,
    base_model_source: str | None = None,
    dataset_source: str | None = None,
) -> ModelManifest:
    """Export SRC to ``dst_root/<version>/`` and return its manifest (see the module docstring)."""
    src, dst_root = Path(src), Path(dst_root)
    version = check_version_name(version or default_version(src, source_run))
    dest = dst_root / version
    source = find_source(src, checkpoint)
    run_ref = ManifestSource()
    if source_run:
        if source_run.count("/") != 1 or not all(source_run.split("/")):
            raise BadInputError(f"--source-run {source_run!r}: expected NAMESPACE/NAME")
        run_ref.namespace, run_ref.training_run = source_run.split("/")
    run_ref.checkpoint = str(source.checkpoint or source.model_dir)
    run_ref.base_model, run_ref.dataset = base_model_source, dataset_source
    metrics = _checkpoint_metrics(source.checkpoint) if source.checkpoint else {}
    started = time.perf_counter()
    with staged_version(dest) as staging:
        if source.model_dir is not None:
            _export_model_dir(source, staging)
        elif source.engine is Engine.XTTS:
            _export_xtts_checkpoint(source, staging, base)
        else:
            _export_vits_checkpoint(source, staging)
        voices, default_voice = _add_voices(src, source.engine, staging)
        manifest = build_manifest(staging, version, source.engine, run_ref, metrics, dataset_fingerprint)
        manifest.voices, manifest.default_voice = voices, default_voice
        write_manifest(staging, manifest)
        if load_check:
            from .models import load_model

            try:
                load_model(staging, "cpu", verify=False)  # verified by staged_version right after
            except Exception as e:
                raise BadInputError(f"the exported model does not load: {type(e).__name__}: {e}") from e
    log.info(
        "exported %s %s from %s to %s in %.1fs",
        source.engine.value,
        version,
        src,
        dest,
        time.perf_counter() - started,
    )
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src", type=Path, metavar="SRC", help="training run folder, checkpoint file or model directory"
    )
    parser.add_argument(
        "dst", type=Path, metavar="DST", help="models root: the version is written to DST/VERSION/"
    )
    parser.add_argument(
        "--version", help="version name (default: the source run's name, else SRC's folder name)"
    )
    parser.add_argument(
        "--source-run", metavar="NAMESPACE/NAME", help="the TrainingRun this comes from (manifest)"
    )
    parser.add_argument(
        "--checkpoint",
        default="best",
        help="in a run folder: best (default), latest, or a checkpoint file name",
    )
    parser.add_argument(
        "--base",
        type=Path,
        help="XTTS base model directory (vocab.json, dvae.pth, mel_stats.pth) when the run's recorded "
        "paths are not reachable",
    )
    parser.add_argument("--dataset-fingerprint", help="recorded in the manifest")
    parser.add_argument(
        "--base-model-source",
        metavar="URI",
        help="lineage: where the base model came from (hf://org/repo@<commit>, s3://..., "
        "pvc://claim/path); recorded in the manifest's source.baseModel",
    )
    parser.add_argument(
        "--dataset-source", metavar="URI", help="lineage: where the dataset came from (source.dataset)"
    )
    parser.add_argument("--no-load-check", action="store_true", help="skip loading the result on CPU")
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        manifest = export_model(
            args.src,
            args.dst,
            version=args.version,
            source_run=args.source_run,
            checkpoint=args.checkpoint,
            base=args.base,
            dataset_fingerprint=args.dataset_fingerprint,
            load_check=not args.no_load_check,
            base_model_source=args.base_model_source,
            dataset_source=args.dataset_source,
        )
    except PermissionError as e:
        raise BadInputError(
            f"{e.filename or args.src}: permission denied; run as a user who can read the source and "
            "write the destination"
        ) from None
    if args.json:
        print(manifest.dumps(), end="")
    else:
        for f in manifest.files:
            print(f"{f.sha256[:12]}  {f.size:>13,}  {f.path}")
        print(f"exported {manifest.engine.value} version {manifest.version} to {args.dst / manifest.version}")
        print(f"digest {manifest.digest}")
    return 0
