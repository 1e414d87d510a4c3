"""Learning-rate schedule of both training stages (METHOD.md "Recipe").

Linear warm-up to the peak rate over `warmup_epochs`, then cosine annealing to `min_lr`, which
is reached at the last optimisation step of the last epoch.

Two granularities (`lr_schedule` in the settings):
- `per_step` (decision): the rate changes every optimisation step, which is smoother; step 0 trains
  at peak / warmup_steps, the last warm-up step at the peak, the last step of the run at `min_lr`.
- `per_epoch` (the UWAV release's `WarmUpCosineAnnealingLR`, stepped once per epoch): epoch
  e = 1..E trains at `e / W * peak` while e < W, then at
  `min + (peak - min) * (1 + cos(pi * (e - W) / (E - W))) / 2`, so epoch W is at the peak and
  epoch E at `min_lr`.
The schedule is a pure function of the global step, so resuming needs only the step counter (no
scheduler object whose state could drift).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class WarmupCosine:
    """Warm-up then cosine; `lr_at(step)` for a 0-based global step in [0, total_steps)."""

    peak_lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int
    steps_per_epoch: int = 1
    granularity: Literal["per_step", "per_epoch"] = "per_step"

    def __post_init__(self) -> None:
        if self.total_steps <= 0:
            raise ValueError(f"WarmupCosine: total_steps must be positive, got {self.total_steps}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(
                f"WarmupCosine: warmup_steps must be in [0, total_steps={self.total_steps}], got {self.warmup_steps}"
            )
        if not 0 <= self.min_lr <= self.peak_lr:
            raise ValueError(f"WarmupCosine: need 0 <= min_lr <= peak_lr, got {self.min_lr} and {self.peak_lr}")

    @classmethod
    def for_epochs(
        cls,
        *,
        peak_lr: float,
        min_lr: float,
        warmup_epochs: int,
        epochs: int,
        steps_per_epoch: int,
        granularity: Literal["per_step", "per_epoch"] = "per_step",
    ) -> WarmupCosine:
        """The schedule of a run of `epochs` epochs of `steps_per_epoch` steps each."""
        if steps_per_epoch <= 0:
            raise ValueError(f"WarmupCosine: steps_per_epoch must be positive, got {steps_per_epoch}")
        if granularity not in ("per_step", "per_epoch"):
            raise ValueError(f"WarmupCosine: granularity must be 'per_step' or 'per_epoch', got {granularity!r}")
        warmup_epochs = min(warmup_epochs, epochs)
        return cls(
            peak_lr, min_lr, warmup_epochs * steps_per_epoch, epochs * steps_per_epoch, steps_per_epoch, granularity
        )

    def lr_at(self, step: int) -> float:
        if not 0 <= step < self.total_steps:
            raise ValueError(f"WarmupCosine: step {step} outside [0, {self.total_steps})")
        if self.granularity == "per_epoch":
            return self._released_epoch_lr(step // self.steps_per_epoch + 1)
        if step < self.warmup_steps:
            # Step 0 trains at peak/warmup_steps, the last warm-up step at the peak.
            return self.peak_lr * (step + 1) / self.warmup_steps
        cosine_steps = self.total_steps - self.warmup_steps
        progress = (step - self.warmup_steps) / max(cosine_steps - 1, 1)
        return self.min_lr + (self.peak_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def _released_epoch_lr(self, epoch: int) -> float:
        """The rate of 1-based `epoch` under the release's per-epoch formula (module docstring)."""
        warmup = self.warmup_steps // self.steps_per_epoch
        epochs = self.total_steps // self.steps_per_epoch
        if epoch < warmup:
            return epoch / warmup * self.peak_lr
        progress = (epoch - warmup) / max(epochs - warmup, 1)
        return self.min_lr + 0.5 * (self.peak_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every parameter group's rate for `step`; returns it."""
        lr = self.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr
