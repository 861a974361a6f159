"""export: real coqui Trainer checkpoints (written by the trainer library's own save functions) become
servable, checksummed, immutable version directories; corruption and overwrites are caught."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from support.datasets import SPEAKER_REF
from tts_contract.contract import Engine, ModelManifest, verify_manifest
from tts_runtime.errors import BadInputError
from tts_runtime.export import export_model
from tts_runtime.models import load_model
from tts_runtime.versions import VersionExistsError

pytestmark = pytest.mark.slow


def make_vits_run(base: Path, run_dir: Path) -> torch.Tensor:
    """A VITS run folder as the coqui Trainer leaves it: best_model*.pth with optimizer state, config.json.

    Returns the (changed) text embedding, to prove the export carries the run's weights.
    """
    from trainer.io import save_best_model
    from TTS.tts.configs.vits_config import VitsConfig
    from TTS.tts.models.vits import Vits

    config = VitsConfig()
    config.load_json(str(base / "config.json"))
    model = Vits(config)
    model.load_state_dict(torch.load(base / "model.pth", weights_only=True)["model"])
    with torch.no_grad():
        model.text_encoder.emb.weight.add_(0.5)  # "training"
    optimizers = model.get_optimizer()
    for opt in optimizers:  # one step fills Adam's moment buffers, as a real run's checkpoint has
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad = torch.zeros_like(p)
        opt.step()
    run_dir.mkdir(parents=True)
    config.save_json(str(run_dir / "config.json"))
    save_best_model(
        {"train_loss": 0.9, "eval_loss": 0.5},
        {"train_loss": math.inf, "eval_loss": math.inf},
        config,
        model,
        run_dir,
        current_step=12,
        epoch=2,
        optimizer=optimizers,
    )
    return model.text_encoder.emb.weight.detach().clone()


def make_xtts_run(base: Path, run_dir: Path) -> torch.Tensor:
    """An XTTS GPT fine-tune run folder: a GPTTrainer checkpoint (no best model yet) and its config."""
    import dataclasses

    from trainer.io import save_checkpoint
    from TTS.tts.configs.xtts_config import XttsAudioConfig
    from TTS.tts.layers.xtts.trainer.gpt_trainer import GPTArgs, GPTTrainer, GPTTrainerConfig

    base_config = json.loads((base / "config.json").read_text())
    fields = {f.name for f in dataclasses.fields(GPTArgs)}
    args = GPTArgs(
        **{k: v for k, v in base_config["model_args"].items() if k in fields},
    )
    args.xtts_checkpoint = str(base / "model.pth")
    args.tokenizer_file = str(base / "vocab.json")
    args.dvae_checkpoint = str(base / "dvae.pth")
    args.mel_norm_file = str(base / "mel_stats.pth")
    config = GPTTrainerConfig(
        model_args=args,
        audio=XttsAudioConfig(sample_rate=22050, dvae_sample_rate=22050, output_sample_rate=24000),
        languages=base_config["languages"],
    )
    model = GPTTrainer(config)
    with torch.no_grad():
        model.xtts.gpt.text_embedding.weight.add_(0.25)  # "fine-tuning"
    run_dir.mkdir(parents=True)
    config.save_json(str(run_dir / "config.json"))
    save_checkpoint(config, model, run_dir, current_step=30, epoch=1)
    return model.xtts.gpt.text_embedding.weight.detach().clone()


def test_vits_run_folder_exports_and_serves(tiny_vits_dir: Path, tmp_path: Path) -> None:
    trained = make_vits_run(tiny_vits_dir, tmp_path / "runs" / "vits-run-November-25-2025_01+00AM-abc123")
    base, data = "hf://coqui/XTTS-v2@0123456789abcdef0123456789abcdef01234567", "s3://data/ljspeech"
    manifest = export_model(
        tmp_path / "runs",
        tmp_path / "models",
        version="v1",
        source_run="default/narrator",
        base_model_source=base,
        dataset_source=data,
    )
    dest = tmp_path / "models" / "v1"
    assert verify_manifest(dest) == []
    assert {f.path for f in manifest.files} == {"config.json", "model.pth"}
    assert manifest.engine is Engine.VITS
    assert manifest.source.namespace == "default" and manifest.source.training_run == "narrator"
    # the lineage, as written (and read back from the file)
    assert ModelManifest.load(dest).source.base_model == base and manifest.source.dataset == data
    assert manifest.source.checkpoint is not None and manifest.source.checkpoint.endswith("best_model.pth")
    assert manifest.metrics == {"step": 12.0, "epoch": 2.0, "evalLoss": 0.5}
    checkpoint = tmp_path / "runs" / "vits-run-November-25-2025_01+00AM-abc123" / "best_model.pth"
    # the optimizer state (two Adam moments per weight) is gone
    assert (dest / "model.pth").stat().st_size < 0.6 * checkpoint.stat().st_size
    model = load_model(dest, "cpu")
    assert torch.equal(model.model.text_encoder.emb.weight.detach(), trained)
    audio, rate = model.synthesize("Exported and served.")
    assert np.isfinite(audio).all() and len(audio) > rate * 0.05


def test_xtts_gpt_checkpoint_becomes_a_full_model(
    tiny_xtts_dir: Path, tmp_path: Path, ljspeech_dataset: Path
) -> None:
    run = tmp_path / "run"
    tuned = make_xtts_run(tiny_xtts_dir, run)
    manifest = export_model(run, tmp_path / "models", version="ft-1")
    dest = tmp_path / "models" / "ft-1"
    assert {f.path for f in manifest.files} == {
        "config.json",
        "model.pth",
        "vocab.json",
        "dvae.pth",
        "mel_stats.pth",
    }
    assert manifest.source.checkpoint is not None and manifest.source.checkpoint.endswith("checkpoint_30.pth")
    state = torch.load(dest / "model.pth", weights_only=True)
    assert not [k for k in state["model"] if k.startswith(("xtts.", "dvae.", "torch_mel"))]
    config = json.loads((dest / "config.json").read_text())
    assert "dvae_checkpoint" not in config["model_args"] and config["model_args"]["tokenizer_file"] == ""
    model = load_model(dest, "cpu")
    assert torch.equal(model.model.gpt.text_embedding.weight.detach(), tuned)
    voice = model.conditioning_latents([ljspeech_dataset / SPEAKER_REF])
    audio, _ = model.synthesize("Fine tuned.", voice=voice, language="en")
    assert np.isfinite(audio).all() and len(audio) > 0


def test_xtts_run_without_reachable_vocab_fails_and_leaves_nothing(
    tiny_xtts_dir: Path, tmp_path: Path
) -> None:
    base = tmp_path / "base"
    shutil.copytree(tiny_xtts_dir, base)
    make_xtts_run(base, tmp_path / "run")
    (base / "vocab.json").unlink()  # the base volume is no longer mounted where the run recorded it
    with pytest.raises(BadInputError, match="--base"):
        export_model(tmp_path / "run", tmp_path / "models", version="ft-2")
    assert list((tmp_path / "models").iterdir()) == []  # no half-written version, no staging folder
    export_model(tmp_path / "run", tmp_path / "models", version="ft-2", base=tiny_xtts_dir, load_check=False)
    assert verify_manifest(tmp_path / "models" / "ft-2") == []


def test_model_directory_export_copies_verbatim(tiny_xtts_dir: Path, tmp_path: Path) -> None:
    manifest = export_model(tiny_xtts_dir, tmp_path / "models", version="copy", load_check=False)
    original = ModelManifest.load(tiny_xtts_dir)
    assert manifest.digest == original.digest  # byte-identical files
    assert manifest.version == "copy"


def test_export_refuses_to_overwrite(tiny_vits_dir: Path, tmp_path: Path, run_runtime_cli) -> None:
    export_model(tiny_vits_dir, tmp_path, version="v1", load_check=False)
    before = (tmp_path / "v1" / "manifest.json").read_text()
    with pytest.raises(VersionExistsError):
        export_model(tiny_vits_dir, tmp_path, version="v1", load_check=False)
    result = run_runtime_cli(
        "export", str(tiny_vits_dir), str(tmp_path), "--version", "v1", "--no-load-check"
    )
    assert result.returncode == 65, result.stderr
    assert "already exists" in result.stderr
    assert (tmp_path / "v1" / "manifest.json").read_text() == before


def test_corrupted_file_is_detected(tiny_vits_dir: Path, tmp_path: Path, run_runtime_cli) -> None:
    result = run_runtime_cli("export", str(tiny_vits_dir), str(tmp_path), "--version", "v1", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["version"] == "v1"
    dest = tmp_path / "v1"
    ok = run_runtime_cli("verify", str(dest))
    assert ok.returncode == 0 and "ok:" in ok.stdout

    with open(dest / "model.pth", "r+b") as f:  # flip one byte in the middle of the weights
        f.seek(1_000_000)
        byte = f.read(1)
        f.seek(1_000_000)
        f.write(bytes([byte[0] ^ 0xFF]))
    bad = run_runtime_cli("verify", str(dest), "--json")
    assert bad.returncode == 65
    assert json.loads(bad.stdout)["problems"] == ["model.pth: sha256 mismatch"]
    with pytest.raises(BadInputError, match=r"model.pth: sha256 mismatch"):
        load_model(dest, "cpu")


def test_verify_reports_missing_and_extra_files(tiny_vits_dir: Path, tmp_path: Path, run_runtime_cli) -> None:
    export_model(tiny_vits_dir, tmp_path, version="v1", load_check=False)
    (tmp_path / "v1" / "notes.txt").write_text("someone wrote into an immutable version")
    extra = run_runtime_cli("verify", str(tmp_path / "v1"))
    assert extra.returncode == 65 and "notes.txt: not in the manifest" in extra.stdout
    (tmp_path / "v1" / "config.json").unlink()
    missing = run_runtime_cli("verify", str(tmp_path / "v1"))
    assert missing.returncode == 65 and "config.json: missing" in missing.stdout


def test_bad_sources_are_bad_input(tmp_path: Path, run_runtime_cli) -> None:
    (tmp_path / "empty").mkdir()
    result = run_runtime_cli("export", str(tmp_path / "empty"), str(tmp_path / "models"))
    assert result.returncode == 65 and "neither a training run folder" in result.stderr
    result = run_runtime_cli("export", str(tmp_path / "empty"), str(tmp_path / "models"), "--version", "../x")
    assert result.returncode == 65 and "invalid version name" in result.stderr
