"""R(2+1)D and ResNet-152 (torchvision) on segment frames: the networks from `model_configs/*.json`
(torchvision has no config registry of its own), weights from a checkpoint or a torchvision
weights tag, whose file torch.hub downloads on first use with its hash check (`uwav.features.weights`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from uwav.catalog import EncoderConfig
from uwav.features import configs
from uwav.features.encoder_base import (
    EncoderError,
    TorchEncoder,
    checkpoint_path,
    encoder_identity,
    load_checkpoint,
    resize_frames,
    seeded_init,
    uint8_tensor,
)
from uwav.features.weights import UrlFile, fetch_weights, weights_identity

def model_config(name: str, section: str, what: str) -> dict[str, Any]:
    """The `section` of `model_configs/<name>.json` (torchvision has no config registry of its own);
    `what` names the kind of model in the error listing the configs that have that section."""
    known = sorted(p.stem for p in configs.MODEL_CONFIG_DIR.glob("*.json") if section in json.loads(p.read_text()))
    if name not in known:
        raise EncoderError(f"{what} config {name!r} not found in {configs.MODEL_CONFIG_DIR}; known: {', '.join(known)}")
    return json.loads((configs.MODEL_CONFIG_DIR / f"{name}.json").read_text())[section]


def build_video_resnet(cfg: dict[str, Any]) -> nn.Module:
    """torchvision's R(2+1)D VideoResNet with the config's block counts ([2, 2, 2, 2] is r2plus1d_18)."""
    from torchvision.models.video.resnet import BasicBlock, Conv2Plus1D, R2Plus1dStem, VideoResNet

    return VideoResNet(BasicBlock, [Conv2Plus1D] * 4, list(cfg["layers"]), R2Plus1dStem)


def build_image_resnet(cfg: dict[str, Any]) -> nn.Module:
    """torchvision's ResNet with Bottleneck blocks ([3, 8, 36, 3] and width 64 per group is resnet152)."""
    from torchvision.models.resnet import Bottleneck, ResNet

    return ResNet(Bottleneck, list(cfg["layers"]), width_per_group=int(cfg["width_per_group"]))


def _torchvision_weights(name: str, cfg: dict[str, Any], tag: str, what: str) -> UrlFile:
    """The file of torchvision's pretrained weights `tag` (a weights enum member, e.g. KINETICS400_V1)."""
    import torchvision.models
    import torchvision.models.video

    enum_name = cfg.get("torchvision_weights")
    if enum_name is None:
        raise EncoderError(f"{what} {name!r} has no torchvision pretrained weights; use `checkpoint:` or `random_init`")
    weights_enum = getattr(torchvision.models, enum_name, None) or getattr(torchvision.models.video, enum_name)
    try:
        weights = weights_enum[tag]
    except KeyError:
        raise EncoderError(
            f"{what} {name!r}: unknown pretrained tag {tag!r} (known: {', '.join(w.name for w in weights_enum)})"
        ) from None
    return UrlFile(weights.url)


class _FramesEncoder(TorchEncoder):
    """A torchvision ResNet on the 8 frames of each segment; its global average pool is the feature
    (`fc` removed). Subclasses say which model config section, network and decoded frames."""

    config_section: str
    what: str
    build_network: Callable[[dict[str, Any]], nn.Module]  # the randomly initialised network of a model config

    def __init__(self, model: nn.Module, cfg: dict[str, Any], config: EncoderConfig, device: torch.device, identity: str):
        dim = model.fc.in_features
        model.fc = nn.Identity()  # the pooled feature, not the classifier's logits
        super().__init__(model, config, device, identity, dim)
        self.frames = int(cfg["frames"])
        self.input_size = (int(cfg["input_size"]), int(cfg["input_size"]))
        self.mean = torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1)

    def _normalised_frames(self, clips: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (B, T, H, W, 3) -> normalised (B * T, 3, S, S), frames resized to the model's input when they differ."""
        x = uint8_tensor(clips, 5, f"{self.what} frames", self.device)
        batch, frames, height, width, _ = x.shape
        if frames != self.frames:
            raise ValueError(f"{self.what} frames: the model takes {self.frames} frames per segment, got {frames}")
        x = x.reshape(batch * frames, height, width, 3).permute(0, 3, 1, 2).float()
        x = resize_frames(x, self.input_size, "bilinear").clamp_(0, 255).div_(255)
        return (x - self.mean) / self.std


class VideoEncoder(_FramesEncoder):
    """R(2+1)D on the 8 frames of each segment; the feature is the 512-d global average pool."""

    feature = "r2plus1d"
    segment_input = "clip_frames"
    config_section = "video_cfg"
    what = "video model"
    build_network = staticmethod(build_video_resnet)

    def preprocess(self, clips: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (B, T, H, W, 3) -> normalised (B, 3, T, S, S)."""
        x = self._normalised_frames(clips)
        return x.reshape(-1, self.frames, 3, *self.input_size).permute(0, 2, 1, 3, 4)

    def embed(self, clips: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = self.preprocess(clips)
        with self._running():
            return self.model(x)

    def encode_clips(self, clips: np.ndarray | torch.Tensor) -> np.ndarray:
        """uint8 (B, T, H, W, 3) -> (B, dim)."""
        return self.encode_segments(clips)


class ImageEncoder(_FramesEncoder):
    """ResNet-152 on each of the 8 ImageNet-cropped frames of a segment; the feature is the mean of
    their 2048-d global average pools (`resnet152_mean`, as the official import computes it)."""

    feature = "resnet152_mean"
    segment_input = "image_frames"
    config_section = "image_cfg"
    what = "image model"
    build_network = staticmethod(build_image_resnet)

    def preprocess(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (B, T, H, W, 3) -> normalised (B * T, 3, S, S)."""
        return self._normalised_frames(frames)

    def embed(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = self.preprocess(frames)
        with self._running():
            pooled = self.model(x)
        return pooled.float().view(-1, self.frames, self.dim).mean(1)  # mean in float32, as the import

    def encode_frames(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        """uint8 (B, T, H, W, 3) -> (B, dim)."""
        return self.encode_segments(frames)


_Frames = TypeVar("_Frames", VideoEncoder, ImageEncoder)


def _frames_weight_files(kind: type[_Frames], config: EncoderConfig) -> list[UrlFile]:
    if config.pretrained is None:
        return []
    cfg = model_config(config.name, kind.config_section, kind.what)
    return [_torchvision_weights(config.name, cfg, config.pretrained, kind.what)]


def video_weight_files(config: EncoderConfig) -> list[UrlFile]:
    """The torchvision weights file of an R(2+1)D pretrained tag (none for local or random weights)."""
    return _frames_weight_files(VideoEncoder, config)


def image_weight_files(config: EncoderConfig) -> list[UrlFile]:
    """The torchvision weights file of a ResNet pretrained tag (none for local or random weights)."""
    return _frames_weight_files(ImageEncoder, config)


def _build_frames_encoder(
    kind: type[_Frames], config: EncoderConfig, device: torch.device, base_dir: Path | None, mirror: str | None
) -> _Frames:
    cfg = model_config(config.name, kind.config_section, kind.what)
    what = f"{kind.what} {config.name!r}"
    fetched = fetch_weights(_frames_weight_files(kind, config), what=what, mirror=mirror)
    identity = encoder_identity(kind.feature, config, base_dir, cfg, weights_identity(fetched))
    with seeded_init():
        model = kind.build_network(cfg)
    for weights in fetched:
        load_checkpoint(model, weights.path, what=what)
    if config.checkpoint is not None:
        load_checkpoint(model, checkpoint_path(config, base_dir), what=what)
    return kind(model, cfg, config, device, identity)


def build_video_encoder(
    config: EncoderConfig, device: torch.device, *, base_dir: Path | None = None, mirror: str | None = None
) -> VideoEncoder:
    """torchvision's R(2+1)D by config name (`model_configs/*.json`, `video_cfg`) with the configured
    weights: a checkpoint, or a torchvision tag (KINETICS400_V1) downloaded on first use."""
    return _build_frames_encoder(VideoEncoder, config, device, base_dir, mirror)


def build_image_encoder(
    config: EncoderConfig, device: torch.device, *, base_dir: Path | None = None, mirror: str | None = None
) -> ImageEncoder:
    """torchvision's ResNet by config name (`model_configs/*.json`, `image_cfg`) with the configured
    weights: a torchvision `resnet152` state dict (`checkpoint:`), or a torchvision tag such as
    IMAGENET1K_V1 (the weights the AVVP release's features came from) downloaded on first use."""
    return _build_frames_encoder(ImageEncoder, config, device, base_dir, mirror)
