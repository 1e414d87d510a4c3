"""Device selection shared by the encoders and the training loops."""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path

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


log = logging.getLogger(__name__)

# CPU feature flags of native bfloat16 arithmetic: x86 AVX512-BF16 and AMX-BF16, Arm BF16.
_NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


@functools.cache
def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU's feature flags include native bfloat16 arithmetic. Without it, torch
    emulates bfloat16 matrix products several times slower than float32 (measured: an LLP-scale
    HAN epoch did not finish in minutes on an AVX2-only CPU where fp32 took 24 s). False where
    the flags cannot be read (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    return bool(_NATIVE_BF16_FLAGS & set(re.findall(r"[a-z0-9_]+", text)))


@functools.cache
def _warn_bf16_fallback() -> None:
    log.warning(
        "precision bf16 on a CPU without native bfloat16 (no avx512_bf16 / amx_bf16 / bf16 flag): "
        "running fp32 instead, which is faster there"
    )


def effective_precision(device: torch.device, precision: str) -> str:
    """The precision a run really uses: 'bf16' falls back to 'fp32' on a CPU without native
    bfloat16 (warned once per process); stage records report this value."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        _warn_bf16_fallback()
        return "fp32"
    return precision


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The forward-pass precision context for a `Precision` setting ('fp32' or 'bf16') on `device`.

    'bf16' autocasts matrix products to bfloat16 on CUDA and on CPUs with native bfloat16 (see
    `effective_precision`); 'fp32' disables autocast.
    """
    enabled = effective_precision(device, precision) == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)
