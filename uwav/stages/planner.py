"""Which stages are fresh, what a run executes, and the records stages leave. Imports no torch.

```
segment -> features -> pretrain -> calibrate -> pseudo_labels -> train -> evaluate
```
With released pseudo-labels (`stages.pseudo_labels.source: released`) the pipeline is
`segment -> features -> pseudo_labels -> train -> evaluate`: pretrain and calibrate are unused
(`pipeline_stages`; `uwav status` says so) and pseudo_labels follows the features.
A stage's fingerprint hashes the catalog settings its result depends on, the fingerprints of its
upstream stages, and the source of the code it runs: its own module `uwav/stages/<stage>.py`
and every uwav module that module imports, transitively (`stage_code_files`). Fingerprints are
computed statically from the catalog, so `uwav status` knows what is stale without running
anything, and the Prefect flows (`flows/`) use the same fingerprint as their task cache key.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from uwav.caching import (
    PACKAGE_ROOT,
    StageRecord,
    StateDir,
    code_files,
    code_fingerprint,
    file_fingerprint,
    stable_json,
    text_fingerprint,
)
from uwav.catalog import Catalog
from uwav.contracts import StageOutputs
from uwav.errors import MissingInputError, StageError
from uwav.features.configs import shipped_model_config
from uwav.features.released import RELEASED_LABEL_FOLDERS

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("segment", "features", "pretrain", "calibrate", "pseudo_labels", "train", "evaluate")

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

# The stages that only the generated pseudo-labels need.
GENERATOR_STAGES: tuple[str, ...] = ("pretrain", "calibrate")


def pipeline_stages(catalog: Catalog) -> tuple[str, ...]:
    """The stages this catalog's pipeline runs, in order: all of them, or without the generator's
    stages where the pseudo-labels are VALOR's released ones."""
    if catalog.stages.pseudo_labels.source == "released":
        return tuple(stage for stage in STAGES if stage not in GENERATOR_STAGES)
    return STAGES


def stage_upstream(catalog: Catalog, stage: str) -> tuple[str, ...]:
    """The stages whose fingerprints feed `stage`'s for this catalog (`STAGE_UPSTREAM`; released
    pseudo-labels follow the features, which the train stage then reads through them)."""
    if stage == "pseudo_labels" and catalog.stages.pseudo_labels.source == "released":
        return ("features",)
    return STAGE_UPSTREAM[check_stage(stage)]


def _check_used(catalog: Catalog, stage: str) -> str:
    if check_stage(stage) not in pipeline_stages(catalog):
        raise StageError(
            f"stage {stage} is not part of this catalog's pipeline: the pseudo-labels are released ones "
            "(stages.pseudo_labels.source: released); set source: generate to run the generator's stages"
        )
    return stage




@dataclass(frozen=True)
class StageResult:
    """What a stage function returns: its typed outputs and summary metrics."""

    outputs: StageOutputs
    metrics: dict[str, Any]


@dataclass(frozen=True)
class StageStatus:
    stage: str
    state: Literal["fresh", "stale", "missing", "unused"]  # unused: not in `pipeline_stages`
    fingerprint: str
    why: str = ""


def check_stage(stage: str) -> str:
    """`stage` if it names a stage, else a StageError listing the stages."""
    if stage not in STAGES:
        raise StageError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    return stage


# ---------------------------------------------------------------- the code a stage runs


def stage_code_files(stage: str, root: Path = PACKAGE_ROOT) -> tuple[str, ...]:
    """Package-relative files of the code `stage` runs (`uwav.caching.code_files` of its module)."""
    return code_files(f"stages/{check_stage(stage)}.py", root)


def stage_code_fingerprint(stage: str, root: Path = PACKAGE_ROOT) -> str:
    return code_fingerprint(f"stages/{check_stage(stage)}.py", root)


# ---------------------------------------------------------------- settings and fingerprints


def _dataset_identity(catalog: Catalog, name: str | None) -> dict[str, Any]:
    """A dataset's config plus the content of its annotations and a listing of its media (None:
    the catalog names no dataset there)."""
    if name is None:
        return {"name": None}
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
        identity["media"] = listing_fingerprint(Path(media_root), recursive=False)
    return identity


def listing_fingerprint(folder: Path, *, recursive: bool = True) -> str:
    """Names, sizes and modification times of the files in a folder: hashing the bytes of every
    video or feature file would take minutes (and read a whole feature release on every status)."""
    files = folder.rglob("*") if recursive else folder.iterdir()
    listing = sorted(
        (path.relative_to(folder).as_posix(), stat.st_size, stat.st_mtime_ns)
        for path in files
        if path.is_file() and (stat := path.stat())
    )
    return text_fingerprint(stable_json(listing))


def _features_definition(catalog: Catalog) -> dict[str, Any]:
    """What the stored features are (not which videos): settings that change their values."""
    stages = catalog.stages
    features = stages.features.model_dump(mode="json", exclude={"workers", "device", "batch_size"})
    for key, root in (("official", stages.features.official_root), ("released", stages.features.released_root)):
        if root is not None and Path(catalog.resolve(root) or "").is_dir():  # type: ignore[arg-type]
            features[key] = listing_fingerprint(Path(catalog.resolve(root)))  # type: ignore[arg-type]
    encoders = catalog.encoders.model_dump(mode="json")
    return {
        "features": features,
        "encoders": encoders,
        # An edited uwav config under the same name is another network (random-init weights
        # above all); the libraries' own configs change only with their versions.
        "model_configs": {feature: shipped_model_config(config["name"]) for feature, config in encoders.items()},
        "store": catalog.stores.features,  # as written: a project moved with its stores keeps its cache
        "han_inputs": stages.train.han.inputs,
    }


def stage_settings(catalog: Catalog, stage: str, features_definition: dict[str, Any] | None = None) -> dict[str, Any]:
    """The part of the catalog a stage's result depends on, besides its upstream stages.
    `features_definition`: `_features_definition(catalog)` when the caller has it already (it lists
    the feature release's files, which is worth doing once)."""
    check_stage(stage)
    stages = catalog.stages
    if stage == "segment":
        return {
            "target": _dataset_identity(catalog, catalog.target),
            "pretrain": _dataset_identity(catalog, catalog.pretrain),
            "segment": stages.segment.model_dump(mode="json", exclude={"workers"}),
        }
    if stage == "features":
        return features_definition or _features_definition(catalog)
    if stage == "pretrain":
        pretrain = stages.pretrain.model_dump(mode="json", exclude={"device"})
        if stages.pretrain.checkpoint is not None:
            # A released generator enters by content: replacing the file restales the stage.
            released = Path(catalog.resolve(stages.pretrain.checkpoint))  # type: ignore[arg-type]
            if not released.is_file():
                raise MissingInputError(f"stages.pretrain.checkpoint: no file {released}")
            pretrain["checkpoint"] = file_fingerprint(released)
        return {
            "pretrain": pretrain,
            "dataset": _dataset_identity(catalog, catalog.pretrain),
            "features": features_definition or _features_definition(catalog),
        }
    if stage == "calibrate":
        return {"calibrate": stages.calibrate.model_dump(mode="json"), "dataset": _dataset_identity(catalog, catalog.target)}
    if stage == "pseudo_labels":
        settings = stages.pseudo_labels
        found: dict[str, Any] = {
            "store": catalog.stores.pseudo_labels,
            "source": settings.source,
            "dataset": _dataset_identity(catalog, catalog.target),
        }
        if settings.source == "generate":
            found["soft_temperature"] = settings.soft_temperature
        if settings.released_root is not None:  # the labels themselves, or those scored beside the generated ones
            root = Path(catalog.resolve(settings.released_root))  # type: ignore[arg-type]
            found["released"] = {
                folder: listing_fingerprint(root / folder) if (root / folder).is_dir() else "absent"
                for folder in RELEASED_LABEL_FOLDERS.values()
            }
        return found
    if stage == "train":
        return stages.train.model_dump(mode="json", exclude={"device"})
    return stages.evaluate.model_dump(mode="json")  # evaluate


def _settings_fingerprint(catalog: Catalog, stage: str, features_definition: dict[str, Any] | None = None) -> str:
    return text_fingerprint(stable_json(stage_settings(catalog, stage, features_definition)))


def compute_fingerprints(catalog: Catalog, code_root: Path = PACKAGE_ROOT) -> dict[str, str]:
    """Every stage's fingerprint: its settings, its upstream stages' fingerprints and its code
    (`code_root`: the uwav source tree, this installation's by default)."""
    found: dict[str, str] = {}
    features_definition = _features_definition(catalog)  # shared by `features` and `pretrain`
    for stage in STAGES:
        payload = {
            "stage": stage,
            "settings": _settings_fingerprint(catalog, stage, features_definition),
            "inputs": {name: found[name] for name in stage_upstream(catalog, stage)},
            "code": stage_code_fingerprint(stage, code_root),
        }
        found[stage] = text_fingerprint(stable_json(payload))
    return found


# ---------------------------------------------------------------- records and status


def state_dir(catalog: Catalog) -> StateDir:
    return StateDir(catalog.store("runs"))


def stage_record(catalog: Catalog, stage: str) -> StageRecord:
    """The record of a stage that has run for this catalog (a stage reads its upstream's outputs here)."""
    record = state_dir(catalog).record(stage)
    if record is None:
        raise StageError(f"stage {stage} has not run for this catalog; run `uwav run --stages {stage}` first")
    return record


def quarantine_path(catalog: Catalog) -> Path:
    """One quarantine table per catalog, across stages and runs (rows say the stage)."""
    return Path(catalog.store("runs")) / "quarantine.parquet"


def stage_status(catalog: Catalog) -> list[StageStatus]:
    """Each stage as fresh, stale (with the reason), missing, or unused by this catalog's pipeline."""
    state = state_dir(catalog)
    fingerprints = compute_fingerprints(catalog)
    used = pipeline_stages(catalog)
    statuses: list[StageStatus] = []
    for stage in STAGES:
        record = state.record(stage)
        current = fingerprints[stage]
        if stage not in used:
            status = StageStatus(stage, "unused", current, "the pseudo-labels are released ones (stages.pseudo_labels.source)")
        elif record is None:
            status = StageStatus(stage, "missing", current, "never run")
        elif record.fingerprint == current and _outputs_exist(record):
            status = StageStatus(stage, "fresh", current)
        elif record.fingerprint == current:
            status = StageStatus(stage, "stale", current, "outputs were deleted")
        else:
            status = StageStatus(stage, "stale", current, _why_stale(catalog, stage, record, fingerprints))
        statuses.append(status)
    return statuses


def _record_inputs(catalog: Catalog, stage: str, fingerprints: dict[str, str]) -> dict[str, str]:
    """What a record keeps of a stage's fingerprint, so `uwav status` can say why it went stale."""
    return {
        **{f"upstream.{name}": fingerprints[name] for name in stage_upstream(catalog, stage)},
        "settings": _settings_fingerprint(catalog, stage),
        "code": stage_code_fingerprint(stage),
    }


def _why_stale(catalog: Catalog, stage: str, record: StageRecord, fingerprints: dict[str, str]) -> str:
    current = _record_inputs(catalog, stage, fingerprints)
    reasons = [f"{name} changed" for name in stage_upstream(catalog, stage) if record.inputs.get(f"upstream.{name}") != current[f"upstream.{name}"]]
    if record.inputs.get("settings") != current["settings"]:
        reasons.append("its settings or input files changed")
    if record.inputs.get("code") != current["code"]:
        reasons.append("its code changed")
    return "; ".join(reasons) or "fingerprint changed"


def _outputs_exist(record: StageRecord) -> bool:
    return all(Path(location).exists() for location in record.outputs.values() if "://" not in location)


def plan(catalog: Catalog, stages: Iterable[str] | None = None, force: Iterable[str] = ()) -> list[str]:
    """The stages a run executes, in pipeline order (`pipeline_stages`), up to the last requested
    one: those not fresh (fingerprints chain, so a changed stage makes everything downstream stale
    too) and, from the first forced stage on, all of them."""
    used = pipeline_stages(catalog)
    requested = list(stages) if stages is not None else list(used)
    forced = list(force)
    for name in (*requested, *forced):
        _check_used(catalog, name)
    if not requested:
        return []
    last = max(STAGES.index(name) for name in requested)
    first_forced = min((STAGES.index(name) for name in forced), default=len(STAGES))
    statuses = {status.stage: status.state for status in stage_status(catalog)}
    return [
        stage
        for stage in used
        if STAGES.index(stage) <= last and (statuses[stage] != "fresh" or STAGES.index(stage) >= first_forced)
    ]


# ---------------------------------------------------------------- running


def stage_function(stage: str) -> Callable[[Catalog, Path, bool], StageResult]:
    """`run` of `uwav/stages/<stage>.py`, imported on first use (the planner stays light)."""
    return importlib.import_module(f"uwav.stages.{check_stage(stage)}").run


def run_stage(catalog: Catalog, stage: str, *, force: bool = False, progress: bool = True) -> StageRecord:
    """Run one stage unless its fingerprint matches the record (then return the record)."""
    used = pipeline_stages(catalog)
    _check_used(catalog, stage)
    state = state_dir(catalog)
    fingerprints = compute_fingerprints(catalog)
    current = fingerprints[stage]
    record = state.record(stage)
    if record is not None and record.fingerprint == current and _outputs_exist(record) and not force:
        log.info("%s: fresh (%s), skipped", stage, current)
        return record
    index = used.index(stage)
    if index > 0:
        previous = used[index - 1]
        upstream = state.record(previous)
        if upstream is None or upstream.fingerprint != fingerprints[previous]:
            raise StageError(f"{stage}: upstream stage {previous} is not fresh; run it first (uwav run)")
    out_dir = state.stage_dir(stage, current)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log.info("%s: running (%s)", stage, current)
    result = stage_function(stage)(catalog, out_dir, progress)
    record = StageRecord(
        stage=stage,
        fingerprint=current,
        outputs=result.outputs.locations(),
        metrics=result.metrics,
        inputs=_record_inputs(catalog, stage, fingerprints),
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
