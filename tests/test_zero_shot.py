"""Zero-shot per-segment labels (uwav.labels.zero_shot) and the evaluate stage's zero-shot reference row."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from uwav.catalog import Catalog, load_catalog
from uwav.contracts import text_embedding_name
from uwav.features.store import FeatureStore
from uwav.labels.zero_shot import calibrate_zero_shot, top1_accuracy, zero_shot_labels, zero_shot_scores
from uwav.stages import run_pipeline
from uwav.stages.evaluate import REFERENCE_LABELS, ZERO_SHOT_REFERENCE, segment_zero_shot_accuracy, zero_shot_reference
from uwav.stages.inputs import load_split, text_embeddings
from uwav.stages.tables import dataset_tables, open_store
from uwav.workspace import dense_truth, weak_label_matrix


def test_scores_are_cosines_and_padding_scores_zero() -> None:
    segments = np.array([[[3.0, 0.0], [1.0, 1.0], [0.0, 0.0]]])  # (1, 3, 2): the last segment is padding
    text = np.array([[2.0, 0.0], [0.0, 5.0], [-1.0, -1.0]])
    scores = zero_shot_scores(segments, text)
    assert scores.shape == (1, 3, 3)
    assert scores[0, 0] == pytest.approx([1.0, 0.0, -math.sqrt(0.5)])
    assert scores[0, 1] == pytest.approx([math.sqrt(0.5), math.sqrt(0.5), -1.0])
    assert np.all(scores[0, 2] == 0.0)
    with pytest.raises(ValueError, match="width"):
        zero_shot_scores(segments, np.ones((3, 4)))


def test_labels_keep_only_the_video_labels_and_valid_segments() -> None:
    scores = {m: np.full((2, 3, 2), 0.9) for m in ("audio", "visual")}
    video_labels = np.array([[1, 0], [0, 1]], dtype=np.float32)
    valid = np.array([[True, True, False], [True, True, True]])
    thresholds = calibrate_zero_shot(
        scores, video_labels, valid, ["a", "b"], dense_truth=None, method="f1", quantile=0.5
    )
    thresholds.thresholds["audio"][:] = 0.5
    thresholds.thresholds["visual"][:] = [0.5, 0.95]  # class b's visual scores stay below its threshold
    labels = zero_shot_labels(scores, thresholds, video_labels, valid)
    assert labels["audio"][0].tolist() == [[True, False], [True, False], [False, False]]
    assert labels["audio"][1].tolist() == [[False, True]] * 3
    assert not labels["visual"][1].any()


def test_calibration_is_the_f1_rule_where_there_are_dense_labels_else_the_quantile() -> None:
    rng = np.random.default_rng(0)
    truth = {m: rng.random((6, 4, 2)) < 0.4 for m in ("audio", "visual")}
    scores = {m: truth[m] + 0.3 * rng.random((6, 4, 2)) for m in ("audio", "visual")}  # separable
    valid = np.ones((6, 4), dtype=bool)
    video_labels = np.ones((6, 2), dtype=np.float32)
    calibrated = calibrate_zero_shot(
        scores, video_labels, valid, ["a", "b"], dense_truth=truth, method="f1", quantile=0.5
    )
    assert {d.method for d in calibrated.details} == {"f1"}
    labels = zero_shot_labels(scores, calibrated, video_labels, valid)
    assert all((labels[m] == truth[m]).all() for m in truth)  # separable scores: the F1-best cut is exact
    fallback = calibrate_zero_shot(scores, video_labels, valid, ["a", "b"], dense_truth=None, method="f1", quantile=0.5)
    assert {d.method for d in fallback.details} == {"quantile"}


def test_top1_accuracy_counts_single_class_segments_only() -> None:
    scores = np.array([[[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.6, 0.4]]])
    truth = np.array([[[1, 0], [1, 0], [1, 1], [0, 0]]], dtype=bool)
    valid = np.ones((1, 4), dtype=bool)
    assert top1_accuracy(scores, truth, valid) == 0.5  # segments 0 (right) and 1 (wrong) count
    assert math.isnan(top1_accuracy(scores, truth, np.zeros((1, 4), dtype=bool)))


# ---------------------------------------------------------------- the evaluate stage's reference


@pytest.fixture(scope="module")
def feature_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A feature-mode synthetic catalog with its segment and features stages run (the store holds
    CLIP / CLAP segment features and class text embeddings)."""
    folder = tmp_path_factory.mktemp("zero_shot")
    sizes = {"mode": "features", "seed": 5, "n_pretrain": 10, "n_train": 10, "n_val": 16, "n_test": 12}
    data = {
        "datasets": {
            "target": {"kind": "synthetic", "annotations": "data", "role": "target", "synthetic": sizes},
            "pre": {"kind": "synthetic", "annotations": "data", "role": "pretrain", "synthetic": sizes},
        },
        "target": "target",
        "pretrain": "pre",
        "stages": {"features": {"source": "synthetic"}},
    }
    path = folder / "data_catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    run_pipeline(load_catalog(path), ["segment", "features"], progress=False)
    return path


def _restated_f1_threshold(scores: np.ndarray, truth: np.ndarray, allowed: np.ndarray) -> float:
    """The F1-best cut of `score > theta` over the allowed segments, by trying every midpoint
    (a test-local re-statement of the calibrate stage's f1 rule, ties to the highest threshold)."""
    candidates = np.unique(scores[allowed])
    cuts = [candidates[-1] + 1.0, *((candidates[1:] + candidates[:-1]) / 2)[::-1], candidates[0] - 1.0]
    best, best_f1 = cuts[0], 0.0
    for cut in cuts:
        predicted = (scores > cut) & allowed
        f1 = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
        if f1 > best_f1 + 1e-12:
            best, best_f1 = cut, f1
    return float(best)


def _restated_scores(catalog_path: Path, split: str) -> tuple[list[str], dict[str, np.ndarray], np.ndarray]:
    """A split's video ids, cosine scores per modality (computed here) and weak labels."""
    catalog = load_catalog(catalog_path)
    store, tables = open_store(catalog), dataset_tables(catalog, "target")
    text = text_embeddings(store, "target")
    manifest = tables.split(split)
    loaded = load_split(store, manifest, ("clip", "clap"))
    assert loaded.excluded == 0

    def cosine(segments: np.ndarray, classes: np.ndarray) -> np.ndarray:
        return np.einsum("ntd,cd->ntc", segments, classes) / (
            np.linalg.norm(segments, axis=-1)[..., None] * np.linalg.norm(classes, axis=-1)
        )

    scores = {"audio": cosine(loaded.features["clap"], text.audio), "visual": cosine(loaded.features["clip"], text.visual)}
    return loaded.video_ids, scores, weak_label_matrix(manifest, tables.classes).astype(bool)


def _zero_shot_reference(catalog: Catalog, video_ids: list[str]) -> dict[str, np.ndarray] | None:
    return zero_shot_reference(catalog, dataset_tables(catalog, "target"), open_store(catalog), video_ids, 10)


def test_reference_is_cosine_scores_thresholded_on_the_calibration_split(feature_catalog: Path) -> None:
    catalog = load_catalog(feature_catalog)
    assert ZERO_SHOT_REFERENCE in REFERENCE_LABELS
    tables = dataset_tables(catalog, "target")
    arrays = {split: _restated_scores(feature_catalog, split) for split in ("val", "test")}
    val_ids, val_scores, val_labels = arrays["val"]
    truth = dense_truth(tables, val_ids, 10)
    test_ids, test_scores, test_labels = arrays["test"]
    labels = _zero_shot_reference(catalog, test_ids)
    assert labels is not None
    for modality in ("audio", "visual"):
        for c in range(len(tables.classes)):
            allowed = np.broadcast_to(val_labels[:, None, c], (len(val_ids), 10))
            positives = truth[modality][:, :, c]
            if not positives.any():
                continue  # the quantile fallback: not restated here
            theta = _restated_f1_threshold(val_scores[modality][:, :, c], positives, allowed)
            expected = (test_scores[modality][:, :, c] > theta) & test_labels[:, None, c]
            assert (labels[modality][:, :, c] == expected).all(), (modality, tables.classes[c])
    # Calibrated on validation only: the same test labels whatever other videos are asked for.
    subset = _zero_shot_reference(catalog, test_ids[:3])
    assert subset is not None and (subset["visual"] == labels["visual"][:3]).all()


def test_reference_is_absent_for_videos_without_features(feature_catalog: Path) -> None:
    catalog = load_catalog(feature_catalog)
    test_ids = dataset_tables(catalog, "target").split("test")["video_id"].to_list()
    assert _zero_shot_reference(catalog, [*test_ids[:2], "not-a-video"]) is None


def test_reference_is_absent_from_a_store_without_clip_and_clap_features(feature_catalog: Path) -> None:
    """A store of the official features only may still hold class text embeddings (a release's)."""
    catalog = load_catalog(feature_catalog)
    test_ids = dataset_tables(catalog, "target").split("test")["video_id"].to_list()
    text = text_embeddings(open_store(catalog), "target")
    data = yaml.safe_load(feature_catalog.read_text())
    data["stores"] = {"features": "store/text_only.zarr"}
    other = feature_catalog.with_name("text_only.yaml")
    other.write_text(yaml.safe_dump(data))
    text_only = load_catalog(other)
    store = FeatureStore(text_only.store("features"))  # type: ignore[arg-type]
    for feature, embeddings in (("clip", text.visual), ("clap", text.audio)):
        name = text_embedding_name(feature, "target")
        store.write_text_embeddings(name, [f"class {c}" for c in range(len(embeddings))], embeddings, "test")
    assert _zero_shot_reference(text_only, test_ids) is None


def test_segment_zero_shot_accuracy_is_top1_on_single_class_segments(feature_catalog: Path) -> None:
    catalog = load_catalog(feature_catalog)
    accuracy = segment_zero_shot_accuracy(catalog, "test")
    video_ids, scores, _ = _restated_scores(feature_catalog, "test")
    truth = dense_truth(dataset_tables(catalog, "target"), video_ids, 10)
    for feature, modality in (("clip", "visual"), ("clap", "audio")):
        single = truth[modality].sum(axis=-1) == 1
        expected = (scores[modality][single].argmax(-1) == truth[modality][single].argmax(-1)).mean()
        assert single.sum() > 20 and accuracy[feature] == pytest.approx(expected), feature
