"""``tts-runtime demo-model``: a tiny randomly initialised model in the real file layout.

It speaks noise, but every file is where a real model has it and every code path that loads, serves,
fine-tunes or exports a real model runs on it, in seconds and without downloading gigabytes: a
cluster's plumbing (GPU scheduling, probes, rollouts) and the test suite both use it.

- XTTS: ``config.json``, ``model.pth``, ``vocab.json`` (a tokenizer with the special and language
  tokens XTTS needs), plus ``dvae.pth`` and ``mel_stats.pth`` so the directory is also a fine-tuning
  base for ``tts-runtime train``. About 29 M parameters (the HiFi-GAN decoder and the 512-wide speaker
  embedding cannot shrink), 112 MB.
- VITS: ``config.json`` and ``model.pth``, characters rather than phonemes (no espeak-ng needed).

Both get a ``manifest.json``, so the directory is a version directory the server loads and verifies.
The same seed gives byte-identical weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import string
import time
from pathlib import Path

from tts_contract.contract import Engine, ManifestSource

from .versions import build_manifest, check_version_name, staged_version, write_manifest

log = logging.getLogger(__name__)

#: languages the tiny XTTS accepts (each gets a ``[xx]`` token in its vocabulary)
XTTS_LANGUAGES = ["en", "pt", "es", "fr", "de"]
XTTS_SPECIAL_TOKENS = ["[STOP]", "[UNK]", "[SPACE]", "[START]"]
#: enough characters for the test sentences in these languages; the rest map to [UNK]
XTTS_CHARACTERS = sorted(set(string.ascii_lowercase + string.digits + ".,!?'-:;\"()áàâãéêíóôõúçñüäöß"))
#: a random model never emits its stop token, so it speaks until this cap (48 tokens: about 2 s)
XTTS_MAX_AUDIO_TOKENS = 48


def _write_xtts_vocab(path: Path) -> int:
    """A character-level BPE tokenizer in the format XTTS's ``VoiceBpeTokenizer`` reads."""
    from tokenizers import Tokenizer
    from tokenizers.models import BPE
    from tokenizers.pre_tokenizers import Whitespace

    specials = [*XTTS_SPECIAL_TOKENS, *(f"[{lang}]" for lang in XTTS_LANGUAGES)]
    vocab = {token: i for i, token in enumerate(specials + XTTS_CHARACTERS)}
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.add_special_tokens(specials)
    tokenizer.save(str(path))
    return len(vocab)


def _write_xtts(dest: Path) -> None:
    import torch
    from TTS.tts.configs.xtts_config import XttsArgs, XttsConfig
    from TTS.tts.layers.xtts.dvae import DiscreteVAE
    from TTS.tts.models.xtts import Xtts

    n_tokens = _write_xtts_vocab(dest / "vocab.json")
    args = XttsArgs(
        gpt_layers=2,
        gpt_n_model_channels=256,
        gpt_n_heads=4,
        decoder_input_dim=256,
        gpt_use_perceiver_resampler=True,
        gpt_num_audio_tokens=1026,
        gpt_start_audio_token=1024,
        gpt_stop_audio_token=1025,
        gpt_max_audio_tokens=XTTS_MAX_AUDIO_TOKENS,
        gpt_number_text_tokens=n_tokens,
        tokenizer_file=str(dest / "vocab.json"),
    )
    config = XttsConfig(model_args=args, languages=list(XTTS_LANGUAGES))
    model = Xtts(config)
    model.init_models()
    # the tokenizer path is only needed to build the model; loaders find vocab.json beside model.pth
    config.model_args.tokenizer_file = ""
    torch.save({"model": model.state_dict(), "config": config.to_dict()}, dest / "model.pth")
    config.save_json(str(dest / "config.json"))
    # the DVAE turns training audio into the GPT's target codes; its shape is fixed by the GPT trainer
    dvae = DiscreteVAE(
        channels=80,
        normalization=None,
        positional_dims=1,
        num_tokens=1024,
        codebook_dim=512,
        hidden_dim=512,
        num_resnet_blocks=3,
        kernel_size=3,
        num_layers=2,
        use_transposed_convs=False,
    )
    torch.save(dvae.state_dict(), dest / "dvae.pth")
    # per-channel mel normalisation the GPT trainer divides by: ones = none
    torch.save(torch.ones(80), dest / "mel_stats.pth")


def _write_vits(dest: Path) -> None:
    import torch
    from TTS.tts.configs.vits_config import VitsConfig
    from TTS.tts.models.vits import Vits, VitsArgs

    config = VitsConfig(
        model_args=VitsArgs(
            hidden_channels=32,
            hidden_channels_ffn_text_encoder=64,
            num_layers_text_encoder=2,
            num_heads_text_encoder=2,
            upsample_initial_channel_decoder=64,
            num_layers_flow=2,
            num_layers_posterior_encoder=4,
            resblock_type_decoder="2",
        ),
        use_phonemes=False,
        text_cleaner="basic_cleaners",
    )
    config.audio.sample_rate = 22050
    # the model fills in its character set; save its config so the saved one matches the weights
    model = Vits(config)
    torch.save({"model": model.state_dict(), "config": model.config.to_dict()}, dest / "model.pth")
    model.config.save_json(str(dest / "config.json"))


def make_demo_model(dest: Path, engine: str, version: str | None = None, seed: int = 0) -> Path:
    """Write a tiny random ``engine`` model as the version directory ``dest`` and return it.

    ``dest`` must not exist yet (versions are immutable); the directory appears complete or not at all.
    """
    import torch

    eng = Engine(engine)
    dest = Path(dest)
    version = check_version_name(version or dest.name)
    started = time.perf_counter()
    with staged_version(dest) as staging:
        # the same seed gives the same weights; fork_rng keeps the caller's random state untouched
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            (_write_xtts if eng is Engine.XTTS else _write_vits)(staging)
        manifest = build_manifest(
            staging,
            version,
            eng,
            source=ManifestSource(checkpoint=f"demo-model: random init, seed {seed}"),
        )
        write_manifest(staging, manifest)
    log.info("wrote demo %s model %s to %s in %.1fs", eng.value, version, dest, time.perf_counter() - started)
    return dest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, metavar="DIR", help="version directory to create (must not exist)")
    parser.add_argument("--engine", required=True, choices=[e.value for e in Engine], help="model type")
    parser.add_argument("--version", help="version name in the manifest (default: the directory's name)")
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed: same seed, same weights (default: 0)"
    )


def run(args: argparse.Namespace) -> int:
    dest = make_demo_model(args.dir, args.engine, args.version, args.seed)
    manifest = json.loads((dest / "manifest.json").read_text())
    for f in manifest["files"]:
        print(f"{f['sha256'][:12]}  {f['size']:>11,}  {f['path']}")
    print(f"{args.engine} demo model {manifest['version']} written to {dest}")
    return 0
