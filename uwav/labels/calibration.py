"""Class-wise threshold calibration (METHOD.md, "Decision (threshold calibration stage)").

The paper pre-defines thresholds theta^a, theta^v in R^C without saying how. Default here: per
class and modality, the threshold that maximises the segment-level F1 of the binary pseudo-labels
`1[z > theta] * y` on a split with dense labels (never the test split). The search is exact: every
distinct logit of the candidate segments is a possible cut, found with one sort and cumulative sums.
F1 is pooled over all segments of the split for that class (per-class micro F1), so classes are
calibrated independently.

Fallback where a class (or the whole dataset) has no dense positives: the `quantile` of the logits
over the segments of videos whose weak label contains the class.

Method "released_f1" reproduces the released UWAV code (`utils/eval_utils.py`,
`calculate_classwise_thresholds` / `get_best_f_threshold`; METHOD.md "The released code"), which
`recipe: released` needs bit for bit:
- per class and modality, ALL valid segments of the calibration split are pooled (video by video,
  segment by segment); the logits of classes absent from a video's weak label are set to -inf;
- ascending sort; the cut at position i predicts positive the segments at sorted positions >= i;
  true positives from a reversed cumulative sum; float32 F1 = 2 p r / max(p + r, 1e-12);
- the first maximum of F1 wins; the threshold is the float32 midpoint of the sorted logits i-1 and i,
  the one below position 0 being -inf. Cuts at the start or inside the block of -inf logits give
  a -inf threshold: every finite logit passes `z > theta`, so the class keeps every segment its
  weak label allows.
- A class with no dense positive in the split has F1 = 0/0 = NaN at every cut; torch.argmax (and
  numpy's) return the first NaN, i.e. cut 0, so such a class gets threshold -inf (recorded with
  f1 = recall = None).
Arithmetic mirrors the release as it ran (on CUDA, `device = cuda if available`): a stable sort
(CUDA sorts of more than 32 elements are stable; torch's CPU argsort is not, and its tie order is
then arbitrary), and recall computed as `tp * float32(1 / positives)` (CUDA divides a tensor by a
Python scalar through its reciprocal; the CPU divides, which differs in the last bit and can move
the argmax between cuts of mathematically equal F1). -0.0 and 0.0 are ties here (radix sorts put
-0.0 first); that is the one known difference.
The thresholds can be -inf: ThresholdSet stores non-finite values as the strings "-inf", "inf",
"nan" in JSON (which has no infinity), and the set_id (from the float64 bytes) survives save/load.
"""

from __future__ import annotations

import hashlib
import json
import math
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
    method: str  # 'f1', 'quantile' or 'released_f1'
    f1: float | None  # best segment F1 on the calibration split (None: quantile rule, or undefined)
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
            "thresholds": {m: [_encode_float(x) for x in self.thresholds[m]] for m in MODALITIES},
            "source": self.source,
            "details": [{**detail.__dict__, "threshold": _encode_float(detail.threshold)} for detail in self.details],
        }

    def save(self, path: Path) -> None:
        write_text_atomic(path, json.dumps(self.to_json(), indent=2))

    @classmethod
    def load(cls, path: Path) -> ThresholdSet:
        try:
            data = json.loads(Path(path).read_text())
            details = [
                ClassThreshold(**{**item, "threshold": _decode_float(item["threshold"])}) for item in data["details"]
            ]
            thresholds = {
                m: np.asarray([_decode_float(x) for x in data["thresholds"][m]], dtype=np.float64) for m in MODALITIES
            }
            result = cls(data["classes"], thresholds, details, data.get("source", {}))
        except (OSError, KeyError, TypeError, ValueError) as error:  # JSONDecodeError is a ValueError
            raise InvalidInputError(f"{path}: not a readable threshold set ({error})") from None
        if result.set_id != data.get("set_id"):
            raise InvalidInputError(f"{path}: set_id does not match its contents (edited by hand?)")
        return result


_NON_FINITE = {"-inf": -math.inf, "inf": math.inf, "nan": math.nan}


def _encode_float(value: float) -> float | str:
    """A float for JSON: non-finite values as strings (JSON has no infinity; Python would write
    the non-standard `-Infinity`)."""
    value = float(value)
    if math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _decode_float(value: float | str) -> float:
    if isinstance(value, str):
        if value not in _NON_FINITE:
            raise ValueError(f"threshold {value!r} (expected a number, '-inf', 'inf' or 'nan')")
        return _NON_FINITE[value]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"threshold {value!r} is not a number")
    return float(value)


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


def released_f1_threshold(logits: np.ndarray, truth: np.ndarray) -> tuple[float, float | None, float | None, float | None]:
    """The released code's F1-best threshold of one class (module docstring, "released_f1").

    `logits`: (S,) every valid segment of the calibration split in pooled order, -inf where the
    video's weak label lacks the class; `truth`: (S,) dense labels. Returns (threshold, f1,
    precision, recall) at the chosen cut, float32 values as float; None where the release's value
    is NaN (no dense positive: F1 and recall are 0/0, the threshold is -inf).
    """
    z = np.asarray(logits, dtype=np.float32).ravel()
    labels = np.asarray(truth).ravel()
    if z.size == 0:
        raise InvalidInputError("released_f1: no segments to calibrate on")
    if labels.shape != z.shape:
        raise InvalidInputError(f"released_f1: {z.size} logits but {labels.size} dense labels")
    if np.isnan(z).any():
        raise InvalidInputError("released_f1: NaN logits (the release's sort order for NaN is not defined)")
    order = np.argsort(z, kind="stable")  # ascending; ties in pooled order (stable, as on CUDA)
    sorted_logits = z[order]
    # True positives predicted by the cut at i: the positives at sorted positions >= i (exact integers).
    true_positives = np.cumsum(labels[order][::-1].astype(np.int64))[::-1].astype(np.float32)
    positives = true_positives[0]
    predicted = np.float32(z.size) - np.arange(z.size, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = true_positives / predicted
        recall = true_positives * (np.float32(1.0) / positives)  # CUDA: tensor / Python scalar
        f1 = np.float32(2.0) * precision * recall / np.maximum(precision + recall, np.float32(1e-12))
    best = int(np.argmax(f1))  # first maximum; the first NaN where there is one (as torch.argmax)
    below = sorted_logits[best - 1] if best > 0 else np.float32(-np.inf)
    threshold = (sorted_logits[best] + below) / np.float32(2.0)

    def value(x: np.float32) -> float | None:
        return None if np.isnan(x) else float(x)

    return float(threshold), value(f1[best]), value(precision[best]), value(recall[best])


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
    method 'f1' (default): exact F1-best threshold over the segments the weak label allows; classes
    without dense positives fall back to the quantile rule. 'quantile': that rule for every class.
    'released_f1': the released code's rule (module docstring); classes without dense positives
    get -inf there, as in the release.
    """
    if method not in ("f1", "quantile", "released_f1"):
        raise InvalidInputError(f"unknown calibration method {method!r} (expected 'f1', 'quantile' or 'released_f1')")
    if method in ("f1", "released_f1") and dense_truth is None:
        raise InvalidInputError(
            f"calibration method {method!r} needs dense labels; use method 'quantile' for datasets without them"
        )
    video_labels = video_labels.astype(bool)
    if method == "released_f1":
        assert dense_truth is not None
        return _calibrate_released(logits, video_labels, valid.astype(bool), classes, dense_truth, source)
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


def _calibrate_released(
    logits: dict[str, np.ndarray],
    video_labels: np.ndarray,
    valid: np.ndarray,
    classes: list[str],
    dense_truth: dict[str, np.ndarray],
    source: dict[str, str] | None,
) -> ThresholdSet:
    """Method 'released_f1' for every class and modality (see `released_f1_threshold`)."""
    if not valid.any():
        raise InvalidInputError("calibration method 'released_f1': the calibration split has no valid segment")
    thresholds: dict[str, np.ndarray] = {}
    details: list[ClassThreshold] = []
    for modality in MODALITIES:
        modality_logits = np.asarray(logits[modality], dtype=np.float32)
        truth = np.asarray(dense_truth[modality]).astype(bool)
        chosen = np.zeros(len(classes), dtype=np.float64)
        for c, label in enumerate(classes):
            pooled = np.where(video_labels[:, None, c], modality_logits[:, :, c], np.float32(-np.inf))[valid]
            if np.isnan(pooled).any():
                raise InvalidInputError(f"calibration: NaN {modality} logits of class {label!r} on valid segments")
            class_truth = truth[:, :, c][valid]
            threshold, f1, precision, recall = released_f1_threshold(pooled, class_truth)
            details.append(
                ClassThreshold(modality, label, threshold, "released_f1", f1, precision, recall, int(class_truth.sum()))
            )
            chosen[c] = threshold
        thresholds[modality] = chosen
    return ThresholdSet(list(classes), thresholds, details, dict(source or {}))
