"""demo-model writes tiny random models that the one loader serves; legacy XTTS checkpoints load read-only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from support.datasets import SPEAKER_REF
from tts_contract.contract import Engine, ModelManifest, sha256_file, verify_manifest
from tts_runtime.demo_model import XTTS_MAX_AUDIO_TOKENS, make_demo_model
from tts_runtime.errors import BadInputError
from tts_runtime.models import load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def xtts(tiny_xtts_dir: Path):
    return load_model(tiny_xtts_dir, "cpu")


@pytest.fixture(scope="module")
def vits(tiny_vits_dir: Path):
    return load_model(tiny_vits_dir, "cpu")


def test_xtts_layout_and_manifest(tiny_xtts_dir: Path) -> None:
    names = {p.name for p in tiny_xtts_dir.iterdir()}
    assert names == {"config.json", "model.pth", "vocab.json", "dvae.pth", "mel_stats.pth", "manifest.json"}
    manifest = ModelManifest.load(tiny_xtts_dir)
    assert manifest.engine is Engine.XTTS and manifest.version == "tiny-xtts"
    assert verify_manifest(tiny_xtts_dir) == []
    vocab = json.loads((tiny_xtts_dir / "vocab.json").read_text())["model"]["vocab"]
    for token in ("[STOP]", "[UNK]", "[SPACE]", "[START]", "[en]", "[pt]"):
        assert token in vocab


def test_xtts_clones_and_speaks(xtts, ljspeech_dataset: Path) -> None:
    voice = xtts.conditioning_latents([ljspeech_dataset / SPEAKER_REF])
    audio, rate = xtts.synthesize("Hello world.", voice=voice, language="en")
    assert rate == 24000
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0
    # a random GPT never emits its stop token: it speaks up to the audio-token cap (1024 samples each)
    assert 0.2 < len(audio) / rate <= XTTS_MAX_AUDIO_TOKENS * 1024 / rate + 0.1
    slow, _ = xtts.synthesize("Hello world.", voice=voice, language="en", speed=0.5)
    assert len(slow) > 1.5 * len(audio)


def test_xtts_rejects_bad_requests(xtts, ljspeech_dataset: Path, tmp_path: Path) -> None:
    voice = xtts.conditioning_latents([ljspeech_dataset / SPEAKER_REF])
    with pytest.raises(BadInputError, match="needs a voice"):
        xtts.synthesize("Hello.")
    with pytest.raises(BadInputError, match="language 'xx'"):
        xtts.synthesize("Hello.", voice=voice, language="xx")
    with pytest.raises(BadInputError, match="empty"):
        xtts.synthesize("   ", voice=voice)
    with pytest.raises(BadInputError, match="does not exist"):
        xtts.conditioning_latents([tmp_path / "missing.wav"])


def test_vits_speaks_longer_for_longer_text(vits) -> None:
    short, rate = vits.synthesize("Hi.")
    long, _ = vits.synthesize("Hello world, this sentence is a good deal longer than the first one.")
    assert rate == 22050
    for audio in (short, long):
        assert audio.dtype == np.float32 and audio.ndim == 1 and np.isfinite(audio).all()
    assert 0.05 < len(short) / rate < len(long) / rate < 30
    assert not vits.clones_voices
    with pytest.raises(BadInputError):
        vits.conditioning_latents([Path("x.wav")])


def test_same_seed_same_weights(tiny_vits_dir: Path, tmp_path: Path) -> None:
    same = make_demo_model(tmp_path / "again", "vits", version="again", seed=0)
    other = make_demo_model(tmp_path / "other", "vits", seed=1)
    assert sha256_file(same / "model.pth") == sha256_file(tiny_vits_dir / "model.pth")
    assert sha256_file(other / "model.pth") != sha256_file(tiny_vits_dir / "model.pth")
    assert ModelManifest.load(same).version == "again"


def test_cli_refuses_existing_dir(tiny_vits_dir: Path, run_runtime_cli) -> None:
    before = sha256_file(tiny_vits_dir / "model.pth")
    result = run_runtime_cli("demo-model", str(tiny_vits_dir), "--engine", "vits")
    assert result.returncode == 65, result.stderr
    assert "already exists" in result.stderr
    assert sha256_file(tiny_vits_dir / "model.pth") == before


def make_legacy_xtts(src: Path, dest: Path) -> Path:
    """The original XTTS release format: model.pth pickles an XttsConfig object (not a dict)."""
    import shutil

    import torch
    from TTS.tts.configs.xtts_config import XttsArgs, XttsAudioConfig, XttsConfig

    shutil.copytree(src, dest)
    (dest / "manifest.json").unlink()
    config = XttsConfig()
    config.load_json(str(src / "config.json"))
    state = torch.load(src / "model.pth", weights_only=True)["model"]
    homes = (XttsArgs.__module__, XttsAudioConfig.__module__)
    try:  # those releases pickled these classes under their old module
        XttsArgs.__module__ = XttsAudioConfig.__module__ = "TTS.tts.models.xtts"
        torch.save({"model": state, "config": config}, dest / "model.pth")
    finally:
        XttsArgs.__module__, XttsAudioConfig.__module__ = homes
    return dest


def test_legacy_xtts_loads_without_rewriting_the_file(tiny_xtts_dir: Path, tmp_path: Path) -> None:
    import torch

    legacy = make_legacy_xtts(tiny_xtts_dir, tmp_path / "legacy")
    with pytest.raises(Exception, match=r"Unsupported global|weights_only"):
        torch.load(legacy / "model.pth", weights_only=True)  # what a plain safe load does with it
    before = sha256_file(legacy / "model.pth")
    model = load_model(legacy, "cpu", verify=False)
    assert model.engine is Engine.XTTS
    # coqui's own fallback rewrites model.pth in place, which fails on a read-only model volume
    assert sha256_file(legacy / "model.pth") == before


def test_unverified_directory_needs_verify_false(tiny_vits_dir: Path, tmp_path: Path) -> None:
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(tiny_vits_dir, plain)
    (plain / "manifest.json").unlink()
    with pytest.raises(BadInputError, match=r"no manifest\.json"):
        load_model(plain, "cpu")
    assert load_model(plain, "cpu", verify=False).engine is Engine.VITS


def test_vits_speed_is_per_request_under_concurrency(vits) -> None:
    """Two worker threads at different speeds: each call's duration scaling is its own.

    Deterministic: the slow request is held inside the model, just after its duration predictor
    and before coqui reads ``length_scale``, while a fast request runs from start to end."""
    import threading

    base = vits.model.length_scale
    inside, fast_done = threading.Event(), threading.Event()
    seen: dict[str, float] = {}

    def hold_the_slow_one(module, inputs, output) -> None:
        if threading.current_thread().name == "slow":
            inside.set()
            assert fast_done.wait(60), "the fast request did not finish"
        seen[threading.current_thread().name] = vits.model.length_scale

    hook = vits.model.duration_predictor.register_forward_hook(hold_the_slow_one)
    errors: list[BaseException] = []

    def speak(speed: float) -> None:
        try:
            vits.synthesize("Speed is per request.", speed=speed)
        except BaseException as e:  # re-raised in the test's thread
            errors.append(e)

    slow = threading.Thread(target=speak, args=(0.5,), name="slow")
    try:
        slow.start()
        assert inside.wait(60), "the slow request never reached the duration predictor"
        fast = threading.Thread(target=speak, args=(2.0,), name="fast")
        fast.start()
        fast.join(60)
        fast_done.set()
        slow.join(60)
    finally:
        fast_done.set()
        hook.remove()
    assert not errors, errors
    assert seen == {"fast": pytest.approx(base / 2.0), "slow": pytest.approx(base / 0.5)}, seen
    assert vits.model.length_scale == pytest.approx(base)  # outside a request: the model's own
