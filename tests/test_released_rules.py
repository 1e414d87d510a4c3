"""The released code's rules next to the defaults (METHOD.md "The released code"): F1-best
thresholds with -inf ('released_f1'), soft labels with a temperature and finite thresholds, and the
UnAV-100 "any_overlap" segment rule. Expectations come from hand-worked cases and from independent
brute force (every cut tried one by one; the release's segment rule in plain Python)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from uwav.contracts import n_segments_for_duration
from uwav.datasets import read_dataset, read_unav100
from uwav.errors import InvalidInputError
from uwav.labels import (
    RELEASED_SOFT_TEMPERATURE,
    ThresholdSet,
    binary_pseudo_labels,
    calibrate_thresholds,
    finite_thresholds,
    released_f1_threshold,
    soft_pseudo_labels,
)

NEG_INF = -math.inf
F32 = np.float32


# ================================================================ thresholds, method released_f1


def brute_force_released(logits: list[float], truth: list[bool]) -> tuple[float, float | None]:
    """Every cut tried one by one: ascending order with ties in input order (a stable sort, as the
    release's CUDA sort), counts by direct counting, float32 arithmetic of the release as it ran on
    CUDA (recall through the reciprocal of the positive count), first maximum, NaN the maximum."""
    order = sorted(range(len(logits)), key=lambda k: (logits[k], k))
    values = [logits[k] for k in order]
    labels = [truth[k] for k in order]
    positives = sum(labels)
    scores: list[F32] = []
    for cut in range(len(values)):
        tp = F32(sum(labels[cut:]))
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = tp / F32(len(values) - cut)
            recall = tp * (F32(1.0) / F32(positives))
            denominator = max(precision + recall, F32(1e-12)) if not np.isnan(precision + recall) else F32("nan")
            scores.append(F32(2.0) * precision * recall / denominator)
    best = next((k for k, f in enumerate(scores) if np.isnan(f)), None)
    if best is None:
        best = max(range(len(scores)), key=lambda k: (scores[k], -k))  # highest score, then lowest cut
    below = F32(values[best - 1]) if best > 0 else F32(NEG_INF)
    threshold = float((F32(values[best]) + below) / F32(2.0))
    return threshold, None if np.isnan(scores[best]) else float(scores[best])


def test_released_f1_hand_worked() -> None:
    # Pooled segments: logits 1, -inf (class absent from that video), 3, 2, -inf, 0; truth 1 0 1 0 0 0.
    # Sorted ascending: -inf -inf 0 1 2 3 with truth 0 0 0 1 0 1. Cut i predicts positions >= i:
    #   i:   0     1     2     3     4     5
    #   tp:  2     2     2     2     1     1       predicted: 6 5 4 3 2 1
    #   F1: .5  .571  .667   .8    .5   .667      -> cut 3, threshold (0 + 1) / 2 = 0.5
    threshold, f1, precision, recall = released_f1_threshold(
        np.array([1.0, NEG_INF, 3.0, 2.0, NEG_INF, 0.0]), np.array([1, 0, 1, 0, 0, 0], bool)
    )
    assert threshold == 0.5
    assert f1 == pytest.approx(0.8) and precision == pytest.approx(2 / 3) and recall == 1.0


def test_released_f1_first_maximum_and_minus_inf() -> None:
    # Logits 0 1 2 3, truth 1 0 0 1: F1 = 2/3 at cut 0 (all predicted) and at cut 3 (top one only),
    # identical in float32; the first maximum wins, and below position 0 is -inf.
    threshold, f1, _, _ = released_f1_threshold(np.array([0.0, 1.0, 2.0, 3.0]), np.array([1, 0, 0, 1], bool))
    assert threshold == NEG_INF and f1 == pytest.approx(2 / 3)
    # Dense positives where the weak label lacks the class (logits -inf): keeping everything is best.
    threshold, f1, _, _ = released_f1_threshold(
        np.array([NEG_INF, NEG_INF, 0.0, 1.0]), np.array([1, 1, 0, 1], bool)
    )
    assert threshold == NEG_INF and f1 == pytest.approx(6 / 7)


def test_released_f1_no_positive_gives_minus_inf() -> None:
    # F1 = 0/0 = NaN at every cut; argmax (torch and numpy alike) returns the first NaN: cut 0.
    assert int(torch.argmax(torch.tensor([0.1, float("nan"), 0.5, float("nan")]))) == 1
    threshold, f1, precision, recall = released_f1_threshold(np.array([2.0, 1.0, NEG_INF]), np.zeros(3, bool))
    assert threshold == NEG_INF
    assert (f1, precision, recall) == (None, 0.0, None)


def test_released_f1_cut_inside_ties_is_the_tied_value() -> None:
    # Logits 1 1 1 with truth 0 1 0 (stable order): the best cut (1) sits inside the tie, and the
    # release's midpoint is then the tied value itself (so `z > threshold` keeps none of them).
    threshold, f1, _, _ = released_f1_threshold(np.ones(3), np.array([0, 1, 0], bool))
    assert threshold == 1.0 and f1 == pytest.approx(2 / 3)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([NEG_INF, -2.0, -0.5, 0.0, 0.25, 1.0, 3.0]), st.booleans()), min_size=1, max_size=40))
def test_released_f1_matches_brute_force(pairs: list[tuple[float, bool]]) -> None:
    logits = [p[0] for p in pairs]
    truth = [p[1] for p in pairs]
    threshold, f1, _, _ = released_f1_threshold(np.array(logits), np.array(truth))
    expected_threshold, expected_f1 = brute_force_released(logits, truth)
    assert threshold == expected_threshold  # bit for bit, -inf included
    assert f1 == expected_f1
    if f1 is not None:  # and it is the best F1 of any cut, computed exactly
        positives = sum(truth)
        ordered = sorted(zip(logits, truth, strict=True), key=lambda x: x[0])
        exact = max(2 * sum(t for _, t in ordered[i:]) / (len(ordered) - i + positives) for i in range(len(ordered)))
        assert f1 == pytest.approx(exact, rel=1e-6)


def test_released_f1_recall_uses_the_reciprocal() -> None:
    # The release ran on CUDA, where `tp / positives` (a Python scalar) is tp * float32(1/positives);
    # a true division (torch on the CPU) differs in the last bit. Here cut 0 (6 of 12 predicted, all
    # 6 positives) and cut 3 (5 of 9, 5 positives) both have F1 = 2/3 exactly: with the reciprocal
    # cut 0 comes out no lower and wins (threshold -inf); with a true division cut 3 would win (2.5).
    truth = np.array([1, 0, 0, 1, 1, 1, 0, 1, 0, 1, 0, 0], bool)
    logits = np.arange(12, dtype=np.float32)
    threshold, f1, _, _ = released_f1_threshold(logits, truth)
    assert threshold == NEG_INF == brute_force_released(logits.tolist(), truth.tolist())[0]
    assert f1 == pytest.approx(2 / 3)
    divided = []
    for tp, predicted in ((6, 12), (5, 9)):
        precision, recall = F32(tp) / F32(predicted), F32(tp) / F32(6)
        divided.append(F32(2) * precision * recall / (precision + recall))
    assert divided[1] > divided[0]


def released_case() -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    n, t, c = 6, 5, 3
    valid = np.ones((n, t), bool)
    valid[0, 3:] = False
    valid[4, 1:] = False
    video_labels = rng.random((n, c)) < 0.6
    truth = {m: (rng.random((n, t, c)) < 0.35) & video_labels[:, None, :] for m in ("audio", "visual")}
    truth["visual"][:, :, 2] = False  # no visual positive of class 2: -inf
    truth["audio"][1, 0, 1] = True  # a dense positive the weak label may lack
    logits = {m: rng.normal(size=(n, t, c)).astype(np.float32) for m in truth}
    logits["audio"][0, 4, 0] = np.nan  # padding: never read
    return logits, video_labels, valid, truth


def test_calibrate_released_pools_every_valid_segment(tmp_path: Path) -> None:
    logits, video_labels, valid, truth = released_case()
    result = calibrate_thresholds(
        logits, video_labels, valid, ["a", "b", "c"], dense_truth=truth, method="released_f1", source={"split": "val"}
    )
    for modality in ("audio", "visual"):
        for c, label in enumerate(["a", "b", "c"]):
            pooled, dense = [], []
            for i in range(valid.shape[0]):  # video by video, segment by segment
                for t in range(valid.shape[1]):
                    if valid[i, t]:
                        pooled.append(float(logits[modality][i, t, c]) if video_labels[i, c] else NEG_INF)
                        dense.append(bool(truth[modality][i, t, c]))
            expected, _ = brute_force_released(pooled, dense)
            assert result.thresholds[modality][c] == expected, (modality, label)
            detail = next(d for d in result.details if (d.modality, d.label) == (modality, label))
            assert detail.method == "released_f1" and detail.positives == sum(dense)
    assert result.thresholds["visual"][2] == NEG_INF
    assert next(d for d in result.details if (d.modality, d.label) == ("visual", "c")).f1 is None

    path = tmp_path / "thresholds.json"
    result.save(path)

    def refuse(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant}")

    document = json.loads(path.read_text(), parse_constant=refuse)  # standard JSON: no -Infinity
    assert document["thresholds"]["visual"][2] == "-inf"
    loaded = ThresholdSet.load(path)
    assert loaded.set_id == result.set_id == document["set_id"]
    for modality in ("audio", "visual"):
        np.testing.assert_array_equal(loaded.thresholds[modality], result.thresholds[modality])
    assert loaded.details == result.details


def test_threshold_set_rejects_unknown_strings(tmp_path: Path) -> None:
    logits, video_labels, valid, truth = released_case()
    result = calibrate_thresholds(logits, video_labels, valid, ["a", "b", "c"], dense_truth=truth, method="released_f1")
    path = tmp_path / "t.json"
    result.save(path)
    path.write_text(path.read_text().replace('"-inf"', '"minus infinity"', 1))
    with pytest.raises(InvalidInputError, match="minus infinity"):
        ThresholdSet.load(path)


def test_calibrate_released_errors_name_the_fault() -> None:
    logits, video_labels, valid, truth = released_case()
    with pytest.raises(InvalidInputError, match="'released_f1' needs dense labels"):
        calibrate_thresholds(logits, video_labels, valid, ["a", "b", "c"], dense_truth=None, method="released_f1")
    with pytest.raises(InvalidInputError, match="unknown calibration method 'best'"):
        calibrate_thresholds(logits, video_labels, valid, ["a", "b", "c"], dense_truth=truth, method="best")
    video_labels[0, 0] = True
    logits["audio"][0, 1, 0] = np.nan
    with pytest.raises(InvalidInputError, match="NaN audio logits of class 'a'"):
        calibrate_thresholds(logits, video_labels, valid, ["a", "b", "c"], dense_truth=truth, method="released_f1")
    with pytest.raises(InvalidInputError, match="no valid segment"):
        calibrate_thresholds(
            logits, video_labels, np.zeros_like(valid), ["a", "b", "c"], dense_truth=truth, method="released_f1"
        )


# ================================================================ soft labels


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_soft_pseudo_labels_with_temperature() -> None:
    logits = torch.tensor([[[1.0, -2.0], [3.0, 0.0]]])
    thresholds = torch.tensor([0.0, -1.0])
    video_labels = torch.tensor([[1.0, 0.0]])
    soft = soft_pseudo_labels(logits, thresholds, video_labels, temperature=RELEASED_SOFT_TEMPERATURE)
    torch.testing.assert_close(soft, torch.tensor([[[sig(0.5), 0.0], [sig(1.5), 0.0]]]))
    torch.testing.assert_close(
        soft_pseudo_labels(logits, thresholds, video_labels), torch.tensor([[[sig(1.0), 0.0], [sig(3.0), 0.0]]])
    )
    for temperature in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(InvalidInputError, match="temperature"):
            soft_pseudo_labels(logits, thresholds, video_labels, temperature=temperature)


def test_finite_thresholds_take_the_class_minimum_over_valid_segments() -> None:
    logits = torch.tensor([[[0.5, 2.0], [-1.5, 1.0]], [[0.25, -3.0], [-9.0, -9.0]]])  # (N=2, T=2, C=2)
    valid = torch.tensor([[True, True], [True, False]])  # the -9 are padding
    thresholds = torch.tensor([NEG_INF, 0.75])
    finite = finite_thresholds(thresholds, logits, valid)
    torch.testing.assert_close(finite, torch.tensor([-2.5, 0.75]))  # min(0.5, -1.5, 0.25) - 1
    assert torch.isneginf(thresholds[0])  # the input is left alone
    # -inf keeps every allowed segment in the binary labels; finite soft labels stay in (0, 1).
    video_labels = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    assert binary_pseudo_labels(logits, thresholds, video_labels)[:, :, 0].eq(1).all()
    soft = soft_pseudo_labels(logits, finite, video_labels, temperature=2.0)
    assert (soft[:, :, 0][valid] >= 1 / (1 + math.exp(-0.5)) - 1e-6).all() and (soft < 1).all()
    with pytest.raises(InvalidInputError, match=r"valid \(1, 2\)"):
        finite_thresholds(thresholds, logits, valid[:1])
    with pytest.raises(InvalidInputError, match="no valid segment"):
        finite_thresholds(thresholds, logits, torch.zeros_like(valid))


# ================================================================ UnAV-100 segment rule

UNAV_RULE_JSON = {
    "version": "test",
    "database": {
        "v1": {
            "duration": 6.3,  # 6 segments here, ceil = 7 in the release
            "subset": "train",
            "annotations": [
                {"segment": [0.2, 1.4], "label": "dog", "label_id": 0},
                {"segment": [1.2, 3.0], "label": "dog", "label_id": 0},  # overlaps; ends on a boundary
                {"segment": [4.0, 4.1], "label": "dog", "label_id": 0},  # starts on a boundary
                {"segment": [5.6, 6.25], "label": "cat", "label_id": 1},  # into the missing 7th second
                {"segment": [6.05, 6.3], "label": "bird", "label_id": 2},  # only in the missing second
            ],
        },
        "v2": {
            "duration": 4.0,
            "subset": "validation",
            "annotations": [
                {"segment": [2.5, 4.0], "label": "cat", "label_id": 1},
                {"segment": [0.0, 0.3], "label": "dog", "label_id": 0},
                {"segment": [0.6, 0.9], "label": "dog", "label_id": 0},
                {"segment": [3.9, 4.0], "label": "dog", "label_id": 0},
            ],
        },
    },
}


def audio_runs(dense: pl.DataFrame) -> list[tuple[str, str, int, int]]:
    return sorted(dense.filter(pl.col("modality") == "audio").select("video_id", "label", "onset", "offset").rows())


def release_segments(database: dict) -> dict[tuple[str, str], set[int]]:
    """The release's rule from the seconds: [int(start), ceil(end)), then cut at our n_segments."""
    labelled: dict[tuple[str, str], set[int]] = {}
    for video_id, video in database.items():
        n_segments = n_segments_for_duration(video["duration"])
        for event in video["annotations"]:
            start, end = event["segment"]
            stop = int(end) if int(end) == end else int(end) + 1
            segments = {t for t in range(int(start), stop) if t < n_segments}
            if segments:
                labelled.setdefault((video_id, event["label"]), set()).update(segments)
    return labelled


def dense_segments(dense: pl.DataFrame) -> dict[tuple[str, str], set[int]]:
    labelled: dict[tuple[str, str], set[int]] = {}
    for video_id, label, onset, offset in audio_runs(dense):
        labelled.setdefault((video_id, label), set()).update(range(onset, offset))
    return labelled


def test_unav100_any_overlap_rule(tmp_path: Path) -> None:
    path = tmp_path / "unav.json"
    path.write_text(json.dumps(UNAV_RULE_JSON))
    manifest, dense = read_unav100(path, segment_rule="any_overlap")
    assert audio_runs(dense) == [
        ("v1", "cat", 5, 6),  # [5.6, 6.25]: segments 5 and 6; 6 does not exist here
        ("v1", "dog", 0, 3),  # [0.2, 1.4] U [1.2, 3.0]: 0, 1, 2 and not 3
        ("v1", "dog", 4, 5),  # [4.0, 4.1]: segment 4
        ("v2", "cat", 2, 4),
        ("v2", "dog", 0, 1),
        ("v2", "dog", 3, 4),  # [3.9, 4.0]: 0.1 s is enough
    ]
    assert dense_segments(dense) == release_segments(UNAV_RULE_JSON["database"])
    assert dense.filter(pl.col("modality") == "visual").drop("modality").equals(
        dense.filter(pl.col("modality") == "audio").drop("modality")
    )
    # n_segments and labels do not depend on the rule (bird stays a label without a segment).
    half_manifest, half_dense = read_unav100(path)
    assert manifest.equals(half_manifest)
    assert manifest.select("video_id", "n_segments", "labels").rows() == [
        ("v1", 6, ["dog", "cat", "bird"]),
        ("v2", 4, ["dog", "cat"]),
    ]
    assert audio_runs(half_dense) == [("v1", "dog", 0, 3), ("v2", "cat", 2, 4), ("v2", "dog", 0, 1)]
    # The stage reads through read_dataset, which passes the keyword on.
    _, via_dataset = read_dataset("unav100", path, segment_rule="any_overlap")
    assert via_dataset.equals(dense)


def test_unav100_unknown_segment_rule_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "unav.json"
    path.write_text(json.dumps(UNAV_RULE_JSON))
    with pytest.raises(InvalidInputError, match=r"unav\.json: unknown segment_rule 'majority'"):
        read_unav100(path, segment_rule="majority")  # type: ignore[arg-type]


def test_unav100_any_overlap_matches_the_release_on_the_real_file(shared_data: Path) -> None:
    path = shared_data / "unav100" / "unav100_annotations.json"
    _, dense = read_unav100(path, segment_rule="any_overlap")
    database = json.loads(path.read_text())["database"]
    assert dense_segments(dense) == release_segments(database)
    # The release's ceil(duration) segments against n_segments_for_duration: 1797 videos (fraction
    # of a second in (0, 0.5)) have one segment more there.
    ceil_count = sum(math.ceil(v["duration"]) for v in database.values())
    ours = sum(n_segments_for_duration(v["duration"]) for v in database.values())
    assert (ceil_count, ours) == (456636, 454839)
