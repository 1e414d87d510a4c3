"""Stage inputs from the stores, shared by the stages that read features: which features feed
each model, the split arrays of a manifest subset, the class text embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from uwav.catalog import Catalog
from uwav.contracts import AudioVisual, SegmentOutputs, text_embedding_name
from uwav.errors import StageError
from uwav.stages.planner import stage_record

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

    from uwav.features.store import FeatureStore
    from uwav.workspace import DatasetTables

# Which store features feed the HAN (audio, 2-D visual, 3-D visual) for each `han.inputs` choice.
HAN_INPUT_FEATURES: dict[str, tuple[str, str, str]] = {
    "clip_clap": ("clap", "clip", "r2plus1d"),
    "official": ("vggish", "resnet152_mean", "r2plus1d"),
}
PLG_FEATURES: tuple[str, str] = ("clip", "clap")  # (visual, audio) inputs of the generator


def open_store(catalog: Catalog, dtype: str | None = None) -> FeatureStore:
    from uwav.features.store import FeatureStore

    return FeatureStore(catalog.store("features"), dtype=dtype)  # type: ignore[arg-type]


def dataset_tables(catalog: Catalog, role: str) -> DatasetTables:
    """The manifest, dense labels and classes the segment stage wrote for `role` ('target' | 'pretrain')."""
    from uwav.workspace import load_tables

    return load_tables(SegmentOutputs.of(stage_record(catalog, "segment").outputs), role)


@dataclass(frozen=True)
class SplitArrays:
    """Store features of the usable videos of a manifest subset, in manifest order."""

    video_ids: list[str]
    features: dict[str, np.ndarray]  # name -> float32 (N, T, ...) zero padded
    lengths: np.ndarray  # (N,) int
    excluded: int  # videos without every feature


def load_split(store: FeatureStore, manifest: pl.DataFrame, names: Sequence[str]) -> SplitArrays:
    """Videos of `manifest` that have every feature in `names` (and no feature written as missing)."""
    import numpy as np

    candidates = manifest["video_id"].to_list()
    complete = store.completed(list(names)) if candidates else set()
    ids = [video_id for video_id in candidates if video_id in complete]
    if ids:
        usable = np.ones(len(ids), dtype=bool)
        for name in names:
            usable &= store.available(name, ids)
        ids = [video_id for video_id, ok in zip(ids, usable, strict=True) if ok]
    arrays: dict[str, Any] = {}
    lengths = np.zeros(0, dtype=np.int64)
    for name in names:
        arrays[name], lengths = store.read(name, ids)
    return SplitArrays(ids, arrays, lengths, len(candidates) - len(ids))


def text_embeddings(store: FeatureStore, role: str) -> AudioVisual[np.ndarray]:
    """The class text embeddings of a dataset role in each generator's space (CLAP audio, CLIP
    visual), as the features stage stored them."""
    found = {}
    for modality, feature in (("audio", PLG_FEATURES[1]), ("visual", PLG_FEATURES[0])):
        name = text_embedding_name(feature, role)
        found[modality] = store.read_text_embeddings(name)
        if found[modality] is None:
            raise StageError(f"feature store {store.url}: no text embeddings {name!r}; rerun the features stage")
    return AudioVisual(**found)
