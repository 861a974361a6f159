"""XTTS: fine-tune the GPT part of a base model, adapted from coqui's recipe to coqui-tts 0.28.

The upstream recipe (``recipes/ljspeech/xtts_v2/train_gpt_xtts.py``) downloads the base files and
passes a list to ``load_tts_samples``; here the files come from the base-model directory and the
samples from our own dataset preflight. Base weights enter through ``GPTArgs.xtts_checkpoint`` (not the
Trainer's ``restore_path``), the DVAE through ``dvae_checkpoint``, the mel statistics through
``mel_norm_file`` (whose default is a URL: never left to it, nothing may download at run time).
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tts_contract.contract import Engine

from .dataset import ENGINE_LIMITS, EngineLimits, TextCheck
from .engine import BadInput, EngineTrainer, apply_trainer_settings

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

log = logging.getLogger(__name__)

BASE_FILES = ("model.pth", "config.json", "vocab.json", "dvae.pth", "mel_stats.pth")
#: files of the base model a servable directory carries over unchanged
SERVABLE_EXTRAS = ("vocab.json", "speakers_xtts.pth")
#: the DVAE's mel hop (256) times its two 2x downsampling layers
SAMPLES_PER_AUDIO_TOKEN = 1024


class BaseModelError(BadInput):
    pass


def check_base_dir(base: Path) -> None:
    if not base.is_dir():
        raise BaseModelError(f"XTTS base model directory {base} does not exist")
    missing = [f for f in BASE_FILES if not (base / f).is_file()]
    if missing:
        raise BaseModelError(
            f"XTTS base model directory {base} lacks {', '.join(missing)} "
            f"(a GPT fine-tune needs {', '.join(BASE_FILES)})"
        )


def usable_checkpoint(model_pth: Path, cache: Path) -> Path:
    """The base ``model.pth``, or a converted copy when it is a legacy one with a pickled XttsConfig.

    coqui 0.28 loads those through ``torch.serialization.safe_globals`` (torch >= 2.5 only: an
    AttributeError on our pinned 2.4) and then rewrites ``model.pth`` in place, which a read-only
    base-model volume does not allow (PINS.md). So convert once into the run's cache instead.
    """
    import torch

    try:
        torch.load(model_pth, map_location="cpu", weights_only=True, mmap=True)
        return model_pth
    except pickle.UnpicklingError:
        pass
    converted = cache / "base_model.pth"
    if converted.is_file():
        return converted
    log.info("XTTS: %s pickles its config (a legacy release): converting a copy", model_pth)
    # the base model is operator-provided and trusted; the full unpickler finds the legacy
    # TTS.tts.models.xtts.XttsArgs/XttsAudioConfig names, which that module still imports
    import TTS.tts.models.xtts  # noqa: F401

    checkpoint = torch.load(model_pth, map_location="cpu", weights_only=False)
    config = checkpoint.get("config")
    if config is not None and hasattr(config, "to_dict"):
        checkpoint["config"] = config.to_dict()
    from .checkpoints import atomic_torch_save

    cache.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(checkpoint, converted)
    return converted


class XttsTrainer(EngineTrainer):
    frozen_prefixes = ("dvae.", "torch_mel_spectrogram_style_encoder.", "torch_mel_spectrogram_dvae.")

    @property
    def base_dir(self) -> Path:
        if not self.spec.base_model_path:
            raise BaseModelError(
                "XTTS fine-tuning needs baseModelPath (model.pth, config.json, vocab.json, ...)"
            )
        return Path(self.spec.base_model_path)

    def build_config(self) -> Any:
        from TTS.tts.configs.xtts_config import XttsConfig
        from TTS.tts.layers.xtts.trainer.gpt_trainer import GPTArgs, GPTTrainerConfig

        base = self.base_dir
        check_base_dir(base)
        base_config = XttsConfig()
        base_config.load_json(str(base / "config.json"))
        model_args = GPTArgs(
            **{k: v for k, v in base_config.model_args.to_dict().items() if k in GPTArgs.__dataclass_fields__}
        )
        cache = Path(self.spec.output_path) / "cache"
        model_args.xtts_checkpoint = str(usable_checkpoint(base / "model.pth", cache))
        model_args.tokenizer_file = str(base / "vocab.json")
        model_args.dvae_checkpoint = str(base / "dvae.pth")
        model_args.mel_norm_file = str(base / "mel_stats.pth")
        # the recipe's values: 3-6 s conditioning slices cut from the clip itself (masking approach)
        model_args.min_conditioning_length = 66150
        model_args.max_conditioning_length = 132300
        model_args.max_wav_length = 255995
        model_args.max_text_length = 200
        model_args.gpt_use_masking_gt_prompt_approach = True
        config = GPTTrainerConfig()
        config.model_args = model_args
        config.audio = base_config.audio
        config.languages = base_config.languages
        config.batch_group_size = 48
        config.optimizer = "AdamW"
        config.optimizer_wd_only_on_weights = True
        config.optimizer_params = {"betas": [0.9, 0.96], "eps": 1e-8, "weight_decay": 1e-2}
        config.lr = self.spec.training.learning_rate
        config.lr_scheduler = "MultiStepLR"
        config.lr_scheduler_params = {"milestones": [50000 * 18, 150000 * 18, 300000 * 18], "gamma": 0.5}
        config.datasets = []
        apply_trainer_settings(config, self.spec, loader_workers=0)
        self.base_config = base_config
        return config

    def limits(self) -> EngineLimits:
        base = ENGINE_LIMITS[Engine.XTTS]
        rate = int(self.config.audio.sample_rate)
        args = self.config.model_args
        # the GPT's audio position table holds gpt_max_audio_tokens (+ start, stop, conditioning)
        # DVAE codes of 1024 samples each: a longer clip is an IndexError deep inside the forward pass
        max_samples = min(args.max_wav_length, args.gpt_max_audio_tokens * SAMPLES_PER_AUDIO_TOKEN)
        return EngineLimits(
            sample_rate=rate,
            min_seconds=base.min_seconds,
            max_seconds=max_samples / rate,
            max_text_chars=base.max_text_chars,
        )

    def text_check(self) -> TextCheck | None:
        """XTTSDataset asserts on unknown tokens and silently drops over-long texts: find them first."""
        from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer

        tokenizer = VoiceBpeTokenizer(self.config.model_args.tokenizer_file)
        language = self.spec.dataset.language
        max_tokens = self.config.model_args.max_text_length
        if f"[{language}]" not in tokenizer.tokenizer.get_vocab():
            raise BaseModelError(f"the base model's vocab.json has no token for language {language!r}")

        def check(text: str) -> str | None:
            try:
                ids = tokenizer.encode(text, language)
            except (NotImplementedError, KeyError, ValueError) as e:
                return f"cannot preprocess for language {language!r}: {e}"
            if 1 in ids:  # [UNK]
                return f"characters the vocabulary lacks: {tokenizer.decode([i for i in ids if i != 1])!r}"
            if len(ids) > max_tokens:
                return f"{len(ids)} tokens, more than {max_tokens}"
            return None

        return check

    def build_model(self) -> nn.Module:
        from TTS.tts.layers.xtts.trainer.gpt_trainer import GPTTrainer

        return GPTTrainer(self.config)

    @property
    def output_sample_rate(self) -> int:
        return int(self.config.audio.output_sample_rate)

    def synthesize_sample(self, model: nn.Module, text: str, speaker_wav: Path | None) -> np.ndarray:
        """What ``GPTTrainer.test_run`` does, but returning the wav instead of only logging it."""
        import numpy as np
        import torch

        xtts: Any = model.xtts
        was_training = xtts.gpt.training
        xtts.gpt.init_gpt_for_inference(kv_cache=self.config.model_args.kv_cache, use_deepspeed=False)
        xtts.gpt.eval()
        try:
            with torch.inference_mode():
                out = xtts.synthesize(
                    text, speaker_wav=str(speaker_wav), language=self.spec.dataset.language, gpt_cond_len=3
                )
        finally:
            # the inference wrapper shares the GPT's weights: keep it out of the checkpoint's state dict
            del xtts.gpt.gpt_inference
            del xtts.gpt.gpt.wte
            xtts.gpt.train(was_training)
        wav = out["wav"]
        return np.asarray(wav.squeeze().cpu().numpy() if torch.is_tensor(wav) else wav, dtype=np.float32)

    def export_servable(self, checkpoint: dict[str, Any], dest: Path) -> list[str]:
        """model.pth: the fine-tuned ``xtts.*`` weights, no DVAE or optimizer; config, vocab: the base's."""
        from .checkpoints import atomic_torch_save

        model = {
            k.removeprefix("xtts."): v
            for k, v in checkpoint["model"].items()
            if not k.startswith(self.frozen_prefixes)
        }
        config = self.base_config.to_dict()
        config["model_args"]["tokenizer_file"] = ""  # vocab.json sits beside model.pth
        atomic_torch_save({"model": model, "config": config}, dest / "model.pth")
        (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        files = ["config.json", "model.pth"]
        for name in SERVABLE_EXTRAS:
            if (self.base_dir / name).is_file():
                shutil.copyfile(self.base_dir / name, dest / name)
                files.append(name)
        return files
