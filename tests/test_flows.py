"""The `uwav` Prefect flow: stage tasks cached by fingerprint, artifacts, model promotion."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from tests.test_stages import small_catalog, write_catalog
from uwav.catalog import load_catalog
from uwav.stages import STAGES, state_dir
from uwav.stages.promotion import current_model

pytestmark = pytest.mark.usefixtures("prefect_server")


def task_states(flow_run_id: object) -> dict[str, str]:
    """Task run name -> final state name of one flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name: run.state.name for run in runs}


def run_flow(**parameters: object) -> tuple[dict, dict[str, str]]:
    from flows.pipeline import uwav_flow

    state = uwav_flow(**parameters, return_state=True)
    assert state.is_completed(), state
    return state.result(), task_states(state.state_details.flow_run_id)


def test_flow_runs_every_stage_then_is_a_cached_no_op(tmp_path: Path) -> None:
    path = write_catalog(tmp_path, small_catalog())
    summary, states = run_flow(catalog=str(path))
    assert list(summary) == list(STAGES)
    assert set(states.values()) == {"Completed"}, states
    assert current_model(load_catalog(path)) is not None
    # Prefect's task results live in the catalog's runs folder, one per stage.
    results = Path(load_catalog(path).store("runs")) / "prefect-results"
    assert sorted(p.name for p in results.iterdir()) == sorted(f"uwav-{stage}-{fingerprint}" for stage, fingerprint in ((s, summary[s]["fingerprint"]) for s in STAGES))

    started = time.perf_counter()
    summary_again, states = run_flow(catalog=str(path))
    no_op_s = time.perf_counter() - started
    assert set(states.values()) == {"Cached"}, states
    assert summary_again == summary
    assert no_op_s < 30, f"an unchanged pipeline took {no_op_s:.1f} s"

    # A stage-2 setting: only train and evaluate run; the rest come from the cache.
    write_catalog(tmp_path, small_catalog(train={"mixup": False}))
    _, states = run_flow(catalog=str(path))
    ran = sorted(name for name, state in states.items() if state == "Completed")
    assert ran == ["evaluate", "train"], states

    # Artifacts: metrics, pseudo-label quality, timelines, and the ablation table when asked for.
    _, states = run_flow(catalog=str(path), ablation=True)
    assert states["ablation"] == "Completed"
    artifacts = latest_artifacts()
    assert {"uwav-metrics", "uwav-pseudo-label-quality", "uwav-timelines", "uwav-model", "uwav-ablation"} <= set(artifacts)
    assert "data:image/png;base64," in artifacts["uwav-timelines"]
    assert "soft + reweight + mixup (UWAV)" in artifacts["uwav-ablation"]
    metric_rows = {row["metric"]: row for row in json.loads(artifacts["uwav-metrics"])}
    assert {"value", "pseudo-labels, given video labels", "predict nothing"} <= set(metric_rows["seg_type"])


def latest_artifacts() -> dict[str, str]:
    """Artifact key -> data of its latest version."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(exists_=True))
        )
    return {artifact.key: artifact.data for artifact in found}


def test_single_stage_deployment_parameters_and_force(tmp_path: Path) -> None:
    path = write_catalog(tmp_path, small_catalog())
    summary, states = run_flow(catalog=str(path), stages=["pseudo-labels"])
    assert list(summary) == list(STAGES[: STAGES.index("pseudo_labels") + 1])
    summary, states = run_flow(catalog=str(path), stages=["calibrate"], force=["calibrate"])
    assert states == {name: "Cached" for name in STAGES[:3]} | {"calibrate": "Completed"}


def test_retrain_keeps_the_previous_model_when_the_new_one_is_worse(tmp_path: Path) -> None:
    path = write_catalog(tmp_path, small_catalog())
    run_flow(catalog=str(path))
    catalog = load_catalog(path)
    first = current_model(catalog)
    assert first is not None
    # Pretend the current model scored far better than anything a retrain can reach.
    pointer = Path(catalog.store("runs")) / "current_model.json"
    pointer.write_text(pointer.read_text().replace(f'"val_score": {first["val_score"]}', '"val_score": 101.0'))
    write_catalog(tmp_path, small_catalog(train={"seed": 1}))
    run_flow(catalog=str(path), retrain=True)
    kept = current_model(catalog)
    assert kept["fingerprint"] == first["fingerprint"] and kept["val_score"] == 101.0
    assert state_dir(catalog).record("train").fingerprint != first["fingerprint"]


def test_deployments_cover_every_stage_and_the_schedule(tmp_path: Path) -> None:
    from flows.deployments import build_deployments

    path = write_catalog(tmp_path, small_catalog())
    deployments = {d.name: d for d in build_deployments(path)}
    expected = {"full-pipeline", "retrain", *(stage.replace("_", "-") for stage in STAGES)}
    assert set(deployments) == expected
    assert deployments["train"].parameters == {"catalog": str(path.resolve()), "stages": ["train"]}
    assert deployments["retrain"].parameters["retrain"] is True
    crons = [schedule.schedule.cron for schedule in deployments["retrain"].schedules]
    assert crons == [load_catalog(path).orchestration.retrain_cron]
    # prefect.yaml declares the same deployments for `prefect deploy`.
    declared = yaml.safe_load((Path(__file__).resolve().parents[1] / "prefect.yaml").read_text())["deployments"]
    assert {d["name"] for d in declared} == expected
    assert all(d["entrypoint"] == "flows/pipeline.py:uwav_flow" for d in declared)


class _FailedState:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def result(self) -> None:
        raise self.error


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (ConnectionResetError("peer reset"), True),
        (TimeoutError("slow disk"), True),
        (OSError(5, "I/O error"), True),
        (FileNotFoundError("annotations.json"), False),
        (PermissionError("runs/"), False),
        (ValueError("bad setting"), False),
    ],
)
def test_only_transient_errors_are_retried(error: BaseException, retried: bool) -> None:
    from flows.pipeline import _retry_transient

    assert _retry_transient(None, None, _FailedState(error)) is retried
