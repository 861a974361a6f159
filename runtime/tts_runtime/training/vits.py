"""VITS: trained from scratch on characters (or phonemes through espeak-ng when the config says so).

Without ``baseModelPath`` the architecture is coqui's default ``VitsArgs``. With one, its
``config.json`` fixes the architecture, text processing and audio settings, and its ``model.pth``
(when present) gives the starting weights: the way to fine-tune a VITS voice, and the way the tests
train a tiny one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .dataset import ENGINE_LIMITS, EngineLimits, TextCheck
from .engine import EngineTrainer, apply_trainer_settings

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

from tts_contract.contract import Engine

log = logging.getLogger(__name__)

#: coqui's VITS recipes train from scratch at 2e-4; the contract's default (5e-6) is an XTTS fine-tune rate
DEFAULT_LR = 2e-4


class VitsTrainer(EngineTrainer):
    def build_config(self) -> Any:
        from TTS.tts.configs.vits_config import VitsConfig

        config = VitsConfig()
        base = self.base_dir
        if base is not None:
            config.load_json(str(base / "config.json"))
        else:
            config.use_phonemes = False
            config.text_cleaner = "basic_cleaners"
        apply_trainer_settings(config, self.spec, loader_workers=self.loader_workers)
        lr = self.spec.training.learning_rate
        if "learning_rate" not in self.spec.training.model_fields_set:
            lr = DEFAULT_LR
        config.lr_gen = lr
        config.lr_disc = lr
        config.grad_clip = [1000.0, 1000.0]
        config.audio.do_trim_silence = False
        config.compute_input_seq_cache = False
        config.phoneme_cache_path = str(Path(self.spec.output_path) / "cache" / "phonemes")
        config.datasets = []
        return config

    @property
    def base_dir(self) -> Path | None:
        return Path(self.spec.base_model_path) if self.spec.base_model_path else None

    @property
    def loader_workers(self) -> int:
        return 0

    def limits(self) -> EngineLimits:
        base = ENGINE_LIMITS[Engine.VITS]
        return EngineLimits(
            sample_rate=int(self.config.audio.sample_rate),
            min_seconds=base.min_seconds,
            max_seconds=base.max_seconds,
            max_text_chars=base.max_text_chars,
        )

    def text_check(self) -> TextCheck | None:
        from TTS.tts.utils.text.tokenizer import TTSTokenizer

        if self.config.use_phonemes:
            return None  # the phonemizer turns any text into phonemes; nothing to check cheaply
        tokenizer, _ = TTSTokenizer.init_from_config(self.config)
        known = set(tokenizer.characters.vocab)

        def check(text: str) -> str | None:
            cleaned = tokenizer.text_cleaner(text) if tokenizer.text_cleaner else text
            unknown = sorted({c for c in cleaned if c not in known})
            if unknown:
                return f"characters not in the model's vocabulary: {''.join(unknown)!r}"
            return None

        return check

    def build_model(self) -> nn.Module:
        from TTS.tts.models.vits import Vits

        model = Vits.init_from_config(self.config)
        base = self.base_dir
        if base is not None and (base / "model.pth").is_file():
            model.load_checkpoint(self.config, str(base / "model.pth"), strict=False)
            log.info("VITS: starting from the weights in %s", base / "model.pth")
        return model

    @property
    def output_sample_rate(self) -> int:
        return int(self.config.audio.sample_rate)

    def synthesize_sample(self, model: nn.Module, text: str, speaker_wav: Path | None) -> np.ndarray:
        import numpy as np
        import torch

        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                out = model.synthesize(text)
        finally:
            model.train(was_training)
        wav = out["wav"]
        return np.asarray(wav.squeeze().cpu().numpy() if torch.is_tensor(wav) else wav, dtype=np.float32)

    def export_servable(self, checkpoint: dict[str, Any], dest: Path) -> list[str]:
        """config.json + model.pth as coqui's Synthesizer loads them (no optimizer state, no discriminator).

        The discriminator is most of VITS' parameters and only matters for training: the exported
        config says ``init_discriminator: false`` so a strict load of the smaller state dict works.
        """
        import json

        from .checkpoints import atomic_torch_save

        model_state = {k: v for k, v in checkpoint["model"].items() if not k.startswith("disc.")}
        state = {
            "model": model_state,
            "step": checkpoint.get("step"),
            "epoch": checkpoint.get("epochs_completed"),
        }
        atomic_torch_save(state, dest / "model.pth")
        config = dict(checkpoint["config"])
        config["model_args"] = {**config["model_args"], "init_discriminator": False}
        (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        return ["config.json", "model.pth"]
