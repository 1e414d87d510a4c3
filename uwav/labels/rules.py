"""The pseudo-label rules (METHOD.md eq. 10 and 12): generator logits, class thresholds and the
video's weak labels -> binary and uncertainty-weighted (soft) per-segment labels.

The released code (METHOD.md "The released code") softens eq. 12 with a temperature of 2 and
replaces a -inf threshold (method "released_f1" gives one to classes whose F1-best cut keeps every
segment) by the class's smallest logit minus 1 before the sigmoid: `finite_thresholds`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from uwav.errors import InvalidInputError

RELEASED_SOFT_TEMPERATURE = 2.0  # model/HAN.py: sigmoid((logits - thresholds) / 2)


def per_segment(video_labels: Tensor, like: Tensor) -> Tensor:
    """Video labels (B, C) reshaped to broadcast against `like` (B, T, [...,] C)."""
    return video_labels.reshape(video_labels.shape[0], *([1] * (like.dim() - 2)), video_labels.shape[-1])


def binary_pseudo_labels(logits: Tensor, thresholds: Tensor, video_labels: Tensor) -> Tensor:
    """Eq. 10: `y^_t = 1[z_t > theta] * y`. logits (B, T, C), thresholds (C,), video_labels (B, C).

    A -inf threshold keeps every finite logit (as in the release)."""
    return (logits > thresholds).to(logits.dtype) * per_segment(video_labels, logits).to(logits.dtype)


def soft_pseudo_labels(logits: Tensor, thresholds: Tensor, video_labels: Tensor, temperature: float = 1.0) -> Tensor:
    """Eq. 12: `p^_t = sigmoid((z_t - theta) / temperature) * y`. logits (B, T, C), thresholds (C,),
    video_labels (B, C).

    temperature 1 is the paper's text; the release uses 2 (RELEASED_SOFT_TEMPERATURE), which keeps
    the labels further from 0/1. A -inf threshold would give 1 everywhere the weak label allows:
    pass the thresholds through `finite_thresholds` first to follow the release.
    """
    if not (isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0):
        raise InvalidInputError(f"soft pseudo-labels: temperature {temperature!r} (expected a finite number > 0)")
    shifted = logits - thresholds
    if temperature != 1.0:
        shifted = shifted / temperature
    return torch.sigmoid(shifted) * per_segment(video_labels, logits).to(logits.dtype)


def finite_thresholds(thresholds: Tensor, logits: Tensor, valid: Tensor) -> Tensor:
    """Thresholds (C,) with every -inf replaced by (the class's minimum logit) - 1.

    The minimum runs over the valid segments (valid (N, T) bool) of ALL the videos of `logits`
    (N, T, C), whatever their weak labels. The release takes it per training batch (model/HAN.py,
    recomputed every step from the stored logits); here it is taken over the videos given, so pass
    the whole split the soft labels are made for to get one value per class that does not depend
    on batching or sharding. Finite thresholds are returned unchanged.
    """
    if thresholds.dim() != 1 or logits.dim() != 3 or logits.shape[-1] != thresholds.shape[0]:
        raise InvalidInputError(
            f"finite_thresholds: thresholds {tuple(thresholds.shape)} and logits {tuple(logits.shape)} "
            "(expected (C,) and (N, T, C))"
        )
    if tuple(valid.shape) != tuple(logits.shape[:2]):
        raise InvalidInputError(f"finite_thresholds: valid {tuple(valid.shape)} for logits {tuple(logits.shape)}")
    replace = torch.isneginf(thresholds)
    if not replace.any():
        return thresholds.clone()
    real = logits[valid.to(torch.bool)]  # (segments, C)
    if real.shape[0] == 0:
        raise InvalidInputError("finite_thresholds: no valid segment to take the class minimum from")
    minimum = real.amin(dim=0)
    bad = replace & ~torch.isfinite(minimum)
    if bad.any():
        raise InvalidInputError(
            f"finite_thresholds: class index(es) {bad.nonzero().flatten().tolist()} have a -inf threshold "
            "and a non-finite minimum logit"
        )
    return torch.where(replace, (minimum - 1).to(thresholds.dtype), thresholds)
