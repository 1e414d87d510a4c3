"""What every segment encoder shares: the error type, checkpoint reading and loading, the
identity that names an encoder's weights in the feature store, deterministic random
initialisation, and `TorchEncoder` (device, eval mode, autocast).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import pickle
import warnings
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from uwav.catalog import EncoderConfig
from uwav.devices import autocast
from uwav.errors import UwavError

RANDOM_INIT_SEED = 0  # random-init encoders are deterministic, so re-runs and resumed runs agree


class EncoderError(UwavError, RuntimeError):
    """An encoder that cannot be built or loaded; the message names the model, file or key at fault."""


def file_digest(path: Path) -> str:
    """First 16 hex digits of the file's SHA-256 (identifies a checkpoint by content, not by name)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _numpy_globals() -> list[Any]:
    """What pickled numpy arrays and scalars need from torch's weights-only reader: the reconstruction
    functions under numpy 2's module name and numpy 1's (files saved before numpy 2 name
    `numpy.core`), the array and dtype classes."""
    multiarray = np._core.multiarray
    functions = (multiarray._reconstruct, multiarray.scalar)
    legacy = [(function, f"numpy.core.multiarray.{function.__name__}") for function in functions]
    dtypes = {type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"}
    return [multiarray._reconstruct, multiarray.scalar, *legacy, np.ndarray, np.dtype, *dtypes]


def read_state_dict(path: str | Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (safetensors, or a weights-only torch pickle, numpy arrays
    and scalars allowed and arrays turned into tensors).

    Unwraps the usual containers (`{'state_dict': ...}`, `{'model': ...}`) and the `module.`
    prefix that DataParallel / DDP training leaves on every key. `allow_pickle`: read the file as a
    full pickle when the weights-only reader cannot (laion_clap's released checkpoints use pickle
    opcodes it does not implement); only for files uwav fetched by name from their publisher's
    repository and checked against the hub's content hash, never for a file a catalog names.
    """
    path = Path(path)
    if not path.is_file():
        raise EncoderError(f"checkpoint file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            content: Any = load_file(str(path))
        else:
            try:
                with torch.serialization.safe_globals(_numpy_globals()), warnings.catch_warnings():
                    warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)  # the error says it
                    content = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:
                if not allow_pickle:
                    raise
                content = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # any reader failure means the same thing to the user: unusable file
        raise EncoderError(
            f"checkpoint file {path} cannot be read as safetensors or a weights-only torch checkpoint: "
            f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        ) from exc
    while isinstance(content, dict) and not all(isinstance(v, (torch.Tensor, np.ndarray)) for v in content.values()):
        wrapper = next((k for k in ("state_dict", "model", "model_state_dict") if isinstance(content.get(k), dict)), None)
        if wrapper is None:
            raise EncoderError(
                f"checkpoint file {path}: no state dict found (top-level keys: {sorted(map(str, content))[:10]})"
            )
        content = content[wrapper]
    if not isinstance(content, dict) or not content:
        raise EncoderError(f"checkpoint file {path}: expected a mapping of tensors, got {type(content).__name__}")
    content = {key: torch.as_tensor(value) if isinstance(value, np.ndarray) else value for key, value in content.items()}
    if all(key.startswith("module.") for key in content):
        content = {key[len("module.") :]: value for key, value in content.items()}
    return content


def _key_list(keys: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def load_checkpoint(
    model: nn.Module, path: str | Path, *, what: str, ignore_unexpected: Collection[str] = (), allow_pickle: bool = False
) -> None:
    """Load `path` into `model` strictly; on any mismatch raise naming the file and the keys.

    `what` names the model in messages; `ignore_unexpected` lists keys known to be harmless
    leftovers in checkpoints of that model; `allow_pickle` as for `read_state_dict`.
    """
    state = read_state_dict(path, allow_pickle=allow_pickle)
    load_state(model, state, path, what=what, ignore_unexpected=ignore_unexpected)


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


def checkpoint_path(config: EncoderConfig, base_dir: Path | None) -> Path:
    path = Path(config.checkpoint).expanduser()  # type: ignore[arg-type]
    return path if path.is_absolute() or base_dir is None else base_dir / path


def encoder_identity(
    feature: str, config: EncoderConfig, base_dir: Path | None, model_cfg: dict[str, Any], weights: str = ""
) -> str:
    """Names the weights: model config name + source, plus `/fusion` for CLAP's fusion model and
    `/bf16` for bfloat16 features, so that a store never mixes features of different models or
    precisions. The source is the checkpoint's content hash, the random-init seed and a digest of
    the config's content, or for downloaded weights the tag (`pretrained=openai`; `hub` for an
    `hf-hub:` model's own) and `weights`, their files' identities
    (`uwav.features.weights.weights_identity`: repository, file and content hash, or a URL file's
    hash-carrying name), so that a changed upstream file is another encoder.

    Random-init weights need the content digest: an edited `model_configs/*.json` under the same
    name is another network whose features must not be served from the store. Loaded weights pin
    the architecture themselves (a checkpoint of another shape does not load), so their identities
    stay as they were and existing stores of real features remain valid."""
    if config.checkpoint is not None:
        path = checkpoint_path(config, base_dir)
        if not path.is_file():
            raise EncoderError(f"{feature} encoder {config.name!r}: checkpoint file {path} does not exist")
        source = f"checkpoint=sha256:{file_digest(path)}"
    elif config.random_init:
        config_digest = hashlib.sha256(json.dumps(model_cfg, sort_keys=True).encode()).hexdigest()[:12]
        source = f"random_init=seed{RANDOM_INIT_SEED}/config={config_digest}"
    else:
        source = f"{'hub' if config.pretrained is None else f'pretrained={config.pretrained}'}@{weights}"
    variant = ("/fusion" if config.fusion else "") + ("/bf16" if config.precision == "bf16" else "")
    return f"{feature}/{config.name}/{source}{variant}"


@contextlib.contextmanager
def seeded_init() -> Iterator[None]:
    """Deterministic parameter initialisation without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        yield


def uint8_tensor(array: np.ndarray | torch.Tensor, ndim: int, what: str, device: torch.device) -> torch.Tensor:
    tensor = torch.as_tensor(array)
    if tensor.dtype != torch.uint8 or tensor.ndim != ndim or tensor.shape[-1] != 3:
        raise ValueError(f"{what}: expected uint8 RGB of {ndim} dims (..., 3), got {tensor.dtype} {tuple(tensor.shape)}")
    return tensor.to(device, non_blocking=True)


def to_host(embeddings: torch.Tensor) -> np.ndarray:
    """Device embeddings (any float dtype) -> float32 numpy on the host (waits for the device)."""
    return embeddings.float().cpu().numpy()


def resize_frames(frames: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """(N, 3, H, W) float -> (N, 3, *size), antialiased like PIL when shrinking."""
    if tuple(frames.shape[-2:]) == size:
        return frames
    return F.interpolate(frames, size=size, mode=mode, antialias=True, align_corners=False)


class TorchEncoder(ABC):
    """Shared plumbing: device, eval mode, no grad, autocast at the configured precision."""

    feature: str
    segment_input: str  # the attribute of decoded segments this encoder reads
    per_clip = False  # one feature row per segment; a per-clip encoder gives one array per video

    def __init__(self, model: nn.Module, config: EncoderConfig, device: torch.device, identity: str, dim: int):
        self.model = model.to(device).eval().requires_grad_(False)
        self.config = config
        self.device = device
        self.identity = identity
        self.dim = dim

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """The shape the feature store allocates: per segment (dim,)."""
        return (self.dim,)

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
