"""Stage `train` (stage 2): the HAN on the pseudo-labels with the UWAV losses, the best
checkpoint by validation; also the HAN inputs that `evaluate`, the ablation grid and `uwav parse`
read the same way."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from uwav.catalog import Catalog, TrainSettings
from uwav.contracts import HAN_INPUT_FEATURES, PseudoLabelsOutputs, TrainOutputs
from uwav.errors import StageError
from uwav.stages.inputs import available_ids, han_features, labelled_split, target_task
from uwav.stages.planner import StageResult, compute_fingerprints, stage_record, state_dir
from uwav.stages.tables import dataset_tables, open_store

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import polars as pl

    from uwav.training.data import HanTrainData
    from uwav.workspace import DatasetTables


def train_settings(catalog: Catalog) -> TrainSettings:
    """The train settings the target's task trains with (AVE: its own recipe)."""
    from uwav.training.han_train import ave_settings

    return catalog.stages.train if target_task(catalog) == "llp" else ave_settings(catalog.stages.train)


@dataclass(frozen=True)
class HanInputs:
    data: HanTrainData
    tables: DatasetTables  # the target's
    train_videos: int
    excluded_train_videos: int  # without HAN features or pseudo-labels
    train_videos_without_pseudo_labels: int
    val_videos: int


def han_train_inputs(catalog: Catalog) -> HanInputs:
    """Training features, weak labels and pseudo-labels, and the validation split, from the stores."""
    import numpy as np
    import polars as pl

    from uwav.labels import read_pseudo_labels
    from uwav.training.data import HanTrainData
    from uwav.workspace import weak_label_matrix

    tables = dataset_tables(catalog, "target")
    store = open_store(catalog)
    folder = PseudoLabelsOutputs.of(stage_record(catalog, "pseudo_labels").outputs).pseudo_labels
    train_manifest = tables.split("train")
    # Videos without pseudo-labels (no generator features, or no released labels) are left out.
    with_labels = train_manifest.filter(pl.col("video_id").is_in(available_ids(folder, train_manifest["video_id"].to_list())))
    train_split, train_features = han_features(catalog, store, with_labels)
    ids = train_split.video_ids
    if not ids:
        raise StageError(f"train: no training video of {tables.name!r} has both HAN features and pseudo-labels")
    labels = read_pseudo_labels(folder, ids)
    stacked = {
        kind: np.stack([labels.arrays[f"audio_{kind}"], labels.arrays[f"visual_{kind}"]], axis=2).astype(np.float32)
        for kind in ("soft", "hard")
    }
    weak = weak_label_matrix(train_manifest.filter(train_manifest["video_id"].is_in(ids)), tables.classes)
    val_split, val = labelled_split(catalog, store, tables, "val")
    data = HanTrainData.from_arrays(train_features, weak, stacked["soft"], stacked["hard"], val)
    return HanInputs(
        data, tables, len(ids), train_manifest.height - len(ids), train_manifest.height - with_labels.height, len(val_split.video_ids)
    )


def run(catalog: Catalog, out_dir: Path, progress: bool) -> StageResult:
    from uwav.devices import effective_precision, resolve_device
    from uwav.training.han_train import score_han, train_han
    from uwav.training.health import health_warnings, input_spread

    inputs = han_train_inputs(catalog)
    settings = train_settings(catalog)
    task = target_task(catalog)
    result = train_han(inputs.data, settings, out_dir, task=task, progress=progress)
    history = out_dir / "history.json"
    history.write_text(json.dumps(result.history, indent=1))
    val = inputs.data.val
    scored = score_han(result.model, val, task, decision=settings.decision, precision=settings.precision)
    spread = input_spread(dict(zip(HAN_INPUT_FEATURES[settings.han.inputs], inputs.data.train.real_rows(), strict=True)))
    warnings = health_warnings(
        scored.pred_audio, scored.pred_visual, val.gt_audio, val.gt_visual,
        spread=spread, standardized=settings.han.input_norm == "standardize",
    )
    for warning in warnings:
        log.warning("train: %s", warning)
    return StageResult(
        TrainOutputs(result.best_checkpoint, history),
        {"train_videos": inputs.train_videos, "val_videos": inputs.val_videos,
         "excluded_train_videos": inputs.excluded_train_videos,
         "train_videos_without_pseudo_labels": inputs.train_videos_without_pseudo_labels,
         "best_epoch": result.best_epoch, "best_val_score": result.best_score,
         "precision": effective_precision(resolve_device(settings.device), settings.precision),
         "health_warnings": warnings},
    )


def run_ablation_grid(catalog: Catalog, *, progress: bool = True) -> pl.DataFrame:
    """The paper's Table-4 grid (HAN baselines, binary, soft, soft+reweight, soft+mixup, all) on the
    catalog's pseudo-labels, each scored on the evaluation split; resumable per variant. Needs
    the pipeline up to `pseudo_labels` (run it first)."""
    from uwav.training.han_train import run_ablation

    inputs = han_train_inputs(catalog)
    _, test = labelled_split(catalog, open_store(catalog), inputs.tables, catalog.stages.evaluate.split)
    run_dir = state_dir(catalog).stage_dir("ablation", compute_fingerprints(catalog)["train"])
    table = run_ablation(
        inputs.data, train_settings(catalog), run_dir, test=test, task=target_task(catalog), progress=progress
    )
    table.write_parquet(run_dir / "ablation.parquet")
    return table
