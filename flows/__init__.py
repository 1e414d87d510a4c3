"""Prefect orchestration of `uwav.stages`: the `uwav` flow and its deployments. No science here."""
