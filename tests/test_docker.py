"""docker/: the image and the compose stack, validated statically (no Docker daemon here).

The compose file is read the way `docker compose` reads it: YAML, then `${VAR...}` interpolation
with the values a user gets from `cp .env.example .env`. The resolved configuration is then
checked service by service; Prefect's own settings model confirms it reads the variable names used.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import tomllib
from collections.abc import Mapping
from fnmatch import fnmatch
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKER_DIR = REPO_ROOT / "docker"
COMPOSE_FILE = DOCKER_DIR / "compose.yaml"
ENV_EXAMPLE = DOCKER_DIR / ".env.example"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


# ------------------------------------------------------------------ compose interpolation


class MissingVariable(LookupError):
    pass


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")


def interpolate(text: str, env: Mapping[str, str], uses: list[tuple[str, str, str]] | None = None) -> str:
    """Compose's substitution: `$$`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`,
    `${VAR?error}`, `${VAR:+alt}`, `${VAR+alt}`, defaults nested. Records (name, operator, raw
    argument) of every use in `uses`. Unbraced `$VAR` is refused: this project always braces."""
    value, end = _interpolate_until(text, 0, env, uses, closing=False)
    assert end == len(text)
    return value


def _interpolate_until(
    text: str, start: int, env: Mapping[str, str], uses: list[tuple[str, str, str]] | None, *, closing: bool
) -> tuple[str, int]:
    out: list[str] = []
    i = start
    while i < len(text):
        char = text[i]
        if closing and char == "}":
            return "".join(out), i
        if char != "$":
            out.append(char)
            i += 1
            continue
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        if not text.startswith("${", i):
            raise AssertionError(f"unbraced or stray '$' in {text!r}: write ${{NAME}}")
        name_match = _NAME.match(text, i + 2)
        assert name_match, f"bad variable reference in {text!r}"
        name, i = name_match.group(), name_match.end()
        operator = next((op for op in _OPERATORS if text.startswith(op, i)), "")
        i += len(operator)
        argument_start = i
        argument, i = _interpolate_until(text, i, env, uses, closing=True) if operator else ("", i)
        assert text.startswith("}", i), f"unclosed ${{{name} in {text!r}"
        if uses is not None:
            uses.append((name, operator, text[argument_start:i]))
        i += 1
        is_set, is_non_empty = name in env, bool(env.get(name))
        if operator == ":-":
            out.append(env[name] if is_non_empty else argument)
        elif operator == "-":
            out.append(env[name] if is_set else argument)
        elif operator in (":?", "?"):
            if not (is_non_empty if operator == ":?" else is_set):
                raise MissingVariable(f"{name}: {argument}")
            out.append(env[name])
        elif operator == ":+":
            out.append(argument if is_non_empty else "")
        elif operator == "+":
            out.append(argument if is_set else "")
        else:
            out.append(env.get(name, ""))
    assert not closing, f"unclosed '${{' in {text!r}"
    return "".join(out), i


def interpolate_tree(node: Any, env: Mapping[str, str], uses: list[tuple[str, str, str]] | None = None) -> Any:
    if isinstance(node, str):
        return interpolate(node, env, uses)
    if isinstance(node, list):
        return [interpolate_tree(item, env, uses) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env, uses) for key, value in node.items()}
    return node


def read_env_example() -> tuple[dict[str, str], dict[str, str]]:
    """(set variables, commented-out variables) of .env.example, each name -> value."""
    active: dict[str, str] = {}
    commented: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if match := re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line.strip()):
            active[match[1]] = match[2]
        elif match := re.fullmatch(r"#\s*([A-Z][A-Z0-9_]*)=(.*)", line.strip()):
            commented[match[1]] = match[2]
    return active, commented


RAW_COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
EXAMPLE_ENV, COMMENTED_ENV = read_env_example()
COMPOSE: dict[str, Any] = interpolate_tree(RAW_COMPOSE, EXAMPLE_ENV)
SERVICES: dict[str, Any] = COMPOSE["services"]


def variable_uses() -> list[tuple[str, str, str]]:
    uses: list[tuple[str, str, str]] = []
    interpolate_tree(RAW_COMPOSE, EXAMPLE_ENV, uses)
    return uses


def environment(service: str) -> dict[str, str]:
    env = SERVICES[service].get("environment", {})
    if isinstance(env, list):  # `- KEY=value` form
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def mounts(service: str) -> list[tuple[str, str]]:
    """(source, container path) of each volume in short syntax."""
    found = []
    for volume in SERVICES[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        found.append((source, target))
    return found


def is_inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def option_value(command: list[str], option: str) -> str:
    assert option in command, f"{option} missing from {command}"
    return command[command.index(option) + 1]


# ------------------------------------------------------------------ Dockerfile parsing


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += " " + stripped
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        keyword, _, arguments = pending.strip().partition(" ")
        instructions.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


INSTRUCTIONS = dockerfile_instructions()


def dockerfile_args() -> dict[str, str]:
    return dict(
        arguments.split("=", 1) for keyword, arguments in INSTRUCTIONS if keyword == "ARG" and "=" in arguments
    )


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, arguments in INSTRUCTIONS:
        if keyword == "ENV":
            env.update(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", arguments))
    return env


def run_commands() -> list[str]:
    return [arguments for keyword, arguments in INSTRUCTIONS if keyword == "RUN"]


def exec_form(keyword: str) -> list[str]:
    values = [arguments for name, arguments in INSTRUCTIONS if name == keyword]
    assert values, f"Dockerfile has no {keyword}"
    return yaml.safe_load(values[-1])  # JSON array = exec form; YAML reads JSON


# ------------------------------------------------------------------ compose: variables


def test_every_variable_has_a_default_or_is_set_in_env_example() -> None:
    documented = EXAMPLE_ENV | COMMENTED_ENV
    for name, operator, _ in variable_uses():
        assert name in documented, f"compose.yaml reads ${{{name}}}, which .env.example does not list"
        if operator not in (":-", "-"):
            assert name in EXAMPLE_ENV, f"${{{name}}} has no default: .env.example must set it"
    with pytest.raises(MissingVariable, match="POSTGRES_PASSWORD"):
        interpolate_tree(RAW_COMPOSE, {})  # the one required setting fails loudly, with its name


def test_env_example_lists_only_used_variables_with_the_compose_defaults() -> None:
    uses = variable_uses()
    used = {name for name, _, _ in uses}
    stale = set(EXAMPLE_ENV | COMMENTED_ENV) - used
    assert not stale, f".env.example lists variables compose.yaml never reads: {sorted(stale)}"
    for name, operator, raw_default in uses:
        if operator != ":-":
            continue
        default = interpolate(raw_default, EXAMPLE_ENV)
        documented = EXAMPLE_ENV.get(name)
        if documented is not None:
            assert documented == default, f"{name}: .env.example says {documented!r}, compose defaults to {default!r}"
    defaults: dict[str, set[str]] = {}
    for name, operator, raw_default in uses:
        if operator == ":-":
            defaults.setdefault(name, set()).add(raw_default)
    assert all(len(values) == 1 for values in defaults.values()), f"one variable, several defaults: {defaults}"


# ------------------------------------------------------------------ compose: services


def test_the_three_services_and_their_named_volumes() -> None:
    assert set(SERVICES) == {"postgres", "prefect-server", "worker"}
    declared = set(COMPOSE.get("volumes") or {})
    for service in SERVICES:
        for source, target in mounts(service):
            if not source.startswith((".", "/")):  # a name, not a host path
                assert source in declared, f"{service}: volume {source!r} ({target}) is not declared"


def test_postgres_keeps_its_data_in_a_named_volume_and_has_a_healthcheck() -> None:
    postgres = SERVICES["postgres"]
    assert postgres["image"].startswith("postgres:")
    data_mounts = [source for source, target in mounts("postgres") if target == "/var/lib/postgresql/data"]
    assert data_mounts and data_mounts[0] in COMPOSE["volumes"], "postgres data must live in a named volume"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"} <= set(environment("postgres"))


def test_prefect_server_listens_on_4200_publishes_it_and_uses_postgres_through_asyncpg() -> None:
    server = SERVICES["prefect-server"]
    command = server["command"]
    assert command[:3] == ["prefect", "server", "start"]
    assert option_value(command, "--host") == "0.0.0.0"
    assert option_value(command, "--port") == "4200"
    published = [port.rsplit(":", 1)[-1].split("/")[0] for port in server["ports"]]
    assert "4200" in published, f"container port 4200 is not published: {server['ports']}"
    assert server["ports"][published.index("4200")].rsplit(":", 2)[-2] == EXAMPLE_ENV["PREFECT_PORT"]

    url = urlsplit(environment("prefect-server")["PREFECT_SERVER_DATABASE_CONNECTION_URL"])
    postgres_env = environment("postgres")
    assert url.scheme == "postgresql+asyncpg"
    assert (url.hostname, url.port) == ("postgres", 5432), "the database host must be the postgres service"
    assert url.username == postgres_env["POSTGRES_USER"] and url.password == postgres_env["POSTGRES_PASSWORD"]
    assert url.path.lstrip("/") == postgres_env["POSTGRES_DB"]
    assert environment("prefect-server")["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "/api/health" in " ".join(server["healthcheck"]["test"])


def test_worker_serves_the_catalog_from_a_mounted_workspace_on_a_gpu() -> None:
    worker = SERVICES["worker"]
    command = worker["command"]
    assert command[:2] == ["uwav", "serve"]
    catalog = option_value(command, "--catalog")
    bind_targets = [target for source, target in mounts("worker") if source.startswith((".", "/"))]
    assert any(is_inside(catalog, target) for target in bind_targets), (
        f"the catalog {catalog} must be inside a host folder mounted into the worker ({bind_targets})"
    )
    image_env = dockerfile_env()
    for cache in ("HF_HOME", "TORCH_HOME"):
        assert any(is_inside(image_env[cache], target) for target in bind_targets), f"{cache} is not on a mount"

    api = urlsplit(environment("worker")["PREFECT_API_URL"])
    server_port = option_value(SERVICES["prefect-server"]["command"], "--port")
    assert (api.scheme, api.hostname, str(api.port), api.path) == ("http", "prefect-server", server_port, "/api")
    assert worker["depends_on"]["prefect-server"]["condition"] == "service_healthy"

    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        device["driver"] == "nvidia" and "gpu" in device["capabilities"] and device.get("count") in (1, "all")
        for device in devices
    ), f"no NVIDIA GPU reservation: {devices}"


def test_server_and_worker_run_the_same_uwav_image_built_from_this_repository() -> None:
    server, worker = SERVICES["prefect-server"], SERVICES["worker"]
    assert server["image"] == worker["image"], "client and server Prefect versions must come from one image"
    for service in (server, worker):
        context = (DOCKER_DIR / service["build"]["context"]).resolve()
        assert context == REPO_ROOT and (context / service["build"]["dockerfile"]).resolve() == DOCKERFILE
        assert set(service["build"].get("args", {})) <= set(dockerfile_args()), "build arg the Dockerfile lacks"


def test_prefect_reads_the_settings_the_containers_are_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names Prefect 3 does not read would be silently ignored: build its settings from each container's env."""
    from prefect.settings import Settings

    def settings_for(service: str) -> Settings:
        # The suite's isolated PREFECT_HOME stays: the image's home exists only in the image.
        for name in [name for name in os.environ if name.startswith("PREFECT_") and name != "PREFECT_HOME"]:
            monkeypatch.delenv(name)
        for name, value in (dockerfile_env() | environment(service)).items():
            if name.startswith("PREFECT_") and name != "PREFECT_HOME":
                monkeypatch.setenv(name, value)
        return Settings()

    server = settings_for("prefect-server")
    url = server.server.database.connection_url
    assert url is not None and url.get_secret_value().startswith("postgresql+asyncpg://")
    assert server.server.analytics_enabled is False
    assert server.server.ui.api_url == f"http://localhost:{EXAMPLE_ENV['PREFECT_PORT']}/api"
    assert is_inside(str(server.server.ui.static_directory), dockerfile_env()["PREFECT_HOME"]), (
        "the UI bundle must be written under the non-root user's PREFECT_HOME"
    )
    worker = settings_for("worker")
    assert worker.api.url == environment("worker")["PREFECT_API_URL"]


def test_the_worker_command_is_a_valid_uwav_serve_invocation() -> None:
    import typer.main

    from uwav.cli import app

    cli = typer.main.get_command(app)
    command = SERVICES["worker"]["command"]
    assert "serve" in cli.commands, "uwav.cli has no `serve` command, which the worker runs"  # type: ignore[attr-defined]
    serve = cli.commands["serve"]  # type: ignore[attr-defined]
    context = serve.make_context("serve", list(command[2:]))  # parses the options, runs nothing
    assert str(context.params["catalog"]) == option_value(command, "--catalog")


# ------------------------------------------------------------------ Dockerfile


def _torch_cuda_major() -> int:
    torch_pin = next(dep for dep in PYPROJECT["project"]["dependencies"] if dep.startswith("torch=="))
    if importlib.metadata.version("torch") != torch_pin.removeprefix("torch=="):
        pytest.skip(f"installed torch {importlib.metadata.version('torch')} is not the pinned {torch_pin}")
    for requirement in importlib.metadata.requires("torch") or []:
        if match := re.match(r"(?:cuda-toolkit\S*|nvidia-cuda-runtime(?:-cu\d+)?)\s*==\s*(\d+)\.", requirement):
            return int(match[1])
    pytest.skip("the installed torch wheel names no CUDA runtime (a CPU build): nothing to compare the image with")


def test_dockerfile_builds_on_a_cuda_runtime_image_matching_torchs_cuda() -> None:
    base = next(arguments for keyword, arguments in INSTRUCTIONS if keyword == "FROM")
    base = re.sub(r"\$\{(\w+)\}", lambda match: dockerfile_args()[match[1]], base)
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.\d+\.\d+-(base|runtime|cudnn-runtime)-ubuntu\d+\.\d+", base)
    assert match, f"FROM {base}: expected an nvidia/cuda base or runtime image (no devel: nothing is compiled)"
    assert int(match[1]) == _torch_cuda_major(), f"{base} vs torch's CUDA {_torch_cuda_major()}"


def test_dockerfile_installs_python_311_and_the_package_without_extras() -> None:
    runs = run_commands()
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"
    assert any(re.search(r"apt-get install .*\bpython3\.11\b", run) for run in runs), "Python 3.11 not installed"
    assert any("python3.11 -m venv" in run for run in runs)
    copies = [arguments.split() for keyword, arguments in INSTRUCTIONS if keyword == "COPY"]
    repo_destinations = [parts[-1] for parts in copies if parts[0] == "."]
    assert repo_destinations, "the repository is never copied into the image"
    installs = [run for run in runs if re.search(rf"pip install {re.escape(repo_destinations[0])}(\s|$)", run)]
    assert installs, f"no `pip install {repo_destinations[0]}` of the copied repository"
    assert not any(re.search(r"pip install (-e|--editable)|\[test\]", run) for run in runs), "dev install in image"


def test_dockerfile_runs_uwav_as_a_non_root_user() -> None:
    users = [arguments for keyword, arguments in INSTRUCTIONS if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"final USER is {users[-1:] or 'root'}"
    assert any("useradd" in run and users[-1] in run for run in run_commands()), f"user {users[-1]} never created"
    assert exec_form("CMD")[0] == "uwav" and "uwav" in PYPROJECT["project"]["scripts"]
    entrypoint = exec_form("ENTRYPOINT")
    assert entrypoint[-1] == "--" and "tini" in entrypoint[0], "PID 1 must forward signals to uwav"


# ------------------------------------------------------------------ .dockerignore


def test_dockerignore_keeps_local_state_out_and_the_package_in() -> None:
    patterns = [
        line.strip().strip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(pattern.startswith("!") for pattern in patterns), "negations: update this check"

    def ignored(path: str) -> bool:
        return any(fnmatch(path, pattern) for pattern in patterns)

    for path in (".venv", "runs", "store", ".git", "docker/.env"):
        assert ignored(path), f".dockerignore must exclude {path}"
    for path in ("pyproject.toml", "README.md", "uwav", "flows", "docker/Dockerfile"):
        assert not ignored(path), f".dockerignore excludes {path}, which the image build needs"
