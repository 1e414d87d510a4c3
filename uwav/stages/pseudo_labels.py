"""Stage `pseudo_labels`: binary and uncertainty-weighted pseudo-labels (eq. 10, 12) for every
target video, in Parquet shards (resumable per shard), and their quality with the LLP protocol
where dense labels exist.

Soft labels are `sigmoid((z - theta) / soft_temperature) * y`. A -inf threshold (method
`released_f1`) is replaced, for the soft labels only, by the class's smallest logit over the
target's train split minus 1 (the release takes that minimum per training batch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from uwav.catalog import Catalog
from uwav.contracts import CalibrateOutputs, PseudoLabelsOutputs
from uwav.errors import StageError
from uwav.stages.inputs import available_ids, plg_logits
from uwav.stages.planner import StageResult, stage_record
from uwav.stages.tables import dataset_tables, open_store

if TYPE_CHECKING:
    import torch

    from uwav.features.store import FeatureStore
    from uwav.workspace import DatasetTables

PSEUDO_LABEL_SHARD_VIDEOS = 2048


def soft_label_thresholds(
    catalog: Catalog, store: FeatureStore, tables: DatasetTables, thresholds: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The thresholds of the soft labels: `thresholds` with every -inf replaced by the class's
    smallest logit over the target's train split minus 1 (`uwav.labels.finite_thresholds`)."""
    import numpy as np
    import torch

    from uwav.labels import finite_thresholds

    if not any(torch.isneginf(theta).any() for theta in thresholds.values()):
        return thresholds
    split, logits = plg_logits(catalog, store, tables.split("train"))
    if not split.video_ids:
        raise StageError("pseudo_labels: a -inf threshold needs the train split's logits, and no train video has features")
    valid = torch.from_numpy(np.arange(logits["audio"].shape[1])[None, :] < split.lengths[:, None])
    return {m: finite_thresholds(theta, torch.from_numpy(logits[m]), valid) for m, theta in thresholds.items()}


def run(catalog: Catalog, out_dir: Path, progress: bool) -> StageResult:
    import numpy as np
    import polars as pl
    import torch

    from uwav.evaluation import pseudo_label_quality
    from uwav.labels import (
        ThresholdSet,
        binary_pseudo_labels,
        completed_shards,
        iter_shards,
        read_pseudo_labels,
        soft_pseudo_labels,
        write_shard,
    )
    from uwav.labels.pseudo_labels import shard_name
    from uwav.workspace import dense_truth, weak_label_matrix

    tables = dataset_tables(catalog, "target")
    thresholds = ThresholdSet.load(CalibrateOutputs.of(stage_record(catalog, "calibrate").outputs).thresholds)
    if thresholds.classes != tables.classes:
        raise StageError("pseudo_labels: the threshold set's classes differ from the target dataset's")
    store = open_store(catalog)
    binary_thresholds = {m: torch.from_numpy(thresholds.thresholds[m]).float() for m in ("audio", "visual")}
    soft_thresholds = soft_label_thresholds(catalog, store, tables, binary_thresholds)
    temperature = catalog.stages.pseudo_labels.soft_temperature
    folder = Path(catalog.store("pseudo_labels")) / out_dir.name
    manifest = tables.manifest.sort("video_id")
    done = completed_shards(folder)
    written = 0
    for index, rows in iter_shards(manifest.height, PSEUDO_LABEL_SHARD_VIDEOS):
        if shard_name(index) in done:
            continue
        split, logits = plg_logits(catalog, store, manifest[rows])
        if not split.video_ids:
            continue
        shard = manifest[rows].filter(pl.col("video_id").is_in(split.video_ids))
        video_labels = torch.from_numpy(weak_label_matrix(shard, tables.classes))
        columns: dict[str, np.ndarray] = {}
        for modality in ("audio", "visual"):
            z = torch.from_numpy(np.nan_to_num(logits[modality], nan=-1e4))
            columns[f"{modality}_logit"] = logits[modality]
            columns[f"{modality}_soft"] = soft_pseudo_labels(z, soft_thresholds[modality], video_labels, temperature).numpy()
            columns[f"{modality}_hard"] = binary_pseudo_labels(z, binary_thresholds[modality], video_labels).numpy()
        write_shard(folder, index, split.video_ids, split.lengths, columns, thresholds.set_id)
        written += 1
    quality: dict[str, dict[str, float]] = {}
    labelled = set(tables.dense["video_id"])
    for split_name in ("val", "test"):
        ids = [video_id for video_id in tables.split(split_name)["video_id"].to_list() if video_id in labelled]
        if not ids:
            continue
        loaded = read_pseudo_labels(folder, available_ids(folder, ids))
        truth = dense_truth(tables, loaded.video_ids, loaded.valid.shape[1])
        assert truth is not None
        hard = {m: loaded.arrays[f"{m}_hard"].astype(bool) for m in ("audio", "visual")}
        quality[split_name] = pseudo_label_quality(hard["audio"], hard["visual"], truth["audio"], truth["visual"])
    quality_path = out_dir / "quality.json"
    quality_path.write_text(json.dumps(quality, indent=1))
    return StageResult(
        PseudoLabelsOutputs(folder, quality_path),
        {
            "shards_written": written, "threshold_set_id": thresholds.set_id, "quality": quality,
            "soft_thresholds": {m: [float(x) for x in soft_thresholds[m]] for m in soft_thresholds},
        },
    )
