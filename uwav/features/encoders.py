"""The segment encoders: CLIP (open_clip) and CLAP (laion_clap) for the method, R(2+1)D-18
(torchvision) for both HAN input sets, VGGish (`uwav.features.vggish`) and ResNet-152 (torchvision)
for the AVVP release's features (`stages.train.han.inputs: official`).

Every model is built through its library's own factory from a named JSON model config: the
libraries' shipped configs for real CLIP / CLAP models (or an `hf-hub:` repository's, for CLIP),
ours in `model_configs/` (registered with open_clip and laion_clap on first use) for the
torchvision and VGGish networks and for the tiny random-initialised models that tests and the
demo run offline. Weights come from exactly one source (`uwav.catalog.EncoderConfig`): published
weights (a pretrained tag, an `hf-hub:` model's own), a local checkpoint file (read by
`load_checkpoint`, which names the file and the keys at fault when it does not match), or a
deterministic random initialisation. A network built for published weights has the architecture
they were trained with (`create_clip_network`: the tag's activation and preprocessing).

Published weights are downloaded on first use into the standard caches, each through its
library's hub (`uwav.features.weights`: huggingface_hub for open_clip, laion_clap and RoBERTa,
torch.hub for torchvision and VGGish); cached ones are used without contacting anything, and
offline (`HF_HUB_OFFLINE=1`, `UWAV_OFFLINE=1`) a missing one raises an `EncoderError` naming the
file, the cache and `uwav weights fetch`. `encoder_weight_files` lists them for that command.

Embeddings are returned in float32 and are the *raw* joint-space projections (CLIP's
`encode_image` / `encode_text`, CLAP's audio / text projections), not L2-normalised: the
pseudo-label generator computes inner products with learned transforms on top, and normalising
is a cheap downstream choice whereas un-normalising is impossible. R(2+1)D and ResNet-152 give
their global-average-pool features (ResNet-152: the mean over the segment's 8 frames, the
`resnet152_mean` the official import also writes); VGGish its AudioSet-post-processed embedding.

`stages.features.extraction: valor` computes the CLIP features as VALOR's scripts did
(`ValorClipEncoder`: L2-normalised, from other frames, preprocessed otherwise), and `clap_maps`
is VALOR's per-clip CLAP map (`uwav.features.clap_encoder.ClapMapsEncoder`).

This module holds CLIP, VGGish and `build_encoders`; CLAP is in `uwav.features.clap_encoder`, the
torchvision networks in `uwav.features.frame_encoders`, what they share in
`uwav.features.encoder_base`.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Collection, Sequence
from dataclasses import dataclass, fields
from functools import cache, partial
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from uwav.catalog import HF_HUB_MODEL_PREFIX, EncoderConfig, EncodersConfig, Extraction
from uwav.contracts import CLAP_MAPS
from uwav.devices import resolve_device
from uwav.features import configs
from uwav.features.clap_encoder import ClapEncoder, ClapMapsEncoder, build_clap_encoder, clap_weight_files
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
from uwav.features.frame_encoders import (
    ImageEncoder,
    VideoEncoder,
    build_image_encoder,
    build_video_encoder,
    image_weight_files,
    model_config,
    video_weight_files,
)
from uwav.features.vggish import VggishNet, canonical_state, has_pca, log_mel_examples
from uwav.features.weights import HubFile, UrlFile, WeightFile, fetch_weights, weights_identity, weights_mirror

# Store feature -> the `uwav.catalog.EncodersConfig` key (and `Encoders` field) of its encoder;
# `clap_maps` is computed by the `clap` encoder's model (`Encoders.clap_maps`).
ENCODER_KEYS: dict[str, str] = {
    "clip": "clip", "clap": "clap", "r2plus1d": "r2plus1d", "vggish": "vggish", "resnet152_mean": "resnet152",
}
FEATURE_NAMES: tuple[str, ...] = (*ENCODER_KEYS, CLAP_MAPS)

# ---------------------------------------------------------------- CLIP (open_clip)


# The files of an `hf-hub:` open_clip model: its config, then its weights as safetensors or as a
# torch pickle (open_clip's names, the first one the repository has).
_HUB_CONFIG = "open_clip_config.json"
_HUB_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# The preprocessing a pretrained tag's config sets (open_clip's `PreprocessCfg` fields).
_TAG_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode", "fill_color")


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


class ValorClipEncoder(ClipEncoder):
    """CLIP features as VALOR's `utils/clip_preprocess.py` computed them (`extraction: valor`): one
    frame per segment chosen by VALOR's 8-fps sampling (`DecodedSegments.valor_frames`), converted
    as its `ToTensor, Resize((224, 224)), Normalize(CLIP mean, std)` does with the torchvision 0.13 of
    its environment (a float tensor in [0, 1] resized bilinearly without antialiasing, the aspect
    not kept, nothing cropped; the model's input size, 224 for ViT-L/14), and the image embedding
    L2-normalised as `get_image_embedding` saves it.

    VALOR ran Hugging Face's `openai/clip-vit-large-patch14`; open_clip's `ViT-L-14` with
    `pretrained: openai` holds the same weights (QuickGELU, which `create_clip_network` builds for
    that tag) and the same mean and std, so the features agree up to float error."""

    segment_input = "valor_frames"

    def preprocess(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> normalised (B, 3, S, S)."""
        x = uint8_tensor(frames, 4, "CLIP frames", self.device).permute(0, 3, 1, 2).float().div_(255)
        x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False, antialias=False)
        return (x - self.mean) / self.std

    def embed(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        embeddings = super().embed(frames).float()
        return embeddings / embeddings.norm(p=2, dim=-1, keepdim=True)


def _tag_config(name: str, tag: str) -> dict[str, Any]:
    """open_clip's pretrained config of `tag` for model `name` (its weights' hub file, activation, preprocessing)."""
    open_clip = _open_clip()
    tag_cfg = open_clip.get_pretrained_cfg(name, tag)
    if not tag_cfg:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise EncoderError(f"CLIP {name!r}: unknown pretrained tag {tag!r} (open_clip knows: {known})")
    return tag_cfg


def _weights_candidates(filename: str) -> tuple[str, ...]:
    """open_clip's choice of file: the safetensors twin of a torch pickle first, if the repository has it."""
    if filename == _HUB_WEIGHTS[1]:
        return _HUB_WEIGHTS
    stem, ext = posixpath.splitext(filename)
    return (f"{stem}.safetensors", filename) if ext in (".bin", ".pth") else (filename,)


def clip_weight_files(config: EncoderConfig) -> list[HubFile]:
    """The hub files a CLIP is built from: an `hf-hub:` model's config (and weights, unless replaced),
    a pretrained tag's weights; none for a registry config with local or random weights."""
    if config.hub_model:
        repo_id = config.name[len(HF_HUB_MODEL_PREFIX) :]
        return [HubFile(repo_id, (_HUB_CONFIG,)), *([HubFile(repo_id, _HUB_WEIGHTS)] if config.downloads_weights else [])]
    if config.pretrained is None:
        return []
    source = _tag_config(config.name, config.pretrained).get("hf_hub", "")
    if not source:
        raise EncoderError(
            f"CLIP {config.name!r} pretrained {config.pretrained!r}: open_clip names no Hugging Face repository for it"
        )
    repo_id, filename = posixpath.split(source)  # as open_clip splits it: 'org/model/[file]'
    return [HubFile(repo_id, _weights_candidates(filename or _HUB_WEIGHTS[1]))]


def create_clip_network(name: str, tag: str | None = None, hub_folder: Path | None = None) -> nn.Module:
    """open_clip's network, randomly initialised: the registry config `name` built as the weights of
    pretrained tag `tag` were trained (the tag's `quick_gelu`, and its mean, std, interpolation and
    resize mode as the model's preprocessing), or the `hf-hub:` model whose `open_clip_config.json`
    (model and preprocessing) is in `hub_folder`.

    open_clip's `create_model(name, pretrained=tag)` keeps the config's activation and only warns
    when the tag's differs: OpenAI's QuickGELU weights in a GELU ViT-L-14 compute features that
    match neither OpenAI's model nor the releases'. Here the tag decides, so they cannot differ."""
    open_clip = _open_clip()
    if hub_folder is not None:
        return open_clip.create_model(f"local-dir:{hub_folder}", load_weights=False)
    if tag is None:
        return open_clip.create_model(name, pretrained=None)
    tag_cfg = _tag_config(name, tag)
    return open_clip.create_model(
        name,
        pretrained=None,
        force_preprocess_cfg={key: tag_cfg[key] for key in _TAG_PREPROCESS_KEYS if key in tag_cfg},
        quick_gelu=bool(tag_cfg.get("quick_gelu", False)),  # a model kwarg: overrides the config's
    )


def _require_own_text_tower(name: str, model_cfg: dict[str, Any]) -> None:
    """Refuse a CLIP whose text tower or tokenizer open_clip would fetch from another Hugging Face model."""
    text_cfg = model_cfg.get("text_cfg", {})
    foreign = text_cfg.get("hf_model_name") or text_cfg.get("hf_tokenizer_name")
    if foreign or "siglip" in name.lower():
        raise EncoderError(
            f"CLIP {name!r}: its text tower or tokenizer comes from the Hugging Face model "
            f"{foreign or 'of its SigLIP tokenizer'!r}, which uwav does not fetch; use a CLIP with open_clip's "
            "own text tower and tokenizer (e.g. ViT-L-14 with pretrained: openai)"
        )


def build_clip_encoder(
    config: EncoderConfig,
    device: torch.device,
    *,
    base_dir: Path | None = None,
    mirror: str | None = None,
    extraction: Extraction = "paper",
) -> ClipEncoder:
    """An open_clip model by config name (open_clip's, ours, or `hf-hub:ORG/REPO`) with the configured
    weights; published ones are downloaded on first use (`uwav.features.weights`). `extraction:
    valor` gives a `ValorClipEncoder`, whose identity ends in `/valor` (other values, another feature)."""
    open_clip = _open_clip()
    if not config.hub_model and open_clip.get_model_config(config.name) is None:
        raise EncoderError(
            f"CLIP model config {config.name!r} not found in open_clip's registry "
            f"(nor in {configs.MODEL_CONFIG_DIR}); known: {', '.join(open_clip.list_models()[:12])}, ..."
        )
    what = f"CLIP {config.name!r}"
    fetched = fetch_weights(clip_weight_files(config), what=what, mirror=mirror)
    hub_folder = fetched[0].path.parent if config.hub_model else None
    if hub_folder is not None:
        model_cfg = json.loads((hub_folder / _HUB_CONFIG).read_text()).get("model_cfg")
        if not isinstance(model_cfg, dict):
            raise EncoderError(f"{what}: {hub_folder / _HUB_CONFIG} has no `model_cfg`: not an open_clip model repository")
    else:
        model_cfg = open_clip.get_model_config(config.name)
    _require_own_text_tower(config.name, model_cfg)
    identity = encoder_identity("clip", config, base_dir, model_cfg, weights_identity(fetched))
    with seeded_init():
        model = create_clip_network(config.name, config.pretrained, hub_folder)
    for weights in fetched:
        if weights.path.name != _HUB_CONFIG:
            try:  # open_clip's loader: it converts the older state-dict layouts its tags use
                open_clip.load_checkpoint(model, str(weights.path), strict=True)
            except Exception as error:
                raise EncoderError(
                    f"{what}: weights file {weights.path} ({weights.file.source}) does not load: {error}"
                ) from error
    if config.checkpoint is not None:
        load_checkpoint(model, checkpoint_path(config, base_dir), what=f"CLIP model {config.name!r}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{hub_folder}" if hub_folder is not None else config.name)
    if extraction == "valor":
        return ValorClipEncoder(model, tokenizer, config, device, f"{identity}/valor", int(model_cfg["embed_dim"]))
    return ClipEncoder(model, tokenizer, config, device, identity, int(model_cfg["embed_dim"]))


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


def vggish_weight_files(config: EncoderConfig) -> list[UrlFile]:
    """A pretrained tag's files, from the model config's `pretrained` table: the weights and the
    AudioSet PCA parameters (torchvggish's release names them so, each with its hash)."""
    if config.pretrained is None:
        return []
    releases = (configs.shipped_model_config(config.name) or {}).get("pretrained", {})
    if config.pretrained not in releases:
        raise EncoderError(
            f"VGGish {config.name!r}: pretrained tag {config.pretrained!r} is not supported "
            f"(known: {', '.join(releases) or 'none'}); or give a local checkpoint file (torchvggish's state dict) "
            "or random_init"
        )
    return [UrlFile(url) for url in releases[config.pretrained].values()]


def build_vggish_encoder(
    config: EncoderConfig, device: torch.device, *, base_dir: Path | None = None, mirror: str | None = None
) -> VggishEncoder:
    """VGGish by config name (`model_configs/*.json`, `vggish_cfg`) with the configured weights.

    A checkpoint is a torchvggish-layout state dict (`features.*`, `embeddings.*`); with the PCA
    parameters in it too (`uwav.features.vggish.PCA_KEYS`), the encoder post-processes. A
    pretrained tag's two files (weights, PCA) are read as one such state dict.
    """
    cfg = model_config(config.name, "vggish_cfg", "VGGish model")
    fetched = fetch_weights(vggish_weight_files(config), what=f"VGGish {config.name!r}", mirror=mirror)
    identity = encoder_identity("vggish", config, base_dir, cfg, weights_identity(fetched))
    paths = [checkpoint_path(config, base_dir)] if config.checkpoint is not None else [weights.path for weights in fetched]
    state = canonical_state({key: value for path in paths for key, value in read_state_dict(path).items()})
    with seeded_init():
        model = VggishNet(cfg, postprocess=has_pca(state))  # the files decide whether it post-processes
    if paths:
        what = f"VGGish model {config.name!r} ({'with' if model.pproc is not None else 'without'} the PCA post-processor)"
        load_state(model, state, " + ".join(map(str, paths)), what=what)
    return VggishEncoder(model, config, device, identity)


# ---------------------------------------------------------------- all of them


SegmentEncoder = ClipEncoder | ClapEncoder | VideoEncoder | VggishEncoder | ImageEncoder
FeatureEncoder = SegmentEncoder | ClapMapsEncoder  # `per_clip` tells which kind of feature it gives
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
    clap_maps: ClapMapsEncoder | None = None

    def active(self) -> list[FeatureEncoder]:
        return [encoder for field in fields(self) if (encoder := getattr(self, field.name)) is not None]

    def feature_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of each computed feature as the feature store allocates it: per segment, or
        for the per-clip features (`per_clip_features`) per video."""
        return {encoder.feature: tuple(encoder.feature_shape) for encoder in self.active()}

    def per_clip_features(self) -> list[str]:
        return [encoder.feature for encoder in self.active() if encoder.per_clip]

    def identities(self) -> dict[str, str]:
        return {encoder.feature: encoder.identity for encoder in self.active()}


def build_encoders(
    config: EncodersConfig,
    device: str | torch.device = "auto",
    *,
    features: Collection[str],
    base_dir: Path | None = None,
    extraction: Extraction = "paper",
) -> Encoders:
    """Build the encoders of the store features named in `features` (`FEATURE_NAMES`) on `device`,
    and no other (each needs its own weights); relative checkpoint paths resolve against `base_dir`.
    `clap_maps` shares the `clap` model (built for it alone when `clap` is not asked for);
    `extraction` selects the CLIP features' definition (`uwav.catalog.FeaturesSettings`).
    Published weights missing from the caches are downloaded (`uwav.features.weights`), URL ones
    from `encoders.weights_mirror` when set."""
    unknown = set(features) - set(FEATURE_NAMES)
    if unknown:
        raise EncoderError(f"unknown features {sorted(unknown)} (known: {', '.join(FEATURE_NAMES)})")
    target = resolve_device(device)
    mirror = weights_mirror(config.weights_mirror)
    builders = {**_BUILDERS, "clip": partial(build_clip_encoder, extraction=extraction)}
    wanted = [name for name in ENCODER_KEYS if name in features or (name == "clap" and CLAP_MAPS in features)]
    built = {
        ENCODER_KEYS[name]: builders[name](getattr(config, ENCODER_KEYS[name]), target, base_dir=base_dir, mirror=mirror)
        for name in wanted
    }
    maps = ClapMapsEncoder(built["clap"]) if CLAP_MAPS in features else None
    if "clap" not in features:
        built.pop("clap", None)
    return Encoders(**built, clap_maps=maps)


_WEIGHT_FILES = {
    "clip": clip_weight_files,
    "clap": clap_weight_files,
    "r2plus1d": video_weight_files,
    "vggish": vggish_weight_files,
    "resnet152": image_weight_files,
}


def encoder_weight_files(config: EncodersConfig, keys: Collection[str]) -> dict[str, list[WeightFile]]:
    """By `encoders` key (of `keys`): the published weight files the encoder is built from, which
    `build_encoders` downloads when they are not in the cache (`uwav weights fetch` ahead of time)."""
    return {key: _WEIGHT_FILES[key](getattr(config, key)) for key in keys}
