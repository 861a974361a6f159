"""Tiny randomly initialised base models in the real file layout (PINS.md "Tiny models without downloads").

The colleague-owned ``tts_runtime.demo_model.make_demo_model`` is the project's source for these; the
tests use it when it exists and fall back to this copy of the same recipe otherwise.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

XTTS_LANGUAGES = ["en", "pt", "es", "fr", "de"]


def make_tiny_vits(dest: Path) -> Path:
    from TTS.tts.configs.vits_config import VitsConfig
    from TTS.tts.models.vits import VitsArgs

    dest.mkdir(parents=True, exist_ok=True)
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
    config.save_json(str(dest / "config.json"))
    return dest


def _xtts_vocab(dest: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import BPE
    from tokenizers.pre_tokenizers import Whitespace

    specials = ["[STOP]", "[UNK]", "[SPACE]", "[START]", *(f"[{lang}]" for lang in XTTS_LANGUAGES)]
    chars = sorted(set(string.ascii_lowercase + string.digits + ".,!?'-:;\"()áàâãéêíóôõúçñü"))
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.add_special_tokens(specials)
    tokenizer.save(str(dest / "vocab.json"))


def make_tiny_xtts(dest: Path) -> Path:
    import torch
    from TTS.tts.configs.xtts_config import XttsArgs, XttsConfig
    from TTS.tts.layers.xtts.dvae import DiscreteVAE
    from TTS.tts.models.xtts import Xtts

    dest.mkdir(parents=True, exist_ok=True)
    _xtts_vocab(dest)
    torch.manual_seed(0)
    args = XttsArgs(
        gpt_layers=2,
        gpt_n_model_channels=256,
        gpt_n_heads=4,
        decoder_input_dim=256,
        gpt_use_perceiver_resampler=True,
        gpt_num_audio_tokens=1026,
        gpt_start_audio_token=1024,
        gpt_stop_audio_token=1025,
        gpt_max_audio_tokens=48,
        gpt_number_text_tokens=len(json.loads((dest / "vocab.json").read_text())["model"]["vocab"]),
        tokenizer_file=str(dest / "vocab.json"),
    )
    config = XttsConfig(model_args=args, languages=XTTS_LANGUAGES)
    model = Xtts(config)
    model.init_models()
    torch.save({"model": model.state_dict(), "config": config.to_dict()}, dest / "model.pth")
    config.model_args.tokenizer_file = ""
    config.save_json(str(dest / "config.json"))
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
    torch.save(torch.ones(80), dest / "mel_stats.pth")
    return dest
