"""Threshold calibration and pseudo-label materialisation."""

from uwav.labels.rules import binary_pseudo_labels, soft_pseudo_labels
from uwav.labels.calibration import ClassThreshold, ThresholdSet, best_f1_threshold, calibrate_thresholds
from uwav.labels.pseudo_labels import (
    LIST_COLUMNS,
    PseudoLabelArrays,
    completed_shards,
    iter_shards,
    pseudo_label_schema,
    read_pseudo_labels,
    write_shard,
)

__all__ = [
    "LIST_COLUMNS",
    "ClassThreshold",
    "PseudoLabelArrays",
    "ThresholdSet",
    "best_f1_threshold",
    "binary_pseudo_labels",
    "calibrate_thresholds",
    "completed_shards",
    "iter_shards",
    "pseudo_label_schema",
    "read_pseudo_labels",
    "soft_pseudo_labels",
    "write_shard",
]
