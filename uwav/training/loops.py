"""What both training loops share: device choice, seeding, AdamW + warm-up/cosine + clipping,
per-epoch checkpoints, resume, the progress bar.

Determinism: a run seeds the global torch RNG (model initialisation, dropout) and its own CPU
generators (shuffling, mixup) from `settings.seed`, inside `torch.random.fork_rng` so the
caller's RNG is left as it was. Every checkpoint stores the model, the optimizer, the global step,
the global (and CUDA) RNG states and the generators' states; resuming from the last checkpoint
therefore continues exactly where the run stopped (bit-identical on CPU; on CUDA, as
deterministic as the kernels are).

Checkpoints live in `<run_dir>/checkpoints/`: `epoch_NNNN/` after every epoch (the newest
`keep_epoch_checkpoints` are kept, None keeps all) and, for stage 2, `best/` (weights and
metadata only). Resuming refuses a checkpoint written with other settings or other data shapes.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from torch import Tensor, nn
from tqdm.auto import tqdm

import uwav
from uwav.atomic import clean_interrupted
from uwav.catalog import PretrainSettings, TrainSettings
from uwav.errors import InvalidInputError
from uwav.training.checkpoints import (
    BEST_NAME,
    capture_rng,
    epoch_dir_name,
    latest_checkpoint,
    load_checkpoint,
    prune_epoch_checkpoints,
    restore_rng,
    save_checkpoint,
)
from uwav.training.schedule import WarmupCosine

EpochCallback = Callable[[dict[str, Any]], None]
CHECKPOINTS_DIR = "checkpoints"
DEFAULT_KEEP_EPOCH_CHECKPOINTS = 5


def progress_enabled(progress: bool) -> bool | None:
    """tqdm's `disable`: off when asked, or when UWAV_NO_PROGRESS is set; None lets tqdm hide it off a TTY."""
    if not progress or os.environ.get("UWAV_NO_PROGRESS"):
        return True
    return None


def epoch_bar(epochs: Iterable[int], total: int, initial: int, description: str, progress: bool) -> tqdm:
    """A per-epoch progress bar over `epochs` (iterate it; `set_postfix` shows the latest scores)."""
    return tqdm(epochs, total=total, initial=initial, desc=description, unit="epoch", file=sys.stderr, disable=progress_enabled(progress))


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the global torch RNG for the block and give the caller's RNG state back afterwards."""
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        yield


def settings_for_meta(settings: BaseModel) -> dict[str, Any]:
    """The settings as JSON data, without `device` (a run may resume on another device)."""
    data = settings.model_dump(mode="json")
    data.pop("device", None)
    return data


def _differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(current, dict):
        found = []
        for key in sorted(set(saved) | set(current)):
            found += _differences(saved.get(key), current.get(key), f"{prefix}{key}.")
        return found
    return [] if saved == current else [f"{prefix.rstrip('.')}: checkpoint {saved!r}, now {current!r}"]


class TrainingRun:
    """Optimizer, schedule, generators, step counter and checkpoints of one training run.

    `identity` (stage, model configuration, settings, data shapes) is written into every
    checkpoint and must match to resume. After construction, `epoch` is the number of completed
    epochs (0 on a fresh start) and the model holds the resumed weights.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        identity: dict[str, Any],
        settings: PretrainSettings | TrainSettings,
        steps_per_epoch: int,
        run_dir: Path,
        generators: dict[str, torch.Generator],
        resume: bool,
        keep_epoch_checkpoints: int | None,
    ) -> None:
        self.model = model
        self.identity = identity
        self.settings = settings
        self.generators = generators
        self.keep_epoch_checkpoints = keep_epoch_checkpoints
        self.checkpoint_dir = Path(run_dir) / CHECKPOINTS_DIR
        # The fused CUDA kernel: one launch per step instead of several per parameter group.
        fused = next(model.parameters()).is_cuda
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay, fused=fused or None
        )
        self.schedule = WarmupCosine.for_epochs(
            peak_lr=settings.lr,
            min_lr=settings.min_lr,
            warmup_epochs=settings.warmup_epochs,
            epochs=settings.epochs,
            steps_per_epoch=steps_per_epoch,
            granularity=settings.lr_schedule,
        )
        self.epoch = 0
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None  # {"epoch", "score"} of the best checkpoint so far
        self.last_checkpoint: Path | None = None
        if resume:
            clean_interrupted(self.checkpoint_dir)
            latest = latest_checkpoint(self.checkpoint_dir)
            if latest is not None:
                self._resume(latest)
        elif self.checkpoint_dir.exists():
            shutil.rmtree(self.checkpoint_dir)  # a fresh start must not leave old epochs to resume from later

    def _resume(self, path: Path) -> None:
        checkpoint = load_checkpoint(path)
        differences = _differences(checkpoint.meta.get("identity"), self.identity)
        if differences:
            raise InvalidInputError(
                f"cannot resume from {path}: it was written by a different run ({'; '.join(differences[:5])}); "
                "use a new run folder or resume=False"
            )
        self.model.load_state_dict(checkpoint.weights)
        state = checkpoint.state
        self.optimizer.load_state_dict(state["optimizer"])
        restore_rng(state["rng"], self.generators)
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.history = list(state["history"])
        self.best = state.get("best")
        self.last_checkpoint = path

    @property
    def finished(self) -> bool:
        return self.epoch >= self.settings.epochs

    def train_step(self, loss: Tensor) -> float:
        """Backpropagate `loss` and take one AdamW step at the scheduled rate (gradient-norm clipped)."""
        lr = self.schedule.apply(self.optimizer, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
        self.optimizer.step()
        self.step += 1
        return lr

    def _meta(self, record: dict[str, Any]) -> dict[str, Any]:
        return {"uwav_version": uwav.__version__, "epoch": self.epoch, "step": self.step, "identity": self.identity, "metrics": record}

    def end_epoch(self, record: dict[str, Any], score: float | None = None) -> Path:
        """Record the epoch, update `best` when `score` improves on it, write the epoch's checkpoint."""
        self.epoch += 1
        record = {"epoch": self.epoch, **record}
        self.history.append(record)
        if score is not None and (self.best is None or score > self.best["score"]):
            self.best = {"epoch": self.epoch, "score": float(score)}
            save_checkpoint(self.checkpoint_dir / BEST_NAME, self.model, self._meta(record))
        state = {
            "optimizer": self.optimizer.state_dict(),
            "rng": capture_rng(self.generators),
            "epoch": self.epoch,
            "step": self.step,
            "history": self.history,
            "best": self.best,
        }
        path = save_checkpoint(self.checkpoint_dir / epoch_dir_name(self.epoch), self.model, self._meta(record), state)
        prune_epoch_checkpoints(self.checkpoint_dir, self.keep_epoch_checkpoints)
        self.last_checkpoint = path
        return path
