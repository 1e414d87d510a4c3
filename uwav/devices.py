"""Device selection shared by the encoders and the training loops."""

from __future__ import annotations

import torch

from uwav.errors import UwavError


class DeviceError(UwavError, RuntimeError):
    """A device setting this machine cannot honour (`cuda` without a GPU)."""


def resolve_device(setting: str | torch.device) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without a GPU is an error, not a silent fallback."""
    if isinstance(setting, torch.device):
        return setting
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {setting!r} requested but torch sees no CUDA device")
    return device


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The forward-pass precision context for a `Precision` setting ('fp32' or 'bf16') on `device`.

    'bf16' autocasts matrix products to bfloat16 on CUDA and on CPU alike; 'fp32' disables autocast.
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
