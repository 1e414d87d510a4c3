"""The `uwav` Prefect flow: schedules `uwav.stages`, holds no science.

Each stage is one Prefect task whose cache key is the stage's fingerprint (settings + upstream
fingerprints + code), so an unchanged stage shows as Cached and does no work; the stage function
itself skips fresh stages too, so Prefect and `uwav run` agree. Transient I/O errors are retried a
bounded number of times (`orchestration.task_retries` in the catalog).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import TaskRunContext
from prefect.filesystems import LocalFileSystem

from flows.connection_errors import connection_errors_on_one_line
from uwav.catalog import Catalog, load_catalog
from uwav.stages import STAGES, compute_fingerprints, pipeline_stages, plan, run_stage, stage_status, state_dir
from uwav.stages.features import compute_feature_shard, merge_quarantine, pending_feature_shards
from uwav.stages.promotion import promote_model
from uwav.stages.segment import cache_probe_results, pending_probe_shards, probe_shard
from uwav.stages.train import run_ablation_grid

# A flow-run process started by `uwav serve` imports this module to run the flow, after Prefect
# configured its logging: a lost server then logs one line there too, not a websocket traceback.
connection_errors_on_one_line()

TRANSIENT_ERRORS = (OSError, TimeoutError)
PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
TIMELINE_ARTIFACTS = 4


def _stage_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    catalog = load_catalog(parameters["catalog_path"])
    return f"uwav-{parameters['stage']}-{compute_fingerprints(catalog)[parameters['stage']]}"


def result_storage(catalog: Catalog) -> str:
    """Where the stage tasks' Prefect results live: beside the stage records in the catalog's runs
    folder (not ~/.prefect/storage), so a run folder holds everything it needs to resume.

    Prefect wants result storage saved server-side: one LocalFileSystem block per runs folder,
    named after its path, saved (idempotently) at each flow run; returns its slug."""
    basepath = str(Path(catalog.store("runs")).resolve() / "prefect-results")
    name = "uwav-results-" + hashlib.sha256(basepath.encode()).hexdigest()[:16]
    LocalFileSystem(basepath=basepath).save(name, overwrite=True)
    return f"local-file-system/{name}"


def _retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only I/O-like failures; a wrong setting, a missing file or a bug fails at once."""
    try:
        state.result()
    except PERMANENT_OS_ERRORS:
        return False
    except TRANSIENT_ERRORS:
        return True
    except Exception:  # noqa: BLE001 - any other failure is final
        return False
    return False


@task(task_run_name="{stage}", cache_key_fn=_stage_cache_key, persist_result=True, retry_condition_fn=_retry_transient)
def stage_task(catalog_path: str, stage: str, force: bool = False) -> dict[str, Any]:
    """Run one stage (or return its fresh record)."""
    record = run_stage(load_catalog(catalog_path), stage, force=force, progress=False)
    get_run_logger().info("%s: %s in %.1f s", stage, record.fingerprint, record.seconds)
    return asdict(record)


@task(task_run_name="features-shard-{shard_index}", retry_condition_fn=_retry_transient)
def feature_shard_task(catalog_path: str, video_ids: list[str], shard_index: int) -> list[dict[str, Any]]:
    return compute_feature_shard(load_catalog(catalog_path), video_ids)


@task(task_run_name="segment-shard-{shard_index}", retry_condition_fn=_retry_transient)
def probe_shard_task(catalog_path: str, paths: list[str], shard_index: int) -> list[dict[str, Any]]:
    return probe_shard(load_catalog(catalog_path), paths)


SHARD_TASKS = {"segment": probe_shard_task, "features": feature_shard_task}


@flow(name="uwav-fanout", flow_run_name="{stage}-fanout")
def stage_fanout(catalog_path: str, stage: str, shards: list[list[str]]) -> list[dict[str, Any]]:
    """A stage's per-video work over shards on the flow's task runner (Dask when configured)."""
    futures = SHARD_TASKS[stage].map(unmapped(catalog_path), shards, list(range(len(shards))))
    return [row for future in futures for row in future.result()]


def dask_task_runner(catalog: Catalog) -> Any:
    """A prefect-dask task runner for the catalog's cluster, or None when no cluster is configured."""
    settings = catalog.orchestration
    if settings.dask_address is None and settings.dask_local_workers is None:
        return None
    from prefect_dask import DaskTaskRunner

    if settings.dask_address is not None:
        return DaskTaskRunner(address=settings.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": settings.dask_local_workers, "threads_per_worker": 1, "processes": True, "host": "127.0.0.1"
        }
    )


def _fan_out(catalog_path: str, catalog: Catalog, stage: str) -> None:
    """Spread a stage's per-video work over the cluster; the stage task then finds it done.

    segment: media probes, cached by the coordinator; features: encoding, written by the workers
    into their own chunks of the store (quarantine rows come back to the coordinator)."""
    runner = dask_task_runner(catalog)
    if runner is None or stage not in SHARD_TASKS:
        return
    shards = pending_probe_shards(catalog) if stage == "segment" else pending_feature_shards(catalog)
    if not shards:
        return
    get_run_logger().info("%s: %d shards of videos over %s", stage, len(shards), type(runner).__name__)
    rows = stage_fanout.with_options(task_runner=runner)(catalog_path, stage, shards)
    (cache_probe_results if stage == "segment" else merge_quarantine)(catalog, rows)


@task(task_run_name="ablation")
def ablation_task(catalog_path: str) -> list[dict[str, Any]]:
    from uwav.evaluation.report import ablation_markdown

    table = run_ablation_grid(load_catalog(catalog_path), progress=False)
    create_markdown_artifact(ablation_markdown(table), key="uwav-ablation", description="Ablation (paper Table 4)")
    return table.to_dicts()


def _publish_artifacts(catalog: Catalog, records: dict[str, dict[str, Any]]) -> None:
    """Metrics table, pseudo-label quality table and the evaluation report link, per run."""
    status_rows = [{"stage": s.stage, "state": s.state, "fingerprint": s.fingerprint, "why": s.why} for s in stage_status(catalog)]
    create_table_artifact(status_rows, key="uwav-stages", description="Stage states after this run")
    evaluate = records.get("evaluate")
    if evaluate is not None:
        scores = evaluate["metrics"].get("scores", {})
        references = evaluate["metrics"].get("references", {})
        create_table_artifact(
            [{"metric": k, "value": round(v, 2), **{name: round(ref[k], 2) for name, ref in references.items() if k in ref}}
             for k, v in scores.items()],
            key="uwav-metrics",
            description="LLP-protocol scores on the evaluation split (percent), beside the references on the same videos",
        )
        create_markdown_artifact(f"Report: `{evaluate['outputs'].get('report', '')}`", key="uwav-report")
        images = sorted(Path(evaluate["outputs"]["timelines"]).glob("*.png"))[:TIMELINE_ARTIFACTS]
        if images:
            # Image artifacts need a URL; inline data URIs keep the timelines inside Prefect.
            markdown = "\n\n".join(
                f"**{image.stem}**\n\n![{image.stem}](data:image/png;base64,{base64.b64encode(image.read_bytes()).decode()})"
                for image in images
            )
            create_markdown_artifact(markdown, key="uwav-timelines", description="Truth vs prediction, per video")
    pseudo = records.get("pseudo_labels")
    if pseudo is not None and pseudo["metrics"].get("quality"):
        rows = [
            {"split": split, "pseudo-labels": labels, **{k: round(v, 2) for k, v in scores.items()}}
            for split, by_labels in pseudo["metrics"]["quality"].items()
            for labels, scores in by_labels.items()
        ]
        create_table_artifact(rows, key="uwav-pseudo-label-quality", description="Pseudo-label quality (paper Table 3)")


@flow(name="uwav", log_prints=True)
def uwav_flow(
    catalog: str = "data_catalog.yaml",
    stages: list[str] | None = None,
    force: list[str] | None = None,
    retrain: bool = False,
    ablation: bool = False,
) -> dict[str, Any]:
    """Bring the requested stages (default: all) and whatever upstream is stale up to date.

    `retrain=True` (the scheduled `uwav/retrain` deployment) runs the whole pipeline, which
    processes only videos added since the last run, and keeps the previous model as current
    when the new one scores worse on validation. `ablation=True` also trains the paper's
    Table-4 grid on the run's pseudo-labels and publishes it as an artifact.
    """
    logger = get_run_logger()
    catalog_path = str(Path(catalog).resolve())
    loaded = load_catalog(catalog_path)
    forced = [name.replace("-", "_") for name in force or []]
    requested = [name.replace("-", "_") for name in stages] if stages else list(pipeline_stages(loaded))
    to_run = plan(loaded, requested, forced)
    first_forced = min((STAGES.index(name) for name in forced), default=len(STAGES))
    last = max(STAGES.index(name) for name in requested)
    logger.info("plan: %s", ", ".join(to_run) or "nothing to do")
    records: dict[str, dict[str, Any]] = {}
    options = {
        "retries": loaded.orchestration.task_retries,
        "retry_delay_seconds": loaded.orchestration.retry_delay_s,
        "result_storage": result_storage(loaded),
    }
    with state_dir(loaded).lock():
        for stage in (name for name in pipeline_stages(loaded) if STAGES.index(name) <= last):
            run_it = stage in to_run
            refresh = run_it  # a stale record must never be answered from Prefect's cache
            if run_it:
                _fan_out(catalog_path, loaded, stage)
            records[stage] = stage_task.with_options(refresh_cache=refresh, **options)(
                catalog_path, stage, force=STAGES.index(stage) >= first_forced
            )
    if "train" in records:
        promoted, message = promote_model(loaded, only_if_better=retrain)
        logger.info(message)
        create_markdown_artifact(f"**Model:** {message}", key="uwav-model", description="Which model is current")
    if retrain and "segment" in records:
        new = records["segment"]["metrics"].get("target_new_videos", 0)
        create_markdown_artifact(f"**Retraining:** {new} new target videos since the last run.", key="uwav-retrain")
    _publish_artifacts(loaded, records)
    if ablation:
        ablation_task(catalog_path)
    summary = {stage: {"fingerprint": r["fingerprint"], "metrics": r["metrics"]} for stage, r in records.items()}
    logger.info("done: %s", json.dumps({s: v["fingerprint"] for s, v in summary.items()}))
    return summary
