"""Data-parallel training: two worker processes over gloo on CPU, through the real CLI.

Evidence comes from each rank's own records (rank 0's events.jsonl, rank 1's ranks/1/events.jsonl):
which clips each rank trained on, and a digest of its trainable weights after every epoch. The two
ranks train on different clips, so their weights stay equal only if the gradients were all-reduced.
The tiny XTTS is used: its steps are the cheapest of the two engines on CPU.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from support.runtime_cli import Runner, read_events, write_spec
from tts_contract.contract import ExitCode

pytestmark = pytest.mark.slow

EPOCHS = 2


def _rank_events(out: Path, rank: int) -> list[dict[str, Any]]:
    return read_events(out if rank == 0 else out / "ranks" / str(rank))


def test_two_ranks_over_gloo_train_disjoint_shards_with_equal_weights(
    tiny_xtts_base: Path, spoken_dataset: Path, tmp_path: Path, run_cli: Runner
) -> None:
    out = tmp_path / "run"
    # 6 clips, evalSplit 0.34 -> 2 held out, 4 trained on: 2 per rank, one per step at batch 1
    spec = write_spec(
        tmp_path / "run.json",
        engine="xtts",
        baseModelPath=str(tiny_xtts_base),
        outputPath=str(out),
        dataset={"path": str(spoken_dataset), "evalSplit": 0.34},
        training={"epochs": EPOCHS, "batchSize": 1, "keepCheckpoints": 1, "learningRate": 1e-4},
        samples={"text": "Hello there.", "speakerWav": "wavs/clip_000.wav"},
    )
    started = time.monotonic()
    result = run_cli("--spec", str(spec), "--nproc", "2", "--ddp-backend", "gloo", timeout=240)
    took = time.monotonic() - started
    assert result.returncode == ExitCode.SUCCESS, result.stderr[-4000:]
    print(f"2 ranks over gloo, {EPOCHS} epochs: {took:.1f} s")
    assert "training on 4 clips" in result.stderr
    assert "[rank 1] " in result.stderr  # rank 1's own output, labelled by the launcher

    ranks = {r: _rank_events(out, r) for r in (0, 1)}
    for rank, events in ranks.items():
        start = next(e for e in events if e["event"] == "attempt_start")
        assert (start["rank"], start["worldSize"]) == (rank, 2)
        assert [e["epoch"] for e in events if e["event"] == "epoch_end"] == [1, 2]
        assert next(e for e in events if e["event"] == "attempt_end")["exitCode"] == 0
    assert _rank_events(out, 0)[0]["pid"] != _rank_events(out, 1)[0]["pid"]

    shards = {r: {e["epoch"]: e for e in events if e["event"] == "shard"} for r, events in ranks.items()}
    trained: dict[int, set[str]] = {0: set(), 1: set()}
    for epoch in range(1, EPOCHS + 1):
        shard0, shard1 = set(shards[0][epoch]["clips"]), set(shards[1][epoch]["clips"])
        # each rank holds half of the 4 training clips, and the halves do not overlap
        assert len(shard0) == len(shard1) == 2 and not shard0 & shard1, (shard0, shard1)
        assert all((spoken_dataset / "wavs" / c).is_file() for c in shard0 | shard1)
        for rank, shard in ((0, shard0), (1, shard1)):
            # what the rank's steps actually trained on (the batches), from its own half only
            seen = set(shards[rank][epoch]["trained"])
            assert seen and seen <= shard, (rank, seen, shard)
            trained[rank] |= seen
        # different data, same weights: the gradients were averaged across the ranks
        assert shards[0][epoch]["weights"] == shards[1][epoch]["weights"]
    assert shards[0][1]["weights"] != shards[0][2]["weights"]  # and they did train
    assert not trained[0] & trained[1]  # no clip was trained on by both ranks

    # the group's loss, not rank 0's shard alone, is what both ranks recorded
    losses = [[(e["loss"], e["evalLoss"]) for e in ev if e["event"] == "epoch_end"] for ev in ranks.values()]
    assert losses[0] == losses[1]

    # rank 0 alone wrote checkpoints, samples, progress and TensorBoard
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pth")) == ["best_model.pth", "epoch_0002.pth"]
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["epoch_1.wav", "epoch_2.wav"]
    assert (out / "progress.json").is_file() and len(list((out / "logs").glob("events.out.tfevents.*"))) == 1
    assert not [e for e in ranks[1] if e["event"] in ("checkpoint", "sample", "finished")]
    rank1_files = {p.relative_to(out / "ranks" / "1").as_posix() for p in (out / "ranks" / "1").rglob("*")}
    assert not {f for f in rank1_files if f.endswith((".pth", ".wav", "progress.json")) or "tfevents" in f}
    assert "logs/trainer_1_log.txt" in rank1_files

    # the export loads and speaks, with the fine-tuned (not the base) GPT weights
    import torch
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts

    config = XttsConfig()
    config.load_json(str(out / "model" / "config.json"))
    model = Xtts(config)
    model.load_checkpoint(config, checkpoint_dir=str(out / "model"), eval=True)
    base = torch.load(tiny_xtts_base / "model.pth", map_location="cpu", weights_only=False)["model"]
    key = "gpt.text_embedding.weight"
    assert not torch.equal(base[key], model.state_dict()[key])
    wav = model.synthesize(
        "Served after training.", speaker_wav=str(spoken_dataset / "wavs" / "clip_000.wav"), language="en"
    )
    assert len(wav["wav"]) > 1000
