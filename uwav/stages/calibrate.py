"""Stage `calibrate`: class-wise thresholds on the calibration split (never test): the best
segment F1 where the split has dense labels (method `f1`, or the release's `released_f1`), else
the quantile fallback."""

from __future__ import annotations

import logging
from pathlib import Path

from uwav.catalog import Catalog
from uwav.contracts import CalibrateOutputs
from uwav.errors import StageError
from uwav.stages.inputs import plg_logits
from uwav.stages.planner import StageResult, stage_record
from uwav.stages.tables import dataset_tables, open_store

log = logging.getLogger(__name__)


def run(catalog: Catalog, out_dir: Path, progress: bool) -> StageResult:
    import numpy as np

    from uwav.labels import calibrate_thresholds
    from uwav.workspace import dense_truth, weak_label_matrix

    settings = catalog.stages.calibrate
    tables = dataset_tables(catalog, "target")
    manifest = tables.split(settings.split)
    split, logits = plg_logits(catalog, open_store(catalog), manifest)
    if not split.video_ids:
        raise StageError(f"calibrate: no {settings.split} video of {tables.name!r} has CLIP and CLAP features")
    n_segments = logits["visual"].shape[1]
    valid = np.arange(n_segments)[None, :] < split.lengths[:, None]
    truth = dense_truth(tables, split.video_ids, n_segments) if settings.method != "quantile" else None
    method = settings.method if truth is not None else "quantile"
    if method != settings.method:
        log.warning("calibrate: split %s of %s has no dense labels; using the quantile rule", settings.split, tables.name)
    video_labels = weak_label_matrix(manifest.filter(manifest["video_id"].is_in(split.video_ids)), tables.classes)
    thresholds = calibrate_thresholds(
        {m: np.nan_to_num(logits[m], nan=0.0) for m in logits}, video_labels, valid, tables.classes,
        dense_truth=truth, method=method, quantile=settings.quantile,
        source={"split": settings.split, "method": method, "plg": stage_record(catalog, "pretrain").fingerprint},
    )
    path = out_dir / "thresholds.json"
    thresholds.save(path)
    scored = [d.f1 for d in thresholds.details if d.f1 is not None]
    return StageResult(
        CalibrateOutputs(path),
        {"method": method, "videos": len(split.video_ids), "mean_best_f1": float(np.mean(scored)) if scored else None,
         "threshold_set_id": thresholds.set_id},
    )
