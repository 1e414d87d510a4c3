"""Evaluation: the LLP / AVVP protocol, the test-time decision rule, AVE accuracy, pseudo-label quality."""

from uwav.evaluation.protocol import (
    SCORE_KEYS,
    VIDEO_SCORE_KEYS,
    ave_accuracy,
    avvp_scores,
    avvp_video_scores,
    decide,
    dense_to_arrays,
    predict_nothing_scores,
    pseudo_label_quality,
)

__all__ = [
    "SCORE_KEYS",
    "VIDEO_SCORE_KEYS",
    "ave_accuracy",
    "avvp_scores",
    "avvp_video_scores",
    "decide",
    "dense_to_arrays",
    "predict_nothing_scores",
    "pseudo_label_quality",
]
