"""Training health warnings: a collapsed model and a model with one answer for every video are
named; a model that predicts the truth is not."""

from __future__ import annotations

import numpy as np
import pytest

from uwav.evaluation.protocol import predict_nothing_scores
from uwav.training.health import collapse_warning, health_warnings, input_spread


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


def test_input_spread_measures_variation_around_the_mean_vector() -> None:
    import torch

    common = torch.zeros(4, 10, 8)
    common[..., 0] = 10.0  # every segment the same long vector ...
    wobble = torch.zeros(4, 10, 8)
    wobble[:, ::2, 1], wobble[:, 1::2, 1] = 0.5, -0.5  # ... give or take 0.5 in another direction
    mask = torch.zeros(4, 10, dtype=torch.bool)
    mask[:, 8:] = True
    padded = (common + wobble).clone()
    padded[mask] = 1e3  # padded segments are not looked at
    spread = input_spread({"clap": common + wobble, "padded": padded, "clip": torch.randn(4, 10, 8)}, mask)
    assert spread["clap"] == pytest.approx(0.5 / (10.0**2 + 0.5**2) ** 0.5, rel=1e-6)
    assert spread["padded"] == pytest.approx(spread["clap"], rel=1e-6)
    assert spread["clip"] > 0.8  # centred noise: nearly all of it is spread


def test_nearly_constant_inputs_are_named_with_the_setting_when_a_model_fails() -> None:
    audio, visual = truth()
    nothing = np.zeros_like(audio)
    spread = {"clap": 0.034, "clip": 0.087, "r2plus1d": 0.40}
    warnings = health_warnings(nothing, nothing, audio, visual, spread=spread)
    assert warnings[-1] == (
        "nearly constant inputs: the training segments' clap by 3%, clip by 9% of the features' length around "
        "their mean; set stages.train.han.input_norm: standardize"
    )
    # Not when the HAN already standardises them, nor for a healthy model.
    assert not any("nearly constant" in w for w in health_warnings(nothing, nothing, audio, visual, spread=spread, standardized=True))
    assert health_warnings(audio, visual, audio, visual, spread=spread) == []


def test_collapse_is_judged_against_predicting_nothing_on_the_same_split() -> None:
    assert collapse_warning(12.0, 11.1, "test") == (
        "collapsed: test seg Type@AV 12.0 is at the predict-nothing level 11.1; likely causes: too few or "
        "too easy-to-ignore positive pseudo-labels, a learning rate too high for the batch size, too few "
        "training videos or epochs"
    )
    assert collapse_warning(12.2, 11.1, "test") is None  # more than COLLAPSE_MARGIN above
