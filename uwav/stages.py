"""The seven stages, one function each, and the runner that skips what is fresh.

```
segment -> features -> pretrain -> calibrate -> pseudo_labels -> train -> evaluate
```
Each stage function takes the catalog and the folder for its outputs and returns a
`StageOutput`; `run_stage` wraps it with the fingerprint check and the completion record
(`uwav.caching`). Fingerprints are computed statically from the catalog (settings, input file
contents, code), so `uwav status` knows what is stale without running anything, and the Prefect
flows (`flows/`) use the same fingerprint as their task cache key.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from uwav.caching import StageRecord, StateDir, code_fingerprint, file_fingerprint, fingerprint, stable_json, text_fingerprint
from uwav.catalog import Catalog, Task
from uwav.contracts import text_embedding_name

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("segment", "features", "pretrain", "calibrate", "pseudo_labels", "train", "evaluate")

# Package-relative sources whose change makes a stage stale: the stage functions themselves
# (this module and the artifact layouts in workspace.py) and the library code each one calls.
_STAGE_MODULES = ("stages.py", "workspace.py", "contracts.py")
STAGE_CODE: dict[str, tuple[str, ...]] = {
    "segment": (*_STAGE_MODULES, "datasets", "media"),
    "features": (*_STAGE_MODULES, "media", "features", "datasets/synth_features.py"),
    "pretrain": (*_STAGE_MODULES, "models/plg.py", "training"),
    "calibrate": (*_STAGE_MODULES, "labels/calibration.py", "training/pretrain.py"),
    "pseudo_labels": (*_STAGE_MODULES, "labels", "training/losses.py", "evaluation/protocol.py"),
    "train": (*_STAGE_MODULES, "models/han.py", "training", "evaluation/protocol.py"),
    "evaluate": (*_STAGE_MODULES, "evaluation", "training/han_train.py", "parsing.py"),
}


class StageError(RuntimeError):
    """A stage that cannot run; the message says which input is missing or wrong."""


@dataclass
class StageOutput:
    """What a stage function returns: named output locations and summary metrics."""

    outputs: dict[str, str]
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageStatus:
    stage: str
    state: Literal["fresh", "stale", "missing"]
    fingerprint: str
    why: str = ""


# ---------------------------------------------------------------- fingerprints


def _dataset_identity(catalog: Catalog, name: str) -> dict[str, Any]:
    """A dataset's config plus the content of its annotations and a listing of its media."""
    config = catalog.dataset(name)
    identity: dict[str, Any] = {"name": name, "config": config.model_dump(mode="json")}
    if config.kind == "synthetic":
        # Generated deterministically from its spec; the pre-training part does not depend on
        # the target part's sizes or layout (ids are drawn for it first), so those stay out of its identity.
        if config.role == "pretrain":
            for key in ("n_train", "n_val", "n_test", "target_layout"):
                identity["config"]["synthetic"].pop(key)
        return identity
    annotations = Path(catalog.resolve(config.annotations) or "")
    identity["annotations"] = file_fingerprint(annotations) if annotations.exists() else "absent"
    if config.dense is not None:
        dense = Path(catalog.resolve(config.dense) or "")
        identity["dense"] = file_fingerprint(dense) if dense.exists() else "absent"
    media_root = catalog.resolve(config.media_root)
    if media_root is not None and Path(media_root).is_dir():
        # Names, sizes and modification times: hashing every video's bytes would take minutes.
        listing = sorted(
            (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(media_root).iterdir() if p.is_file()
        )
        identity["media"] = text_fingerprint(stable_json(listing))
    return identity


# Stages whose fingerprints feed each stage's. Stage 1 deliberately does not depend on
# `features` as a whole: new target videos re-run the (incremental) features stage, not the
# pre-training on the other dataset.
STAGE_UPSTREAM: dict[str, tuple[str, ...]] = {
    "segment": (),
    "features": ("segment",),
    "pretrain": (),
    "calibrate": ("pretrain",),
    "pseudo_labels": ("calibrate",),
    "train": ("pseudo_labels",),
    "evaluate": ("train",),
}


def _features_definition(catalog: Catalog) -> dict[str, Any]:
    """What the stored features are (not which videos): settings that change their values."""
    stages = catalog.stages
    features = stages.features.model_dump(mode="json", exclude={"workers", "device", "batch_size"})
    if stages.features.official_root is not None:
        features["official"] = file_fingerprint(catalog.resolve(stages.features.official_root))  # type: ignore[arg-type]
    return {
        "features": features,
        "encoders": catalog.encoders.model_dump(mode="json"),
        "store": catalog.stores.features,  # as written: a project moved with its stores keeps its cache
        "han_inputs": stages.train.han.inputs,
        "audio_rate": stages.segment.audio_rate,
        "max_side": stages.segment.max_side,
    }


def stage_settings(catalog: Catalog, stage: str) -> dict[str, Any]:
    """The part of the catalog a stage's result depends on, besides its upstream stages."""
    stages = catalog.stages
    if stage == "segment":
        return {
            "target": _dataset_identity(catalog, catalog.target),
            "pretrain": _dataset_identity(catalog, catalog.pretrain),
            "segment": stages.segment.model_dump(mode="json"),
        }
    if stage == "features":
        return _features_definition(catalog)
    if stage == "pretrain":
        return {
            "pretrain": stages.pretrain.model_dump(mode="json", exclude={"device"}),
            "dataset": _dataset_identity(catalog, catalog.pretrain),
            "features": _features_definition(catalog),
        }
    if stage == "calibrate":
        return {"calibrate": stages.calibrate.model_dump(mode="json"), "dataset": _dataset_identity(catalog, catalog.target)}
    if stage == "pseudo_labels":
        return {"store": catalog.stores.pseudo_labels, "dataset": _dataset_identity(catalog, catalog.target)}
    if stage == "train":
        return stages.train.model_dump(mode="json", exclude={"device"})
    if stage == "evaluate":
        return stages.evaluate.model_dump(mode="json")
    raise StageError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")


def compute_fingerprints(catalog: Catalog) -> dict[str, str]:
    """Every stage's fingerprint: its settings, its upstream stages' fingerprints and its code."""
    found: dict[str, str] = {}
    for stage in STAGES:
        upstream = {name: found[name] for name in STAGE_UPSTREAM[stage]}
        found[stage] = fingerprint(stage, stage_settings(catalog, stage), upstream, STAGE_CODE[stage])
    return found


def state_dir(catalog: Catalog) -> StateDir:
    return StateDir(catalog.store("runs"))


def stage_status(catalog: Catalog) -> list[StageStatus]:
    """Each stage as fresh, stale (with the reason) or missing."""
    state = state_dir(catalog)
    fingerprints = compute_fingerprints(catalog)
    statuses: list[StageStatus] = []
    for stage in STAGES:
        record = state.record(stage)
        current = fingerprints[stage]
        if record is None:
            status = StageStatus(stage, "missing", current, "never run")
        elif record.fingerprint == current and _outputs_exist(record):
            status = StageStatus(stage, "fresh", current)
        elif record.fingerprint == current:
            status = StageStatus(stage, "stale", current, "outputs were deleted")
        else:
            status = StageStatus(stage, "stale", current, _why_stale(catalog, stage, record, fingerprints))
        statuses.append(status)
    return statuses


def _why_stale(catalog: Catalog, stage: str, record: StageRecord, fingerprints: dict[str, str]) -> str:
    reasons = [
        f"{name} changed"
        for name in STAGE_UPSTREAM[stage]
        if record.inputs.get(f"upstream.{name}") != fingerprints[name]
    ]
    if record.inputs.get("settings") != text_fingerprint(stable_json(stage_settings(catalog, stage))):
        reasons.append("its settings or input files changed")
    if record.inputs.get("code") != code_fingerprint(tuple(STAGE_CODE[stage])):
        reasons.append("its code changed")
    return "; ".join(reasons) or "fingerprint changed"


def _outputs_exist(record: StageRecord) -> bool:
    return all(Path(location).exists() for location in record.outputs.values() if "://" not in location)


def plan(catalog: Catalog, stages: Iterable[str] | None = None, force: Iterable[str] = ()) -> list[str]:
    """The stages a run executes, in pipeline order, up to the last requested one: those not fresh
    (fingerprints chain, so a changed stage makes everything downstream stale too) and, from the
    first forced stage on, all of them."""
    requested = list(stages) if stages is not None else list(STAGES)
    forced = list(force)
    for name in (*requested, *forced):
        if name not in STAGES:
            raise StageError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    if not requested:
        return []
    last = max(STAGES.index(name) for name in requested)
    first_forced = min((STAGES.index(name) for name in forced), default=len(STAGES))
    statuses = {status.stage: status.state for status in stage_status(catalog)}
    return [
        stage
        for index, stage in enumerate(STAGES[: last + 1])
        if statuses[stage] != "fresh" or index >= first_forced
    ]


# ---------------------------------------------------------------- running


def run_stage(catalog: Catalog, stage: str, *, force: bool = False, progress: bool = True) -> StageRecord:
    """Run one stage unless its fingerprint matches the record (then return the record)."""
    state = state_dir(catalog)
    fingerprints = compute_fingerprints(catalog)
    current = fingerprints[stage]
    record = state.record(stage)
    if record is not None and record.fingerprint == current and _outputs_exist(record) and not force:
        log.info("%s: fresh (%s), skipped", stage, current)
        return record
    index = STAGES.index(stage)
    if index > 0:
        upstream = state.record(STAGES[index - 1])
        if upstream is None or upstream.fingerprint != fingerprints[STAGES[index - 1]]:
            raise StageError(f"{stage}: upstream stage {STAGES[index - 1]} is not fresh; run it first (uwav run)")
    out_dir = state.stage_dir(stage, current)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log.info("%s: running (%s)", stage, current)
    output = STAGE_FUNCTIONS[stage](catalog, out_dir, progress)
    record = StageRecord(
        stage=stage,
        fingerprint=current,
        outputs=output.outputs,
        metrics=output.metrics,
        inputs={
            **{f"upstream.{name}": fingerprints[name] for name in STAGE_UPSTREAM[stage]},
            "settings": text_fingerprint(stable_json(stage_settings(catalog, stage))),
            "code": code_fingerprint(tuple(STAGE_CODE[stage])),
        },
        seconds=time.perf_counter() - started,
    )
    (out_dir / "result.json").write_text(json.dumps(record.__dict__, indent=2, default=str))
    state.write(record)
    return record


def run_pipeline(
    catalog: Catalog,
    stages: Sequence[str] | None = None,
    force: Sequence[str] = (),
    *,
    progress: bool = True,
    on_stage: Callable[[StageRecord], None] | None = None,
) -> list[StageRecord]:
    """Run the planned stages in order under the catalog's run lock; fresh stages are skipped."""
    first_forced = min((STAGES.index(name) for name in force if name in STAGES), default=len(STAGES))
    with state_dir(catalog).lock():
        records = []
        for stage in plan(catalog, stages, force):
            record = run_stage(catalog, stage, force=STAGES.index(stage) >= first_forced, progress=progress)
            records.append(record)
            if on_stage is not None:
                on_stage(record)
        return records


STAGE_FUNCTIONS: dict[str, Callable[[Catalog, Path, bool], StageOutput]] = {}




# ---------------------------------------------------------------- the stages


def _record(catalog: Catalog, stage: str) -> StageRecord:
    record = state_dir(catalog).record(stage)
    if record is None:
        raise StageError(f"stage {stage} has not run for this catalog; run `uwav run --stages {stage}` first")
    return record


def _quarantine_path(catalog: Catalog) -> Path:
    """One quarantine table per catalog, across stages and runs (rows say the stage)."""
    return Path(catalog.store("runs")) / "quarantine.parquet"


PROBE_SHARD_VIDEOS = 256  # media files per fan-out task: header reads are quick


def probe_cache_path(catalog: Catalog) -> Path:
    """Media probe results by (path, size, mtime), shared by runs of the segment stage."""
    return Path(catalog.store("runs")) / "segment" / "probe_cache.parquet"


def pending_probe_shards(catalog: Catalog, shard_videos: int = PROBE_SHARD_VIDEOS) -> list[list[str]]:
    """For fan-out (Dask): the media files of both datasets not probed yet, in shards."""
    from uwav.datasets import ValidationReport
    from uwav.media.probe import load_probe_cache, unprobed_paths
    from uwav.workspace import read_catalog_dataset

    paths: list[str] = []
    for role in ("target", "pretrain"):
        manifest = read_catalog_dataset(catalog, role, ValidationReport()).manifest
        paths += manifest["media_path"].drop_nulls().to_list()
    pending = unprobed_paths(paths, load_probe_cache(probe_cache_path(catalog)))
    return [pending[start : start + shard_videos] for start in range(0, len(pending), shard_videos)]


def probe_shard(catalog: Catalog, paths: Sequence[str]) -> Any:
    """One fan-out task of the segment stage: probe results of `paths` (the coordinator caches them)."""
    from uwav.media.probe import probe_paths

    return probe_paths(paths, workers=catalog.stages.segment.workers).to_dicts()


def cache_probe_results(catalog: Catalog, rows: Sequence[dict[str, Any]]) -> None:
    import polars as pl

    from uwav.media.probe import PROBE_SCHEMA, update_probe_cache

    update_probe_cache(probe_cache_path(catalog), pl.DataFrame(list(rows), schema=PROBE_SCHEMA))


def segment(catalog: Catalog, out_dir: Path, progress: bool) -> StageOutput:
    """Read both datasets (generating synthetic ones), validate every row, probe every video's
    media and write the manifests the later stages use. Bad rows go to the validation report,
    unusable media to the quarantine table; neither stops the run."""
    import polars as pl

    from uwav.datasets import ValidationReport
    from uwav.media.probe import probe_manifest
    from uwav.media.quarantine import QuarantineLog
    from uwav.workspace import read_catalog_dataset, write_tables

    report = ValidationReport()
    quarantine = QuarantineLog.load(_quarantine_path(catalog))
    previous = state_dir(catalog).record("segment")
    outputs: dict[str, str] = {}
    metrics: dict[str, Any] = {}
    for role in ("target", "pretrain"):
        tables = read_catalog_dataset(catalog, role, report)
        manifest = probe_manifest(
            tables.manifest, quarantine, cache_path=probe_cache_path(catalog), workers=catalog.stages.segment.workers
        )
        tables = type(tables)(tables.role, tables.name, tables.classes, manifest, tables.dense)
        outputs.update(write_tables(out_dir, tables))
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
    quarantine.write(_quarantine_path(catalog))
    outputs["validation_report"] = str(report_path)
    metrics["validation_issues"] = len(report)
    metrics["validation_summary"] = report.summary()
    metrics["quarantined"] = len(quarantine.video_ids("segment"))
    return StageOutput(outputs, metrics)


# Which store features feed the HAN (audio, 2-D visual, 3-D visual) for each `han.inputs` choice.
HAN_INPUT_FEATURES: dict[str, tuple[str, str, str]] = {
    "clip_clap": ("clap", "clip", "r2plus1d"),
    "official": ("vggish", "resnet152_mean", "r2plus1d"),
}
PLG_FEATURES: tuple[str, str] = ("clip", "clap")  # (visual, audio) inputs of the generator


def _open_store(catalog: Catalog, dtype: str | None = None):  # noqa: ANN202 - FeatureStore, imported lazily
    from uwav.features.store import FeatureStore

    return FeatureStore(catalog.store("features"), dtype=dtype)  # type: ignore[arg-type]


FEATURE_SHARD_VIDEOS = 32  # videos per fan-out task: enough to fill encoder batches, small enough to spread


def _encoded_features(catalog: Catalog) -> set[str]:
    """The features the encoders compute (the official source brings the HAN's own)."""
    settings = catalog.stages.features
    han_inputs = HAN_INPUT_FEATURES[catalog.stages.train.han.inputs]
    return {*PLG_FEATURES, *(() if settings.source == "official" else han_inputs)}


def _both_manifests(catalog: Catalog) -> Any:
    import polars as pl

    from uwav.workspace import load_tables

    segment_outputs = _record(catalog, "segment").outputs
    target, pretrain = load_tables(segment_outputs, "target"), load_tables(segment_outputs, "pretrain")
    clash = set(target.manifest["video_id"]) & set(pretrain.manifest["video_id"])
    if clash:
        raise StageError(f"features: video ids in both datasets would share store entries: {sorted(clash)[:5]}")
    return target, pretrain, pl.concat([target.manifest, pretrain.manifest])


def pending_feature_shards(catalog: Catalog, shard_videos: int = FEATURE_SHARD_VIDEOS) -> list[list[str]]:
    """For fan-out (Dask): register every video in the store (the single coordinator's job) and
    return shards of the videos whose features are still missing. Empty unless the encoders run."""
    import polars as pl

    from uwav.features.encoders import build_encoders

    settings = catalog.stages.features
    if settings.source == "synthetic":
        return []
    _, _, manifest = _both_manifests(catalog)
    usable = manifest.filter(pl.col("media_path").is_not_null())
    encoders = build_encoders(catalog.encoders, "cpu", features=_encoded_features(catalog), base_dir=catalog.base_dir)
    store = _open_store(catalog, settings.dtype)
    store.allocate(
        usable["video_id"].to_list(), usable["n_segments"].to_list(), encoders.feature_shapes(),
        encoder_identities={encoder.feature: encoder.identity for encoder in encoders.active()},
    )
    complete = store.completed([encoder.feature for encoder in encoders.active()])
    pending = [video_id for video_id in usable["video_id"].to_list() if video_id not in complete]
    return [pending[start : start + shard_videos] for start in range(0, len(pending), shard_videos)]


def compute_feature_shard(catalog: Catalog, video_ids: Sequence[str]) -> list[dict[str, Any]]:
    """One fan-out task: the features of `video_ids` into the store; returns their quarantine rows
    (the coordinator merges them, so workers never write the shared quarantine table)."""
    import polars as pl

    from uwav.features.encoders import build_encoders
    from uwav.features.extract import extract_features
    from uwav.media.quarantine import QuarantineLog

    settings = catalog.stages.features
    _, _, manifest = _both_manifests(catalog)
    shard = manifest.filter(pl.col("video_id").is_in(list(video_ids)))
    encoders = build_encoders(catalog.encoders, settings.device, features=_encoded_features(catalog), base_dir=catalog.base_dir)
    quarantine = QuarantineLog()
    extract_features(shard, _open_store(catalog, settings.dtype), encoders, settings, quarantine,
                     max_side=catalog.stages.segment.max_side, progress=False)
    return quarantine.to_frame().to_dicts()


def merge_quarantine(catalog: Catalog, rows: Sequence[dict[str, Any]]) -> None:
    """Add fan-out tasks' quarantine rows to the catalog's quarantine table."""
    from uwav.media.quarantine import QuarantineLog

    log = QuarantineLog.load(_quarantine_path(catalog))
    for row in rows:
        log.record(row["video_id"], row["path"], row["stage"], row["reason"])
    log.write(_quarantine_path(catalog))


def features(catalog: Catalog, out_dir: Path, progress: bool) -> StageOutput:
    """Fill the feature store for every video of both datasets (only the videos it lacks) and the
    class text embeddings of both class lists. After a fan-out (`pending_feature_shards` +
    `compute_feature_shard` on a cluster) this only finds the work done and writes the rest."""
    from uwav.media.quarantine import QuarantineLog

    settings = catalog.stages.features
    target, pretrain, _ = _both_manifests(catalog)
    store = _open_store(catalog, settings.dtype)
    metrics: dict[str, Any] = {}
    if settings.source == "synthetic":
        from uwav.datasets.synth_features import import_into_store

        metrics.update(import_into_store(Path(catalog.resolve(catalog.dataset(target.name).annotations) or ""), store))
    else:
        from uwav.features.encoders import build_encoders
        from uwav.features.extract import compute_text_embeddings, extract_features

        encoders = build_encoders(catalog.encoders, settings.device, features=_encoded_features(catalog), base_dir=catalog.base_dir)
        quarantine = QuarantineLog.load(_quarantine_path(catalog))
        try:
            for tables in (target, pretrain):
                summary = extract_features(
                    tables.manifest, store, encoders, settings, quarantine,
                    max_side=catalog.stages.segment.max_side, progress=progress,
                )
                metrics[f"{tables.role}_extraction"] = {
                    "videos": summary.n_videos,
                    "already_complete": summary.n_already_complete,
                    "computed": len(summary.computed),
                    "quarantined": len(summary.quarantined),
                    "missing_audio": len(summary.missing_audio),
                    "segments_per_s": round(summary.segments_per_s, 1),
                }
        finally:
            quarantine.write(_quarantine_path(catalog))
        for tables in (target, pretrain):
            compute_text_embeddings(store, encoders, tables.classes, settings, role=tables.role)
        if settings.source == "official":
            from uwav.features.official import import_official_llp

            if settings.official_root is None:
                raise StageError("features: source 'official' needs stages.features.official_root in the catalog")
            report = import_official_llp(store, Path(catalog.resolve(settings.official_root) or ""), target.manifest["video_id"].to_list())
            report_path = out_dir / "official_import_problems.parquet"
            report.problems.write_parquet(report_path)
            metrics["official_import"] = report.summary()
    return StageOutput({"store": store.url, "quarantine": str(_quarantine_path(catalog))}, metrics)


@dataclass(frozen=True)
class _SplitArrays:
    """Store features of the usable videos of a manifest subset, in manifest order."""

    video_ids: list[str]
    features: dict[str, Any]  # name -> float32 (N, T, ...) zero padded
    lengths: Any  # (N,) int
    excluded: int  # videos without every feature


def _load_split(store: Any, manifest: Any, names: Sequence[str]) -> _SplitArrays:
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
    return _SplitArrays(ids, arrays, lengths, len(candidates) - len(ids))


def _text_embeddings(store: Any, role: str) -> tuple[Any, Any]:
    """(visual, audio) class text embeddings of a dataset role, as the features stage stored them."""
    found = []
    for feature in PLG_FEATURES:
        name = text_embedding_name(feature, role)
        embeddings = store.read_text_embeddings(name)
        if embeddings is None:
            raise StageError(f"feature store {store.url}: no text embeddings {name!r}; rerun the features stage")
        found.append(embeddings)
    return found[0], found[1]


def pretrain(catalog: Catalog, out_dir: Path, progress: bool) -> StageOutput:
    """Stage 1: train the temporal pseudo-label generator on the pre-training set's train split."""
    from uwav.training.data import PretrainData
    from uwav.training.pretrain import pretrain_plg
    from uwav.workspace import load_tables, segment_label_matrix

    tables = load_tables(_record(catalog, "segment").outputs, "pretrain")
    store = _open_store(catalog)
    split = _load_split(store, tables.split("train"), PLG_FEATURES)
    if not split.video_ids:
        raise StageError(f"pretrain: no training video of dataset {tables.name!r} has CLIP and CLAP features")
    visual, audio = split.features["clip"], split.features["clap"]
    labels = segment_label_matrix(tables, split.video_ids, visual.shape[1])
    visual_text, audio_text = _text_embeddings(store, "pretrain")
    data = PretrainData.from_arrays(visual, audio, split.lengths, labels, visual_text, audio_text)
    result = pretrain_plg(data, catalog.stages.pretrain, out_dir, progress=progress)
    (out_dir / "history.json").write_text(json.dumps(result.history, indent=1))
    return StageOutput(
        {"checkpoint": str(result.checkpoint), "history": str(out_dir / "history.json")},
        {
            "videos": len(split.video_ids),
            "excluded_videos": split.excluded,
            "epochs": len(result.history),
            "final_loss": result.history[-1]["loss"] if result.history else None,
        },
    )


def _plg_logits(catalog: Catalog, store: Any, manifest: Any) -> tuple[_SplitArrays, dict[str, Any]]:
    """The trained generator's (N, T, C) logits per modality on the target videos of `manifest`."""
    from uwav.training.pretrain import load_plg, predict_plg

    model = load_plg(Path(_record(catalog, "pretrain").outputs["checkpoint"]), catalog.stages.pseudo_labels.device)
    split = _load_split(store, manifest, PLG_FEATURES)
    visual_text, audio_text = _text_embeddings(store, "target")
    visual_logits, audio_logits = predict_plg(
        model, split.features["clip"], split.features["clap"], split.lengths, visual_text, audio_text,
        batch_size=catalog.stages.pseudo_labels.batch_size, precision=catalog.stages.pretrain.precision,
    )
    return split, {"visual": visual_logits, "audio": audio_logits}


def calibrate(catalog: Catalog, out_dir: Path, progress: bool) -> StageOutput:
    """Class-wise thresholds on the calibration split (never test): best segment F1, or the quantile fallback."""
    import numpy as np

    from uwav.labels import calibrate_thresholds
    from uwav.workspace import dense_truth, load_tables, weak_label_matrix

    settings = catalog.stages.calibrate
    tables = load_tables(_record(catalog, "segment").outputs, "target")
    store = _open_store(catalog)
    manifest = tables.split(settings.split)
    split, logits = _plg_logits(catalog, store, manifest)
    if not split.video_ids:
        raise StageError(f"calibrate: no {settings.split} video of {tables.name!r} has CLIP and CLAP features")
    n_segments = logits["visual"].shape[1]
    valid = np.arange(n_segments)[None, :] < split.lengths[:, None]
    truth = dense_truth(tables, split.video_ids, n_segments) if settings.method == "f1" else None
    if truth is not None:
        truth = {m: truth[m].transpose(0, 2, 1) for m in truth}  # calibration works on (N, T, C)
    method = settings.method if truth is not None else "quantile"
    if method != settings.method:
        log.warning("calibrate: split %s of %s has no dense labels; using the quantile rule", settings.split, tables.name)
    video_labels = weak_label_matrix(manifest.filter(manifest["video_id"].is_in(split.video_ids)), tables.classes)
    thresholds = calibrate_thresholds(
        {m: np.nan_to_num(logits[m], nan=0.0) for m in logits}, video_labels, valid, tables.classes,
        dense_truth=truth, method=method, quantile=settings.quantile,
        source={"split": settings.split, "method": method, "plg": _record(catalog, "pretrain").fingerprint},
    )
    path = out_dir / "thresholds.json"
    thresholds.save(path)
    scored = [d.f1 for d in thresholds.details if d.f1 is not None]
    return StageOutput(
        {"thresholds": str(path)},
        {"method": method, "videos": len(split.video_ids), "mean_best_f1": float(np.mean(scored)) if scored else None,
         "threshold_set_id": thresholds.set_id},
    )


PSEUDO_LABEL_SHARD_VIDEOS = 2048


def pseudo_labels(catalog: Catalog, out_dir: Path, progress: bool) -> StageOutput:
    """Binary and uncertainty-weighted pseudo-labels (eq. 10, 12) for every target video, in Parquet
    shards (resumable per shard), and their quality with the LLP protocol where dense labels exist."""
    import numpy as np
    import polars as pl
    import torch

    from uwav.evaluation import pseudo_label_quality
    from uwav.labels import ThresholdSet, completed_shards, iter_shards, read_pseudo_labels, write_shard
    from uwav.labels.pseudo_labels import shard_name
    from uwav.training.losses import binary_pseudo_labels, soft_pseudo_labels
    from uwav.workspace import dense_truth, load_tables, weak_label_matrix

    tables = load_tables(_record(catalog, "segment").outputs, "target")
    thresholds = ThresholdSet.load(Path(_record(catalog, "calibrate").outputs["thresholds"]))
    if thresholds.classes != tables.classes:
        raise StageError("pseudo_labels: the threshold set's classes differ from the target dataset's")
    store = _open_store(catalog)
    folder = Path(catalog.store("pseudo_labels")) / out_dir.name
    manifest = tables.manifest.sort("video_id")
    done = completed_shards(folder)
    written = 0
    for index, rows in iter_shards(manifest.height, PSEUDO_LABEL_SHARD_VIDEOS):
        if shard_name(index) in done:
            continue
        split, logits = _plg_logits(catalog, store, manifest[rows])
        if not split.video_ids:
            continue
        shard = manifest[rows].filter(pl.col("video_id").is_in(split.video_ids))
        video_labels = torch.from_numpy(weak_label_matrix(shard, tables.classes))
        columns: dict[str, np.ndarray] = {}
        for modality in ("audio", "visual"):
            z = torch.from_numpy(np.nan_to_num(logits[modality], nan=-1e4))
            theta = torch.from_numpy(thresholds.thresholds[modality]).float()
            columns[f"{modality}_logit"] = logits[modality]
            columns[f"{modality}_soft"] = soft_pseudo_labels(z, theta, video_labels).numpy()
            columns[f"{modality}_hard"] = binary_pseudo_labels(z, theta, video_labels).numpy()
        write_shard(folder, index, split.video_ids, split.lengths, columns, thresholds.set_id)
        written += 1
    quality: dict[str, dict[str, float]] = {}
    for split_name in ("val", "test"):
        ids = tables.split(split_name)["video_id"].to_list()
        labelled = set(tables.dense["video_id"])
        ids = [video_id for video_id in ids if video_id in labelled]
        if not ids:
            continue
        loaded = read_pseudo_labels(folder, _available_ids(folder, ids))
        truth = dense_truth(tables, loaded.video_ids, loaded.valid.shape[1])
        assert truth is not None
        hard = {m: loaded.arrays[f"{m}_hard"].astype(bool).transpose(0, 2, 1) for m in ("audio", "visual")}
        quality[split_name] = pseudo_label_quality(hard["audio"], hard["visual"], truth["audio"], truth["visual"])
    (out_dir / "quality.json").write_text(json.dumps(quality, indent=1))
    return StageOutput(
        {"pseudo_labels": str(folder), "quality": str(out_dir / "quality.json")},
        {"shards_written": written, "threshold_set_id": thresholds.set_id, "quality": quality},
    )


def _available_ids(folder: Path, video_ids: list[str]) -> list[str]:
    """The subset of `video_ids` that has pseudo-label rows (videos without features have none)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    present = set(pc.unique(pq.read_table(folder, columns=["video_id"])["video_id"]).to_pylist())
    return [video_id for video_id in video_ids if video_id in present]


def _han_features(catalog: Catalog, store: Any, manifest: Any) -> tuple[_SplitArrays, Any]:
    """HAN inputs of the usable videos of `manifest` per the catalog's `han.inputs`."""
    from uwav.training.data import HanFeatures

    names = HAN_INPUT_FEATURES[catalog.stages.train.han.inputs]
    split = _load_split(store, manifest, names)
    audio, visual2d, visual3d = (split.features[name] for name in names)
    return split, HanFeatures.from_arrays(audio, visual2d, visual3d, split.lengths)


def _labelled_split(catalog: Catalog, store: Any, tables: Any, split_name: str) -> tuple[_SplitArrays, Any]:
    """Features and dense ground truth of a split's videos that have dense labels."""
    import polars as pl

    from uwav.training.data import LabelledSplit
    from uwav.workspace import dense_truth

    labelled = tables.split(split_name).filter(pl.col("video_id").is_in(tables.dense["video_id"].implode()))
    split, features = _han_features(catalog, store, labelled)
    if not split.video_ids:
        raise StageError(f"no {split_name} video of {tables.name!r} has dense labels and HAN features")
    truth = dense_truth(tables, split.video_ids, features.n_segments)
    assert truth is not None
    return split, LabelledSplit.from_arrays(features, truth["audio"], truth["visual"])


def _task(catalog: Catalog) -> Task:
    return catalog.dataset(catalog.target).task


@dataclass(frozen=True)
class _HanInputs:
    data: Any  # HanTrainData
    tables: Any  # DatasetTables of the target
    train_videos: int
    excluded_train_videos: int
    val_videos: int


def _han_train_data(catalog: Catalog) -> _HanInputs:
    """Training features, weak labels and pseudo-labels, and the validation split, from the stores."""
    import numpy as np

    from uwav.labels import read_pseudo_labels
    from uwav.training.data import HanTrainData
    from uwav.workspace import load_tables, weak_label_matrix

    tables = load_tables(_record(catalog, "segment").outputs, "target")
    store = _open_store(catalog)
    folder = Path(_record(catalog, "pseudo_labels").outputs["pseudo_labels"])
    train_manifest = tables.split("train")
    train_split, train_features = _han_features(catalog, store, train_manifest)
    ids = _available_ids(folder, train_split.video_ids)
    if len(ids) != len(train_split.video_ids):
        raise StageError(f"train: {len(train_split.video_ids) - len(ids)} training videos have features but no pseudo-labels")
    labels = read_pseudo_labels(folder, ids)
    stacked = {
        kind: np.stack([labels.arrays[f"audio_{kind}"], labels.arrays[f"visual_{kind}"]], axis=2).astype(np.float32)
        for kind in ("soft", "hard")
    }
    weak = weak_label_matrix(train_manifest.filter(train_manifest["video_id"].is_in(ids)), tables.classes)
    val_split, val = _labelled_split(catalog, store, tables, "val")
    data = HanTrainData.from_arrays(train_features, weak, stacked["soft"], stacked["hard"], val)
    return _HanInputs(data, tables, len(ids), train_split.excluded, len(val_split.video_ids))


def _train_settings(catalog: Catalog) -> Any:
    from uwav.training.han_train import ave_settings

    return catalog.stages.train if _task(catalog) == "llp" else ave_settings(catalog.stages.train)


def train(catalog: Catalog, out_dir: Path, progress: bool) -> StageOutput:
    """Stage 2: the HAN on the pseudo-labels with the UWAV losses; best checkpoint by validation."""
    from uwav.training.han_train import train_han

    inputs = _han_train_data(catalog)
    result = train_han(inputs.data, _train_settings(catalog), out_dir, task=_task(catalog), progress=progress)
    (out_dir / "history.json").write_text(json.dumps(result.history, indent=1))
    return StageOutput(
        {"best_checkpoint": str(result.best_checkpoint), "history": str(out_dir / "history.json")},
        {"train_videos": inputs.train_videos, "val_videos": inputs.val_videos,
         "excluded_train_videos": inputs.excluded_train_videos,
         "best_epoch": result.best_epoch, "best_val_score": result.best_score},
    )


def run_ablation_grid(catalog: Catalog, *, progress: bool = True) -> Any:
    """The paper's Table-4 grid (HAN baseline, binary, soft, soft+reweight, soft+mixup, all) on the
    catalog's pseudo-labels, each scored on the evaluation split; resumable per variant. Needs
    the pipeline up to `pseudo_labels` (run it first)."""
    from uwav.training.han_train import run_ablation

    inputs = _han_train_data(catalog)
    _, test = _labelled_split(catalog, _open_store(catalog), inputs.tables, catalog.stages.evaluate.split)
    run_dir = state_dir(catalog).stage_dir("ablation", compute_fingerprints(catalog)["train"])
    table = run_ablation(
        inputs.data, _train_settings(catalog), run_dir, test=test, task=_task(catalog), progress=progress
    )
    table.write_parquet(run_dir / "ablation.parquet")
    return table


def evaluate(catalog: Catalog, out_dir: Path, progress: bool) -> StageOutput:
    """The trained HAN on the evaluation split with the LLP protocol (and AVE accuracy for AVE)."""
    from uwav.evaluation import ave_accuracy, avvp_scores
    from uwav.training.han_train import ave_predictions, ave_targets, llp_decisions, load_han, predict_han
    from uwav.workspace import load_tables

    settings = catalog.stages.evaluate
    tables = load_tables(_record(catalog, "segment").outputs, "target")
    store = _open_store(catalog)
    train_record = _record(catalog, "train")
    model = load_han(Path(train_record.outputs["best_checkpoint"]), catalog.stages.train.device)
    split, labelled = _labelled_split(catalog, store, tables, settings.split)
    segment_prob, video_prob = predict_han(model, labelled.features, precision=catalog.stages.train.precision)
    pred_audio, pred_visual = llp_decisions(segment_prob, video_prob, settings.threshold)
    scores = avvp_scores(pred_audio, pred_visual, labelled.gt_audio, labelled.gt_visual)
    if _task(catalog) == "ave":
        scores["ave_accuracy"] = ave_accuracy(
            ave_predictions(segment_prob, video_prob, settings.threshold), ave_targets(labelled.gt_audio, labelled.gt_visual)
        )
    metrics_path = out_dir / "metrics.json"
    metrics_path.write_text(json.dumps(scores, indent=1))
    predictions_path = out_dir / "predictions.npz"
    import numpy as np

    np.savez_compressed(
        predictions_path, video_ids=np.asarray(split.video_ids), segment_prob=segment_prob, video_prob=video_prob
    )
    outputs = {"metrics": str(metrics_path), "predictions": str(predictions_path)}
    outputs["report"] = str(_write_report(catalog, out_dir, tables, split.video_ids, scores, pred_audio, pred_visual, labelled, segment_prob))
    outputs["timelines"] = str(out_dir / "timelines")
    return StageOutput(outputs, {"scores": scores, "videos": len(split.video_ids), "excluded_videos": split.excluded})


STAGE_FUNCTIONS.update(
    segment=segment,
    features=features,
    pretrain=pretrain,
    calibrate=calibrate,
    pseudo_labels=pseudo_labels,
    train=train,
    evaluate=evaluate,
)


# ---------------------------------------------------------------- the current model


def current_model_path(catalog: Catalog) -> Path:
    return Path(catalog.store("runs")) / "current_model.json"


def current_model(catalog: Catalog) -> dict[str, Any] | None:
    """The model `uwav parse` uses: the train stage's record that was last promoted."""
    path = current_model_path(catalog)
    return json.loads(path.read_text()) if path.exists() else None


def promote_model(catalog: Catalog, *, only_if_better: bool) -> tuple[bool, str]:
    """Make the latest trained model current. With `only_if_better` (scheduled retraining), keep
    the previous one when the new model's validation score is lower; the message says which."""
    record = _record(catalog, "train")
    new_score = float(record.metrics["best_val_score"])
    previous = current_model(catalog)
    if previous is not None and previous["fingerprint"] == record.fingerprint:
        return True, f"model {record.fingerprint} is already current (validation {new_score:.2f})"
    if only_if_better and previous is not None and new_score < float(previous["val_score"]):
        return False, (
            f"kept the previous model {previous['fingerprint']} (validation {float(previous['val_score']):.2f}); "
            f"the new model {record.fingerprint} scored {new_score:.2f}"
        )
    entry = {
        "fingerprint": record.fingerprint,
        "checkpoint": record.outputs["best_checkpoint"],
        "val_score": new_score,
        "promoted_at": time.time(),
        "catalog": str(catalog.base_dir),
    }
    path = current_model_path(catalog)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(entry, indent=1))
    tmp.replace(path)
    before = f" (previous {float(previous['val_score']):.2f})" if previous else ""
    return True, f"model {record.fingerprint} is now current: validation {new_score:.2f}{before}"


def _write_report(
    catalog: Catalog,
    out_dir: Path,
    tables: Any,
    video_ids: list[str],
    scores: dict[str, float],
    pred_audio: Any,
    pred_visual: Any,
    labelled: Any,
    segment_prob: Any,
) -> Path:
    """report.html: metrics, pseudo-label quality, training curves and per-video timelines."""
    from uwav.evaluation.plots import write_bytes_atomic
    from uwav.evaluation.report import report_timelines, write_html_report
    from uwav.parsing import timeline_file_name

    train_record = _record(catalog, "train")
    history = json.loads(Path(train_record.outputs["history"]).read_text())
    quality = json.loads(Path(_record(catalog, "pseudo_labels").outputs["quality"]).read_text())
    probs = segment_prob.transpose(0, 3, 1, 2)  # (N, C, T, modality)
    timelines = report_timelines(
        video_ids, tables.classes, pred_audio, pred_visual, labelled.gt_audio, labelled.gt_visual,
        probs[..., 0], probs[..., 1],
    )
    timeline_dir = out_dir / "timelines"
    timeline_dir.mkdir(exist_ok=True)
    for video_id, png in timelines:
        write_bytes_atomic(timeline_dir / timeline_file_name(video_id), png)
    return write_html_report(
        out_dir / "report.html",
        title=f"uwav: {tables.name} ({catalog.stages.evaluate.split} split)",
        scores=scores,
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


# ---------------------------------------------------------------- parsing new videos


def parse_media(catalog: Catalog, paths: Sequence[Path], out_dir: Path, *, progress: bool = True) -> Any:
    """`uwav parse`: the current model's per-segment audio / visual / audio-visual events of new
    videos (JSON, Parquet and a timeline PNG each). Features are computed in memory with the
    catalog's encoders; nothing is written to the feature store."""
    import uuid

    import polars as pl

    from uwav.contracts import n_segments_for_duration, validate_manifest
    from uwav.features.encoders import build_encoders
    from uwav.features.extract import extract_features
    from uwav.features.store import FeatureStore
    from uwav.media.decode import MediaError, probe_duration
    from uwav.media.quarantine import QuarantineLog
    from uwav.parsing import write_parse_outputs
    from uwav.training.han_train import load_han, predict_han
    from uwav.workspace import load_tables

    if catalog.stages.train.han.inputs != "clip_clap":
        raise StageError("uwav parse needs han.inputs: clip_clap (the official LLP features cannot be computed for new videos)")
    model_info = current_model(catalog)
    checkpoint = model_info["checkpoint"] if model_info else _record(catalog, "train").outputs["best_checkpoint"]
    classes = load_tables(_record(catalog, "segment").outputs, "target").classes
    rows, problems = [], []
    for path in paths:
        try:
            duration = probe_duration(str(path))
        except MediaError as error:
            problems.append(f"{path}: {error.reason}")
            continue
        rows.append({
            "video_id": Path(path).stem, "dataset": "parse", "split": "test", "media_path": str(Path(path).resolve()),
            "duration_s": duration, "n_segments": n_segments_for_duration(duration), "labels": [],
        })
    if not rows:
        raise StageError("uwav parse: no usable video; " + "; ".join(problems))
    manifest = validate_manifest(pl.DataFrame(rows))
    settings = catalog.stages.features
    store = FeatureStore(f"memory://uwav-parse-{uuid.uuid4().hex}", dtype="float32")
    encoders = build_encoders(catalog.encoders, settings.device, features=HAN_INPUT_FEATURES["clip_clap"], base_dir=catalog.base_dir)
    quarantine = QuarantineLog()
    extract_features(manifest, store, encoders, settings, quarantine, max_side=catalog.stages.segment.max_side, progress=progress)
    split, han_features = _han_features(catalog, store, manifest)
    if not split.video_ids:
        raise StageError("uwav parse: no video could be decoded; " + "; ".join(problems + [str(r) for r in quarantine.to_frame().rows()]))
    model = load_han(Path(checkpoint), catalog.stages.train.device)
    segment_prob, video_prob = predict_han(model, han_features, precision=catalog.stages.train.precision)
    durations = manifest.filter(pl.col("video_id").is_in(split.video_ids))["duration_s"].to_list()
    return write_parse_outputs(
        out_dir, split.video_ids, classes, segment_prob, video_prob, catalog.stages.evaluate.threshold, durations_s=durations
    )
