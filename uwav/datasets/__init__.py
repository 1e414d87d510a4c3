"""Dataset readers: LLP, UnAV-100, AVE and users' own tables -> (manifest, dense) polars frames
with the columns of `uwav.contracts` (MANIFEST_SCHEMA, DENSE_SCHEMA).

Bad rows are reported in a `ValidationReport` (file, line, video, reason) and dropped, never
failing the whole read; `strict=True` raises `DatasetValidationError` on the first.
`uwav.datasets.synth` (synthetic data) is imported on demand, not here.
"""

from uwav.datasets.ave import AVE_CLASSES, ave_segment_labels, read_ave
from uwav.datasets.custom import read_custom
from uwav.datasets.llp import LLP_CLASSES, read_llp
from uwav.datasets.readers import dataset_classes, read_dataset
from uwav.datasets.unav100 import read_unav100, unav100_classes
from uwav.datasets.validation import DatasetValidationError, Issue, Reason, ValidationReport

__all__ = [
    "AVE_CLASSES",
    "LLP_CLASSES",
    "DatasetValidationError",
    "Issue",
    "Reason",
    "ValidationReport",
    "ave_segment_labels",
    "dataset_classes",
    "read_ave",
    "read_custom",
    "read_dataset",
    "read_llp",
    "read_unav100",
    "unav100_classes",
]
