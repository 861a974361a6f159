"""A fine-tuned XTTS version carries its own voice: the trainer keeps the run's reference clip(s), the
export ships them (``voices/<name>.wav``, the manifest's ``voices`` and ``defaultVoice``), and a
server on that version speaks in them, ``default`` included, with nothing uploaded."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import soundfile as sf

from support.datasets import MissingToolError, make_ljspeech_dataset
from support.live_server import live_server
from support.runtime_cli import REPO, runtime_env, write_spec
from tts_contract.contract import ExitCode, ModelManifest, RunSpec, verify_manifest

pytestmark = pytest.mark.slow

RUN = "narrator-ft-1"
#: short phrases: the tiny XTTS' audio-token cap fits clips up to about 2.2 s
PHRASES = ["Hello world.", "Good morning.", "See you soon.", "Thank you.", "It is late."]


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tts_runtime.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=runtime_env(),
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return make_ljspeech_dataset(tmp_path_factory.mktemp("voices-ds") / "ds", 4, texts=PHRASES)
    except MissingToolError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def trained_run(tiny_xtts_dir: Path, dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny XTTS fine-tuned for one epoch through the real trainer, no speakerWav: the reference
    voices come from the dataset."""
    tmp = tmp_path_factory.mktemp("voices-run")
    out = tmp / "run"
    spec = write_spec(
        tmp / "run.json",
        run={"namespace": "default", "name": RUN},
        engine="xtts",
        baseModelPath=str(tiny_xtts_dir),
        outputPath=str(out),
        dataset={"path": str(dataset), "evalSplit": 0.25},
        training={"epochs": 1, "batchSize": 2, "keepCheckpoints": 1, "learningRate": 1e-4},
        samples={"text": "Hello there."},
        tensorboard=False,
    )
    result = _cli("train", "--spec", str(spec))
    assert result.returncode == ExitCode.SUCCESS, result.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def exported(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The models root holding the run exported as the operator's export Job does it: from the run's
    ``model/`` folder alone (what the Job fetches when the run folder is in object storage)."""
    fetched = tmp_path_factory.mktemp("voices-fetched") / "model"
    shutil.copytree(trained_run / "model", fetched)
    models = tmp_path_factory.mktemp("voices-models")
    result = _cli(
        "export",
        str(fetched),
        str(models),
        "--version",
        RUN,
        "--source-run",
        f"default/{RUN}",
        "--json",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return models


def test_the_trainer_keeps_reference_clips_from_the_dataset(trained_run: Path, dataset: Path) -> None:
    index = json.loads((trained_run / "voices" / "voices.json").read_text())
    names = [v["name"] for v in index["voices"]]
    assert index["default"] == RUN and names == [RUN, f"{RUN}-2", f"{RUN}-3"]
    # the longest clips of the dataset (all are under the preferred 3 s here), longest first
    durations = {p.name: sf.info(str(p)).duration for p in (dataset / "wavs").glob("*.wav")}
    picked = [Path(v["from"]).name for v in index["voices"]]
    assert picked == sorted(durations, key=lambda n: -round(durations[n], 2))[:3]
    for v in index["voices"]:
        info = sf.info(str(trained_run / "voices" / v["wav"]))
        assert info.channels == 1 and info.subtype == "PCM_16" and info.duration > 1
        # the servable model carries a copy: the export finds it beside the weights
        assert (trained_run / "model" / "voices" / v["wav"]).read_bytes() == (
            trained_run / "voices" / v["wav"]
        ).read_bytes()


def test_the_export_ships_the_voices(exported: Path) -> None:
    version = exported / RUN
    assert verify_manifest(version) == []
    manifest = ModelManifest.load(version)
    assert manifest.default_voice == RUN
    assert [(v.name, v.wav) for v in manifest.voices] == [
        (RUN, f"voices/{RUN}.wav"),
        (f"{RUN}-2", f"voices/{RUN}-2.wav"),
        (f"{RUN}-3", f"voices/{RUN}-3.wav"),
    ]
    listed = {f.path: f for f in manifest.files}
    for voice in manifest.voices:
        assert voice.wav in listed and len(listed[voice.wav].sha256) == 64
    raw = json.loads((version / "manifest.json").read_text())
    assert raw["defaultVoice"] == RUN and raw["voices"][0] == {"name": RUN, "wav": f"voices/{RUN}.wav"}
    # re-exporting the version (a copy to another volume) keeps its voices
    copy = export_again(version, exported.parent / "copy")
    assert copy.default_voice == RUN and [v.name for v in copy.voices] == [v.name for v in manifest.voices]


def export_again(version: Path, dest: Path) -> ModelManifest:
    from tts_runtime.export import export_model

    return export_model(version, dest, version="copy", load_check=False)


def test_a_server_on_the_version_speaks_in_its_voice_with_nothing_uploaded(
    exported: Path, tiny_xtts_dir: Path, tmp_path: Path
) -> None:
    from support.model_versions import add_version
    from tts_contract.contract import VoiceSpec
    from tts_runtime.server import Settings

    add_version(tiny_xtts_dir, exported, "plain")  # the base: no voices of its own
    settings = Settings(
        models_root=exported,
        version=RUN,
        device_policy="CPU",
        voices_dir=tmp_path / "voices",
        # a spec voice of a version voice's name wins over it
        voices=[VoiceSpec(name=f"{RUN}-2", wav=f"voices/{RUN}-3.wav")],
        warmup_text="Hi.",
    )
    with live_server(settings) as server, server.client() as http:
        voices = {v["name"]: v for v in http.get("/v1/audio/voices").json()["data"]}
        assert set(voices) == {RUN, f"{RUN}-2", f"{RUN}-3"}
        assert voices[RUN]["source"] == "version" and voices[RUN]["default"] is True
        assert voices[f"{RUN}-2"]["source"] == "spec" and voices[f"{RUN}-3"]["default"] is False
        assert http.get("/v1/audio/voices/default").json()["name"] == RUN

        for voice in ("default", RUN, f"{RUN}-3"):
            r = _speak(http, voice)
            assert r.status_code == 200, r.text
            assert r.headers["x-model-version"] == RUN and len(r.content) > 1000
        # a version's voice is the version's: not deletable, its name (and "default") not uploadable
        r = http.delete(f"/v1/audio/voices/{RUN}")
        assert r.status_code == 409 and r.json()["error"]["code"] == "voice_read_only"
        clip = (exported / RUN / "voices" / f"{RUN}.wav").read_bytes()
        for name in ("default", RUN):
            r = http.post("/v1/audio/voices", data={"name": name}, files={"file": ("ref.wav", clip)})
            assert r.status_code == 409 and r.json()["error"]["code"] == "voice_exists", r.text

        # a hot swap to a version without voices takes them away; back again brings them back
        assert http.post("/admin/reload", json={"version": "plain"}).status_code == 200
        r = _speak(http, "default")
        assert r.status_code == 404 and r.json()["error"]["code"] == "voice_not_found"
        assert {v["name"] for v in http.get("/v1/audio/voices").json()["data"]} == {f"{RUN}-2"}
        assert http.post("/admin/reload", json={"version": RUN}).status_code == 200
        assert _speak(http, "default").status_code == 200


def _speak(http: httpx.Client, voice: str) -> httpx.Response:
    return http.post(
        "/v1/audio/speech",
        json={"model": "tts-1", "voice": voice, "input": "Hi.", "response_format": "wav", "stream": False},
    )


def test_speaker_wav_is_the_voice_and_a_resume_keeps_it(dataset: Path, tmp_path: Path) -> None:
    from tts_runtime.training.dataset import check_dataset
    from tts_runtime.training.reference import read_index, write_reference_voices

    spec = RunSpec.model_validate(
        {
            "run": {"namespace": "ns", "name": "Voice.Of_Run"},
            "engine": "xtts",
            "dataset": {"path": str(dataset)},
            "training": {"epochs": 1},
            "samples": {"text": "Hi.", "speakerWav": "speaker_ref.wav"},
            "outputPath": str(tmp_path / "out"),
        }
    )
    clips = check_dataset(spec.dataset, spec.engine).clips
    voices = write_reference_voices(spec, clips, tmp_path / "out")
    assert [(v.name, v.source) for v in voices] == [("voice-of_run", "speaker_ref.wav")]
    written = (tmp_path / "out" / "voices" / "voice-of_run.wav").read_bytes()

    # a retry with another spec (it cannot happen, but a resume must never re-pick) keeps the set
    other = spec.model_copy(update={"samples": None})
    assert [v.name for v in write_reference_voices(other, clips, tmp_path / "out")] == ["voice-of_run"]
    assert (tmp_path / "out" / "voices" / "voice-of_run.wav").read_bytes() == written
    assert read_index(tmp_path / "out" / "voices")[1] == "voice-of_run"

    # a speakerWav that is not there is the spec's mistake, said before any training
    from tts_runtime.training.engine import BadInput

    assert spec.samples is not None
    samples = spec.samples.model_copy(update={"speaker_wav": "nope.wav"})
    with pytest.raises(BadInput, match=r"nope\.wav"):
        write_reference_voices(spec.model_copy(update={"samples": samples}), clips, tmp_path / "other")


def test_a_vits_export_has_no_voices(tiny_vits_dir: Path, tmp_path: Path) -> None:
    from tts_runtime.export import export_model

    run = tmp_path / "run"
    shutil.copytree(tiny_vits_dir, run / "model")
    (run / "model" / "manifest.json").unlink()
    (run / "voices").mkdir()
    shutil.copy(tiny_vits_dir / "config.json", run / "voices" / "x.wav")  # never read: VITS
    (run / "voices" / "voices.json").write_text(
        json.dumps({"default": "x", "voices": [{"name": "x", "wav": "x.wav"}]})
    )
    manifest = export_model(run / "model", tmp_path / "models", version="v", load_check=False)
    assert manifest.voices == [] and manifest.default_voice is None
    assert not any(f.path.startswith("voices/") for f in manifest.files)
