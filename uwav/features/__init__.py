"""Segment features: encoders, the Zarr feature store, the official LLP feature import.

Importing this package stays light (no torch); the encoder modules are imported where used.
"""

from uwav.features.official import OFFICIAL_FEATURE_NAMES, ImportReport, import_official_llp
from uwav.features.store import FeatureStore, FeatureStoreError, StoreDtype

__all__ = [
    "OFFICIAL_FEATURE_NAMES",
    "FeatureStore",
    "FeatureStoreError",
    "ImportReport",
    "StoreDtype",
    "import_official_llp",
]
