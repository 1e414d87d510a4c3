import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uwav.labels import (
    LIST_COLUMNS,
    ThresholdSet,
    best_f1_threshold,
    calibrate_thresholds,
    read_pseudo_labels,
    write_shard,
)


def brute_force_best_f1(logits: np.ndarray, truth: np.ndarray, total_positives: int) -> float:
    best = 0.0
    for threshold in np.concatenate([logits, [logits.min() - 1]]) if len(logits) else [0.0]:
        predicted = logits > threshold
        tp = int((predicted & truth).sum())
        f1 = 2 * tp / (predicted.sum() + total_positives)
        best = max(best, f1)
    return best


def test_best_f1_threshold_hand_worked() -> None:
    # Logits 3, 2, 1, 0 with truth 1, 0, 1, 0 and one positive outside the candidates (3 in all).
    # Cuts: top1 -> F1 = 2*1/(1+3) = 0.5; top3 -> 2*2/(3+3) = 0.667; top2 -> 0.4; top4 -> 2*2/7 = 0.571.
    threshold, f1, precision, recall = best_f1_threshold(
        np.array([3.0, 2.0, 1.0, 0.0]), np.array([True, False, True, False]), 3
    )
    assert threshold == pytest.approx(0.5)
    assert f1 == pytest.approx(2 / 3)
    assert precision == pytest.approx(2 / 3)
    assert recall == pytest.approx(2 / 3)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(-5, 5), st.booleans()), min_size=1, max_size=30),
    st.integers(0, 3),
)
def test_best_f1_threshold_matches_brute_force(pairs: list, outside: int) -> None:
    logits = np.array([float(p[0]) for p in pairs])  # integers: many ties
    truth = np.array([p[1] for p in pairs])
    total = int(truth.sum()) + outside
    if total == 0:
        with pytest.raises(ValueError):
            best_f1_threshold(logits, truth, total)
        return
    threshold, f1, _, _ = best_f1_threshold(logits, truth, total)
    assert f1 == pytest.approx(brute_force_best_f1(logits, truth, total))
    predicted = logits > threshold
    assert 2 * (predicted & truth).sum() / (predicted.sum() + total) == pytest.approx(f1)


def test_calibration_uses_dense_labels_and_falls_back_per_class(tmp_path) -> None:
    rng = np.random.default_rng(0)
    n, t, c = 20, 10, 3
    truth = {m: rng.random((n, t, c)) < 0.3 for m in ("audio", "visual")}
    truth["audio"][:, :, 2] = False  # class 2 never heard: quantile fallback for audio
    video_labels = (truth["audio"] | truth["visual"]).any(axis=1)
    video_labels[:, 2] = True
    logits = {m: np.where(truth[m], 2.0, -2.0) + rng.normal(0, 0.5, (n, t, c)) for m in truth}
    valid = np.ones((n, t), dtype=bool)
    result = calibrate_thresholds(
        logits, video_labels, valid, ["a", "b", "c"], dense_truth=truth, source={"split": "val"}
    )
    methods = {(d.modality, d.label): d.method for d in result.details}
    assert methods[("audio", "c")] == "quantile"
    assert methods[("visual", "a")] == "f1"
    # Separable data: the chosen thresholds sit between the two clusters.
    assert -1.5 < result.thresholds["visual"][0] < 1.5
    path = tmp_path / "thresholds.json"
    result.save(path)
    loaded = ThresholdSet.load(path)
    assert loaded.set_id == result.set_id
    np.testing.assert_array_equal(loaded.thresholds["audio"], result.thresholds["audio"])


def test_calibration_refuses_f1_without_dense_labels() -> None:
    with pytest.raises(ValueError, match="quantile"):
        calibrate_thresholds(
            {"audio": np.zeros((1, 2, 1)), "visual": np.zeros((1, 2, 1))},
            np.ones((1, 1)), np.ones((1, 2), bool), ["a"], dense_truth=None,
        )


def test_threshold_set_detects_hand_edits(tmp_path) -> None:
    result = calibrate_thresholds(
        {"audio": np.zeros((1, 2, 1)), "visual": np.ones((1, 2, 1))},
        np.ones((1, 1)), np.ones((1, 2), bool), ["a"], dense_truth=None, method="quantile",
    )
    path = tmp_path / "t.json"
    result.save(path)
    path.write_text(path.read_text().replace('"audio": [\n      0.0', '"audio": [\n      0.5'))
    with pytest.raises(ValueError, match="set_id"):
        ThresholdSet.load(path)


def test_pseudo_label_parquet_round_trip_with_variable_lengths(tmp_path) -> None:
    rng = np.random.default_rng(1)
    ids = ["v0", "v1", "v2"]
    lengths = np.array([3, 1, 2])
    columns = {}
    for name in LIST_COLUMNS:
        values = rng.random((3, 3, 4))
        columns[name] = (values > 0.5).astype(np.int8) if name.endswith("_hard") else values.astype(np.float32)
    write_shard(tmp_path / "pl", 0, ids[:2], lengths[:2], {k: v[:2] for k, v in columns.items()}, "abc")
    write_shard(tmp_path / "pl", 1, ids[2:], lengths[2:], {k: v[2:] for k, v in columns.items()}, "abc")
    table = pq.read_table(tmp_path / "pl")
    assert table.num_rows == 6
    assert table.schema.field("audio_soft").type.list_size == 4
    loaded = read_pseudo_labels(tmp_path / "pl", ["v2", "v0", "v1"])
    assert loaded.threshold_set_id == "abc"
    np.testing.assert_array_equal(loaded.valid, [[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    for name in LIST_COLUMNS:
        np.testing.assert_array_equal(loaded.arrays[name][0, :2], columns[name][2, :2])
        np.testing.assert_array_equal(loaded.arrays[name][1], columns[name][0])
        np.testing.assert_array_equal(loaded.arrays[name][2, :1], columns[name][1, :1])
        assert not loaded.arrays[name][2, 1:].any()
    with pytest.raises(KeyError, match="v9"):
        read_pseudo_labels(tmp_path / "pl", ["v9"])
