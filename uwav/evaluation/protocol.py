"""The LLP / AVVP evaluation protocol, vectorised over videos (METHOD.md, "Evaluation protocol").

Arrays are binary, shaped (videos, segments, classes) as everywhere (`uwav.contracts`); any
number of segments T. The numbers are those of the public AVVP evaluator (AVVP-ECCV20
`utils/eval_metrics.py` `segment_level` / `event_level` and the eval loop of `main_avvp.py`),
to the last bit:

- audio-visual = elementwise AND of audio and visual, for predictions and ground truth alike;
- per video, modality and class, F1 = 2TP / (2TP + FP + FN); a video's score is the mean over
  the classes with TP + FP > 0 or TP + FN > 0, summed in class order, and 1.0 when there is none;
- "Event@AV" sums the audio and visual TP / FP / FN per class before taking F1;
- event level: events are maximal runs of positive segments; a predicted event is a TP when some
  ground-truth event of the same class has IoU >= 0.5 with it (the reference tests
  `intersection >= 0.5 * union`, so exactly 0.5 counts), else an FP; a ground-truth event with
  no predicted event at IoU >= 0.5 is an FN. There is no one-to-one matching step, and none is
  needed: between maximal runs of one row, IoU >= 0.5 pairs each run with at most one other
  (a run overlapping two others by half its length each would also contain the gap between
  them, so it would be longer than itself);
- each score is 100 x the mean over videos; Type@AV = (AV + A + V) / 3 of those percentages.

METHOD.md and the reference agree on every point above. Internally arrays are laid out
segment-major, (segments, rows) with rows = modality x class x video, so that the passes along
time are a few operations on long contiguous rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import polars as pl

from uwav.contracts import MODALITIES, AudioVisual, Decision, validate_dense

# Per-video scores (fractions in [0, 1]) and the summary scores (percent) built from them.
VIDEO_SCORE_KEYS: tuple[str, ...] = (
    "seg_a", "seg_v", "seg_av", "seg_event",
    "event_a", "event_v", "event_av", "event_event",
)  # fmt: skip
SCORE_KEYS: tuple[str, ...] = (
    "seg_a", "seg_v", "seg_av", "seg_type", "seg_event",
    "event_a", "event_v", "event_av", "event_type", "event_event",
)  # fmt: skip

Counts = tuple[np.ndarray, np.ndarray, np.ndarray]  # TP, FP, FN per row


def _as_binary(name: str, x: np.ndarray) -> np.ndarray:
    """`x` as a bool array, refusing values other than 0 / 1 (a probability here is a caller bug)."""
    arr = np.asarray(x)
    if arr.dtype == np.bool_:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{name}: expected a binary array, got dtype {arr.dtype}")
    positive = arr == 1
    if not np.all(positive | (arr == 0)):
        raise ValueError(f"{name}: values must be 0 or 1 (threshold probabilities with `decide` first)")
    return positive


def _check_inputs(**arrays: np.ndarray) -> dict[str, np.ndarray]:
    binary = {name: _as_binary(name, x) for name, x in arrays.items()}
    shapes = {name: x.shape for name, x in binary.items()}
    first = next(iter(shapes.values()))
    if len(set(shapes.values())) != 1 or len(first) != 3:
        raise ValueError(f"expected arrays of one shape (videos, segments, classes), got {shapes}")
    if 0 in first:
        raise ValueError(f"need at least one video, class and segment, got shape {first}")
    return binary


def _count(x: np.ndarray) -> np.ndarray:
    """Positive segments per row of a segment-major (segments, rows) bool array, as int32."""
    return x.view(np.uint8).sum(axis=0, dtype=np.min_scalar_type(x.shape[0])).astype(np.int32)


def _run_lengths(x: np.ndarray) -> np.ndarray:
    """For segment-major (segments, rows) bool `x`: the length of the run each positive segment is in, 0 elsewhere.

    One pass forward finds, per segment, 1 + the last negative position at or before it; one
    pass backward the first negative position at or after it; their difference is the run length.
    """
    n_seg = x.shape[0]
    dtype = np.min_scalar_type(-3 * (n_seg + 1))  # also holds the 3 * length sums of the IoU test
    positive = x.astype(dtype)
    t1 = np.arange(1, n_seg + 1, dtype=dtype)[:, None]
    after_last_negative = (1 - positive) * t1
    for t in range(1, n_seg):
        np.maximum(after_last_negative[t - 1], after_last_negative[t], out=after_last_negative[t])
    first_negative = positive * (n_seg + 1 - t1) + (t1 - 1)  # n_seg where positive, t where negative
    for t in range(n_seg - 2, -1, -1):
        np.minimum(first_negative[t + 1], first_negative[t], out=first_negative[t])
    return (first_negative - after_last_negative) * positive


def _matched_runs(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of segment-major (segments, rows) bool arrays: the predicted runs with a ground-truth
    run at IoU >= 0.5, and the ground-truth runs with a predicted run at IoU >= 0.5.

    Runs are maximal, so each run of (pred AND gt) is the whole intersection of one predicted and
    one ground-truth run, and every overlapping pair of runs has one: the IoU test is made at
    each segment of the AND runs, from the lengths of the three runs that segment is in, without
    enumerating pairs. A run is matched when some segment of it passes the test.
    """
    both = pred & gt
    len_pred, len_gt, len_both = _run_lengths(pred), _run_lengths(gt), _run_lengths(both)
    # IoU >= 0.5  <=>  inter >= 0.5 * (len_p + len_g - inter)  <=>  3 * inter >= len_p + len_g, in integers.
    hit = both & (3 * len_both >= len_pred + len_gt)
    # Carry "some segment so far in this run passed" forward; at a run's last segment it covers the run.
    pred_matched, gt_matched = hit.copy(), hit.copy()
    for t in range(1, pred.shape[0]):
        pred_matched[t] |= pred_matched[t - 1] & pred[t]
        gt_matched[t] |= gt_matched[t - 1] & gt[t]
    pred_matched[:-1] &= ~pred[1:]
    gt_matched[:-1] &= ~gt[1:]
    return _count(pred_matched), _count(gt_matched)


def _counts(pred: np.ndarray, gt: np.ndarray) -> tuple[Counts, Counts]:
    """Segment-level and event-level (TP, FP, FN) per row of segment-major (segments, rows) bool arrays."""
    n_pred, n_gt, seg_tp = _count(pred), _count(gt), _count(pred & gt)
    segment = (seg_tp, n_pred - seg_tp, n_gt - seg_tp)
    # Runs = positive segments - pairs of adjacent positive segments.
    pred_runs = n_pred - _count(pred[1:] & pred[:-1])
    gt_runs = n_gt - _count(gt[1:] & gt[:-1])
    # Only rows where prediction and truth share a segment can have matches; the rest is cheap.
    rows = np.flatnonzero(seg_tp)
    event_tp, gt_found = np.zeros_like(seg_tp), np.zeros_like(seg_tp)
    event_tp[rows], gt_found[rows] = _matched_runs(pred[:, rows], gt[:, rows])
    event = (event_tp, pred_runs - event_tp, gt_runs - gt_found)
    return segment, event


def _video_f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """(..., classes, videos) int counts -> (..., videos) class-averaged F1, 1.0 where no class counts."""
    denominator = 2 * tp + fp + fn
    # An uncounted class has TP = FP = FN = 0 and so F1 0 / 1 = 0, which adds nothing below.
    f1 = np.divide(2 * tp, np.maximum(denominator, 1), dtype=np.float64)
    n_counted = np.count_nonzero(denominator, axis=-2)
    # Left-to-right sum in class order, as the reference's Python `sum`, so results are bit-identical.
    total = f1[..., 0, :].copy()
    for c in range(1, f1.shape[-2]):
        total += f1[..., c, :]
    return np.where(n_counted > 0, total / np.maximum(n_counted, 1), 1.0)


def avvp_video_scores(
    pred_audio: np.ndarray, pred_visual: np.ndarray, gt_audio: np.ndarray, gt_visual: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-video F1 (fractions, shape (videos,)) under the LLP protocol, keyed by `VIDEO_SCORE_KEYS`."""
    x = _check_inputs(pred_audio=pred_audio, pred_visual=pred_visual, gt_audio=gt_audio, gt_visual=gt_visual)
    n_videos, n_seg, n_classes = x["pred_audio"].shape

    def segment_major(audio: np.ndarray, visual: np.ndarray) -> np.ndarray:
        # (segments, rows), rows ordered (modality: audio, visual, audio-visual; class; video), so
        # the per-segment passes run over long contiguous rows and per-class slices are contiguous.
        out = np.empty((n_seg, 3, n_classes, n_videos), dtype=np.bool_)
        out[:, 0] = audio.transpose(1, 2, 0)
        out[:, 1] = visual.transpose(1, 2, 0)
        np.logical_and(out[:, 0], out[:, 1], out=out[:, 2])
        return out.reshape(n_seg, -1)

    pred = segment_major(x["pred_audio"], x["pred_visual"])
    gt = segment_major(x["gt_audio"], x["gt_visual"])
    scores: dict[str, np.ndarray] = {}
    for level, counts in zip(("seg", "event"), _counts(pred, gt), strict=True):
        tp, fp, fn = (c.reshape(3, n_classes, n_videos) for c in counts)
        scores[f"{level}_a"], scores[f"{level}_v"], scores[f"{level}_av"] = _video_f1(tp, fp, fn)
        # Event@AV: audio and visual counts summed per class.
        scores[f"{level}_event"] = _video_f1(tp[0] + tp[1], fp[0] + fp[1], fn[0] + fn[1])
    return {key: np.ascontiguousarray(scores[key]) for key in VIDEO_SCORE_KEYS}


def avvp_scores(
    pred_audio: np.ndarray, pred_visual: np.ndarray, gt_audio: np.ndarray, gt_visual: np.ndarray
) -> dict[str, float]:
    """LLP segment- and event-level F1 scores in percent, keyed by `SCORE_KEYS`.

    Inputs are binary (bool or 0/1) arrays shaped (videos, segments, classes).
    """
    per_video = avvp_video_scores(pred_audio, pred_visual, gt_audio, gt_visual)
    percent = {key: 100 * np.mean(values) for key, values in per_video.items()}
    scores: dict[str, float] = {}
    for level in ("seg", "event"):
        for key in (f"{level}_a", f"{level}_v", f"{level}_av"):
            scores[key] = float(percent[key])
        # Same operation order as the reference: (AV + A + V) / 3.
        scores[f"{level}_type"] = float((percent[f"{level}_av"] + percent[f"{level}_a"] + percent[f"{level}_v"]) / 3.0)
        scores[f"{level}_event"] = float(percent[f"{level}_event"])
    return {key: scores[key] for key in SCORE_KEYS}


def pseudo_label_quality(
    hard_audio: np.ndarray, hard_visual: np.ndarray, gt_audio: np.ndarray, gt_visual: np.ndarray
) -> dict[str, float]:
    """Quality of binary pseudo-labels (the paper's Table 3): the LLP protocol with the pseudo-labels as predictions.

    `hard_*` are the binary pseudo-labels (videos, segments, classes) of the videos with dense
    ground truth; keys and units as `avvp_scores` (the paper reports seg-level Type@AV).
    """
    return avvp_scores(hard_audio, hard_visual, gt_audio, gt_visual)


def predict_nothing_scores(gt_audio: np.ndarray, gt_visual: np.ndarray) -> dict[str, float]:
    """The LLP-protocol scores of predicting no event anywhere: the floor any model must beat on
    the same split (it is not 0: a video without events of a kind scores its F1 as 1 there)."""
    nothing = np.zeros_like(np.asarray(gt_audio, dtype=bool))
    return avvp_scores(nothing, nothing, gt_audio, gt_visual)


def decide(
    seg_prob_audio: np.ndarray,
    seg_prob_visual: np.ndarray,
    video_prob: np.ndarray,
    threshold: float = 0.5,
    decision: Decision = "at_least",
) -> AudioVisual[np.ndarray]:
    """Test-time decision rule: class c is on in segment t of modality m iff p_t,m,c >= threshold and P_c >= threshold
    (`decision="above"`: strictly greater, as the UWAV release decides).

    `seg_prob_*` are (videos, segments, classes), `video_prob` is (videos, classes); returns
    the predictions as bool (videos, segments, classes).
    """
    audio, visual, video = np.asarray(seg_prob_audio), np.asarray(seg_prob_visual), np.asarray(video_prob)
    if audio.ndim != 3 or audio.shape != visual.shape or video.shape != (audio.shape[0], audio.shape[2]):
        raise ValueError(
            "expected seg_prob_audio and seg_prob_visual (videos, segments, classes) and video_prob (videos, classes), "
            f"got {audio.shape}, {visual.shape}, {video.shape}"
        )
    on = passes(decision)
    video_on = on(video, threshold)[:, None, :]
    return AudioVisual(audio=on(audio, threshold) & video_on, visual=on(visual, threshold) & video_on)


def passes(decision: Decision) -> Callable[[np.ndarray, float], np.ndarray]:
    """The comparison of a decision rule: `>=` for "at_least" (the protocol's), `>` for "above"."""
    if decision not in ("at_least", "above"):
        raise ValueError(f"decision must be 'at_least' or 'above', got {decision!r}")
    return np.greater_equal if decision == "at_least" else np.greater


def ave_accuracy(pred_class: np.ndarray, gt_class: np.ndarray) -> float:
    """AVE segment accuracy in percent over all segments of all videos.

    Both arrays are integer class indices shaped (videos, segments); with C event classes,
    index C is "background" (no audio-visual event in that segment).
    """
    pred, gt = np.asarray(pred_class), np.asarray(gt_class)
    if pred.ndim != 2 or pred.shape != gt.shape or pred.size == 0:
        raise ValueError(
            f"expected two non-empty (videos, segments) arrays of one shape, got {pred.shape} and {gt.shape}"
        )
    if not (np.issubdtype(pred.dtype, np.integer) and np.issubdtype(gt.dtype, np.integer)):
        raise TypeError(f"expected integer class indices, got {pred.dtype} and {gt.dtype}")
    return 100.0 * float(np.mean(pred == gt))


def dense_to_arrays(
    dense: pl.DataFrame, video_ids: Sequence[str], classes: Sequence[str], n_segments: int
) -> AudioVisual[np.ndarray]:
    """Ground truth, bool (videos, segments, classes), from a dense-label table.

    `dense` follows `uwav.contracts.DENSE_SCHEMA` (half-open segment ranges); overlapping rows
    of one class are merged. Rows are in `video_ids`' order; a video without rows is all
    negative. Raises ValueError naming the row when a row's video is not in `video_ids` (filter
    the table to the split first), its label is not in `classes`, or its range leaves
    [0, n_segments).
    """
    dense = validate_dense(dense)
    video_index = {video_id: i for i, video_id in enumerate(video_ids)}
    class_index = {name: i for i, name in enumerate(classes)}
    if len(video_index) != len(video_ids) or len(class_index) != len(classes):
        raise ValueError("dense_to_arrays: video_ids and classes must not repeat")

    def first_row(mask: pl.Expr) -> dict[str, object]:
        return dense.filter(mask).row(0, named=True)

    unknown_video = ~pl.col("video_id").is_in(list(video_index))
    if dense.select(unknown_video.any()).item():
        raise ValueError(f"dense labels: video not in video_ids, first row: {first_row(unknown_video)}")
    unknown_label = ~pl.col("label").is_in(list(class_index))
    if dense.select(unknown_label.any()).item():
        raise ValueError(f"dense labels: label not in classes, first row: {first_row(unknown_label)}")
    out_of_range = (pl.col("onset") < 0) | (pl.col("offset") > n_segments)
    if dense.select(out_of_range.any()).item():
        raise ValueError(f"dense labels: segment range outside [0, {n_segments}), first row: {first_row(out_of_range)}")

    modality = np.array([MODALITIES.index(m) for m in dense["modality"].to_list()], dtype=np.intp)
    video = np.array([video_index[v] for v in dense["video_id"].to_list()], dtype=np.intp)
    label = np.array([class_index[c] for c in dense["label"].to_list()], dtype=np.intp)
    # +1 at each onset, -1 at each offset; a running sum > 0 marks the covered segments.
    edges = np.zeros((len(MODALITIES), len(video_index), n_segments + 1, len(class_index)), dtype=np.int32)
    np.add.at(edges, (modality, video, dense["onset"].to_numpy(), label), 1)
    np.add.at(edges, (modality, video, dense["offset"].to_numpy(), label), -1)
    covered = np.cumsum(edges, axis=2)[:, :, :n_segments] > 0
    return AudioVisual(audio=covered[MODALITIES.index("audio")], visual=covered[MODALITIES.index("visual")])
