"""Tiny VITS and tiny XTTS trained for two epochs through the real CLI, then served by the serving
runtime's loader from the run's model folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf

from support.runtime_cli import Runner, read_events, write_spec
from tts_contract.contract import ExitCode, ProgressReport

pytestmark = pytest.mark.slow


def _train(engine: str, base: Path, dataset: Path, out: Path, run_cli: Runner, spec_dir: Path) -> None:
    spec = write_spec(
        spec_dir / "run.json",
        engine=engine,
        baseModelPath=str(base),
        outputPath=str(out),
        dataset={"path": str(dataset), "evalSplit": 0.2},
        training={"epochs": 2, "batchSize": 2, "keepCheckpoints": 1, "learningRate": 1e-4},
        samples={"text": "Hello there.", "speakerWav": "wavs/clip_000.wav"},
    )
    result = run_cli("--spec", str(spec))
    assert result.returncode == ExitCode.SUCCESS, result.stderr[-4000:]


def _check_run_folder(out: Path) -> ProgressReport:
    events = read_events(out)
    assert [e["epoch"] for e in events if e["event"] == "epoch_end"] == [1, 2]
    # checkpoints: keepCheckpoints=1 leaves the newest epoch plus best_model.pth
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("*.pth"))
    assert ckpts == ["best_model.pth", "epoch_0002.pth"]
    assert not list((out / "checkpoints").glob(".*.tmp"))
    # one sample per epoch, real audio
    for epoch in (1, 2):
        info = sf.info(str(out / "samples" / f"epoch_{epoch}.wav"))
        assert info.frames > 0
    # TensorBoard: scalars and the samples, in the one run folder (no coqui <run>-<date>-<hash> folders)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events_files = list((out / "logs").glob("events.out.tfevents.*"))
    assert len(events_files) == 1
    acc = EventAccumulator(str(out / "logs"), size_guidance={"audio": 0, "scalars": 0}).Reload()
    assert any("loss" in tag for tag in acc.Tags()["scalars"])
    assert "sample" in " ".join(acc.Tags()["audio"])
    assert [p.name for p in out.iterdir() if p.is_dir()] and not any(
        "-" in p.name and p.name.startswith("test-run") for p in out.iterdir()
    )
    report = ProgressReport.model_validate_json((out / "progress.json").read_text())
    assert report.progress.epoch == 2 and report.progress.epochs == 2 and report.progress.attempt == 1
    assert report.progress.eval_loss is not None and report.best is not None
    assert [s.epoch for s in report.samples] == [1, 2]
    summary = json.loads((out / "training.json").read_text())
    assert summary["datasetFingerprint"].startswith("sha256:")
    assert summary["bestEpoch"] == report.best.epoch
    return report


def test_tiny_vits_two_epochs_then_serve(
    tiny_vits_base: Path, spoken_dataset: Path, tmp_path: Path, run_cli: Runner
) -> None:
    out = tmp_path / "run"
    _train("vits", tiny_vits_base, spoken_dataset, out, run_cli, tmp_path)
    _check_run_folder(out)
    assert sorted(p.name for p in (out / "model").iterdir()) == ["config.json", "model.pth"]
    _serve(out, spoken_dataset)


def _serve(out: Path, dataset: Path) -> None:
    """The run's model/ folder through the serving runtime's own loader. It has no manifest yet (the
    export adds it): loaded unverified, as the export's load check does."""
    from tts_runtime.models import load_model

    loaded = load_model(out / "model", verify=False)
    voice = loaded.conditioning_latents([dataset / "wavs" / "clip_000.wav"]) if loaded.clones_voices else None
    wav, rate = loaded.synthesize("Served by the runtime.", voice=voice, language="en")
    assert len(wav) > 1000 and rate > 0


def test_tiny_xtts_two_epochs_then_serve(
    tiny_xtts_base: Path, spoken_dataset: Path, tmp_path: Path, run_cli: Runner
) -> None:
    out = tmp_path / "run"
    _train("xtts", tiny_xtts_base, spoken_dataset, out, run_cli, tmp_path)
    _check_run_folder(out)
    # voices/: the run's reference clip, which the export ships with the version
    assert sorted(p.name for p in (out / "model").iterdir()) == [
        "config.json",
        "model.pth",
        "vocab.json",
        "voices",
    ]
    # the DVAE never trains: it stays out of our checkpoints
    import torch

    state = torch.load(out / "checkpoints" / "epoch_0002.pth", map_location="cpu", weights_only=False)
    assert state["epochs_completed"] == 2 and not any(k.startswith("dvae.") for k in state["model"])

    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts

    config = XttsConfig()
    config.load_json(str(out / "model" / "config.json"))
    model = Xtts(config)
    model.load_checkpoint(config, checkpoint_dir=str(out / "model"), eval=True)
    # the fine-tuned GPT weights are what was served, not the base's
    base = torch.load(tiny_xtts_base / "model.pth", map_location="cpu", weights_only=False)["model"]
    key = "gpt.text_embedding.weight"
    assert not torch.equal(base[key], model.state_dict()[key])
    del model
    _serve(out, spoken_dataset)


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_tiny_xtts_epoch_on_the_gpu(
    tiny_xtts_base: Path, spoken_dataset: Path, tmp_path: Path, run_cli: Runner
) -> None:
    """RequireGPU on a machine with a GPU: the preflight passes there and the epoch trains on it."""
    out = tmp_path / "run"
    spec = write_spec(
        tmp_path / "run.json",
        engine="xtts",
        baseModelPath=str(tiny_xtts_base),
        outputPath=str(out),
        dataset={"path": str(spoken_dataset), "evalSplit": 0.2},
        training={"epochs": 1, "batchSize": 2, "keepCheckpoints": 1, "learningRate": 1e-4},
        samples={"text": "Hello there.", "speakerWav": "wavs/clip_000.wav"},
        devicePolicy="RequireGPU",
    )
    result = run_cli("--spec", str(spec))
    assert result.returncode == ExitCode.SUCCESS, result.stderr[-4000:]
    events = read_events(out)
    preflight = [e for e in events if e["event"] == "preflight"]
    assert preflight and preflight[0]["device"].startswith("cuda"), preflight
    assert [e["epoch"] for e in events if e["event"] == "epoch_end"] == [1]
