"""Real Prefect processes for the tests that need them (test_e2e_deployments, test_serve_shutdown):
a `prefect server start` on a loopback port with an isolated, offline home, long-running
subprocesses with their logs, and polling helpers. The server is one per test session (the
`loopback_server` fixture in conftest.py): starting one takes ~20 s."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SERVER_START_TIMEOUT_S = 120
REGISTER_TIMEOUT_S = 120


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def subprocess_env(tmp_path: Path, port: int) -> dict[str, str]:
    """This environment without any PREFECT_* setting, plus an isolated, offline Prefect."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    home = tmp_path / "prefect-home"
    home.mkdir(exist_ok=True)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",  # the server's usage reports
        PREFECT_SERVER_UI_ENABLED="false",  # no UI build
        DO_NOT_TRACK="1",  # the SDK's telemetry (prefect._internal.analytics)
        PREFECT_RUNNER_POLL_FREQUENCY="1",  # the serving process picks up a new flow run within a second
        PREFECT_LOGGING_LEVEL="INFO",
        UWAV_NO_PROGRESS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


class Process:
    """A long-running subprocess in its own process group, its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        with self.log.open("wb") as sink:
            # Own session: the flow runs `uwav serve` spawns are stopped together with it.
            self.popen = subprocess.Popen(
                args, cwd=REPO_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )

    def check_alive(self) -> None:
        code = self.popen.poll()
        assert code is None, f"{self.name} exited with status {code}:\n{self.tail()}"

    def tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.popen.poll() is not None:
            return
        os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=timeout_s)


def api(port: int, path: str, body: object | None = None) -> Any:
    """GET (or POST `body` as JSON) on the loopback Prefect API."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_until(what: str, ready: Callable[[], Any], timeout_s: float, watched: list[Process]) -> Any:
    """Poll `ready()` until it returns something truthy; fail early when a watched process dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for process in watched:
            process.check_alive()
        try:
            result = ready()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            result = None
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


class LoopbackServer:
    """`prefect server start` (SQLite) on a loopback port, started on first use and again after a
    test stopped it; `env` is the environment of every process that talks to it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_loopback_port()
        self.env = subprocess_env(folder, self.port)
        self.process: Process | None = None

    def running(self) -> LoopbackServer:
        if self.process is None or self.process.popen.poll() is not None:
            self.process = Process(
                "prefect-server",
                [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(self.port),
                 "--no-ui", "--analytics-off"],
                self.env, self.folder,
            )  # fmt: skip
            wait_until("the Prefect server's /api/health", lambda: api(self.port, "health") is True,
                       SERVER_START_TIMEOUT_S, [self.process])  # fmt: skip
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
