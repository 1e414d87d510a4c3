"""Zero-shot per-segment labels: the encoders' own class-text scores, thresholded, restricted to
each video's labels (VALOR's visual labels, `utils/clip_preprocess.py`, for both modalities).

A segment's score for a class is the cosine between its segment embedding (CLAP for audio, CLIP
for visual) and the class prompt's text embedding: VALOR's CLIP `logits_per_image` up to its
constant scale, which no threshold rule sees. VALOR fixes its thresholds by hand; here they are
calibrated with the generator's rule (`calibrate_thresholds`, same method, same calibration split,
never test), so the two per-segment label sets differ only in their scores: the temporal
generator's logits or the encoders' zero-shot scores. Labels are eq. 10's rule on those scores,
`1[s > theta] * y`.
"""

from __future__ import annotations

import numpy as np

from uwav.contracts import MODALITIES
from uwav.labels.calibration import ThresholdSet, calibrate_thresholds


def zero_shot_scores(segments: np.ndarray, text: np.ndarray) -> np.ndarray:
    """(N, T, D) segment embeddings and (C, D) class text embeddings -> (N, T, C) cosines; an
    all-zero (padding) segment scores 0."""
    segments = np.asarray(segments, dtype=np.float32)
    text = np.asarray(text, dtype=np.float32)
    if segments.shape[-1] != text.shape[-1]:
        raise ValueError(f"zero-shot scores: segment embeddings of width {segments.shape[-1]}, text of {text.shape[-1]}")
    unit_text = text / np.maximum(np.linalg.norm(text, axis=-1, keepdims=True), 1e-12)
    unit_segments = segments / np.maximum(np.linalg.norm(segments, axis=-1, keepdims=True), 1e-12)
    return unit_segments @ unit_text.T


def calibrate_zero_shot(
    scores: dict[str, np.ndarray],
    video_labels: np.ndarray,
    valid: np.ndarray,
    classes: list[str],
    *,
    dense_truth: dict[str, np.ndarray] | None,
    method: str,
    quantile: float,
) -> ThresholdSet:
    """Thresholds of the zero-shot scores of a calibration split (arguments as `calibrate_thresholds`'):
    its `method` where the split has dense labels, else the quantile rule, as the calibrate stage does."""
    return calibrate_thresholds(
        scores, video_labels, valid, classes, dense_truth=dense_truth,
        method=method if dense_truth is not None else "quantile", quantile=quantile, source={"scores": "zero-shot"},
    )


def zero_shot_labels(
    scores: dict[str, np.ndarray], thresholds: ThresholdSet, video_labels: np.ndarray, valid: np.ndarray
) -> dict[str, np.ndarray]:
    """(N, T, C) bool labels per modality: eq. 10 (`binary_pseudo_labels`, the generator's rule),
    `1[score > theta] * y`, on the valid segments."""
    import torch

    from uwav.labels.rules import binary_pseudo_labels

    weak = torch.from_numpy(np.asarray(video_labels))
    return {
        m: binary_pseudo_labels(torch.from_numpy(scores[m]), torch.from_numpy(thresholds.thresholds[m]), weak).bool().numpy()
        & valid.astype(bool)[:, :, None]
        for m in MODALITIES
    }


def top1_accuracy(scores: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> float:
    """Share of the valid segments with exactly one true class whose best-scoring class is it.

    scores: (N, T, C); truth: (N, T, C) bool; valid: (N, T) bool. NaN when no segment qualifies."""
    truth = np.asarray(truth, dtype=bool)
    single = valid.astype(bool) & (truth.sum(axis=-1) == 1)
    if not single.any():
        return float("nan")
    return float((scores[single].argmax(axis=-1) == truth[single].argmax(axis=-1)).mean())
