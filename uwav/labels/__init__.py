"""Threshold calibration and pseudo-label materialisation (VALOR's released pseudo-labels:
`uwav.labels.released`, which reads through the feature readers, so it is not imported here)."""

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
from uwav.labels.rules import (
    RELEASED_SOFT_TEMPERATURE,
    binary_pseudo_labels,
    finite_thresholds,
    soft_pseudo_labels,
)

__all__ = [
    "LIST_COLUMNS",
    "RELEASED_SOFT_TEMPERATURE",
    "ClassThreshold",
    "PseudoLabelArrays",
    "ThresholdSet",
    "best_f1_threshold",
    "binary_pseudo_labels",
    "calibrate_thresholds",
    "completed_shards",
    "finite_thresholds",
    "iter_shards",
    "pseudo_label_schema",
    "read_pseudo_labels",
    "released_f1_threshold",
    "soft_pseudo_labels",
    "write_shard",
]
