"""Test-suite wide guards: no network, an isolated Prefect home, the shared real-data folder."""

from __future__ import annotations

import ipaddress
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Isolate Prefect (and anything else keyed on HOME-like variables) before any import reads them.
_PREFECT_HOME = tempfile.mkdtemp(prefix="uwav-prefect-home-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"  # Prefect's client-side telemetry switch
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["UWAV_NO_PROGRESS"] = "1"
# The aligned tiny encoders a demo catalog makes on first use go to a throwaway cache, never the user's.
os.environ["UWAV_CACHE"] = tempfile.mkdtemp(prefix="uwav-cache-")

# Prefect's temporary servers (the session's shared one below, and each child process's own) start
# in 10-25 s on a loaded 2-core CI machine; Prefect's 20 s default fails there. Set through the
# environment, so child processes inherit it; an explicit value in the environment still wins.
# (Importing flows/__init__ here is cheap: it does not import Prefect.)
from flows import tolerate_slow_prefect_start

PREFECT_STARTUP_TIMEOUT_S = 180
tolerate_slow_prefect_start(PREFECT_STARTUP_TIMEOUT_S)


# ------------------------------------------------------------------ network guard

_network_attempts: list[str] = []


def _is_loopback(host: object) -> bool:
    if not isinstance(host, str):
        return False
    if host in ("localhost", "", "0.0.0.0", "::") or host.endswith(".localhost"):  # wildcard = this machine
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _refuse(target: object) -> None:
    message = f"network access attempted during tests: {target!r}"
    _network_attempts.append(message)
    raise ConnectionRefusedError(message)


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _guarded_connect(self: socket.socket, address: object) -> object:
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):  # type: ignore[index]
        _refuse(address)
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: object) -> object:
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):  # type: ignore[index]
        _refuse(address)
    return _real_connect_ex(self, address)


def _guarded_getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
    if host is not None and not _is_loopback(host.decode() if isinstance(host, bytes) else host):
        _refuse(host)
    return _real_getaddrinfo(host, *args, **kwargs)


def pytest_configure(config: pytest.Config) -> None:
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = _guarded_getaddrinfo  # type: ignore[assignment]


@pytest.fixture(autouse=True)
def _fail_on_network_attempt() -> object:
    """Libraries often swallow connection errors and fall back; the attempt itself fails the test."""
    _network_attempts.clear()
    yield
    if _network_attempts:
        attempts = list(_network_attempts)
        _network_attempts.clear()
        pytest.fail("; ".join(attempts))


# ------------------------------------------------------------------ shared real data


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` (real LLP / UnAV-100 / AVE files); skips with the reason when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real annotation files not found at {SHARED_DATA} (see ../shared/data/README.md)")
    return SHARED_DATA


# ------------------------------------------------------------------ Prefect


@pytest.fixture(scope="session")
def loopback_server(tmp_path_factory: pytest.TempPathFactory) -> object:
    """The session's one Prefect server (SQLite), `prefect server start` on a loopback port
    (`tests.prefect_processes.LoopbackServer`); started on first use (~20 s), again if a test
    stopped it."""
    from tests.prefect_processes import LoopbackServer

    server = LoopbackServer(tmp_path_factory.mktemp("loopback-prefect"))
    yield server
    server.stop()


@pytest.fixture
def prefect_server(loopback_server: object) -> object:
    """This process's Prefect API is the session's server, for flows run in the test process (a
    `prefect_test_harness` would start a second server)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = loopback_server.running()  # type: ignore[attr-defined]
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{server.port}/api"}):
        yield


@pytest.fixture
def native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """Behave as on a CPU with native bfloat16, so that `precision: bf16` autocasts whatever CPU
    runs the tests (without it, bf16 falls back to fp32: `uwav.devices.effective_precision`)."""
    import uwav.devices

    monkeypatch.setattr(uwav.devices, "cpu_has_native_bf16", lambda: True)


# ------------------------------------------------------------------ the loopback hub

# What would point a download anywhere but the loopback hub and fresh caches, or forbid it.
_HUB_ENVIRONMENT = ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "UWAV_OFFLINE", "UWAV_WEIGHTS_MIRROR")


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[object]:
    """The loopback hub (`tests.hub_server.LoopbackHub`) as HF_ENDPOINT, empty Hugging Face and
    torch hub caches under tmp_path."""
    from tests.hub_server import LoopbackHub

    with LoopbackHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
        for name in _HUB_ENVIRONMENT:
            monkeypatch.delenv(name, raising=False)
        yield server
