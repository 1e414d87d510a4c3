"""Deployments of the `uwav` flow and the serving entry point (`uwav serve`).

Deployment names read `uwav/<name>`: `full-pipeline`, one per stage (each runs that stage and
whatever upstream is stale) and the scheduled `retrain`.
"""

from __future__ import annotations

from pathlib import Path

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from flows.pipeline import uwav_flow
from uwav.catalog import load_catalog
from uwav.stages import STAGES

STAGE_DEPLOYMENTS: dict[str, str] = {stage.replace("_", "-"): stage for stage in STAGES}


def build_deployments(catalog_path: str | Path) -> list[RunnerDeployment]:
    catalog_file = str(Path(catalog_path).resolve())
    catalog = load_catalog(catalog_file)
    deployments = [
        uwav_flow.to_deployment(
            name="full-pipeline", parameters={"catalog": catalog_file}, description="All seven stages; fresh ones are skipped."
        )
    ]
    for name, stage in STAGE_DEPLOYMENTS.items():
        deployments.append(
            uwav_flow.to_deployment(
                name=name,
                parameters={"catalog": catalog_file, "stages": [stage]},
                description=f"The {stage} stage and whatever upstream is stale.",
            )
        )
    deployments.append(
        uwav_flow.to_deployment(
            name="retrain",
            cron=catalog.orchestration.retrain_cron,
            parameters={"catalog": catalog_file, "retrain": True},
            description="Scheduled: process new videos, regenerate pseudo-labels, retrain, evaluate; keep the better model.",
        )
    )
    return deployments


def serve_deployments(catalog_path: str | Path, *, limit: int | None = None) -> None:
    """Register every deployment with the Prefect API and run their flow runs in this process."""
    serve(*build_deployments(catalog_path), limit=limit)
