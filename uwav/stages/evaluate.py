"""Stage `evaluate`: the trained HAN on the evaluation split, scored by the same function as
validation (`uwav.training.han_train.score_han`: the LLP protocol, and AVE accuracy for AVE),
with the HTML report and per-video timelines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from uwav.catalog import Catalog
from uwav.contracts import EvaluateOutputs, PseudoLabelsOutputs, TrainOutputs
from uwav.stages.inputs import dataset_tables, open_store
from uwav.stages.planner import StageResult, stage_record
from uwav.stages.train import labelled_split, target_task

if TYPE_CHECKING:
    from uwav.caching import StageRecord
    from uwav.training.data import LabelledSplit
    from uwav.training.han_train import HanEvaluation
    from uwav.workspace import DatasetTables


def run(catalog: Catalog, out_dir: Path, progress: bool) -> StageResult:
    import numpy as np

    from uwav.training.han_train import load_han, score_han

    settings = catalog.stages.evaluate
    tables = dataset_tables(catalog, "target")
    train_record = stage_record(catalog, "train")
    model = load_han(TrainOutputs.of(train_record.outputs).best_checkpoint, catalog.stages.train.device)
    split, labelled = labelled_split(catalog, open_store(catalog), tables, settings.split)
    evaluation = score_han(
        model, labelled, target_task(catalog), threshold=settings.threshold, precision=catalog.stages.train.precision
    )
    metrics_path = out_dir / "metrics.json"
    metrics_path.write_text(json.dumps(evaluation.scores, indent=1))
    predictions_path = out_dir / "predictions.npz"
    np.savez_compressed(
        predictions_path, video_ids=np.asarray(split.video_ids), segment_prob=evaluation.segment_prob,
        video_prob=evaluation.video_prob,
    )
    timelines = out_dir / "timelines"
    report = _write_report(catalog, train_record, out_dir, timelines, tables, split.video_ids, labelled, evaluation)
    return StageResult(
        EvaluateOutputs(metrics_path, predictions_path, report, timelines),
        {"scores": evaluation.scores, "videos": len(split.video_ids), "excluded_videos": split.excluded},
    )


def _write_report(
    catalog: Catalog,
    train_record: StageRecord,
    out_dir: Path,
    timeline_dir: Path,
    tables: DatasetTables,
    video_ids: list[str],
    labelled: LabelledSplit,
    evaluation: HanEvaluation,
) -> Path:
    """report.html: metrics, pseudo-label quality, training curves and per-video timelines."""
    from uwav.atomic import write_bytes_atomic
    from uwav.evaluation.report import report_timelines, write_html_report
    from uwav.parsing import timeline_file_name

    history = json.loads(TrainOutputs.of(train_record.outputs).history.read_text())
    quality = json.loads(PseudoLabelsOutputs.of(stage_record(catalog, "pseudo_labels").outputs).quality.read_text())
    probs = evaluation.segment_prob  # (N, T, 2, C), modality axis in MODALITIES order (audio, visual)
    timelines = report_timelines(
        video_ids, tables.classes, evaluation.pred_audio, evaluation.pred_visual, labelled.gt_audio, labelled.gt_visual,
        probs[:, :, 0], probs[:, :, 1],
    )
    timeline_dir.mkdir(exist_ok=True)
    for video_id, png in timelines:
        write_bytes_atomic(timeline_dir / timeline_file_name(video_id), png)
    return write_html_report(
        out_dir / "report.html",
        title=f"uwav: {tables.name} ({catalog.stages.evaluate.split} split)",
        scores=evaluation.scores,
        classes=tables.classes,
        pseudo_label_quality=quality or None,
        history=history,
        timelines=timelines,
        notes=[
            f"catalog: {catalog.base_dir}",
            f"model: train stage {train_record.fingerprint}, best epoch {train_record.metrics.get('best_epoch')}",
            f"{len(video_ids)} evaluated videos",
        ],
    )
