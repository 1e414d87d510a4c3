"""A plain per-video loop of the LLP protocol, written from METHOD.md's text, to check `protocol`.

Deliberately naive: Python loops over videos, classes and events, events as (start, end)
intervals, IoU computed from the interval ends. It is the parity oracle for the vectorised
`uwav.evaluation.avvp_scores` (tests) and the baseline of `benchmarks/bench_eval.py`; do not use
it for real evaluation.
"""

from __future__ import annotations

import numpy as np

Counts = tuple[int, int, int]  # TP, FP, FN


def _events(row: list[bool]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive positive segments, as half-open (start, end)."""
    events: list[tuple[int, int]] = []
    start = None
    for t, positive in enumerate(row + [False]):
        if positive and start is None:
            start = t
        elif not positive and start is not None:
            events.append((start, t))
            start = None
    return events


def _iou_at_least_half(a: tuple[int, int], b: tuple[int, int]) -> bool:
    intersection = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - intersection
    return intersection >= 0.5 * union


def _segment_counts(pred: list[bool], gt: list[bool]) -> Counts:
    tp = sum(1 for p, g in zip(pred, gt, strict=True) if p and g)
    fp = sum(1 for p, g in zip(pred, gt, strict=True) if p and not g)
    fn = sum(1 for p, g in zip(pred, gt, strict=True) if g and not p)
    return tp, fp, fn


def _event_counts(pred: list[bool], gt: list[bool]) -> Counts:
    pred_events, gt_events = _events(pred), _events(gt)
    tp = sum(1 for p in pred_events if any(_iou_at_least_half(p, g) for g in gt_events))
    fn = sum(1 for g in gt_events if not any(_iou_at_least_half(p, g) for p in pred_events))
    return tp, len(pred_events) - tp, fn


def _video_score(per_class: list[Counts]) -> float:
    """Mean F1 over the classes with TP+FP > 0 or TP+FN > 0; 1.0 when there is none."""
    f1s = [2 * tp / (2 * tp + fp + fn) for tp, fp, fn in per_class if tp + fp > 0 or tp + fn > 0]
    if not f1s:
        return 1.0
    total = 0.0
    for f1 in f1s:  # left to right, as the public evaluator's sum
        total += f1
    return total / len(f1s)


def avvp_scores_reference(
    pred_audio: np.ndarray, pred_visual: np.ndarray, gt_audio: np.ndarray, gt_visual: np.ndarray
) -> dict[str, float]:
    """The scores of `uwav.evaluation.avvp_scores` (same inputs (videos, segments, classes), same
    keys, percent), one video at a time."""
    per_video: dict[str, list[float]] = {}
    for v in range(len(pred_audio)):
        # A video as the public evaluator holds it: one row of segments per class.
        pred_a = [[bool(x) for x in row] for row in pred_audio[v].T]
        pred_v = [[bool(x) for x in row] for row in pred_visual[v].T]
        gt_a = [[bool(x) for x in row] for row in gt_audio[v].T]
        gt_v = [[bool(x) for x in row] for row in gt_visual[v].T]
        pred_av = [[a and b for a, b in zip(ra, rv, strict=True)] for ra, rv in zip(pred_a, pred_v, strict=True)]
        gt_av = [[a and b for a, b in zip(ra, rv, strict=True)] for ra, rv in zip(gt_a, gt_v, strict=True)]
        for level, count in (("seg", _segment_counts), ("event", _event_counts)):
            counts = {
                "a": [count(p, g) for p, g in zip(pred_a, gt_a, strict=True)],
                "v": [count(p, g) for p, g in zip(pred_v, gt_v, strict=True)],
                "av": [count(p, g) for p, g in zip(pred_av, gt_av, strict=True)],
            }
            # Event@AV: audio and visual counts summed per class.
            counts["event"] = [
                (ta + tv, pa + pv, na + nv) for (ta, pa, na), (tv, pv, nv) in zip(counts["a"], counts["v"], strict=True)
            ]
            for name, per_class in counts.items():
                per_video.setdefault(f"{level}_{name}", []).append(_video_score(per_class))

    scores: dict[str, float] = {}
    for level in ("seg", "event"):
        a, v, av = (100 * np.mean(per_video[f"{level}_{m}"]) for m in ("a", "v", "av"))
        scores.update({f"{level}_a": float(a), f"{level}_v": float(v), f"{level}_av": float(av)})
        scores[f"{level}_type"] = float((av + a + v) / 3.0)
        scores[f"{level}_event"] = float(100 * np.mean(per_video[f"{level}_event"]))
    return scores
