"""Faults: a pipeline killed with SIGKILL during every stage in turn still finishes with the outputs
of an uninterrupted run, without redoing finished stages; a concurrent run waits for the lock."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from flows import EPHEMERAL_STARTUP_TIMEOUT_ENV, EPHEMERAL_STARTUP_TIMEOUT_S
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


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, timeout_s: float = 240.0) -> None:
    """Poll `condition` until true; if the process ends first or time runs out, fail with its output."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (exit {process.returncode}) before the kill point:\n{output_tail(process)}")
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise AssertionError(f"timed out waiting for the kill point:\n{output_tail(process)}")
        time.sleep(0.05)


def output_tail(process: subprocess.Popen, chars: int = 3000) -> str:
    """What the ended process wrote. Read without blocking: a server it started may still hold the pipe."""
    if process.stdout is None:
        return ""
    fd = process.stdout.fileno()
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")[-chars:]


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL a `start_new_session` process and everything it started, as a crash would; a group
    that is already gone is not an error (raising here would hide why the test failed)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


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
    """SIGKILL the `uwav` flow process (talking to the session's Prefect server, which outlives it)
    during stage 1, then run the flow again: it completes, the stages finished before the kill are
    not redone."""
    from prefect.settings import PREFECT_API_URL

    from flows.pipeline import uwav_flow

    catalog = write_catalog(tmp_path, small_catalog())
    # The session's server rather than a temporary one of the child's own: the resume is the same,
    # and a child's server would cost ~20 s to start.
    env = {**os.environ, "UWAV_NO_PROGRESS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
           "PREFECT_API_URL": str(PREFECT_API_URL.value())}  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-c", f"from flows.pipeline import uwav_flow; uwav_flow(catalog={str(catalog)!r})"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    pretrain_dir = tmp_path / "runs" / "pretrain"
    try:
        wait_for(lambda: pretrain_dir.is_dir() and any(pretrain_dir.iterdir()), process, timeout_s=240)
        time.sleep(0.5)
    finally:
        kill_group(process)
    state = StateDir(tmp_path / "runs")
    before = {name: state.record(name) for name in ("segment", "features")}
    assert all(record is not None for record in before.values())
    assert state.record("evaluate") is None
    result = uwav_flow(catalog=str(catalog), return_state=True)
    assert result.is_completed(), result
    for name, record in before.items():
        assert state.record(name).finished_at == record.finished_at, f"{name} was redone"
    assert state.record("evaluate") is not None


@pytest.mark.parametrize(
    ("user_value", "import_prefect_first", "expected"),
    [(None, False, EPHEMERAL_STARTUP_TIMEOUT_S), (None, True, EPHEMERAL_STARTUP_TIMEOUT_S), ("7", False, 7)],
)
def test_flows_gives_prefect_temporary_server_time_to_start(
    user_value: str | None, import_prefect_first: bool, expected: int,
) -> None:
    """Importing `flows` raises the start-up wait Prefect itself uses (20 s default, too short on a
    loaded CI box), whichever of prefect/flows is imported first; a user's own value wins. A fresh
    process, since Prefect reads its settings once per process."""
    env = {k: v for k, v in os.environ.items() if k != EPHEMERAL_STARTUP_TIMEOUT_ENV}
    if user_value is not None:
        env[EPHEMERAL_STARTUP_TIMEOUT_ENV] = user_value
    script = ("import prefect\n" if import_prefect_first else "") + (
        "import flows\n"
        "from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as timeout\n"
        "print(timeout.value())\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip().splitlines()[-1]) == expected
    assert EPHEMERAL_STARTUP_TIMEOUT_S >= 60  # several times the 10-25 s seen on a loaded 2-core machine
