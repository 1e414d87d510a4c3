"""Stage inputs shared by the stages that read features (pretrain onwards): the split arrays of
a manifest subset, the class text embeddings, the HAN's inputs and dense truth, the generator's
logits on target videos, VALOR's released pseudo-labels, the videos that have pseudo-labels. Stage
modules import these from here, never from one another."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uwav.catalog import Catalog, Task
from uwav.contracts import HAN_AUDIO_INPUT, HAN_INPUT_FEATURES, PLG_FEATURES, AudioVisual, PretrainOutputs, text_embedding_name
from uwav.errors import StageError
from uwav.stages.planner import stage_record

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

    from uwav.features.store import FeatureStore
    from uwav.labels.released import ReleasedPseudoLabels
    from uwav.training.data import HanFeatures, LabelledSplit
    from uwav.workspace import DatasetTables


@dataclass(frozen=True)
class SplitArrays:
    """Store features of the usable videos of a manifest subset, in manifest order."""

    video_ids: list[str]
    features: dict[str, np.ndarray]  # name -> float32 (N, T, ...) zero padded; a per-clip feature (N, *clip_shape)
    lengths: np.ndarray  # (N,) int, segments per video
    excluded: int  # videos without every feature


def load_split(store: FeatureStore, manifest: pl.DataFrame, names: Sequence[str]) -> SplitArrays:
    """Videos of `manifest` that have every feature in `names` (and no feature written as missing)."""
    import numpy as np

    stored = store.feature_names()  # lists the store's groups: once, not per name
    absent = [name for name in names if name not in stored]
    if absent:
        raise StageError(
            f"feature store {store.url} has no feature {', '.join(map(repr, absent))} (it holds {stored}); "
            "the features stage stores what stages.features.source provides"
        )
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
            raise StageError(
                f"feature store {store.url}: no class text embeddings {name!r}, which the pseudo-label generator "
                "needs: rerun the features stage (a feature release must hold them: "
                ".../event_feats/all_event_feats.npy), or train from released pseudo-labels (stages.pseudo_labels.source: released)"
            )
    return AudioVisual(**found)


def han_features(catalog: Catalog, store: FeatureStore, manifest: pl.DataFrame) -> tuple[SplitArrays, HanFeatures]:
    """HAN inputs of the usable videos of `manifest` per the catalog's `han.inputs`."""
    from uwav.training.data import HanFeatures

    inputs = catalog.stages.train.han.inputs
    names = HAN_INPUT_FEATURES[inputs]
    split = load_split(store, manifest, names)
    audio, visual2d, visual3d = (split.features[name] for name in names)
    return split, HanFeatures.from_arrays(audio, visual2d, visual3d, split.lengths, audio_input=HAN_AUDIO_INPUT[inputs])


def labelled_split(catalog: Catalog, store: FeatureStore, tables: DatasetTables, split_name: str) -> tuple[SplitArrays, LabelledSplit]:
    """Features and dense ground truth of a split's videos that have dense labels."""
    import polars as pl

    from uwav.training.data import LabelledSplit
    from uwav.workspace import dense_truth

    labelled = tables.split(split_name).filter(pl.col("video_id").is_in(tables.dense["video_id"].implode()))
    split, features = han_features(catalog, store, labelled)
    if not split.video_ids:
        raise StageError(f"no {split_name} video of {tables.name!r} has dense labels and HAN features")
    truth = dense_truth(tables, split.video_ids, features.n_segments)
    assert truth is not None
    return split, LabelledSplit.from_arrays(features, truth["audio"], truth["visual"])


def target_task(catalog: Catalog) -> Task:
    return catalog.dataset(catalog.target).task


def plg_logits(catalog: Catalog, store: FeatureStore, manifest: pl.DataFrame) -> tuple[SplitArrays, dict[str, Any]]:
    """The trained generator's (N, T, C) logits per modality on the target videos of `manifest`."""
    from uwav.training.pretrain import load_plg, predict_plg

    checkpoint = PretrainOutputs.of(stage_record(catalog, "pretrain").outputs).checkpoint
    model = load_plg(checkpoint, catalog.stages.pseudo_labels.device)
    split = load_split(store, manifest, PLG_FEATURES)
    text = text_embeddings(store, "target")
    logits = predict_plg(
        model, split.features["clip"], split.features["clap"], split.lengths, text.visual, text.audio,
        batch_size=catalog.stages.pseudo_labels.batch_size, precision=catalog.stages.pretrain.precision,
    )
    return split, logits._asdict()


def released_pseudo_labels(catalog: Catalog, tables: DatasetTables, video_ids: list[str]) -> ReleasedPseudoLabels:
    """VALOR's released pseudo-labels (`stages.pseudo_labels.released_root`) of target videos."""
    import polars as pl

    from uwav.labels.released import read_released_pseudo_labels

    root = Path(catalog.resolve(catalog.stages.pseudo_labels.released_root) or "")
    rows = tables.manifest.filter(pl.col("video_id").is_in(video_ids))
    counts = dict(zip(rows["video_id"].to_list(), rows["n_segments"].to_list(), strict=True))
    kind = catalog.dataset(catalog.target).kind
    return read_released_pseudo_labels(root, kind, video_ids, [counts[video_id] for video_id in video_ids], len(tables.classes))


def available_ids(folder: Path, video_ids: list[str]) -> list[str]:
    """The subset of `video_ids` that has pseudo-label rows (videos without features have none)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    present = set(pc.unique(pq.read_table(folder, columns=["video_id"])["video_id"]).to_pylist())
    return [video_id for video_id in video_ids if video_id in present]
