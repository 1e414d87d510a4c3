"""Threshold calibration, pseudo-label materialisation, and VALOR's released pseudo-labels."""

from uwav.labels.calibration import (
    ClassThreshold,
    ThresholdSet,
    best_f1_threshold,
    calibrate_thresholds,
    released_f1_threshold,
)
from uwav.labels.pseudo_labels import (
    LIST_COLUMNS,
    PseudoLabelArrays,
    completed_shards,
    iter_shards,
    pseudo_label_schema,
    read_pseudo_labels,
    write_shard,
)
from uwav.labels.released import LABEL_SOURCE_NAMES, ReleasedPseudoLabels, read_released_pseudo_labels
from uwav.labels.rules import (
    RELEASED_SOFT_TEMPERATURE,
    binary_pseudo_labels,
    finite_thresholds,
    soft_pseudo_labels,
)

__all__ = [
    "LABEL_SOURCE_NAMES",
    "LIST_COLUMNS",
    "RELEASED_SOFT_TEMPERATURE",
    "ClassThreshold",
    "PseudoLabelArrays",
    "ReleasedPseudoLabels",
    "ThresholdSet",
    "best_f1_threshold",
    "binary_pseudo_labels",
    "calibrate_thresholds",
    "completed_shards",
    "finite_thresholds",
    "iter_shards",
    "pseudo_label_schema",
    "read_pseudo_labels",
    "read_released_pseudo_labels",
    "released_f1_threshold",
    "soft_pseudo_labels",
    "write_shard",
]
