"""Class-wise threshold calibration (METHOD.md, "Decision (threshold calibration stage)").

The paper pre-defines thresholds theta^a, theta^v in R^C without saying how. Default here: per
class and modality, the threshold that maximises the segment-level F1 of the binary pseudo-labels
`1[z > theta] * y` on a split with dense labels (never the test split). The search is exact: every
distinct logit of the candidate segments is a possible cut, found with one sort and cumulative sums.
F1 is pooled over all segments of the split for that class (per-class micro F1), so classes are
calibrated independently.

Fallback where a class (or the whole dataset) has no dense positives: the `quantile` of the logits
over the segments of videos whose weak label contains the class.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from uwav.atomic import write_text_atomic
from uwav.contracts import MODALITIES
from uwav.errors import InvalidInputError


@dataclass(frozen=True)
class ClassThreshold:
    """The chosen threshold of one class and modality, with the scores behind the choice."""

    modality: str
    label: str
    threshold: float
    method: str  # 'f1' or 'quantile'
    f1: float | None  # best segment F1 on the calibration split (None for the quantile rule)
    precision: float | None
    recall: float | None
    positives: int  # dense positive segments of the class in the calibration split


@dataclass
class ThresholdSet:
    """Thresholds per modality, (C,) float arrays in class order, plus their provenance."""

    classes: list[str]
    thresholds: dict[str, np.ndarray]
    details: list[ClassThreshold] = field(default_factory=list)
    source: dict[str, str] = field(default_factory=dict)  # e.g. calibration split, PLG fingerprint

    @property
    def set_id(self) -> str:
        """Content hash: pseudo-label rows name the threshold set they were made with."""
        digest = hashlib.sha256()
        digest.update(json.dumps(self.classes).encode())
        for modality in MODALITIES:
            digest.update(np.ascontiguousarray(self.thresholds[modality], dtype=np.float64).tobytes())
        digest.update(json.dumps(self.source, sort_keys=True).encode())
        return digest.hexdigest()[:16]

    def to_json(self) -> dict:
        return {
            "set_id": self.set_id,
            "classes": self.classes,
            "thresholds": {m: [float(x) for x in self.thresholds[m]] for m in MODALITIES},
            "source": self.source,
            "details": [detail.__dict__ for detail in self.details],
        }

    def save(self, path: Path) -> None:
        write_text_atomic(path, json.dumps(self.to_json(), indent=2))

    @classmethod
    def load(cls, path: Path) -> ThresholdSet:
        try:
            data = json.loads(Path(path).read_text())
            details = [ClassThreshold(**item) for item in data["details"]]
            thresholds = {m: np.asarray(data["thresholds"][m], dtype=np.float64) for m in MODALITIES}
            result = cls(data["classes"], thresholds, details, data.get("source", {}))
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as error:
            raise InvalidInputError(f"{path}: not a readable threshold set ({error})") from None
        if result.set_id != data.get("set_id"):
            raise InvalidInputError(f"{path}: set_id does not match its contents (edited by hand?)")
        return result


def best_f1_threshold(logits: np.ndarray, truth: np.ndarray, total_positives: int) -> tuple[float, float, float, float]:
    """Exact maximiser of F1 for the rule `logit > threshold` over candidate segments.

    `logits`, `truth`: the candidate segments (those the video-level label allows to be positive).
    `total_positives` also counts positive segments outside the candidates (always missed).
    Returns (threshold, f1, precision, recall). Ties go to the highest threshold (fewest positives).
    """
    if total_positives == 0:
        raise ValueError("no positive segments: F1 is undefined")
    order = np.argsort(-logits, kind="stable")
    sorted_logits = logits[order]
    true_positives = np.cumsum(truth[order].astype(np.int64))
    predicted = np.arange(1, len(sorted_logits) + 1)
    # A cut after position k is only realisable where the next logit differs.
    realisable = np.ones(len(sorted_logits), dtype=bool)
    realisable[:-1] = sorted_logits[:-1] > sorted_logits[1:]
    f1 = np.where(realisable, 2 * true_positives / (predicted + total_positives), -1.0)
    best = int(np.argmax(f1)) if len(f1) else -1
    if best < 0 or f1[best] <= 0:
        # Nothing predicted is better than any cut: a threshold above every logit.
        top = float(sorted_logits[0]) if len(sorted_logits) else 0.0
        return top + 1.0, 0.0, 0.0, 0.0
    below = sorted_logits[best + 1] if best + 1 < len(sorted_logits) else sorted_logits[best] - 1.0
    threshold = float((sorted_logits[best] + below) / 2)
    tp = int(true_positives[best])
    return threshold, float(f1[best]), tp / int(predicted[best]), tp / total_positives


def calibrate_thresholds(
    logits: dict[str, np.ndarray],
    video_labels: np.ndarray,
    valid: np.ndarray,
    classes: list[str],
    *,
    dense_truth: dict[str, np.ndarray] | None,
    method: str = "f1",
    quantile: float = 0.5,
    source: dict[str, str] | None = None,
) -> ThresholdSet:
    """Thresholds per class and modality.

    logits[m]: (N, T, C) PLG logits; video_labels: (N, C) weak labels; valid: (N, T) real (not padded)
    segments; dense_truth[m]: (N, T, C) segment truth for the calibration split (None: quantile rule).
    Classes without dense positives fall back to the quantile rule.
    """
    if method not in ("f1", "quantile"):
        raise ValueError(f"unknown calibration method {method!r} (expected 'f1' or 'quantile')")
    if method == "f1" and dense_truth is None:
        raise InvalidInputError("calibration method 'f1' needs dense labels; use method 'quantile' for datasets without them")
    video_labels = video_labels.astype(bool)
    allowed = valid[:, :, None] & video_labels[:, None, :]  # (N, T, C): segments the weak label allows
    thresholds: dict[str, np.ndarray] = {}
    details: list[ClassThreshold] = []
    for modality in MODALITIES:
        modality_logits = logits[modality].astype(np.float64)
        chosen = np.zeros(len(classes), dtype=np.float64)
        for c, label in enumerate(classes):
            candidates = allowed[:, :, c]
            candidate_logits = modality_logits[:, :, c][candidates]
            positives = 0
            if dense_truth is not None:
                truth = dense_truth[modality][:, :, c].astype(bool) & valid
                positives = int(truth.sum())
            if method == "f1" and positives > 0:
                threshold, f1, precision, recall = best_f1_threshold(
                    candidate_logits, truth[candidates], positives
                )
                details.append(ClassThreshold(modality, label, threshold, "f1", f1, precision, recall, positives))
            else:
                threshold = float(np.quantile(candidate_logits, quantile)) if candidate_logits.size else 0.0
                details.append(ClassThreshold(modality, label, threshold, "quantile", None, None, None, positives))
            chosen[c] = threshold
        thresholds[modality] = chosen
    return ThresholdSet(list(classes), thresholds, details, dict(source or {}))
