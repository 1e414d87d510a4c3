"""Faults: a pipeline killed with SIGKILL during every stage in turn still finishes with the outputs
of an uninterrupted run, without redoing finished stages; a concurrent run waits for the lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.test_stages import small_catalog, write_catalog
from uwav.caching import StateDir
from uwav.catalog import load_catalog
from uwav.stages import STAGES, state_dir

REPO_ROOT = Path(__file__).resolve().parents[1]


def start_run(catalog: Path) -> subprocess.Popen:
    env = {**os.environ, "UWAV_NO_PROGRESS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "uwav", "run", "--catalog", str(catalog), "--no-progress"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def wait_for(condition, process: subprocess.Popen, timeout_s: float = 240.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            raise AssertionError(f"the run ended (exit {process.returncode}) before the kill point:\n{output[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out waiting for the kill point")
        time.sleep(0.05)


def test_kill_during_every_stage_then_resume(tmp_path: Path) -> None:
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    reference_dir.mkdir()
    killed_dir.mkdir()
    reference = write_catalog(reference_dir, small_catalog())
    killed = write_catalog(killed_dir, small_catalog())
    assert subprocess.run(
        [sys.executable, "-m", "uwav", "run", "--catalog", str(reference), "--no-progress"],
        cwd=REPO_ROOT, capture_output=True, check=False,
    ).returncode == 0

    runs = killed_dir / "runs"
    finished: dict[str, float] = {}
    for stage in STAGES:
        process = start_run(killed)
        # Kill once the stage has started (its output folder exists) and had a moment to write.
        wait_for(lambda stage=stage: (runs / stage).is_dir() and any((runs / stage).iterdir()), process)
        time.sleep(0.3)
        process.send_signal(signal.SIGKILL)
        process.wait()
        state = StateDir(runs)
        for done, finished_at in finished.items():
            record = state.record(done)
            assert record is not None and record.finished_at == finished_at, f"{done} was redone after the kill in {stage}"
        for name in STAGES:
            record = state.record(name)
            if record is not None:
                finished.setdefault(name, record.finished_at)
    process = start_run(killed)
    output = process.communicate(timeout=600)[0].decode()
    assert process.returncode == 0, output

    def scores(catalog_path: Path) -> dict:
        record = state_dir(load_catalog(catalog_path)).record("evaluate")
        return json.loads(Path(record.outputs["metrics"]).read_text())

    assert scores(killed) == scores(reference)
    for name in STAGES:
        assert state_dir(load_catalog(killed)).record(name).fingerprint == state_dir(load_catalog(reference)).record(name).fingerprint


def test_a_second_run_waits_for_the_lock(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "runs")
    order: list[str] = []
    def second_run() -> None:
        with state.lock():
            order.append("second")

    with state.lock():
        waiter = threading.Thread(target=second_run)
        waiter.start()
        time.sleep(0.5)
        order.append("first done")
    waiter.join(timeout=10)
    assert order == ["first done", "second"]


def test_lock_times_out_with_a_clear_message(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "runs")
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, time; from uwav.caching import StateDir\n"
            f"with StateDir({str(tmp_path / 'runs')!r}).lock():\n    print('locked', flush=True); time.sleep(30)"
        )],
        cwd=REPO_ROOT, stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline().strip() == b"locked"
        with pytest.raises(TimeoutError, match="another uwav run holds the lock"), state.lock(timeout_s=0.5):
            pass
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.usefixtures("prefect_server")
def test_killed_prefect_flow_resumes_without_redoing_finished_stages(tmp_path: Path) -> None:
    """SIGKILL the `uwav` flow process (with its embedded Prefect server) during stage 1, then run
    the flow again: it completes, the stages finished before the kill are not redone."""
    from flows.pipeline import uwav_flow

    catalog = write_catalog(tmp_path, small_catalog())
    env = {**os.environ, "UWAV_NO_PROGRESS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_URL", None)  # the child starts its own temporary server
    process = subprocess.Popen(
        [sys.executable, "-c", f"from flows.pipeline import uwav_flow; uwav_flow(catalog={str(catalog)!r})"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    pretrain_dir = tmp_path / "runs" / "pretrain"
    try:
        wait_for(lambda: pretrain_dir.is_dir() and any(pretrain_dir.iterdir()), process)
        time.sleep(0.5)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the flow and its server, as a crash would
        process.wait()
    state = StateDir(tmp_path / "runs")
    before = {name: state.record(name) for name in ("segment", "features")}
    assert all(record is not None for record in before.values())
    assert state.record("evaluate") is None
    result = uwav_flow(catalog=str(catalog), return_state=True)
    assert result.is_completed(), result
    for name, record in before.items():
        assert state.record(name).finished_at == record.finished_at, f"{name} was redone"
    assert state.record("evaluate") is not None
