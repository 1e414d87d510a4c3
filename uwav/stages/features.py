"""Stage `features`: fill the feature store for every video of the catalog's datasets (the target
and, where the catalog names one, the pre-training set; only the videos it lacks) and the class
text embeddings of their class lists. After a fan-out
(`pending_feature_shards` + `compute_feature_shard` on a cluster) this only finds the work done
and writes the rest."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uwav.catalog import Catalog
from uwav.contracts import HAN_INPUT_FEATURES, PLG_FEATURES, FeaturesOutputs
from uwav.errors import StageError
from uwav.stages.planner import StageResult, quarantine_path
from uwav.stages.tables import dataset_tables, open_store

if TYPE_CHECKING:
    import polars as pl

    from uwav.features.encoders import Encoders
    from uwav.workspace import DatasetTables

FEATURE_SHARD_VIDEOS = 32  # videos per fan-out task: enough to fill encoder batches, small enough to spread


def _encoded_features(catalog: Catalog) -> set[str]:
    """The features the encoders compute (the official source brings the HAN's own)."""
    han_inputs = HAN_INPUT_FEATURES[catalog.stages.train.han.inputs]
    return {*PLG_FEATURES, *(() if catalog.stages.features.source == "official" else han_inputs)}


def _encoders(catalog: Catalog, device: str) -> Encoders:
    from uwav.features.encoders import build_encoders

    return build_encoders(
        catalog.encoders, device, features=_encoded_features(catalog), base_dir=catalog.base_dir,
        extraction=catalog.stages.features.extraction,
    )


def _datasets(catalog: Catalog) -> tuple[list[DatasetTables], pl.DataFrame]:
    """The tables of the target and (where the catalog names one) the pre-training set, and their
    manifests in one frame."""
    import polars as pl

    datasets = [dataset_tables(catalog, "target")]
    if catalog.pretrain is not None:
        datasets.append(dataset_tables(catalog, "pretrain"))
        clash = set(datasets[0].manifest["video_id"]) & set(datasets[1].manifest["video_id"])
        if clash:
            raise StageError(f"features: video ids in both datasets would share store entries: {sorted(clash)[:5]}")
    return datasets, pl.concat([tables.manifest for tables in datasets])


def pending_feature_shards(catalog: Catalog, shard_videos: int = FEATURE_SHARD_VIDEOS) -> list[list[str]]:
    """For fan-out (Dask): register every video in the store (the single coordinator's job) and
    return shards of the videos whose features are still missing. Empty unless the encoders run."""
    import polars as pl

    settings = catalog.stages.features
    if settings.source in ("synthetic", "released"):
        return []
    _, manifest = _datasets(catalog)
    usable = manifest.filter(pl.col("media_path").is_not_null())
    encoders = _encoders(catalog, "cpu")
    store = open_store(catalog, settings.dtype)
    store.allocate(
        usable["video_id"].to_list(), usable["n_segments"].to_list(), encoders.feature_shapes(),
        encoder_identities=encoders.identities(), per_clip=encoders.per_clip_features(),
    )
    complete = store.completed([encoder.feature for encoder in encoders.active()])
    pending = [video_id for video_id in usable["video_id"].to_list() if video_id not in complete]
    return [pending[start : start + shard_videos] for start in range(0, len(pending), shard_videos)]


def compute_feature_shard(catalog: Catalog, video_ids: Sequence[str]) -> list[dict[str, Any]]:
    """One fan-out task: the features of `video_ids` into the store; returns their quarantine rows
    (the coordinator merges them, so workers never write the shared quarantine table)."""
    import polars as pl

    from uwav.features.extract import extract_features
    from uwav.media.quarantine import QuarantineLog

    settings = catalog.stages.features
    _, manifest = _datasets(catalog)
    shard = manifest.filter(pl.col("video_id").is_in(list(video_ids)))
    quarantine = QuarantineLog()
    extract_features(
        shard, open_store(catalog, settings.dtype), _encoders(catalog, settings.device), settings, quarantine, progress=False
    )
    return quarantine.to_frame().to_dicts()


def merge_quarantine(catalog: Catalog, rows: Sequence[dict[str, Any]]) -> None:
    """Add fan-out tasks' quarantine rows to the catalog's quarantine table."""
    from uwav.media.quarantine import QuarantineLog

    log = QuarantineLog.load(quarantine_path(catalog))
    for row in rows:
        log.record(row["video_id"], row["path"], row["stage"], row["reason"])
    log.write(quarantine_path(catalog))


RELEASED_PROBLEMS_NAME = "released_import_problems.parquet"


def import_release(catalog: Catalog, out_dir: Path) -> dict[str, Any]:
    """`source: released`: the datasets' CLIP / CLAP features and the class text embeddings the
    release has, and the target's AVVP features, from `released_root`; no media is opened. Every
    skipped video is listed in `released_import_problems.parquet`."""
    import polars as pl

    from uwav.features.official import import_official_llp
    from uwav.features.released import find_release, import_released_segments, import_released_text, official_features_folder

    settings = catalog.stages.features
    if settings.released_root is None:
        raise StageError("features: source 'released' needs stages.features.released_root in the catalog")
    root = Path(catalog.resolve(settings.released_root) or "")
    datasets, _ = _datasets(catalog)
    target = datasets[0]
    store = open_store(catalog, settings.dtype)
    reports = {}
    stored: dict[str, Any] = {}
    for tables in datasets:
        layout = find_release(root, catalog.dataset(tables.name).kind)
        import_released_text(store, layout, tables.classes, tables.role)
        reports[f"{tables.role}_released"] = import_released_segments(store, layout, tables.manifest, workers=settings.workers)
        stored[tables.role] = {"features": list(layout.segment_folders), "text_embeddings": sorted(layout.text_files)}
    if catalog.dataset(target.name).kind == "llp":  # the HAN's R(2+1)D (and official) inputs
        reports["target_official"] = import_official_llp(
            store, official_features_folder(root), target.manifest["video_id"].to_list(), workers=settings.workers,
            keep_frames=settings.resnet_frames,
        )
    problems = pl.concat([report.problems for report in reports.values()])
    problems.write_parquet(out_dir / RELEASED_PROBLEMS_NAME)
    return {
        "problems_report": str(out_dir / RELEASED_PROBLEMS_NAME),
        "released_import": {name: report.summary() for name, report in reports.items()},
        "released_stored": stored,
        "imported": {name: len(report.imported) for name, report in reports.items()},
        "skipped_videos": problems["video_id"].n_unique(),
    }


def run(catalog: Catalog, out_dir: Path, progress: bool) -> StageResult:
    from uwav.media.quarantine import QuarantineLog

    settings = catalog.stages.features
    datasets, _ = _datasets(catalog)
    target = datasets[0]
    store = open_store(catalog, settings.dtype)
    metrics: dict[str, Any] = {}
    if settings.source == "synthetic":
        from uwav.synthetic.store_import import import_into_store

        metrics.update(import_into_store(Path(catalog.resolve(catalog.dataset(target.name).annotations) or ""), store))
        return StageResult(FeaturesOutputs(store.url, quarantine_path(catalog)), metrics)
    if settings.source == "released":
        return StageResult(FeaturesOutputs(store.url, quarantine_path(catalog)), import_release(catalog, out_dir))

    from uwav.features.extract import compute_text_embeddings, extract_features

    encoders = _encoders(catalog, settings.device)
    # before any media is read: a class list the extraction has no prompts for fails at once
    for tables in datasets:
        compute_text_embeddings(store, encoders, tables.classes, settings, role=tables.role)
    quarantine = QuarantineLog.load(quarantine_path(catalog))
    try:
        for tables in datasets:
            summary = extract_features(tables.manifest, store, encoders, settings, quarantine, progress=progress)
            metrics[f"{tables.role}_extraction"] = {
                "videos": summary.n_videos,
                "already_complete": summary.n_already_complete,
                "computed": len(summary.computed),
                "quarantined": len(summary.quarantined),
                "missing_audio": len(summary.missing_audio),
                "segments_per_s": round(summary.segments_per_s, 1),
            }
    finally:
        quarantine.write(quarantine_path(catalog))
    if settings.source == "official":
        from uwav.features.official import import_official_llp

        if settings.official_root is None:
            raise StageError("features: source 'official' needs stages.features.official_root in the catalog")
        report = import_official_llp(
            store, Path(catalog.resolve(settings.official_root) or ""), target.manifest["video_id"].to_list(),
            workers=settings.workers, keep_frames=settings.resnet_frames,
        )
        report_path = out_dir / "official_import_problems.parquet"
        report.problems.write_parquet(report_path)
        metrics["official_import"] = report.summary()
    return StageResult(FeaturesOutputs(store.url, quarantine_path(catalog)), metrics)
