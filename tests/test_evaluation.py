"""LLP evaluation protocol: hand-worked cases, parity of the vectorised evaluator with the plain
per-video loop (hypothesis and the real LLP val/test ground truth), decision rule, AVE accuracy,
the dense-label loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from uwav.contracts import DENSE_SCHEMA
from uwav.datasets.llp import LLP_CLASSES, LLP_DENSE_FILES, read_llp
from uwav.evaluation import (
    SCORE_KEYS,
    VIDEO_SCORE_KEYS,
    ave_accuracy,
    avvp_scores,
    avvp_video_scores,
    decide,
    dense_to_arrays,
    pseudo_label_quality,
)
from uwav.evaluation.reference import avvp_scores_reference

EVALUATORS = pytest.mark.parametrize("evaluate", [avvp_scores, avvp_scores_reference], ids=["vectorised", "loop"])


def _row(*on: int, n_seg: int = 10) -> list[int]:
    """A (segments,) 0/1 row of one class with the given segments on."""
    return [1 if t in on else 0 for t in range(n_seg)]


# Four videos, 2 classes, 10 segments, written as one row per class (the layout of the public
# evaluator); `_hand_arrays` gives them in the protocol's (videos, segments, classes) layout.
# Class 1 is all negative wherever not listed.
#   video 0: everything negative (the 1.0 rule).
#   video 1: audio c0 pred [1,4) vs gt [0,3) -> IoU 2/4 = 0.5 exactly (a match); audio c1 a lone
#            predicted segment; visual c0 exact, visual c1 pred [4,6) vs gt [3,6) (IoU 2/3);
#            AV c0 pred [1,2) vs gt [0,2) (IoU 0.5 again).
#   video 2: audio pred [0,5) covers both gt events [0,2) and [3,5) with IoU 0.4 each (no match,
#            2 FN), plus a run at the clip end [8,10); no visual label at all.
#   video 3: two gt runs [0,3), [5,7); pred [1,3) matches the first (IoU 2/3), pred [6,9) misses
#            the second (IoU 1/4).
_ZERO = _row()
PRED_AUDIO = [
    [_ZERO, _ZERO],
    [_row(1, 2, 3), _row(5)],
    [_row(0, 1, 2, 3, 4, 8, 9), _ZERO],
    [_row(1, 2, 6, 7, 8), _ZERO],
]
GT_AUDIO = [
    [_ZERO, _ZERO],
    [_row(0, 1, 2), _ZERO],
    [_row(0, 1, 3, 4), _ZERO],
    [_row(0, 1, 2, 5, 6), _ZERO],
]
PRED_VISUAL = [[_ZERO, _ZERO], [_row(0, 1), _row(4, 5)], [_ZERO, _ZERO], [_ZERO, _ZERO]]
GT_VISUAL = [[_ZERO, _ZERO], [_row(0, 1), _row(3, 4, 5)], [_ZERO, _ZERO], [_ZERO, _ZERO]]

# Worked by hand, per video (fractions). Video 1, segment level: audio c0 TP2 FP1 FN1 -> 2/3,
# c1 FP1 -> 0, mean 1/3; visual c0 1, c1 TP2 FN1 -> 4/5, mean 0.9; AV c0 TP1 FN1 -> 2/3,
# c1 FP1 -> 0, mean 1/3; Event@AV sums a+v counts: c0 TP4 FP1 FN1 -> 0.8, c1 TP2 FP1 FN1 -> 2/3.
# Event level: audio c0 match -> 1, c1 FP -> 0; visual 1, 1; AV c0 1, c1 FP -> 0;
# Event@AV c0 TP2 -> 1, c1 TP1 FP1 -> 2/3. Video 2 segments: TP4 FP3 FN0 -> 8/11; events TP0
# FP2 FN2 -> 0; visual and AV count no class -> 1.0. Video 3 segments: TP3 FP2 FN2 -> 0.6;
# events TP1 FP1 FN1 -> 0.5.
EXPECTED_PER_VIDEO = {
    "seg_a": [1.0, 1 / 3, 8 / 11, 0.6],
    "seg_v": [1.0, 0.9, 1.0, 1.0],
    "seg_av": [1.0, 1 / 3, 1.0, 1.0],
    "seg_event": [1.0, (0.8 + 2 / 3) / 2, 8 / 11, 0.6],
    "event_a": [1.0, 0.5, 0.0, 0.5],
    "event_v": [1.0, 1.0, 1.0, 1.0],
    "event_av": [1.0, 0.5, 1.0, 1.0],
    "event_event": [1.0, (1 + 2 / 3) / 2, 0.0, 0.5],
}


def _hand_arrays() -> tuple[np.ndarray, ...]:
    return tuple(np.array(x, dtype=np.int64).transpose(0, 2, 1) for x in (PRED_AUDIO, PRED_VISUAL, GT_AUDIO, GT_VISUAL))


def test_hand_worked_per_video_scores() -> None:
    scores = avvp_video_scores(*_hand_arrays())
    assert tuple(scores) == VIDEO_SCORE_KEYS
    for key, expected in EXPECTED_PER_VIDEO.items():
        np.testing.assert_allclose(scores[key], expected, rtol=0, atol=1e-12, err_msg=key)


@EVALUATORS
def test_hand_worked_summary(evaluate) -> None:
    scores = evaluate(*_hand_arrays())
    expected = {key: 100 * sum(values) / 4 for key, values in EXPECTED_PER_VIDEO.items()}
    for level in ("seg", "event"):
        expected[f"{level}_type"] = (expected[f"{level}_a"] + expected[f"{level}_v"] + expected[f"{level}_av"]) / 3
    assert set(scores) == set(SCORE_KEYS)
    for key in SCORE_KEYS:
        assert scores[key] == pytest.approx(expected[key], abs=1e-9), key


@EVALUATORS
def test_single_video_with_iou_exactly_half(evaluate) -> None:
    pa, pv, ga, gv = (x[1:2] for x in _hand_arrays())
    scores = evaluate(pa, pv, ga, gv)
    assert scores["seg_type"] == pytest.approx(100 * (1 / 3 + 0.9 + 1 / 3) / 3)
    assert scores["event_a"] == pytest.approx(50.0)
    assert scores["event_type"] == pytest.approx(100 * 2 / 3)
    assert scores["event_event"] == pytest.approx(100 * 5 / 6)


@EVALUATORS
def test_all_negative_videos_score_100(evaluate) -> None:
    zeros = np.zeros((3, 4, 7), dtype=bool)
    assert evaluate(zeros, zeros, zeros, zeros) == {key: 100.0 for key in SCORE_KEYS}


@EVALUATORS
def test_predicting_nothing_where_events_exist_scores_0(evaluate) -> None:
    gt = np.ones((2, 3, 5), dtype=bool)
    zeros = np.zeros_like(gt)
    assert evaluate(zeros, zeros, gt, gt) == {key: 0.0 for key in SCORE_KEYS}


def test_inputs_may_be_bool_or_int() -> None:
    as_int = _hand_arrays()
    assert avvp_scores(*as_int) == avvp_scores(*(x.astype(bool) for x in as_int))


def test_rejects_non_binary_and_mismatched_inputs() -> None:
    pa, pv, ga, gv = _hand_arrays()
    with pytest.raises(ValueError, match="pred_audio: values must be 0 or 1"):
        avvp_scores(pa * 0.7, pv, ga, gv)
    with pytest.raises(ValueError, match="one shape"):
        avvp_scores(pa[:, :5], pv, ga, gv)
    with pytest.raises(ValueError, match="at least one video"):
        avvp_scores(pa[:0], pv[:0], ga[:0], gv[:0])


def test_pseudo_label_quality_is_the_protocol_on_pseudo_labels() -> None:
    pa, pv, ga, gv = _hand_arrays()
    quality = pseudo_label_quality(pa, pv, ga, gv)
    assert quality["seg_a"] == pytest.approx(100 * sum(EXPECTED_PER_VIDEO["seg_a"]) / 4)
    assert quality == avvp_scores(pa, pv, ga, gv)


# ------------------------------------------------------------------ parity with the plain loop


@st.composite
def _binary_quadruples(draw: st.DrawFn) -> tuple[np.ndarray, ...]:
    shape = (draw(st.integers(1, 8)), draw(st.integers(1, 16)), draw(st.integers(1, 5)))  # (videos, segments, classes)
    return tuple(draw(hnp.arrays(np.bool_, shape)) for _ in range(4))


@settings(max_examples=300, deadline=None)
@given(_binary_quadruples())
def test_vectorised_matches_loop_on_random_arrays(arrays: tuple[np.ndarray, ...]) -> None:
    fast, slow = avvp_scores(*arrays), avvp_scores_reference(*arrays)
    for key in SCORE_KEYS:
        assert abs(fast[key] - slow[key]) <= 1e-9, (key, fast[key], slow[key])


def test_vectorised_matches_loop_on_long_videos() -> None:
    """T = 300 takes the wider integer types (run lengths past int8, counts past uint8)."""
    rng = np.random.default_rng(7)
    arrays = []
    for density in (0.9, 0.85, 0.9, 0.8):
        # Long runs: a segment repeats the previous one with probability `density`.
        flips = rng.random((3, 300, 4)) > density
        arrays.append(np.cumsum(flips, axis=1) % 2 == 1)
    fast, slow = avvp_scores(*arrays), avvp_scores_reference(*arrays)
    assert fast == slow


# ------------------------------------------------------------------ real LLP ground truth


def _llp_dir(shared_data: Path) -> Path:
    return shared_data / "llp"


@pytest.fixture(scope="module")
def llp(shared_data: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    return read_llp(_llp_dir(shared_data))


def _ground_truth(llp: tuple[pl.DataFrame, pl.DataFrame], split: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    manifest, dense = llp
    video_ids = manifest.filter(pl.col("split") == split)["video_id"].to_list()
    gt_audio, gt_visual = dense_to_arrays(dense.filter(pl.col("video_id").is_in(video_ids)), video_ids, LLP_CLASSES, 10)
    return video_ids, gt_audio, gt_visual


def _ground_truth_from_raw_csvs(shared_data: Path, video_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The reference evaluator's construction: for each video, each CSV row sets its class on in segments [onset, offset)."""
    arrays = []
    for modality in ("audio", "visual"):
        rows = pl.read_csv(_llp_dir(shared_data) / LLP_DENSE_FILES[modality], separator="\t")
        gt = np.zeros((len(video_ids), 10, len(LLP_CLASSES)), dtype=bool)
        by_video = rows.partition_by("filename", as_dict=True)
        for v, video_id in enumerate(video_ids):
            for _, onset, offset, label in by_video.get((video_id,), rows.clear()).iter_rows():
                gt[v, onset:offset, LLP_CLASSES.index(label)] = True
        arrays.append(gt)
    return arrays[0], arrays[1]


@pytest.mark.parametrize("split", ["val", "test"])
def test_loader_matches_the_reference_construction_on_llp(shared_data: Path, llp, split: str) -> None:
    video_ids, gt_audio, gt_visual = _ground_truth(llp, split)
    raw_audio, raw_visual = _ground_truth_from_raw_csvs(shared_data, video_ids)
    np.testing.assert_array_equal(gt_audio, raw_audio)
    np.testing.assert_array_equal(gt_visual, raw_visual)
    assert gt_audio.any(axis=(1, 2)).mean() > 0.9  # nearly every clip has an audio event


@pytest.mark.parametrize("split", ["val", "test"])
def test_vectorised_matches_loop_on_llp(llp, split: str) -> None:
    _, gt_audio, gt_visual = _ground_truth(llp, split)
    assert avvp_scores(gt_audio, gt_visual, gt_audio, gt_visual) == {key: 100.0 for key in SCORE_KEYS}
    rng = np.random.default_rng(0 if split == "val" else 1)
    shape = gt_audio.shape  # (videos, segments, classes)
    random_pred = decide(rng.random(shape), rng.random(shape), rng.random((shape[0], shape[2])))
    # Ground truth with ~5% of segments flipped: realistic partial overlaps of every kind.
    perturbed_pred = (gt_audio ^ (rng.random(shape) < 0.05), gt_visual ^ (rng.random(shape) < 0.05))
    for pred_audio, pred_visual in (random_pred, perturbed_pred):
        fast = avvp_scores(pred_audio, pred_visual, gt_audio, gt_visual)
        slow = avvp_scores_reference(pred_audio, pred_visual, gt_audio, gt_visual)
        assert fast == slow, "the vectorised evaluator must agree to the last bit"


# ------------------------------------------------------------------ decision rule, AVE


def test_decide_needs_both_probabilities_at_least_threshold() -> None:
    seg_audio = np.array([[[0.5], [0.49], [0.9]], [[0.9], [0.9], [0.9]]])  # (2 videos, 3 segments, 1 class)
    seg_visual = np.array([[[0.2], [0.7], [0.5]], [[0.9], [0.1], [0.9]]])
    video = np.array([[0.5], [0.4999]])
    pred_audio, pred_visual = decide(seg_audio, seg_visual, video)
    assert pred_audio.dtype == np.bool_
    assert pred_audio.tolist() == [[[True], [False], [True]], [[False], [False], [False]]]
    assert pred_visual.tolist() == [[[False], [True], [True]], [[False], [False], [False]]]
    pred_audio, _ = decide(seg_audio, seg_visual, video, threshold=0.3)
    assert pred_audio.tolist() == [[[True], [True], [True]], [[True], [True], [True]]]
    with pytest.raises(ValueError, match="video_prob"):
        decide(seg_audio, seg_visual, video[:, 0])



def test_decide_above_is_strict() -> None:
    """The release decides with p > 0.5 and P > 0.5: a probability of exactly 0.5 is off."""
    seg = np.array([[[0.5, 0.6]]])
    video = np.array([[0.5, 0.7]])
    at_least = decide(seg, seg, video)
    above = decide(seg, seg, video, decision="above")
    assert at_least.audio.tolist() == [[[True, True]]]
    assert above.audio.tolist() == above.visual.tolist() == [[[False, True]]]
    with pytest.raises(ValueError, match="decision"):
        decide(seg, seg, video, decision="over")  # type: ignore[arg-type]

def test_ave_accuracy_counts_every_segment_background_included() -> None:
    n_classes = 28  # background is index 28
    gt = np.array([[3, 3, 28, 28], [28, 5, 5, 5]])
    pred = np.array([[3, 28, 28, 28], [28, 5, 5, 7]])
    assert ave_accuracy(pred, gt) == pytest.approx(100 * 6 / 8)
    assert ave_accuracy(np.full_like(gt, n_classes), gt) == pytest.approx(100 * 3 / 8)
    with pytest.raises(ValueError, match="one shape"):
        ave_accuracy(pred[:, :3], gt)
    with pytest.raises(TypeError, match="integer"):
        ave_accuracy(pred.astype(float), gt)


# ------------------------------------------------------------------ dense-label loader


def _dense(rows: list[tuple[str, str, str, int, int]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=DENSE_SCHEMA, orient="row")


def test_dense_to_arrays_merges_overlaps_and_keeps_order() -> None:
    dense = _dense(
        [
            ("b", "audio", "Dog", 0, 3),
            ("b", "audio", "Dog", 2, 5),  # overlaps the row above
            ("b", "visual", "Cat", 4, 6),
            ("a", "audio", "Cat", 5, 6),
        ]
    )
    gt_audio, gt_visual = dense_to_arrays(dense, ["a", "b", "c"], ["Cat", "Dog"], 6)
    assert gt_audio.shape == gt_visual.shape == (3, 6, 2)
    assert gt_audio[1, :, 1].tolist() == [True] * 5 + [False]
    assert gt_audio[0, :, 0].tolist() == [False] * 5 + [True]
    assert gt_visual[1, :, 0].tolist() == [False] * 4 + [True] * 2
    assert gt_audio.sum() == 6 and gt_visual.sum() == 2 and not gt_audio[2].any()


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (("zzz", "audio", "Dog", 0, 3), "video not in video_ids.*zzz"),
        (("a", "audio", "Horse", 0, 3), "label not in classes.*Horse"),
        (("a", "visual", "Dog", 4, 7), r"outside \[0, 6\).*'offset': 7"),
    ],
)
def test_dense_to_arrays_names_the_bad_row(row: tuple[str, str, str, int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dense_to_arrays(_dense([("a", "audio", "Dog", 0, 2), row]), ["a"], ["Cat", "Dog"], 6)
