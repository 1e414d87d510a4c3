"""Training health warnings: a collapsed model and a model with one answer for every video are
named; a model that predicts the truth is not."""

from __future__ import annotations

import numpy as np

from uwav.evaluation.protocol import predict_nothing_scores
from uwav.training.health import health_warnings


def truth(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    audio = np.zeros((6, 10, 4), dtype=bool)
    visual = np.zeros((6, 10, 4), dtype=bool)
    for video in range(6):  # each video its own class and span
        c, start = video % 4, int(rng.integers(0, 5))
        audio[video, start : start + 4, c] = True
        visual[video, start + 1 : start + 6, c] = True
    return audio, visual


def test_a_model_predicting_the_truth_is_healthy() -> None:
    audio, visual = truth()
    assert health_warnings(audio, visual, audio, visual) == []


def test_predicting_nothing_is_a_collapse() -> None:
    audio, visual = truth()
    nothing = np.zeros_like(audio)
    (warning,) = health_warnings(nothing, nothing, audio, visual)
    floor = predict_nothing_scores(audio, visual)["seg_type"]
    assert warning.startswith("collapsed") and f"{floor:.1f}" in warning


def test_the_same_classes_for_every_video_are_named() -> None:
    audio, visual = truth()
    same = np.zeros_like(audio)
    same[:, :, 1] = True  # class 1, audio only, everywhere: most videos get it wrong
    warnings = health_warnings(same, np.zeros_like(visual), audio, visual)
    assert any(w.startswith("one answer for everything: all 6 validation videos get the same 1") for w in warnings)
