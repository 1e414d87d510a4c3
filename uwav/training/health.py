"""Training health: say when a trained HAN learned nothing useful, instead of letting a report look fine.

Two symptoms, checked on the validation split with the selected (best) model (the evaluate
stage checks the first again on its own split, since the best validation epoch is an optimistic pick):
- collapse: its segment-level Type@AV is no better than predicting nothing at all (every segment
  negative) on the same split;
- one answer for everything: every validation video gets the same set of predicted classes.
Each found symptom is one sentence with the likely causes; the train stage logs them, keeps them
in its record (`health_warnings`) and the evaluate stage's report shows them. When a symptom is
found and the HAN's inputs vary little around their mean (`input_spread`), one more warning
names those inputs and the setting that standardises them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from uwav.evaluation.protocol import avvp_scores, predict_nothing_scores

# Points of seg Type@AV above predict-nothing below which a model counts as collapsed.
COLLAPSE_MARGIN = 1.0
# `input_spread` below which an input counts as nearly constant (pretrained CLIP/CLAP features
# spread by well over half their norm; the demo's random-initialised CLAP by 0.03, CLIP by 0.09).
LOW_INPUT_SPREAD = 0.2


def input_spread(inputs: Mapping[str, torch.Tensor], padding_mask: torch.Tensor | None = None) -> dict[str, float]:
    """Per input (name -> (N, T, D) features, or (rows, D) vectors), how much its segments vary: the
    mean distance of a real segment's vector from the mean vector, over the mean vector length (0: all alike)."""
    spread = {}
    for name, values in inputs.items():
        # float32, as stored: a diagnostic ratio needs no float64 copy of a whole training set
        rows = (values if padding_mask is None else values[~padding_mask]).reshape(-1, values.shape[-1]).float()
        size = float(rows.norm(dim=1).mean())
        spread[name] = float((rows - rows.mean(dim=0)).norm(dim=1).mean()) / size if size > 0 else 0.0
    return spread


def collapse_warning(score: float, nothing: float, split: str) -> str | None:
    """The collapse symptom for a seg Type@AV `score` against predicting nothing on the same
    `split` (`nothing`), with its likely causes; None when the model is clear of it."""
    if score > nothing + COLLAPSE_MARGIN:
        return None
    return (
        f"collapsed: {split} seg Type@AV {score:.1f} is at the predict-nothing level {nothing:.1f}; "
        "likely causes: too few or too easy-to-ignore positive pseudo-labels, a learning rate too high "
        "for the batch size, too few training videos or epochs"
    )


def health_warnings(
    pred_audio: np.ndarray,
    pred_visual: np.ndarray,
    gt_audio: np.ndarray,
    gt_visual: np.ndarray,
    *,
    spread: Mapping[str, float] | None = None,
    standardized: bool = False,
) -> list[str]:
    """Warnings about a model's validation predictions (bool (N, T, C) each); empty when healthy.

    `spread`: the training inputs' `input_spread`; `standardized`: whether the HAN standardises
    its inputs (`stages.train.han.input_norm`), in which case their spread does not matter."""
    score = avvp_scores(pred_audio, pred_visual, gt_audio, gt_visual)["seg_type"]
    collapse = collapse_warning(score, predict_nothing_scores(gt_audio, gt_visual)["seg_type"], "validation")
    warnings = [collapse] if collapse else []
    per_video = np.concatenate([np.any(pred_audio, axis=1), np.any(pred_visual, axis=1)], axis=1)  # (N, 2C)
    if len(per_video) > 1 and per_video.any() and (per_video == per_video[0]).all():
        classes = int(per_video[0].sum())
        warnings.append(
            f"one answer for everything: all {len(per_video)} validation videos get the same {classes} predicted "
            "class-modality pairs; likely causes: features that do not separate the videos (e.g. random-initialised "
            "encoders), the video-level loss dominating the segment losses, too little training"
        )
    flat = {name: value for name, value in (spread or {}).items() if value < LOW_INPUT_SPREAD}
    if warnings and flat and not standardized:
        listed = ", ".join(f"{name} by {100 * value:.0f}%" for name, value in flat.items())
        warnings.append(
            f"nearly constant inputs: the training segments' {listed} of the features' length around their mean; "
            "set stages.train.han.input_norm: standardize"
        )
    return warnings
