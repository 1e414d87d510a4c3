"""CLAP (laion_clap) on 1-s audio segments and class prompts, built through laion_clap's own
factory (never `CLAP_Module`, which fetches RoBERTa from the hub), with its mel front end
reproduced in torch.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from uwav.catalog import EncoderConfig
from uwav.features import configs
from uwav.features.encoder_base import (
    EncoderError,
    TorchEncoder,
    checkpoint_path,
    encoder_identity,
    load_checkpoint,
    seeded_init,
    to_host,
)

# Text branches of laion_clap that are Hugging Face models, and the hub ids laion_clap builds them from.
_CLAP_HF_TEXT_MODELS = {"roberta": "roberta-base", "bert": "bert-base-uncased", "bart": "facebook/bart-base"}
_CLAP_CONTEXT_LENGTH = 77
# Buffers that older transformers versions saved and newer ones no longer register (non-persistent):
# CLAP checkpoints trained with them still carry the key, which is harmless to drop.
_CLAP_OBSOLETE_KEYS = ("text_branch.embeddings.position_ids",)
# laion_clap's CLAP_Module(enable_fusion=True) builds this fusion; its `get_mel` makes 64 bands.
_CLAP_FUSION_TYPE = "aff_2d"
_CLAP_FUSION_MEL_BINS = 64


@cache
def _clap_module() -> ModuleType:
    """laion_clap's `clap_module` package, loaded without running `laion_clap/__init__.py`.

    That package init imports its training code, which parses `sys.argv` at import time (and
    exits on unknown arguments). laion_clap's own `hook.py` imports the same package as the
    top-level name `clap_module`; so do we, so that there is a single model-config registry.
    """
    if "clap_module" not in sys.modules:
        spec = importlib.util.find_spec("laion_clap")  # locates the package without executing it
        if spec is None or not spec.submodule_search_locations:
            raise EncoderError("CLAP needs the `laion_clap` package (pip install laion-clap)")
        package_dir = Path(spec.submodule_search_locations[0]) / "clap_module"
        module_spec = importlib.util.spec_from_file_location(
            "clap_module", package_dir / "__init__.py", submodule_search_locations=[str(package_dir)]
        )
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules["clap_module"] = module
        try:
            with warnings.catch_warnings():  # laion_clap imports timm's deprecated `timm.models.layers`
                warnings.simplefilter("ignore", FutureWarning)
                module_spec.loader.exec_module(module)
        except ImportError as exc:
            del sys.modules["clap_module"]
            raise EncoderError(
                f"laion_clap's model code could not be imported ({exc}); it imports BertModel, RobertaModel and "
                "BartModel from `transformers`, so a transformers version that provides them is required"
            ) from exc
    module = sys.modules["clap_module"]
    module.factory.add_model_config(configs.MODEL_CONFIG_DIR)
    return module


def _require_hf_text_model(repo_id: str, model_name: str) -> Any:
    """The tokenizer of a CLAP text branch that laion_clap builds from the Hugging Face hub, from the local cache."""
    from huggingface_hub import try_to_load_from_cache
    from transformers import AutoTokenizer

    has_config = isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    has_weights = any(
        isinstance(try_to_load_from_cache(repo_id, name), str) for name in ("model.safetensors", "pytorch_model.bin")
    )
    problem = None if has_config and has_weights else "config.json and model weights not both cached"
    tokenizer = None
    if problem is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(repo_id, local_files_only=True)
        except OSError as exc:
            problem = f"tokenizer not cached ({exc})"
    if tokenizer is None:
        raise EncoderError(
            f"CLAP {model_name!r}: its text branch is the Hugging Face model {repo_id!r}, which laion_clap "
            f"builds from the hub; it must be in the local Hugging Face cache (HF_HOME), but: {problem}. "
            f"Copy a cache holding {repo_id} (config, weights, tokenizer) and set HF_HOME (and HF_HUB_OFFLINE=1)."
        )
    return tokenizer


def htk_mel_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int) -> torch.Tensor:
    """(n_freqs, n_mels) float32: torchaudio's `melscale_fbanks` with its defaults (HTK scale, no
    norm), triangles in Hz between mel-spaced points; laion_clap's `get_mel` uses it for fusion."""
    def to_mel(hertz: float) -> float:
        return 2595.0 * float(np.log10(1.0 + hertz / 700.0))

    freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    points = 700.0 * (10.0 ** (torch.linspace(to_mel(f_min), to_mel(f_max), n_mels + 2) / 2595.0) - 1.0)
    widths = points[1:] - points[:-1]
    slopes = points[None, :] - freqs[:, None]
    falling = -slopes[:, :-2] / widths[:-1]
    rising = slopes[:, 2:] / widths[1:]
    return torch.minimum(falling, rising).clamp(min=0.0)


class ClapEncoder(TorchEncoder):
    """CLAP audio branch on 1-s waveforms at the model's sample rate, text branch on class prompts.

    The fusion model (`EncoderConfig.fusion`) reads, for audio no longer than its window (always
    the case for 1-s segments), laion_clap's `mel_fusion` input instead of the waveform: the log-mel
    of the padded window four times (`fusion_inputs`).
    """

    feature = "clap"
    segment_input = "audio"

    def __init__(
        self,
        model: nn.Module,
        text_model_type: str,
        hf_tokenizer: Any,
        tokenize: Any,
        config: EncoderConfig,
        device: torch.device,
        identity: str,
    ):
        super().__init__(model, config, device, identity, int(model.joint_embed_shape))
        audio_cfg = model.audio_cfg
        self.sample_rate = int(audio_cfg.sample_rate)
        self.clip_samples = int(audio_cfg.clip_samples)
        # laion_clap's audio branches disagree on their input: HTSAT and Cnn14 read a dict
        # {'waveform', 'longer'}, Cnn6 / Cnn10 take the waveform tensor itself.
        self.dict_input = audio_cfg.model_type == "HTSAT" or audio_cfg.model_name == "Cnn14"
        self.fusion = bool(getattr(model.audio_branch, "enable_fusion", False))
        self.fusion_filterbank = (
            htk_mel_filterbank(
                int(audio_cfg.window_size) // 2 + 1, float(audio_cfg.fmin), float(audio_cfg.fmax),
                _CLAP_FUSION_MEL_BINS, self.sample_rate,
            ).to(device)
            if self.fusion
            else None
        )
        self.text_model_type = text_model_type
        self.hf_tokenizer = hf_tokenizer
        self.tokenize = tokenize

    def preprocess(self, waveforms: np.ndarray | torch.Tensor) -> torch.Tensor:
        """float32 (B, n) -> (B, clip_samples), as laion_clap's `get_audio_embedding_from_data`, batched.

        Its steps: int16 quantisation round trip, then 'repeatpad' to the model's window
        (repeat whole copies, zero-pad the rest). Inputs longer than the window (never the case
        for 1-s segments and the 10-s real models) are centre-cropped, where laion_clap crops at random.
        """
        x = torch.as_tensor(waveforms)
        if x.ndim != 2 or not x.is_floating_point():
            raise ValueError(f"CLAP audio: expected float (B, samples), got {x.dtype} {tuple(x.shape)}")
        x = x.to(self.device, torch.float32, non_blocking=True)
        x = (x.clamp(-1.0, 1.0) * 32767.0).to(torch.int16).float() / 32767.0
        length = x.shape[1]
        if length < self.clip_samples:
            x = x.repeat(1, self.clip_samples // length)
            x = F.pad(x, (0, self.clip_samples - x.shape[1]))
        elif length > self.clip_samples:
            start = (length - self.clip_samples) // 2
            x = x[:, start : start + self.clip_samples]
        return x

    def fusion_inputs(self, padded: torch.Tensor) -> torch.Tensor:
        """(B, clip_samples) from `preprocess` -> (B, 4, frames, 64) `mel_fusion`, as laion_clap's
        `get_audio_features` (data_truncating 'fusion') builds it for audio no longer than the window:
        `get_mel` (torchaudio MelSpectrogram: periodic Hann, centred with reflect padding, power 2;
        AmplitudeToDB: 10 log10(max(x, 1e-10))) stacked four times; `longer` stays False."""
        cfg = self.model.audio_cfg
        window = torch.hann_window(int(cfg.window_size), device=padded.device)
        spectrum = torch.stft(
            padded, n_fft=int(cfg.window_size), hop_length=int(cfg.hop_size), win_length=int(cfg.window_size),
            window=window, center=True, pad_mode="reflect", normalized=False, onesided=True, return_complex=True,
        )
        assert self.fusion_filterbank is not None, "fusion inputs of a CLAP model without fusion"
        mel = spectrum.abs().pow(2).transpose(1, 2) @ self.fusion_filterbank  # (B, frames, 64)
        return (10.0 * torch.log10(mel.clamp(min=1e-10)))[:, None].repeat(1, 4, 1, 1)

    def audio_batch(self, waveforms: np.ndarray | torch.Tensor) -> Any:
        """What the audio branch reads for float32 (B, n) waveforms: the preprocessed window, in
        laion_clap's dict (with `mel_fusion` for the fusion model) where the branch takes one."""
        x = self.preprocess(waveforms)
        batch: Any = {"waveform": x, "longer": torch.zeros(len(x), 1, dtype=torch.bool, device=self.device)} if self.dict_input else x
        if self.fusion:
            batch["mel_fusion"] = self.fusion_inputs(x)
        return batch

    def embed(self, waveforms: np.ndarray | torch.Tensor) -> torch.Tensor:
        batch = self.audio_batch(waveforms)
        with self._running():
            hidden = self.model.encode_audio(batch, device=self.device)["embedding"]
            return self.model.audio_projection(hidden)

    def encode_audio(self, waveforms: np.ndarray | torch.Tensor) -> np.ndarray:
        """float32 (B, samples at `sample_rate`) -> (B, dim)."""
        return self.encode_segments(waveforms)

    def text_tokens(self, texts: Sequence[str]) -> Any:
        """Texts -> what the text branch reads (its tokenizer's output)."""
        texts = list(texts)
        if self.hf_tokenizer is not None:
            return dict(
                self.hf_tokenizer(
                    texts, padding="max_length", truncation=True, max_length=_CLAP_CONTEXT_LENGTH, return_tensors="pt"
                )
            )
        return self.tokenize(texts, context_length=self.model.context_length)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Prompts -> (C, dim)."""
        tokens = self.text_tokens(texts)
        with self._running():
            return to_host(self.model.encode_text(tokens, device=self.device))


def build_clap_encoder(config: EncoderConfig, device: torch.device, *, base_dir: Path | None = None) -> ClapEncoder:
    """A laion_clap model by config name (laion_clap's or ours) built by its factory, with the configured weights."""
    if config.pretrained is not None:
        raise EncoderError(
            f"CLAP {config.name!r}: weights come from a local checkpoint file (e.g. 630k-audioset-best.pt) "
            f"or random_init; pretrained tag {config.pretrained!r} is not supported"
        )
    clap_module = _clap_module()
    model_cfg = clap_module.factory._MODEL_CONFIGS.get(config.name)
    if model_cfg is None:
        raise EncoderError(
            f"CLAP model config {config.name!r} not found in laion_clap's registry (nor in {configs.MODEL_CONFIG_DIR}); "
            f"known: {', '.join(clap_module.factory.list_models())}"
        )
    # laion_clap takes the text branch as an argument; our configs name it in text_cfg.model_type,
    # laion_clap's own (the released checkpoints) use RoBERTa.
    text_model_type = model_cfg["text_cfg"].get("model_type", "roberta")
    hf_tokenizer = None
    if text_model_type in _CLAP_HF_TEXT_MODELS:
        hf_tokenizer = _require_hf_text_model(_CLAP_HF_TEXT_MODELS[text_model_type], config.name)
    elif text_model_type != "transformer":
        raise EncoderError(f"CLAP {config.name!r}: unknown text branch {text_model_type!r}")
    if config.fusion and model_cfg["audio_cfg"].get("model_type") != "HTSAT":
        raise EncoderError(
            f"CLAP {config.name!r}: `fusion` needs an HTSAT audio branch (laion_clap's PANN fusion models "
            "pick random chunks even in evaluation); the fusion checkpoints are HTSAT-tiny"
        )
    identity = encoder_identity("clap", config, base_dir, model_cfg)
    with seeded_init():
        model, _ = clap_module.factory.create_model(
            config.name, text_model_type, pretrained="", precision="fp32", device=torch.device("cpu"),
            enable_fusion=config.fusion, fusion_type=_CLAP_FUSION_TYPE if config.fusion else "None",
        )
    if config.checkpoint is not None:
        load_checkpoint(
            model,
            checkpoint_path(config, base_dir),
            what=f"CLAP model {config.name!r} ({'fusion, ' if config.fusion else ''}text branch {text_model_type!r})",
            ignore_unexpected=_CLAP_OBSOLETE_KEYS,
        )
    return ClapEncoder(model, text_model_type, hf_tokenizer, clap_module.tokenizer.tokenize, config, device, identity)
