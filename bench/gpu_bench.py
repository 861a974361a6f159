"""Issue 5, GPU section: a full-size XTTS architecture with random weights on the GPU.

Skipped (the result file says so) where torch sees no CUDA device. The model has XTTS v2's shape
(30 GPT layers of 1024 channels, 16 heads, perceiver resampler, 1026 audio tokens, HiFi-GAN
decoder) and random weights, so nothing is downloaded; a random GPT practically never emits its
stop token, so every generation runs to the cap of 130 audio tokens (about 6 s of audio).
Measured per precision: real-time factor (generation seconds / audio seconds, ``Xtts.inference``)
and time to the first audio chunk (``Xtts.inference_stream``, 20-token chunks); fp32 against fp16
and bf16 autocast, alternated round by round. ``--device cpu --tokens 8`` is a smoke run of the code
path on a machine without a GPU (slow, not a benchmark).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import Report, Row, median, progress, quick

TOKENS = 130
TEXT = "This benchmark speaks a sentence of about six seconds with a randomly initialised model."


def build_model(device: str, tokens: int, workdir: Path) -> Any:
    from TTS.tts.configs.xtts_config import XttsArgs, XttsConfig
    from TTS.tts.models.xtts import Xtts

    from tts_runtime.demo_model import XTTS_LANGUAGES, _write_xtts_vocab

    vocab = workdir / "vocab.json"
    n_tokens = _write_xtts_vocab(vocab)
    args = XttsArgs(
        gpt_layers=30,
        gpt_n_model_channels=1024,
        gpt_n_heads=16,
        decoder_input_dim=1024,
        gpt_use_perceiver_resampler=True,
        gpt_num_audio_tokens=1026,
        gpt_start_audio_token=1024,
        gpt_stop_audio_token=1025,
        gpt_max_audio_tokens=tokens,
        gpt_max_text_tokens=402,
        gpt_number_text_tokens=n_tokens,
        tokenizer_file=str(vocab),
    )
    config = XttsConfig(model_args=args, languages=list(XTTS_LANGUAGES))
    model = Xtts(config)
    model.init_models()
    model.gpt.init_gpt_for_inference(kv_cache=True, use_deepspeed=False)
    model.to(device).eval()
    return model


def reference(workdir: Path) -> Path:
    from tts_runtime.server.engine import _synthetic_reference

    path = workdir / "reference.wav"
    _synthetic_reference(path, seconds=6.0)
    return path


def run(report: Report, workdir: Path, device: str, tokens: int, rounds: int) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        report.skipped = "no CUDA device: run it on a GPU machine"
        return
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    precisions: list[tuple[str, torch.dtype | None]] = [("fp32", None), ("fp16", torch.float16)]
    if device != "cuda" or torch.cuda.is_bf16_supported():
        precisions.append(("bf16", torch.bfloat16))
    report.config = {"device": name, "tokens": tokens, "rounds": rounds, "text": TEXT, "chunkTokens": 20}
    progress(f"gpu: building a full-size random XTTS on {name}")
    model = build_model(device, tokens, workdir)
    with torch.inference_mode():
        gpt_latent, speaker = model.get_conditioning_latents(audio_path=[str(reference(workdir))])
    rate = model.config.model_args.output_sample_rate

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def autocast(dtype: torch.dtype | None) -> Any:
        return torch.autocast(device_type=device, dtype=dtype, enabled=dtype is not None)

    def whole(dtype: torch.dtype | None) -> tuple[float, float]:
        sync()
        t = time.perf_counter()
        with torch.inference_mode(), autocast(dtype):
            out = model.inference(TEXT, "en", gpt_latent, speaker, temperature=0.75, top_k=50, top_p=0.85)
        sync()
        return time.perf_counter() - t, len(out["wav"]) / rate

    def first_chunk(dtype: torch.dtype | None) -> float:
        sync()
        t = time.perf_counter()
        with torch.inference_mode(), autocast(dtype):
            stream = model.inference_stream(TEXT, "en", gpt_latent, speaker, stream_chunk_size=20)
            next(iter(stream))
            sync()
            elapsed = time.perf_counter() - t
            for _ in stream:  # finish the generation so the next measurement starts clean
                pass
        return elapsed

    for _label, dtype in precisions:  # warm-up: kernels, cuBLAS handles, autocast caches
        whole(dtype)
    results: dict[str, dict[str, list[float]]] = {
        p: {"rtf": [], "ttfa": [], "audio": []} for p, _ in precisions
    }
    for r in range(rounds):
        order = precisions if r % 2 == 0 else list(reversed(precisions))
        progress(f"gpu: round {r + 1}/{rounds}")
        for label, dtype in order:
            gen, audio = whole(dtype)
            results[label]["rtf"].append(gen / audio if audio else float("nan"))
            results[label]["audio"].append(audio)
            results[label]["ttfa"].append(first_chunk(dtype))
    fp32_rtf = median(results["fp32"]["rtf"])
    fp32_ttfa = median(results["fp32"]["ttfa"])
    for label, _ in precisions:
        base = None if label == "fp32" else fp32_rtf
        report.add(
            Row(
                f"{label}: real-time factor",
                median(results[label]["rtf"]),
                "x",
                baseline=base,
                goal="vs fp32" if base else "",
                note=f"audio {median(results[label]['audio']):.2f} s",
            )
        )
        base = None if label == "fp32" else fp32_ttfa
        report.add(
            Row(
                f"{label}: time to first audio",
                median(results[label]["ttfa"]),
                "s",
                baseline=base,
                goal="vs fp32" if base else "",
            )
        )
    report.raw = results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_bench", description=__doc__)
    parser.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (a smoke run)")
    parser.add_argument("--tokens", type=int, default=TOKENS, help=f"audio tokens per generation ({TOKENS})")
    parser.add_argument("--rounds", type=int, default=None, help="alternated rounds (default 5, quick 2)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if quick() else 5)
    report = Report("gpu", "issue 5: full-size XTTS on a GPU (random weights)")
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        run(report, Path(tmp), args.device, args.tokens, rounds)
    path = report.write() if args.device == "cuda" else None
    report.print_table()
    if path:
        print(f"   -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
