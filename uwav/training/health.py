"""Training health: say when a trained HAN learned nothing useful, instead of letting a report look fine.

Two symptoms, checked on the validation split with the selected (best) model:
- collapse: its segment-level Type@AV is no better than predicting nothing at all (every segment
  negative) on the same split;
- one answer for everything: every validation video gets the same set of predicted classes.
Each found symptom is one sentence with the likely causes; the train stage logs them, keeps them
in its record (`health_warnings`) and the evaluate stage's report shows them.
"""

from __future__ import annotations

import numpy as np

from uwav.evaluation.protocol import avvp_scores, predict_nothing_scores

# Points of seg Type@AV above predict-nothing below which a model counts as collapsed.
COLLAPSE_MARGIN = 1.0


def health_warnings(
    pred_audio: np.ndarray, pred_visual: np.ndarray, gt_audio: np.ndarray, gt_visual: np.ndarray
) -> list[str]:
    """Warnings about a model's validation predictions (bool (N, T, C) each); empty when healthy."""
    warnings = []
    score = avvp_scores(pred_audio, pred_visual, gt_audio, gt_visual)["seg_type"]
    floor = predict_nothing_scores(gt_audio, gt_visual)["seg_type"]
    if score <= floor + COLLAPSE_MARGIN:
        warnings.append(
            f"collapsed: validation seg Type@AV {score:.1f} is at the predict-nothing level {floor:.1f}; "
            "likely causes: too few or too easy-to-ignore positive pseudo-labels, a learning rate too high "
            "for the batch size, too few training videos or epochs"
        )
    per_video = np.concatenate([np.any(pred_audio, axis=1), np.any(pred_visual, axis=1)], axis=1)  # (N, 2C)
    if len(per_video) > 1 and per_video.any() and (per_video == per_video[0]).all():
        classes = int(per_video[0].sum())
        warnings.append(
            f"one answer for everything: all {len(per_video)} validation videos get the same {classes} predicted "
            "class-modality pairs; likely causes: features that do not separate the videos (e.g. random-initialised "
            "encoders), the video-level loss dominating the segment losses, too little training"
        )
    return warnings
