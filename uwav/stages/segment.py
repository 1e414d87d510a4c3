"""Stage `segment`: read both datasets (generating synthetic ones), validate every row, probe
every video's media and write the manifests the later stages use. Bad rows go to the validation
report, unusable media to the quarantine table; neither stops the run. A catalog without a
pre-training set gets empty pre-training tables (no classes, no videos)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from uwav.catalog import Catalog, DatasetConfig
from uwav.contracts import SegmentOutputs, empty_dense, empty_manifest
from uwav.datasets import ValidationReport, dataset_classes, read_dataset
from uwav.stages.planner import StageResult, quarantine_path, state_dir
from uwav.workspace import DatasetTables, Role, write_tables

ROLES: tuple[str, str] = ("target", "pretrain")
SYNTH_DONE = ".uwav-synth-complete"


def dataset_name(catalog: Catalog, role: Role) -> str | None:
    """The catalog's dataset playing `role` (None: the catalog names no pre-training set)."""
    if role not in ROLES:
        raise ValueError(f"unknown dataset role {role!r}; roles: {ROLES}")
    return catalog.target if role == "target" else catalog.pretrain


def catalog_roles(catalog: Catalog) -> list[Role]:
    """The roles the catalog names a dataset for."""
    return [role for role in ROLES if dataset_name(catalog, role) is not None]


def ensure_synthetic(catalog: Catalog, config: DatasetConfig) -> Path:
    """Generate a synthetic dataset into its `annotations` folder unless it is already complete."""
    from uwav.synthetic.synthesize import synth_main

    assert config.synthetic is not None
    root = Path(catalog.resolve(config.annotations) or "")
    marker = root / SYNTH_DONE
    spec = config.synthetic.model_dump(mode="json")
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return root
    synth_main(
        config.synthetic.mode,
        root,
        config.synthetic.seed,
        n_pretrain=config.synthetic.n_pretrain,
        n_train=config.synthetic.n_train,
        n_val=config.synthetic.n_val,
        n_test=config.synthetic.n_test,
        target_layout=config.synthetic.target_layout,
    )
    marker.write_text(json.dumps(spec))
    return root


def read_catalog_dataset(catalog: Catalog, role: Role, report: ValidationReport) -> DatasetTables:
    """Read (and for synthetic datasets, first generate) the dataset playing `role`; an empty one
    where the catalog names none."""
    name = dataset_name(catalog, role)
    if name is None:
        return DatasetTables(role, None, [], empty_manifest(), empty_dense())
    config = catalog.dataset(name)
    if config.kind == "synthetic":
        return _read_synthetic(catalog, role, name, config, report)
    annotations = catalog.resolve(config.annotations)
    kwargs: dict = {"media_root": catalog.resolve(config.media_root), "report": report}
    if config.kind == "custom":
        kwargs.update(dense_path=catalog.resolve(config.dense), classes=config.classes)
    elif config.classes is not None:
        kwargs["classes"] = config.classes
    if config.kind == "unav100":
        kwargs["segment_rule"] = catalog.stages.segment.unav_segment_rule
    manifest, dense = read_dataset(config.kind, annotations, **kwargs)  # type: ignore[arg-type]
    classes = list(config.classes) if config.classes else dataset_classes(config.kind, annotations)  # type: ignore[arg-type]
    return DatasetTables(role, name, classes, manifest.with_columns(dataset=pl.lit(name)), dense)


def _read_synthetic(
    catalog: Catalog, role: Role, name: str, config: DatasetConfig, report: ValidationReport
) -> DatasetTables:
    root = ensure_synthetic(catalog, config)
    assert config.synthetic is not None
    if config.synthetic.mode == "features":
        from uwav.synthetic.features import SyntheticFeatureBenchmark

        benchmark = SyntheticFeatureBenchmark.load(root)
        part = benchmark.target if role == "target" else benchmark.pretrain
        return DatasetTables(role, name, list(part.classes), part.manifest.with_columns(dataset=pl.lit(name)), part.dense)
    folder, media, reader = (
        ("llp_like", "llp_like/videos", "llp") if role == "target" else ("unav_like", "unav_like/videos", "unav100")
    )
    classes = json.loads((root / folder / "classes.json").read_text())
    annotations = root / folder if reader == "llp" else root / folder / "annotations.json"
    kwargs = {"classes": classes} if reader == "llp" else {"segment_rule": catalog.stages.segment.unav_segment_rule}
    manifest, dense = read_dataset(reader, annotations, media_root=root / media, report=report, **kwargs)
    return DatasetTables(role, name, classes, manifest.with_columns(dataset=pl.lit(name)), dense)


PROBE_SHARD_VIDEOS = 256  # media files per fan-out task: header reads are quick


def probe_cache_path(catalog: Catalog) -> Path:
    """Media probe results by (path, size, mtime), shared by runs of the segment stage."""
    return Path(catalog.store("runs")) / "segment" / "probe_cache.parquet"


def pending_probe_shards(catalog: Catalog, shard_videos: int = PROBE_SHARD_VIDEOS) -> list[list[str]]:
    """For fan-out (Dask): the media files of both datasets not probed yet, in shards."""
    from uwav.media.probe import load_probe_cache, unprobed_paths

    paths: list[str] = []
    for role in catalog_roles(catalog):
        manifest = read_catalog_dataset(catalog, role, ValidationReport()).manifest
        paths += manifest["media_path"].drop_nulls().to_list()
    pending = unprobed_paths(paths, load_probe_cache(probe_cache_path(catalog)))
    return [pending[start : start + shard_videos] for start in range(0, len(pending), shard_videos)]


def probe_shard(catalog: Catalog, paths: Sequence[str]) -> list[dict[str, Any]]:
    """One fan-out task: probe results of `paths` (the coordinator caches them)."""
    from uwav.media.probe import probe_paths

    return probe_paths(paths, workers=catalog.stages.segment.workers).to_dicts()


def cache_probe_results(catalog: Catalog, rows: Sequence[dict[str, Any]]) -> None:
    from uwav.media.probe import PROBE_SCHEMA, update_probe_cache

    update_probe_cache(probe_cache_path(catalog), pl.DataFrame(list(rows), schema=PROBE_SCHEMA))


def run(catalog: Catalog, out_dir: Path, progress: bool) -> StageResult:
    from uwav.media.probe import probe_manifest
    from uwav.media.quarantine import QuarantineLog

    report = ValidationReport()
    quarantine = QuarantineLog.load(quarantine_path(catalog))
    previous = state_dir(catalog).record("segment")
    locations: dict[str, Path] = {}
    metrics: dict[str, Any] = {}
    for role in ("target", "pretrain"):
        tables = read_catalog_dataset(catalog, role, report)
        manifest = probe_manifest(
            tables.manifest, quarantine, cache_path=probe_cache_path(catalog), workers=catalog.stages.segment.workers
        )
        tables = type(tables)(tables.role, tables.name, tables.classes, manifest, tables.dense)
        locations.update(write_tables(out_dir, tables))
        metrics[f"{role}_videos"] = dict(manifest.group_by("split").len().sort("split").iter_rows())
        metrics[f"{role}_with_media"] = int(manifest["media_path"].is_not_null().sum())
        if previous is not None and Path(previous.outputs.get(f"{role}_manifest", "")).exists():
            # What scheduled retraining reports as newly arrived since the last segment run.
            known = set(pl.read_parquet(previous.outputs[f"{role}_manifest"], columns=["video_id"])["video_id"])
            added = sorted(set(manifest["video_id"]) - known)
            metrics[f"{role}_new_videos"] = len(added)
            metrics[f"{role}_new_video_ids"] = added[:100]
    report_path = out_dir / "validation_report.parquet"
    report.write(report_path)
    quarantine.write(quarantine_path(catalog))
    metrics["validation_issues"] = len(report)
    metrics["validation_summary"] = report.summary()
    metrics["quarantined"] = len(quarantine.video_ids("segment"))
    return StageResult(SegmentOutputs(**locations, validation_report=report_path), metrics)
