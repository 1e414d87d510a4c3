"""The stores and tables every stage after `segment` reads: the feature store and the segment
stage's manifests. Kept apart from `uwav.stages.inputs` so that the features stage, which needs
only these, does not take the model stages' inputs (and their code) into its fingerprint."""

from __future__ import annotations

from typing import TYPE_CHECKING

from uwav.catalog import Catalog
from uwav.contracts import SegmentOutputs
from uwav.stages.planner import stage_record

if TYPE_CHECKING:
    from uwav.features.store import FeatureStore
    from uwav.workspace import DatasetTables


def open_store(catalog: Catalog, dtype: str | None = None) -> FeatureStore:
    from uwav.features.store import FeatureStore

    return FeatureStore(catalog.store("features"), dtype=dtype)  # type: ignore[arg-type]


def dataset_tables(catalog: Catalog, role: str) -> DatasetTables:
    """The manifest, dense labels and classes the segment stage wrote for `role` ('target' | 'pretrain')."""
    from uwav.workspace import load_tables

    return load_tables(SegmentOutputs.of(stage_record(catalog, "segment").outputs), role)
