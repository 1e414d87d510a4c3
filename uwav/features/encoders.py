"""The three segment encoders: CLIP (open_clip), CLAP (laion_clap), R(2+1)D (torchvision).

Every model is built through its library's own factory from a named JSON model config: the
libraries' shipped configs for real models, and the configs in `model_configs/` (registered
with open_clip and laion_clap on first use) for the tiny random-initialised models that tests
and the demo run offline. Weights come from exactly one source (`uwav.catalog.EncoderConfig`):
a pretrained tag, a local checkpoint file (read by `load_checkpoint`, which names the file and
the keys at fault when it does not match), or a deterministic random initialisation.

Nothing here downloads: pretrained tags are read from the local caches where open_clip (the
Hugging Face cache) and torchvision (the torch hub cache) keep them, and CLAP's RoBERTa text
branch, which laion_clap builds from the Hugging Face hub, must be in the local Hugging Face
cache (`HF_HOME`; set `HF_HUB_OFFLINE=1` on machines without network). A missing file raises
`EncoderError` naming where it was expected.

Embeddings are returned in float32 and are the *raw* joint-space projections (CLIP's
`encode_image` / `encode_text`, CLAP's audio / text projections), not L2-normalised: the
pseudo-label generator computes inner products with learned transforms on top, and normalising
is a cheap downstream choice whereas un-normalising is impossible.
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
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from uwav.catalog import EncoderConfig, EncodersConfig
from uwav.devices import autocast, resolve_device
from uwav.errors import UwavError

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
FEATURE_NAMES: tuple[str, str, str] = ("clip", "clap", "r2plus1d")
RANDOM_INIT_SEED = 0  # random-init encoders are deterministic, so re-runs and resumed runs agree

# Text branches of laion_clap that are Hugging Face models, and the hub ids laion_clap builds them from.
_CLAP_HF_TEXT_MODELS = {"roberta": "roberta-base", "bert": "bert-base-uncased", "bart": "facebook/bart-base"}
_CLAP_CONTEXT_LENGTH = 77
# Buffers that older transformers versions saved and newer ones no longer register (non-persistent):
# CLAP checkpoints trained with them still carry the key, which is harmless to drop.
_CLAP_OBSOLETE_KEYS = ("text_branch.embeddings.position_ids",)


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
    state = read_state_dict(path)
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


def _identity(feature: str, config: EncoderConfig, base_dir: Path | None) -> str:
    """Names the weights: model config + source (tag, checkpoint content hash, or random-init seed),
    plus `/bf16` for bfloat16 features, so that a store never mixes them with float32 ones."""
    if config.pretrained is not None:
        source = f"pretrained={config.pretrained}"
    elif config.checkpoint is not None:
        path = _checkpoint_path(config, base_dir)
        if not path.is_file():
            raise EncoderError(f"{feature} encoder {config.name!r}: checkpoint file {path} does not exist")
        source = f"checkpoint=sha256:{file_digest(path)}"
    else:
        source = f"random_init=seed{RANDOM_INIT_SEED}"
    return f"{feature}/{config.name}/{source}" + ("/bf16" if config.precision == "bf16" else "")


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

    open_clip.add_model_config(MODEL_CONFIG_DIR)
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
            f"(nor in {MODEL_CONFIG_DIR}); known: {', '.join(open_clip.list_models()[:12])}, ..."
        )
    identity = _identity("clip", config, base_dir)
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
    module.factory.add_model_config(MODEL_CONFIG_DIR)
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


class ClapEncoder(_TorchEncoder):
    """CLAP audio branch on 1-s waveforms at the model's sample rate, text branch on class prompts."""

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

    def embed(self, waveforms: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = self.preprocess(waveforms)
        batch: Any = {"waveform": x, "longer": torch.zeros(len(x), 1, dtype=torch.bool, device=self.device)} if self.dict_input else x
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
            f"CLAP model config {config.name!r} not found in laion_clap's registry (nor in {MODEL_CONFIG_DIR}); "
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
    identity = _identity("clap", config, base_dir)
    with _seeded():
        model, _ = clap_module.factory.create_model(
            config.name, text_model_type, pretrained="", precision="fp32", device=torch.device("cpu")
        )
    if config.checkpoint is not None:
        load_checkpoint(
            model,
            _checkpoint_path(config, base_dir),
            what=f"CLAP model {config.name!r} (text branch {text_model_type!r})",
            ignore_unexpected=_CLAP_OBSOLETE_KEYS,
        )
    return ClapEncoder(model, text_model_type, hf_tokenizer, clap_module.tokenizer.tokenize, config, device, identity)


# ---------------------------------------------------------------- R(2+1)D (torchvision)


def video_model_config(name: str) -> dict[str, Any]:
    """The `video_cfg` of `model_configs/<name>.json` (torchvision has no config registry of its own)."""
    path = MODEL_CONFIG_DIR / f"{name}.json"
    known = sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json") if "video_cfg" in json.loads(p.read_text()))
    if name not in known:
        raise EncoderError(f"video model config {name!r} not found in {MODEL_CONFIG_DIR}; known: {', '.join(known)}")
    return json.loads(path.read_text())["video_cfg"]


def build_video_resnet(cfg: dict[str, Any]) -> nn.Module:
    """torchvision's R(2+1)D VideoResNet with the config's block counts ([2, 2, 2, 2] is r2plus1d_18)."""
    from torchvision.models.video.resnet import BasicBlock, Conv2Plus1D, R2Plus1dStem, VideoResNet

    return VideoResNet(BasicBlock, [Conv2Plus1D] * 4, list(cfg["layers"]), R2Plus1dStem)


def _torch_hub_weights(name: str, cfg: dict[str, Any], tag: str) -> Path:
    """The cached file of torchvision's pretrained weights `tag`, which torchvision would download."""
    import torchvision.models.video as video_models

    enum_name = cfg.get("torchvision_weights")
    if enum_name is None:
        raise EncoderError(f"video model {name!r} has no torchvision pretrained weights; use `checkpoint:` or `random_init`")
    weights_enum = getattr(video_models, enum_name)
    try:
        weights = weights_enum[tag]
    except KeyError:
        raise EncoderError(
            f"video model {name!r}: unknown pretrained tag {tag!r} (known: {', '.join(w.name for w in weights_enum)})"
        ) from None
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not path.is_file():
        raise EncoderError(
            f"video model {name!r} pretrained {tag!r}: expected the weights file at {path} "
            f"(torch hub cache; download {weights.url} there), not found"
        )
    return path


class VideoEncoder(_TorchEncoder):
    """R(2+1)D on the 8 frames of each segment; the feature is the 512-d global average pool."""

    feature = "r2plus1d"
    segment_input = "clip_frames"

    def __init__(self, model: nn.Module, cfg: dict[str, Any], config: EncoderConfig, device: torch.device, identity: str):
        dim = model.fc.in_features
        model.fc = nn.Identity()  # the pooled feature, not the Kinetics logits
        super().__init__(model, config, device, identity, dim)
        self.frames = int(cfg["frames"])
        self.input_size = (int(cfg["input_size"]), int(cfg["input_size"]))
        self.mean = torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1, 1)
        self.std = torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1, 1)

    def preprocess(self, clips: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (B, T, H, W, 3) -> normalised (B, 3, T, S, S)."""
        x = _to_uint8_tensor(clips, 5, "video clips", self.device)
        batch, frames, height, width, _ = x.shape
        if frames != self.frames:
            raise ValueError(f"video clips: the model takes {self.frames} frames per segment, got {frames}")
        x = x.reshape(batch * frames, height, width, 3).permute(0, 3, 1, 2).float()
        x = _resize_frames(x, self.input_size, "bilinear").clamp_(0, 255).div_(255)
        x = x.reshape(batch, frames, 3, *self.input_size).permute(0, 2, 1, 3, 4)
        return (x - self.mean) / self.std

    def embed(self, clips: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = self.preprocess(clips)
        with self._running():
            return self.model(x)

    def encode_clips(self, clips: np.ndarray | torch.Tensor) -> np.ndarray:
        """uint8 (B, T, H, W, 3) -> (B, dim)."""
        return self.encode_segments(clips)


def build_video_encoder(config: EncoderConfig, device: torch.device, *, base_dir: Path | None = None) -> VideoEncoder:
    """torchvision's R(2+1)D by config name (`model_configs/*.json`) with the configured weights."""
    cfg = video_model_config(config.name)
    identity = _identity("r2plus1d", config, base_dir)
    with _seeded():
        model = build_video_resnet(cfg)
    what = f"video model {config.name!r}"
    if config.pretrained is not None:
        load_checkpoint(model, _torch_hub_weights(config.name, cfg, config.pretrained), what=what)
    elif config.checkpoint is not None:
        load_checkpoint(model, _checkpoint_path(config, base_dir), what=what)
    return VideoEncoder(model, cfg, config, device, identity)


# ---------------------------------------------------------------- all three


SegmentEncoder = ClipEncoder | ClapEncoder | VideoEncoder
_BUILDERS = {"clip": build_clip_encoder, "clap": build_clap_encoder, "r2plus1d": build_video_encoder}


@dataclass
class Encoders:
    """The encoders of one extraction run; a feature whose encoder is None is not computed."""

    clip: ClipEncoder | None = None
    clap: ClapEncoder | None = None
    r2plus1d: VideoEncoder | None = None

    def active(self) -> list[SegmentEncoder]:
        return [encoder for encoder in (self.clip, self.clap, self.r2plus1d) if encoder is not None]

    def feature_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-segment shape of each computed feature, as the feature store allocates it."""
        return {encoder.feature: (encoder.dim,) for encoder in self.active()}


def build_encoders(
    config: EncodersConfig,
    device: str | torch.device = "auto",
    *,
    features: Collection[str] = FEATURE_NAMES,
    base_dir: Path | None = None,
) -> Encoders:
    """Build the encoders named in `features` on `device`; relative checkpoint paths resolve against `base_dir`."""
    unknown = set(features) - set(FEATURE_NAMES)
    if unknown:
        raise EncoderError(f"unknown features {sorted(unknown)} (known: {', '.join(FEATURE_NAMES)})")
    target = resolve_device(device)
    return Encoders(
        **{name: _BUILDERS[name](getattr(config, name), target, base_dir=base_dir) for name in FEATURE_NAMES if name in features}
    )
