"""Deployments of the `uwav` flow and the serving entry point (`uwav serve`).

Deployment names read `uwav/<name>`: `full-pipeline`, one per stage (each runs that stage and
whatever upstream is stale) and the scheduled `retrain`.

Serving drives Prefect's `Runner` in an event loop of its own rather than through `prefect.serve`,
because Prefect 3.9.1 alone neither stops in bounded time nor notices a lost API: on SIGTERM its
runner pauses every deployment and cancels the flow runs through the API, and against a server that
is gone each call retries for about a minute, so the process outlived `docker stop`; a lost server
showed as a websocket traceback while the runner went on polling.

- SIGTERM or SIGINT: if the API answers, Prefect's own stop (flow runs cancelled and marked so,
  schedules paused; the next `uwav serve` unpauses them); if not, the flow runs are terminated
  here. Either way the process ends with status 0 within SHUTDOWN_TIMEOUT_S: past it, the flow runs
  still alive are killed and the process exits without waiting for Prefect's teardown.
- Losing the API: a watchdog asks /health every few seconds. Outages shorter than `api_grace_s` are
  ridden out: Prefect's client retries each call for about a minute and its websockets reconnect,
  so serving goes on when the server returns. A longer one stops the flow runs and exits 1 with
  `error: lost the Prefect API at URL: ...`, leaving recovery to the supervisor (compose's
  `restart: unless-stopped`), whose fresh `uwav serve` registers the deployments again, which
  matters when the server came back with an empty database. Keep `api_grace_s` under ~3 min: the
  runner gives up by itself after three failed polls (sooner if the server went before its first
  poll), and then this process exits 1 too, with `error: the Prefect runner stopped: ...`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import NoReturn

import psutil
from prefect.client.orchestration import get_client
from prefect.deployments.runner import RunnerDeployment
from prefect.logging import get_logger
from prefect.runner import Runner
from prefect.settings import get_current_settings

from flows.connection_errors import CONNECTION_ERRORS, connection_errors_on_one_line
from flows.pipeline import uwav_flow
from uwav.catalog import load_catalog
from uwav.errors import UwavError, error_line
from uwav.stages import STAGES

STAGE_DEPLOYMENTS: dict[str, str] = {stage.replace("_", "-"): stage for stage in STAGES}

# `docker stop` sends SIGKILL 10 s after SIGTERM: a stop ends within this, leaving time to exit.
SHUTDOWN_TIMEOUT_S = 8.0
# Between SIGTERM and SIGKILL for the flow runs stopped here (without the API, or past the bound).
FLOW_RUN_STOP_GRACE_S = 3.0
LAST_STOP_GRACE_S = 1.0
API_PROBE_TIMEOUT_S = 3.0
API_PROBE_INTERVAL_S = 5.0

logger = get_logger("uwav.serve")


class PrefectApiError(UwavError):
    """The Prefect API did not answer when `uwav serve` registered the deployments."""


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


def serve_deployments(catalog_path: str | Path, *, limit: int | None, api_grace_s: float) -> None:
    """Register every deployment with the Prefect API and run their flow runs in this process.

    Returns (or ends the process with status 0) on SIGTERM or SIGINT; ends the process with status 1
    once the API has not answered for `api_grace_s` seconds. Raises PrefectApiError if the API does
    not answer at the start.
    """
    deployments = build_deployments(catalog_path)
    connection_errors_on_one_line()
    asyncio.run(_serve(deployments, limit=limit, api_grace_s=api_grace_s))


async def _serve(deployments: list[RunnerDeployment], *, limit: int | None, api_grace_s: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    _stop_on_signals(loop, stop)
    runner = Runner(limit=limit)
    registering = asyncio.create_task(_register(runner, deployments))
    if not await _first_or_stop(registering, stop):
        return  # stopped before anything ran
    serving = asyncio.create_task(runner.start())
    # start() puts its own SIGTERM handler in place before its first await; take SIGTERM back.
    await asyncio.sleep(0)
    _stop_on_signals(loop, stop)
    watchdog = asyncio.create_task(_watch_api(api_grace_s))
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({serving, watchdog, stopped}, return_when=asyncio.FIRST_COMPLETED)
    watchdog.cancel()
    stopped.cancel()

    if stop.is_set():
        _exit_after(SHUTDOWN_TIMEOUT_S - LAST_STOP_GRACE_S, 0)
        if await _api_error() is not None:
            logger.info("Stopping without the Prefect API: terminating the flow runs")
            _exit_now(0)
        logger.info("Stopping: cancelling the flow runs and pausing the schedules")
        if runner.started:
            await runner.astop()
        else:
            serving.cancel()
        await asyncio.wait({serving})
        if not serving.cancelled() and serving.exception() is not None:
            logger.warning("The runner's shutdown failed: %s", error_line(_first_leaf(serving.exception())))
        return
    if watchdog.done():
        _exit_now(1, watchdog.result())
    # The runner ended by itself: its poll loop gives up after three failed polls, and its teardown
    # has paused the schedules and stopped the flow runs. A fresh `uwav serve` starts over.
    error = serving.exception() if not serving.cancelled() else None
    _exit_now(1, f"the Prefect runner stopped: {error_line(_first_leaf(error)) if error else 'no reason given'}")


async def _register(runner: Runner, deployments: list[RunnerDeployment]) -> None:
    try:
        for deployment in deployments:
            await runner.aadd_deployment(deployment)
    except CONNECTION_ERRORS as error:
        raise PrefectApiError(f"cannot reach the Prefect API at {_api_url()}: {error_line(error)}") from None
    names = ", ".join(f"uwav/{deployment.name}" for deployment in deployments)
    logger.info("Serving %s from %s; stop with SIGTERM or Ctrl-C", names, _api_url())


async def _first_or_stop(work: asyncio.Task[None], stop: asyncio.Event) -> bool:
    """Wait for `work` unless a stop comes first (then cancel it); True if it finished."""
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not work.done():
        work.cancel()
        return False
    work.result()
    return True


def _stop_on_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)


async def _watch_api(grace_s: float) -> str:
    """Returns why the API counts as lost, once it has not answered for `grace_s` seconds."""
    clock = asyncio.get_running_loop().time
    interval = min(API_PROBE_INTERVAL_S, grace_s / 3)
    answered_at = clock()
    while True:
        error = await _api_error()
        if error is None:
            answered_at = clock()
        elif clock() - answered_at >= grace_s:
            return f"lost the Prefect API at {_api_url()}: no healthy answer for {grace_s:g} s ({error})"
        await asyncio.sleep(interval)


async def _api_error() -> str | None:
    """None if the API's /health answers within API_PROBE_TIMEOUT_S, else why not (one line)."""
    try:
        async with get_client() as client:
            error = await asyncio.wait_for(client.api_healthcheck(), API_PROBE_TIMEOUT_S)
    except TimeoutError:
        return f"no answer within {API_PROBE_TIMEOUT_S:g} s"
    return None if error is None else error_line(error)


def _api_url() -> str:
    return str(get_current_settings().api.url or "the temporary Prefect server")


def _first_leaf(error: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups: what actually failed."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


def _stop_flow_runs(grace_s: float) -> None:
    """SIGTERM to every process this one started (the flow runs and theirs), SIGKILL after `grace_s`."""
    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(children, timeout=grace_s)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def _exit_now(code: int, error: str | None = None, grace_s: float = FLOW_RUN_STOP_GRACE_S) -> NoReturn:
    """End the process without Prefect's teardown, which would wait on the API: flow runs stopped
    (SIGKILL after `grace_s`), output flushed, `error` printed on one line."""
    _stop_flow_runs(grace_s)
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _exit_after(seconds: float, code: int) -> None:
    """`_exit_now(code)` in `seconds` unless the process has ended by then: the bound on a stop that
    Prefect's teardown (or the interpreter's exit) would overrun. A daemon thread, so that a busy
    event loop cannot delay it."""
    timer = threading.Timer(seconds, _exit_now, args=(code,), kwargs={"grace_s": LAST_STOP_GRACE_S})
    timer.daemon = True
    timer.start()

