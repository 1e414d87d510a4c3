"""The pseudo-label rules (METHOD.md eq. 10 and 12): generator logits, class thresholds and the
video's weak labels -> binary and uncertainty-weighted (soft) per-segment labels."""

from __future__ import annotations

import torch
from torch import Tensor


def per_segment(video_labels: Tensor, like: Tensor) -> Tensor:
    """Video labels (B, C) reshaped to broadcast against `like` (B, T, [...,] C)."""
    return video_labels.reshape(video_labels.shape[0], *([1] * (like.dim() - 2)), video_labels.shape[-1])


def binary_pseudo_labels(logits: Tensor, thresholds: Tensor, video_labels: Tensor) -> Tensor:
    """Eq. 10: `y^_t = 1[z_t > theta] * y`. logits (B, T, C), thresholds (C,), video_labels (B, C)."""
    return (logits > thresholds).to(logits.dtype) * per_segment(video_labels, logits).to(logits.dtype)


def soft_pseudo_labels(logits: Tensor, thresholds: Tensor, video_labels: Tensor) -> Tensor:
    """Eq. 12: `p^_t = sigmoid(z_t - theta) * y`. logits (B, T, C), thresholds (C,), video_labels (B, C)."""
    return torch.sigmoid(logits - thresholds) * per_segment(video_labels, logits).to(logits.dtype)
