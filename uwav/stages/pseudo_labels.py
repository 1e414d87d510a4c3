"""Stage `pseudo_labels`: binary and uncertainty-weighted pseudo-labels (eq. 10, 12) for every
target video, in Parquet shards (resumable per shard), and their quality with the LLP protocol
where dense labels exist.

Soft labels are `sigmoid((z - theta) / soft_temperature) * y`. A -inf threshold (method
`released_f1`) is replaced, for the soft labels only, by the class's smallest logit over the
target's train split minus 1 (the release takes that minimum per training batch).

With `source: released` the shards hold VALOR's released binary labels instead
(`uwav.labels.released`: soft = binary, logits NaN), and neither the generator nor the thresholds
are needed. The quality report names where the labels came from and, with `source: generate` and
a `released_root`, scores VALOR's labels beside the generated ones on the same videos."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uwav.catalog import Catalog
from uwav.contracts import CalibrateOutputs, PseudoLabelsOutputs
from uwav.errors import StageError
from uwav.stages.inputs import available_ids, plg_logits, released_pseudo_labels
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


def write_generated(catalog: Catalog, tables: DatasetTables, folder: Path) -> dict[str, Any]:
    """Eq. 10 and 12 from the generator's logits and the calibrated thresholds, shard by shard
    (shards already written are kept); the stage's metrics about them."""
    import numpy as np
    import polars as pl
    import torch

    from uwav.labels import ThresholdSet, binary_pseudo_labels, completed_shards, iter_shards, soft_pseudo_labels, write_shard
    from uwav.labels.pseudo_labels import shard_name
    from uwav.workspace import weak_label_matrix

    thresholds = ThresholdSet.load(CalibrateOutputs.of(stage_record(catalog, "calibrate").outputs).thresholds)
    if thresholds.classes != tables.classes:
        raise StageError("pseudo_labels: the threshold set's classes differ from the target dataset's")
    store = open_store(catalog)
    binary_thresholds = {m: torch.from_numpy(thresholds.thresholds[m]).float() for m in ("audio", "visual")}
    soft_thresholds = soft_label_thresholds(catalog, store, tables, binary_thresholds)
    temperature = catalog.stages.pseudo_labels.soft_temperature
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
    return {
        "shards_written": written, "threshold_set_id": thresholds.set_id,
        "soft_thresholds": {m: [float(x) for x in soft_thresholds[m]] for m in soft_thresholds},
    }


RELEASED_PROBLEMS_NAME = "released_pseudo_label_problems.parquet"


def write_released(catalog: Catalog, tables: DatasetTables, folder: Path, out_dir: Path) -> dict[str, Any]:
    """VALOR's released pseudo-labels of every target video as this stage's shards (soft = binary,
    logits NaN; shards already written are kept); the files at fault are listed in
    `released_pseudo_label_problems.parquet`. The stage's metrics about them."""
    import numpy as np

    from uwav.labels import completed_shards, iter_shards, write_shard
    from uwav.labels.pseudo_labels import shard_name
    from uwav.workspace import weak_label_matrix

    manifest = tables.manifest.sort("video_id")
    released = released_pseudo_labels(catalog, tables, manifest["video_id"].to_list())
    released.problems.write_parquet(out_dir / RELEASED_PROBLEMS_NAME)
    if not released.video_ids:
        raise StageError(
            f"pseudo_labels: no target video has usable released pseudo-labels under "
            f"{catalog.resolve(catalog.stages.pseudo_labels.released_root)} (the problems: {out_dir / RELEASED_PROBLEMS_NAME})"
        )
    set_id = f"released:{catalog.resolve(catalog.stages.pseudo_labels.released_root)}"
    position = {video_id: row for row, video_id in enumerate(released.video_ids)}
    done = completed_shards(folder)
    written = 0
    for index, rows in iter_shards(manifest.height, PSEUDO_LABEL_SHARD_VIDEOS):
        picked = [position[video_id] for video_id in manifest[rows]["video_id"].to_list() if video_id in position]
        if shard_name(index) in done or not picked:
            continue
        columns: dict[str, np.ndarray] = {}
        for modality, labels in released.labels._asdict().items():
            columns[f"{modality}_logit"] = np.full(labels[picked].shape, np.nan, dtype=np.float32)
            columns[f"{modality}_soft"] = labels[picked].astype(np.float32)
            columns[f"{modality}_hard"] = labels[picked]
        write_shard(folder, index, [released.video_ids[row] for row in picked], released.lengths[picked], columns, set_id)
        written += 1
    # VALOR labels only the classes of each video's weak label: classes beyond it mean that the
    # release and the annotation files disagree (counted, not changed: VALOR trains on them as they are).
    weak = weak_label_matrix(manifest.filter(manifest["video_id"].is_in(released.video_ids)), tables.classes)
    labelled = released.labels.audio.any(axis=1) | released.labels.visual.any(axis=1)
    return {
        "shards_written": written, "threshold_set_id": set_id,
        "released_videos": len(released.video_ids), "skipped_videos": released.problems["video_id"].n_unique(),
        "problems_report": str(out_dir / RELEASED_PROBLEMS_NAME),
        "labels_outside_weak_label": int((labelled & (weak == 0)).sum()),
    }


def label_quality(catalog: Catalog, tables: DatasetTables, folder: Path) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, int]]:
    """Pseudo-label quality (LLP protocol on the binary labels; the paper's Table 3) per split with
    dense labels: {split: {labels: scores}} for the stage's labels and, with source `generate` and
    a `released_root`, VALOR's released ones beside them on the same videos (those both have);
    and the number of videos scored per split."""
    from uwav.evaluation import pseudo_label_quality
    from uwav.labels import read_pseudo_labels
    from uwav.labels.released import LABEL_SOURCE_NAMES
    from uwav.workspace import dense_truth

    settings = catalog.stages.pseudo_labels
    compare = settings.source == "generate" and settings.released_root is not None
    labelled = set(tables.dense["video_id"])
    quality: dict[str, dict[str, dict[str, float]]] = {}
    videos: dict[str, int] = {}
    for split_name in ("val", "test"):
        ids = available_ids(folder, [video_id for video_id in tables.split(split_name)["video_id"].to_list() if video_id in labelled])
        released = released_pseudo_labels(catalog, tables, ids) if compare else None
        if released is not None:
            ids = released.video_ids
        if not ids:
            continue
        own = read_pseudo_labels(folder, ids)
        truth = dense_truth(tables, ids, own.valid.shape[1])
        assert truth is not None
        hard = {LABEL_SOURCE_NAMES[settings.source]: (own.arrays["audio_hard"], own.arrays["visual_hard"])}
        if released is not None:
            hard[LABEL_SOURCE_NAMES["released"]] = (released.labels.audio, released.labels.visual)
        quality[split_name] = {
            name: pseudo_label_quality(audio.astype(bool), visual.astype(bool), truth["audio"], truth["visual"])
            for name, (audio, visual) in hard.items()
        }
        videos[split_name] = len(ids)
    return quality, videos


def run(catalog: Catalog, out_dir: Path, progress: bool) -> StageResult:
    tables = dataset_tables(catalog, "target")
    folder = Path(catalog.store("pseudo_labels")) / out_dir.name
    if catalog.stages.pseudo_labels.source == "released":
        metrics = write_released(catalog, tables, folder, out_dir)
    else:
        metrics = write_generated(catalog, tables, folder)
    quality, videos = label_quality(catalog, tables, folder)
    quality_path = out_dir / "quality.json"
    quality_path.write_text(json.dumps(quality, indent=1))
    return StageResult(
        PseudoLabelsOutputs(folder, quality_path),
        {"source": catalog.stages.pseudo_labels.source, **metrics, "quality": quality, "quality_videos": videos},
    )
