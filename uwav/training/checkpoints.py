"""Training checkpoints: weights in safetensors, everything else loadable with `weights_only=True`.

A checkpoint is a folder holding
- `model.safetensors`: the model's state dict (`safetensors.torch.save_file`);
- `state.pt`: what resuming needs besides the weights (optimizer state, global step, RNG states,
  history), only tensors / dicts / lists / numbers / strings, read back with
  `torch.load(..., weights_only=True)`; inference never needs it;
- `meta.json`: what the checkpoint is (stage, epoch, model constructor arguments, settings, scores).

Folders are written with `uwav.atomic.atomic_dir` (under a temporary dot-name, synced, renamed
into place), so a folder with a final name is always complete; a crash leaves at most a dot-folder
that `uwav.atomic.clean_interrupted` removes, or an old copy that it puts back.
Per-epoch checkpoints are `epoch_0001`, `epoch_0002`, ...; `best` is a separate folder.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from uwav.atomic import atomic_dir
from uwav.errors import InvalidInputError, MissingInputError

WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
BEST_NAME = "best"
_EPOCH_NAME = re.compile(r"^epoch_(\d{4,})$")


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read back: weights on CPU, resume state (empty when not asked for), metadata."""

    path: Path
    weights: dict[str, Tensor]
    state: dict[str, Any]
    meta: dict[str, Any]


def epoch_dir_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}"


def save_checkpoint(
    path: Path,
    model: nn.Module,
    meta: dict[str, Any],
    state: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint folder `path` atomically and durably (replacing an existing one); returns `path`.

    `meta` must be JSON-serialisable; `state` (resume state) must hold only what
    `torch.load(weights_only=True)` accepts.
    """
    path = Path(path)
    # Copies on CPU: safetensors refuses shared or non-contiguous storage.
    weights = {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in model.state_dict().items()}
    with atomic_dir(path, durable=True) as temp:
        save_file(weights, str(temp / WEIGHTS_FILE), metadata={"format": "pt"})
        if state is not None:
            torch.save(state, temp / STATE_FILE)
        (temp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return path


def load_checkpoint(path: Path, *, with_state: bool = True) -> Checkpoint:
    """Read a checkpoint folder; raises FileNotFoundError / ValueError naming the file at fault."""
    path = Path(path)
    weights_path, meta_path, state_path = path / WEIGHTS_FILE, path / META_FILE, path / STATE_FILE
    for required in (weights_path, meta_path):
        if not required.is_file():
            raise MissingInputError(f"checkpoint {path}: missing {required.name}")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as error:
        raise InvalidInputError(f"checkpoint {meta_path}: not valid JSON: {error}") from None
    weights = load_file(str(weights_path), device="cpu")
    state: dict[str, Any] = {}
    if with_state:
        if not state_path.is_file():
            raise MissingInputError(f"checkpoint {path}: missing {STATE_FILE} (needed to resume training)")
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    return Checkpoint(path=path, weights=weights, state=state, meta=meta)


def load_weights_into(model: nn.Module, path: Path) -> nn.Module:
    """Load `path/model.safetensors` into `model` (strict: every key must match)."""
    weights = load_file(str(Path(path) / WEIGHTS_FILE), device="cpu")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise InvalidInputError(
            f"checkpoint {path}: weights do not fit {type(model).__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model


def epoch_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(epoch, folder) of the per-epoch checkpoints in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        match = _EPOCH_NAME.match(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(directory: Path) -> Path | None:
    """The folder of the newest per-epoch checkpoint, or None."""
    found = epoch_checkpoints(directory)
    return found[-1][1] if found else None


def prune_epoch_checkpoints(directory: Path, keep: int | None) -> None:
    """Keep the newest `keep` per-epoch checkpoints (None keeps all)."""
    if keep is None:
        return
    if keep < 1:
        raise ValueError(f"keep_epoch_checkpoints must be >= 1 or None, got {keep}")
    for _, path in epoch_checkpoints(directory)[:-keep]:
        shutil.rmtree(path)


def capture_rng(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Global CPU (and CUDA) RNG states plus the named generators' states (dropout uses the global one)."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    state["generators"] = {name: generator.get_state() for name, generator in generators.items()}
    return state


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Inverse of `capture_rng`; refuses a state that lacks one of `generators`."""
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state["generators"]
    for name, generator in generators.items():
        if name not in saved:
            raise ValueError(f"checkpoint RNG state has no generator {name!r} (has {sorted(saved)})")
        generator.set_state(saved[name])
