"""`uwav parse`: the current model's per-segment audio / visual / audio-visual events of new
videos (JSON, Parquet and a timeline PNG each). The model's input features
(`stages.train.han.inputs`: CLAP + CLIP + R(2+1)D, VALOR++'s CLAP maps + CLIP + R(2+1)D, or the
official set VGGish + ResNet-152 + R(2+1)D) are computed in memory with the catalog's encoders and
`stages.features.extraction` (a released VALOR++ parses a video as it was trained with
`extraction: valor`); nothing is written to the feature store."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from uwav.catalog import Catalog
from uwav.contracts import HAN_INPUT_FEATURES
from uwav.errors import InvalidInputError, StageError
from uwav.parsing import ParseOutputs
from uwav.stages.inputs import han_features
from uwav.stages.promotion import current_checkpoint
from uwav.stages.tables import dataset_tables


class NothingParsedError(StageError):
    """No video given to `uwav parse` could be parsed; `failures` says why for each."""

    def __init__(self, failures: Sequence[dict[str, str]]) -> None:
        self.failures = list(failures)
        super().__init__(f"uwav parse: none of the {len(self.failures)} videos could be parsed")


def parse_media(
    catalog: Catalog,
    paths: Sequence[Path],
    out_dir: Path,
    *,
    model_path: Path | None = None,
    kind: str = "checkpoint",
    progress: bool = True,
) -> ParseOutputs:
    """Parse `paths` with the catalog's current model, or with `model_path` (of `kind`, see
    `uwav.stages.evaluate.MODEL_KINDS`) when given. Videos that cannot be probed, decoded or encoded
    are skipped and listed (`ParseOutputs.failed`, `failed` in events.json); `NothingParsedError`
    when none is left."""
    import uuid

    import polars as pl

    from uwav.contracts import n_segments_for_duration, validate_manifest
    from uwav.features.encoders import build_encoders
    from uwav.features.extract import extract_features
    from uwav.features.store import FeatureStore
    from uwav.media.decode import MediaError, probe_duration
    from uwav.media.quarantine import QuarantineLog
    from uwav.parsing import write_parse_outputs
    from uwav.stages.evaluate import check_model_inputs, load_han_model
    from uwav.training.han_train import predict_han

    if kind == "valor++" and catalog.stages.features.extraction != "valor":
        raise InvalidInputError(
            "--kind valor++: VALOR++ was trained on VALOR's CLIP features (L2-normalised, its own frames); "
            "set stages.features.extraction: valor to parse new media with it"
        )
    if model_path is None:
        model_path, kind = current_checkpoint(catalog), "checkpoint"
    model = load_han_model(model_path, kind, catalog.stages.train.device)
    classes = dataset_tables(catalog, "target").classes
    rows, failed = [], []
    for path in paths:
        try:
            duration = probe_duration(str(path))
        except MediaError as error:
            failed.append({"path": str(path), "reason": error.reason})
            continue
        rows.append({
            "video_id": Path(path).stem, "dataset": "parse", "split": "test", "media_path": str(Path(path).resolve()),
            "duration_s": duration, "n_segments": n_segments_for_duration(duration), "labels": [],
        })
    if not rows:
        raise NothingParsedError(failed)
    manifest = validate_manifest(pl.DataFrame(rows))
    settings = catalog.stages.features
    store = FeatureStore(f"memory://uwav-parse-{uuid.uuid4().hex}", dtype="float32")
    inputs = HAN_INPUT_FEATURES[catalog.stages.train.han.inputs]
    encoders = build_encoders(
        catalog.encoders, settings.device, features=inputs, base_dir=catalog.base_dir, extraction=settings.extraction
    )
    quarantine = QuarantineLog()
    extract_features(manifest, store, encoders, settings, quarantine, progress=progress)
    split, features = han_features(catalog, store, manifest)
    reasons = {row["video_id"]: row["reason"] for row in quarantine.to_frame().iter_rows(named=True)}
    for row in manifest.filter(~pl.col("video_id").is_in(split.video_ids)).iter_rows(named=True):
        failed.append({"path": row["media_path"], "reason": reasons.get(row["video_id"], "no features could be computed")})
    if not split.video_ids:
        raise NothingParsedError(failed)
    check_model_inputs(model, features, classes, f"{model_path} ({kind})")
    segment_prob, video_prob = predict_han(model, features, precision=catalog.stages.train.precision)
    durations = manifest.filter(pl.col("video_id").is_in(split.video_ids))["duration_s"].to_list()
    return write_parse_outputs(
        out_dir, split.video_ids, classes, segment_prob, video_prob, catalog.stages.evaluate.threshold, durations_s=durations,
        decision=catalog.stages.train.decision, failed=failed,
    )
