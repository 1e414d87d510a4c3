"""The segment encoders: CLIP (open_clip) and CLAP (laion_clap) for the method, R(2+1)D-18
(torchvision) for both HAN input sets, VGGish (`uwav.features.vggish`) and ResNet-152 (torchvision)
for the AVVP release's features (`stages.train.han.inputs: official`).

Every model is built through its library's own factory from a named JSON model config: the
libraries' shipped configs for real CLIP / CLAP models, ours in `model_configs/` (registered
with open_clip and laion_clap on first use) for the torchvision and VGGish networks and for the
tiny random-initialised models that tests and the demo run offline. Weights come from exactly
one source (`uwav.catalog.EncoderConfig`): a pretrained tag, a local checkpoint file (read by
`load_checkpoint`, which names the file and the keys at fault when it does not match), or a
deterministic random initialisation.

Nothing here downloads: pretrained tags are read from the local caches where open_clip (the
Hugging Face cache) and torchvision (the torch hub cache) keep them, and CLAP's RoBERTa text
branch, which laion_clap builds from the Hugging Face hub, must be in the local Hugging Face
cache (`HF_HOME`; set `HF_HUB_OFFLINE=1` on machines without network). A missing file raises
`EncoderError` naming where it was expected.

Embeddings are returned in float32 and are the *raw* joint-space projections (CLIP's
`encode_image` / `encode_text`, CLAP's audio / text projections), not L2-normalised: the
pseudo-label generator computes inner products with learned transforms on top, and normalising
is a cheap downstream choice whereas un-normalising is impossible. R(2+1)D and ResNet-152 give
their global-average-pool features (ResNet-152: the mean over the segment's 8 frames, the
`resnet152_mean` the official import also writes); VGGish its AudioSet-post-processed embedding.

This module holds CLIP, VGGish and `build_encoders`; CLAP is in `uwav.features.clap_encoder`, the
torchvision networks in `uwav.features.frame_encoders`, what they share in
`uwav.features.encoder_base`.
"""

from __future__ import annotations

import posixpath
from collections.abc import Collection, Sequence
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from uwav.catalog import EncoderConfig, EncodersConfig
from uwav.devices import resolve_device
from uwav.features import configs
from uwav.features.clap_encoder import ClapEncoder, build_clap_encoder
from uwav.features.encoder_base import (
    EncoderError,
    TorchEncoder,
    checkpoint_path,
    encoder_identity,
    load_checkpoint,
    load_state,
    read_state_dict,
    resize_frames,
    seeded_init,
    to_host,
    uint8_tensor,
)
from uwav.features.frame_encoders import ImageEncoder, VideoEncoder, build_image_encoder, build_video_encoder, model_config
from uwav.features.vggish import VggishNet, canonical_state, has_pca, log_mel_examples

# Store feature -> the `uwav.catalog.EncodersConfig` key (and `Encoders` field) of its encoder.
ENCODER_KEYS: dict[str, str] = {
    "clip": "clip", "clap": "clap", "r2plus1d": "r2plus1d", "vggish": "vggish", "resnet152_mean": "resnet152",
}
FEATURE_NAMES: tuple[str, ...] = tuple(ENCODER_KEYS)

# ---------------------------------------------------------------- CLIP (open_clip)


@cache
def _open_clip() -> ModuleType:
    import open_clip

    open_clip.add_model_config(configs.MODEL_CONFIG_DIR)
    return open_clip


class ClipEncoder(TorchEncoder):
    """CLIP image tower on segment centre frames, text tower on class prompts (joint space)."""

    feature = "clip"
    segment_input = "centre_frames"

    def __init__(self, model: nn.Module, tokenizer: Any, config: EncoderConfig, device: torch.device, identity: str, dim: int):
        super().__init__(model, config, device, identity, dim)
        self.tokenizer = tokenizer
        preprocess = _open_clip().get_model_preprocess_cfg(model)
        size = preprocess["size"]
        self.image_size: tuple[int, int] = (size, size) if isinstance(size, int) else tuple(size)  # type: ignore[assignment]
        self.interpolation: str = preprocess.get("interpolation", "bicubic")
        self.resize_mode: str = preprocess.get("resize_mode", "shortest")
        self.fill = float(preprocess.get("fill_color", 0))
        self.mean = torch.tensor(preprocess["mean"], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(preprocess["std"], device=device).view(1, 3, 1, 1)
        if self.resize_mode not in ("shortest", "longest", "squash"):
            raise EncoderError(f"CLIP {config.name!r}: unsupported resize_mode {self.resize_mode!r}")

    def preprocess(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> normalised (B, 3, S, S): open_clip's eval transform, batched in torch."""
        x = uint8_tensor(frames, 4, "CLIP frames", self.device).permute(0, 3, 1, 2).float()
        height, width = x.shape[-2:]
        target_h, target_w = self.image_size
        if self.resize_mode == "squash":
            x = resize_frames(x, (target_h, target_w), self.interpolation)
        else:
            # 'shortest': short side to the target, then centre crop; 'longest': long side, then pad.
            pick = max if self.resize_mode == "shortest" else min
            scale = pick(target_h / height, target_w / width)
            x = resize_frames(x, (max(1, round(height * scale)), max(1, round(width * scale))), self.interpolation)
            pad_h, pad_w = target_h - x.shape[-2], target_w - x.shape[-1]
            if pad_h > 0 or pad_w > 0:
                x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=self.fill * 255)
            top, left = (x.shape[-2] - target_h) // 2, (x.shape[-1] - target_w) // 2
            x = x[..., top : top + target_h, left : left + target_w]
        x = x.clamp_(0, 255).div_(255)
        return (x - self.mean) / self.std

    def embed(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        pixels = self.preprocess(frames)
        with self._running():
            return self.model.encode_image(pixels)

    def encode_images(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        """uint8 (B, H, W, 3) -> (B, dim)."""
        return self.encode_segments(frames)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Prompts -> (C, dim)."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        with self._running():
            return to_host(self.model.encode_text(tokens))


def _require_cached_open_clip_weights(name: str, tag: str) -> None:
    """Refuse a pretrained tag whose weights are not in the local cache, where open_clip would download them."""
    from huggingface_hub import try_to_load_from_cache

    open_clip = _open_clip()
    source = open_clip.get_pretrained_cfg(name, tag)
    if not source:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise EncoderError(f"CLIP {name!r}: unknown pretrained tag {tag!r} (open_clip knows: {known})")
    if source.get("hf_hub"):
        repo_id, filename = posixpath.split(source["hf_hub"])  # as open_clip splits it: 'org/model/[file]'
        candidates = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if any(isinstance(try_to_load_from_cache(repo_id, candidate), str) for candidate in candidates):
            return
        where = f"Hugging Face repo {repo_id!r} ({' or '.join(candidates)}) in the local cache (HF_HOME)"
    else:
        cached = Path("~/.cache/clip").expanduser() / Path(source["url"]).name  # open_clip's URL cache
        if cached.is_file():
            return
        where = str(cached)
    raise EncoderError(
        f"CLIP {name!r} pretrained {tag!r}: the weights are not cached locally (expected: {where}) and this "
        "project does not download. Fetch them once on a connected machine (open_clip.create_model("
        f"{name!r}, pretrained={tag!r})) and copy the cache, or set `checkpoint:` to a local weights file."
    )


def build_clip_encoder(config: EncoderConfig, device: torch.device, *, base_dir: Path | None = None) -> ClipEncoder:
    """An open_clip model by config name (open_clip's or ours) with the configured weights."""
    open_clip = _open_clip()
    if open_clip.get_model_config(config.name) is None:
        raise EncoderError(
            f"CLIP model config {config.name!r} not found in open_clip's registry "
            f"(nor in {configs.MODEL_CONFIG_DIR}); known: {', '.join(open_clip.list_models()[:12])}, ..."
        )
    identity = encoder_identity("clip", config, base_dir, open_clip.get_model_config(config.name))
    with seeded_init():
        if config.pretrained is not None:
            _require_cached_open_clip_weights(config.name, config.pretrained)
            # open_clip applies the tag's settings (e.g. QuickGELU for 'openai') and loads the cached file
            model = open_clip.create_model(config.name, pretrained=config.pretrained, require_pretrained=True)
        else:
            model = open_clip.create_model(config.name, pretrained=None)
    if config.checkpoint is not None:
        load_checkpoint(model, checkpoint_path(config, base_dir), what=f"CLIP model {config.name!r}")
    tokenizer = open_clip.get_tokenizer(config.name)
    dim = int(open_clip.get_model_config(config.name)["embed_dim"])
    return ClipEncoder(model, tokenizer, config, device, identity, dim)


# ---------------------------------------------------------------- VGGish


class VggishEncoder(TorchEncoder):
    """VGGish on 1-s 16-kHz segments (one log-mel example each), post-processed when the weights carry the PCA."""

    feature = "vggish"
    segment_input = "audio_16k"

    def __init__(self, model: VggishNet, config: EncoderConfig, device: torch.device, identity: str):
        super().__init__(model, config, device, identity, model.dim)
        self.postprocessed = model.pproc is not None

    def preprocess(self, waveforms: np.ndarray | torch.Tensor) -> torch.Tensor:
        """float (B, 16000) -> (B, 96, 64) log-mel examples (`uwav.features.vggish.log_mel_examples`)."""
        return log_mel_examples(torch.as_tensor(waveforms).to(self.device, non_blocking=True))

    def embed(self, waveforms: np.ndarray | torch.Tensor) -> torch.Tensor:
        examples = self.preprocess(waveforms)
        with self._running():
            embeddings = self.model(examples)
        if self.model.pproc is None:
            return embeddings
        with torch.inference_mode():  # quantisation in float32, outside autocast
            return self.model.pproc(embeddings)

    def encode_audio(self, waveforms: np.ndarray | torch.Tensor) -> np.ndarray:
        """float32 (B, 16000) -> (B, dim)."""
        return self.encode_segments(waveforms)


def build_vggish_encoder(config: EncoderConfig, device: torch.device, *, base_dir: Path | None = None) -> VggishEncoder:
    """VGGish by config name (`model_configs/*.json`, `vggish_cfg`) with the configured weights.

    A checkpoint is a torchvggish-layout state dict (`features.*`, `embeddings.*`); with the PCA
    parameters in it too (`uwav.features.vggish.PCA_KEYS`), the encoder post-processes.
    """
    cfg = model_config(config.name, "vggish_cfg", "VGGish model")
    if config.pretrained is not None:
        raise EncoderError(
            f"VGGish {config.name!r}: weights come from a local checkpoint file (torchvggish's state dict, "
            f"e.g. vggish.pth) or random_init; pretrained tag {config.pretrained!r} is not supported"
        )
    identity = encoder_identity("vggish", config, base_dir, cfg)
    path = checkpoint_path(config, base_dir) if config.checkpoint is not None else None
    state = canonical_state(read_state_dict(path)) if path is not None else {}
    with seeded_init():
        model = VggishNet(cfg, postprocess=has_pca(state))  # the file decides whether it post-processes
    if path is not None:
        what = f"VGGish model {config.name!r} ({'with' if model.pproc is not None else 'without'} the PCA post-processor)"
        load_state(model, state, path, what=what)
    return VggishEncoder(model, config, device, identity)


# ---------------------------------------------------------------- all of them


SegmentEncoder = ClipEncoder | ClapEncoder | VideoEncoder | VggishEncoder | ImageEncoder
_BUILDERS = {
    "clip": build_clip_encoder,
    "clap": build_clap_encoder,
    "r2plus1d": build_video_encoder,
    "vggish": build_vggish_encoder,
    "resnet152_mean": build_image_encoder,
}


@dataclass
class Encoders:
    """The encoders of one extraction run, by catalog key; a feature whose encoder is None is not computed."""

    clip: ClipEncoder | None = None
    clap: ClapEncoder | None = None
    r2plus1d: VideoEncoder | None = None
    vggish: VggishEncoder | None = None
    resnet152: ImageEncoder | None = None

    def active(self) -> list[SegmentEncoder]:
        return [encoder for field in fields(self) if (encoder := getattr(self, field.name)) is not None]

    def feature_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-segment shape of each computed feature, as the feature store allocates it."""
        return {encoder.feature: (encoder.dim,) for encoder in self.active()}


def build_encoders(
    config: EncodersConfig,
    device: str | torch.device = "auto",
    *,
    features: Collection[str],
    base_dir: Path | None = None,
) -> Encoders:
    """Build the encoders of the store features named in `features` (`FEATURE_NAMES`) on `device`,
    and no other (each needs its own weights); relative checkpoint paths resolve against `base_dir`."""
    unknown = set(features) - set(FEATURE_NAMES)
    if unknown:
        raise EncoderError(f"unknown features {sorted(unknown)} (known: {', '.join(FEATURE_NAMES)})")
    target = resolve_device(device)
    return Encoders(
        **{
            ENCODER_KEYS[name]: _BUILDERS[name](getattr(config, ENCODER_KEYS[name]), target, base_dir=base_dir)
            for name in FEATURE_NAMES
            if name in features
        }
    )
