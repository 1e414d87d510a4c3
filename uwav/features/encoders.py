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
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import posixpath
import sys
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from uwav.catalog import EncoderConfig, EncodersConfig
from uwav.devices import autocast, resolve_device
from uwav.errors import UwavError
from uwav.features import configs
from uwav.features.vggish import VggishNet, canonical_state, has_pca, log_mel_examples

# Store feature -> the `uwav.catalog.EncodersConfig` key (and `Encoders` field) of its encoder.
ENCODER_KEYS: dict[str, str] = {
    "clip": "clip", "clap": "clap", "r2plus1d": "r2plus1d", "vggish": "vggish", "resnet152_mean": "resnet152",
}
FEATURE_NAMES: tuple[str, ...] = tuple(ENCODER_KEYS)
RANDOM_INIT_SEED = 0  # random-init encoders are deterministic, so re-runs and resumed runs agree

# Text branches of laion_clap that are Hugging Face models, and the hub ids laion_clap builds them from.
_CLAP_HF_TEXT_MODELS = {"roberta": "roberta-base", "bert": "bert-base-uncased", "bart": "facebook/bart-base"}
_CLAP_CONTEXT_LENGTH = 77
# Buffers that older transformers versions saved and newer ones no longer register (non-persistent):
# CLAP checkpoints trained with them still carry the key, which is harmless to drop.
_CLAP_OBSOLETE_KEYS = ("text_branch.embeddings.position_ids",)
# laion_clap's CLAP_Module(enable_fusion=True) builds this fusion; its `get_mel` makes 64 bands.
_CLAP_FUSION_TYPE = "aff_2d"
_CLAP_FUSION_MEL_BINS = 64


class EncoderError(UwavError, RuntimeError):
    """An encoder that cannot be built or loaded; the message names the model, file or key at fault."""


# ---------------------------------------------------------------- devices and checkpoints


def file_digest(path: Path) -> str:
    """First 16 hex digits of the file's SHA-256 (identifies a checkpoint by content, not by name)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (safetensors, or a weights-only torch pickle).

    Unwraps the usual containers (`{'state_dict': ...}`, `{'model': ...}`) and the `module.`
    prefix that DataParallel / DDP training leaves on every key.
    """
    path = Path(path)
    if not path.is_file():
        raise EncoderError(f"checkpoint file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            content: Any = load_file(str(path))
        else:
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any reader failure means the same thing to the user: unusable file
        raise EncoderError(
            f"checkpoint file {path} cannot be read as safetensors or a weights-only torch checkpoint: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    while isinstance(content, dict) and not all(isinstance(v, torch.Tensor) for v in content.values()):
        wrapper = next((k for k in ("state_dict", "model", "model_state_dict") if isinstance(content.get(k), dict)), None)
        if wrapper is None:
            raise EncoderError(
                f"checkpoint file {path}: no state dict found (top-level keys: {sorted(map(str, content))[:10]})"
            )
        content = content[wrapper]
    if not isinstance(content, dict) or not content:
        raise EncoderError(f"checkpoint file {path}: expected a mapping of tensors, got {type(content).__name__}")
    if all(key.startswith("module.") for key in content):
        content = {key[len("module.") :]: value for key, value in content.items()}
    return content


def _key_list(keys: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def load_checkpoint(
    model: nn.Module, path: str | Path, *, what: str, ignore_unexpected: Collection[str] = ()
) -> None:
    """Load `path` into `model` strictly; on any mismatch raise naming the file and the keys.

    `what` names the model in messages; `ignore_unexpected` lists keys known to be harmless
    leftovers in checkpoints of that model.
    """
    load_state(model, read_state_dict(path), path, what=what, ignore_unexpected=ignore_unexpected)


def load_state(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    path: str | Path,
    *,
    what: str,
    ignore_unexpected: Collection[str] = (),
) -> None:
    """`load_checkpoint` of a state dict already read from `path` (for models whose layout depends on the file)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected) - set(ignore_unexpected))
    mis_shaped = [
        f"{key} (file {tuple(state[key].shape)}, model {tuple(value.shape)})"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    problems = [
        f"{label}: {_key_list(keys)}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", mis_shaped))
        if keys
    ]
    if problems:
        raise EncoderError(f"checkpoint file {path} does not match {what}: " + "; ".join(problems))
    model.load_state_dict({key: state[key] for key in expected}, strict=True)


def _checkpoint_path(config: EncoderConfig, base_dir: Path | None) -> Path:
    path = Path(config.checkpoint).expanduser()  # type: ignore[arg-type]
    return path if path.is_absolute() or base_dir is None else base_dir / path


def _identity(feature: str, config: EncoderConfig, base_dir: Path | None, model_cfg: dict[str, Any]) -> str:
    """Names the weights: model config name + source (tag, checkpoint content hash, or random-init
    seed and a digest of the config's content), plus `/fusion` for CLAP's fusion model and `/bf16`
    for bfloat16 features, so that a store never mixes features of different models or precisions.

    Random-init weights need the content digest: an edited `model_configs/*.json` under the same
    name is another network whose features must not be served from the store. Loaded weights pin
    the architecture themselves (a checkpoint of another shape does not load), so their identities
    stay as they were and existing stores of real features remain valid."""
    if config.pretrained is not None:
        source = f"pretrained={config.pretrained}"
    elif config.checkpoint is not None:
        path = _checkpoint_path(config, base_dir)
        if not path.is_file():
            raise EncoderError(f"{feature} encoder {config.name!r}: checkpoint file {path} does not exist")
        source = f"checkpoint=sha256:{file_digest(path)}"
    else:
        config_digest = hashlib.sha256(json.dumps(model_cfg, sort_keys=True).encode()).hexdigest()[:12]
        source = f"random_init=seed{RANDOM_INIT_SEED}/config={config_digest}"
    variant = ("/fusion" if config.fusion else "") + ("/bf16" if config.precision == "bf16" else "")
    return f"{feature}/{config.name}/{source}{variant}"


@contextlib.contextmanager
def _seeded() -> Iterator[None]:
    """Deterministic parameter initialisation without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        yield


def _to_uint8_tensor(array: np.ndarray | torch.Tensor, ndim: int, what: str, device: torch.device) -> torch.Tensor:
    tensor = torch.as_tensor(array)
    if tensor.dtype != torch.uint8 or tensor.ndim != ndim or tensor.shape[-1] != 3:
        raise ValueError(f"{what}: expected uint8 RGB of {ndim} dims (..., 3), got {tensor.dtype} {tuple(tensor.shape)}")
    return tensor.to(device, non_blocking=True)


def to_host(embeddings: torch.Tensor) -> np.ndarray:
    """Device embeddings (any float dtype) -> float32 numpy on the host (waits for the device)."""
    return embeddings.float().cpu().numpy()


def _resize_frames(frames: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """(N, 3, H, W) float -> (N, 3, *size), antialiased like PIL when shrinking."""
    if tuple(frames.shape[-2:]) == size:
        return frames
    return F.interpolate(frames, size=size, mode=mode, antialias=True, align_corners=False)


class _TorchEncoder(ABC):
    """Shared plumbing: device, eval mode, no grad, autocast at the configured precision."""

    feature: str
    segment_input: str  # the attribute of decoded segments this encoder reads

    def __init__(self, model: nn.Module, config: EncoderConfig, device: torch.device, identity: str, dim: int):
        self.model = model.to(device).eval().requires_grad_(False)
        self.config = config
        self.device = device
        self.identity = identity
        self.dim = dim

    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        with torch.inference_mode(), autocast(self.device, self.config.precision):
            yield

    @abstractmethod
    def embed(self, inputs: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Segment inputs -> (B, dim) embeddings left on the device, so GPU work can overlap the caller's."""

    def encode_segments(self, inputs: np.ndarray | torch.Tensor) -> np.ndarray:
        """Segment inputs (the `segment_input` of decoded segments) -> (B, dim) float32 on the host."""
        return to_host(self.embed(inputs))


# ---------------------------------------------------------------- CLIP (open_clip)


@cache
def _open_clip() -> ModuleType:
    import open_clip

    open_clip.add_model_config(configs.MODEL_CONFIG_DIR)
    return open_clip


class ClipEncoder(_TorchEncoder):
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
        x = _to_uint8_tensor(frames, 4, "CLIP frames", self.device).permute(0, 3, 1, 2).float()
        height, width = x.shape[-2:]
        target_h, target_w = self.image_size
        if self.resize_mode == "squash":
            x = _resize_frames(x, (target_h, target_w), self.interpolation)
        else:
            # 'shortest': short side to the target, then centre crop; 'longest': long side, then pad.
            pick = max if self.resize_mode == "shortest" else min
            scale = pick(target_h / height, target_w / width)
            x = _resize_frames(x, (max(1, round(height * scale)), max(1, round(width * scale))), self.interpolation)
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
    identity = _identity("clip", config, base_dir, open_clip.get_model_config(config.name))
    with _seeded():
        if config.pretrained is not None:
            _require_cached_open_clip_weights(config.name, config.pretrained)
            # open_clip applies the tag's settings (e.g. QuickGELU for 'openai') and loads the cached file
            model = open_clip.create_model(config.name, pretrained=config.pretrained, require_pretrained=True)
        else:
            model = open_clip.create_model(config.name, pretrained=None)
    if config.checkpoint is not None:
        load_checkpoint(model, _checkpoint_path(config, base_dir), what=f"CLIP model {config.name!r}")
    tokenizer = open_clip.get_tokenizer(config.name)
    dim = int(open_clip.get_model_config(config.name)["embed_dim"])
    return ClipEncoder(model, tokenizer, config, device, identity, dim)


# ---------------------------------------------------------------- CLAP (laion_clap)


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


class ClapEncoder(_TorchEncoder):
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

    def embed(self, waveforms: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = self.preprocess(waveforms)
        batch: Any = {"waveform": x, "longer": torch.zeros(len(x), 1, dtype=torch.bool, device=self.device)} if self.dict_input else x
        if self.fusion:
            batch["mel_fusion"] = self.fusion_inputs(x)
        with self._running():
            hidden = self.model.encode_audio(batch, device=self.device)["embedding"]
            return self.model.audio_projection(hidden)

    def encode_audio(self, waveforms: np.ndarray | torch.Tensor) -> np.ndarray:
        """float32 (B, samples at `sample_rate`) -> (B, dim)."""
        return self.encode_segments(waveforms)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Prompts -> (C, dim)."""
        texts = list(texts)
        if self.hf_tokenizer is not None:
            tokens: Any = dict(
                self.hf_tokenizer(
                    texts, padding="max_length", truncation=True, max_length=_CLAP_CONTEXT_LENGTH, return_tensors="pt"
                )
            )
        else:
            tokens = self.tokenize(texts, context_length=self.model.context_length)
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
    identity = _identity("clap", config, base_dir, model_cfg)
    with _seeded():
        model, _ = clap_module.factory.create_model(
            config.name, text_model_type, pretrained="", precision="fp32", device=torch.device("cpu"),
            enable_fusion=config.fusion, fusion_type=_CLAP_FUSION_TYPE if config.fusion else "None",
        )
    if config.checkpoint is not None:
        load_checkpoint(
            model,
            _checkpoint_path(config, base_dir),
            what=f"CLAP model {config.name!r} ({'fusion, ' if config.fusion else ''}text branch {text_model_type!r})",
            ignore_unexpected=_CLAP_OBSOLETE_KEYS,
        )
    return ClapEncoder(model, text_model_type, hf_tokenizer, clap_module.tokenizer.tokenize, config, device, identity)


# ---------------------------------------------------------------- VGGish


class VggishEncoder(_TorchEncoder):
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
    identity = _identity("vggish", config, base_dir, cfg)
    path = _checkpoint_path(config, base_dir) if config.checkpoint is not None else None
    state = canonical_state(read_state_dict(path)) if path is not None else {}
    with _seeded():
        model = VggishNet(cfg, postprocess=has_pca(state))  # the file decides whether it post-processes
    if path is not None:
        what = f"VGGish model {config.name!r} ({'with' if model.pproc is not None else 'without'} the PCA post-processor)"
        load_state(model, state, path, what=what)
    return VggishEncoder(model, config, device, identity)


# ---------------------------------------------------------------- R(2+1)D and ResNet-152 (torchvision)


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


def _torch_hub_weights(name: str, cfg: dict[str, Any], tag: str, what: str) -> Path:
    """The cached file of torchvision's pretrained weights `tag`, which torchvision would download."""
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
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not path.is_file():
        raise EncoderError(
            f"{what} {name!r} pretrained {tag!r}: expected the weights file at {path} "
            f"(torch hub cache; download {weights.url} there), not found"
        )
    return path


class _FramesEncoder(_TorchEncoder):
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
        x = _to_uint8_tensor(clips, 5, f"{self.what} frames", self.device)
        batch, frames, height, width, _ = x.shape
        if frames != self.frames:
            raise ValueError(f"{self.what} frames: the model takes {self.frames} frames per segment, got {frames}")
        x = x.reshape(batch * frames, height, width, 3).permute(0, 3, 1, 2).float()
        x = _resize_frames(x, self.input_size, "bilinear").clamp_(0, 255).div_(255)
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


def _build_frames_encoder(kind: type[_Frames], config: EncoderConfig, device: torch.device, base_dir: Path | None) -> _Frames:
    cfg = model_config(config.name, kind.config_section, kind.what)
    identity = _identity(kind.feature, config, base_dir, cfg)
    with _seeded():
        model = kind.build_network(cfg)
    what = f"{kind.what} {config.name!r}"
    if config.pretrained is not None:
        load_checkpoint(model, _torch_hub_weights(config.name, cfg, config.pretrained, kind.what), what=what)
    elif config.checkpoint is not None:
        load_checkpoint(model, _checkpoint_path(config, base_dir), what=what)
    return kind(model, cfg, config, device, identity)


def build_video_encoder(config: EncoderConfig, device: torch.device, *, base_dir: Path | None = None) -> VideoEncoder:
    """torchvision's R(2+1)D by config name (`model_configs/*.json`, `video_cfg`) with the configured weights."""
    return _build_frames_encoder(VideoEncoder, config, device, base_dir)


def build_image_encoder(config: EncoderConfig, device: torch.device, *, base_dir: Path | None = None) -> ImageEncoder:
    """torchvision's ResNet by config name (`model_configs/*.json`, `image_cfg`) with the configured
    weights: a torchvision `resnet152` state dict (`checkpoint:`), or a torchvision tag such as
    IMAGENET1K_V1 (the weights the AVVP release's features came from) from the torch hub cache."""
    return _build_frames_encoder(ImageEncoder, config, device, base_dir)


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
