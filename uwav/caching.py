"""Stage completion records and the run lock (ARCHITECTURE.md, "Caching and resumption").

A stage's fingerprint (`uwav.stages.planner`) hashes its settings, the fingerprints of its inputs
and the source of the code it runs (`code_files`: a module and the uwav modules it imports, which
also key other caches of computed results, such as the synthetic world's trained encoders). Outputs of a stage live under `runs/<stage>/<fingerprint>/`; the record
`runs/state/<stage>.json` names the fingerprint whose outputs are current and is written last,
through a temporary file and a rename, so a crash never leaves a record pointing at half-written
outputs. An unchanged fingerprint with a record means the stage is skipped, in Prefect and
through `uwav run` alike.
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from uwav.atomic import write_text_atomic
from uwav.errors import InvalidInputError, UwavError


class PipelineLockedError(UwavError, TimeoutError):
    """Another `uwav run` holds the catalog's lock past the wait (a TimeoutError: Prefect retries it)."""


def stable_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def text_fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_fingerprint(path: str | Path) -> str:
    """Content hash of a file, or of every file under a folder (names and contents)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


PACKAGE_ROOT = Path(__file__).resolve().parent

# Modules that cannot change a computed result, left out of code fingerprints: the catalog's
# effect reaches a stage only through the setting values (fingerprinted as values), and the
# rest is bookkeeping around the computation (errors, records, how files are written, the planner).
NOT_STAGE_CODE: frozenset[str] = frozenset(
    {"catalog.py", "recipes.py", "errors.py", "caching.py", "atomic.py", "stages/__init__.py", "stages/planner.py"}
)


def _module_file(root: Path, dotted: str) -> str | None:
    """Package-relative source file of a uwav module ('uwav.training.losses' -> 'training/losses.py')."""
    parts = dotted.split(".")[1:]
    if not parts:
        return "__init__.py"
    for candidate in ("/".join(parts) + ".py", "/".join(parts) + "/__init__.py"):
        if (root / candidate).is_file():
            return candidate
    return None


@lru_cache(maxsize=1024)
def _imported_files(root: Path, relative: str) -> frozenset[str]:
    """uwav modules that a source file imports, at module level or inside functions.

    `from uwav.a import b` counts `a/b.py` when b is a module, else `a/__init__.py` (whose own
    imports are then followed); `import uwav.a.b` counts `a/b.py` alone."""
    package = ["uwav", *Path(relative).parent.parts]
    found: set[str] = set()
    for node in ast.walk(ast.parse((root / relative).read_text(), relative)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.split(".")[0] == "uwav"]
            found.update(filter(None, (_module_file(root, name) for name in names)))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
            if base.split(".")[0] != "uwav":
                continue
            for alias in node.names:
                submodule = _module_file(root, f"{base}.{alias.name}")
                parent = _module_file(root, base)
                found.update(filter(None, (submodule if submodule is not None else parent,)))
    return frozenset(found)


@lru_cache(maxsize=64)
def code_files(module: str, root: Path = PACKAGE_ROOT) -> tuple[str, ...]:
    """Package-relative files of the code `module` (a package-relative path) runs: the module, the
    uwav modules it imports (transitively, less NOT_STAGE_CODE), and the data files (JSON) in the
    subfolders those modules name in their source (`features/encoders.py` reads `model_configs/*.json`)."""
    pending, seen = [module], set()
    while pending:
        current = pending.pop()
        if current in seen or current in NOT_STAGE_CODE:
            continue
        seen.add(current)
        pending.extend(_imported_files(root, current))
    data = {
        str(path.relative_to(root))
        for module in seen
        for folder in (root / module).parent.iterdir()
        if folder.is_dir() and f"{folder.name}/" in (root / module).read_text()
        for path in folder.rglob("*.json")
    }
    return tuple(sorted(seen | data))


@lru_cache(maxsize=64)
def code_fingerprint(module: str, root: Path = PACKAGE_ROOT) -> str:
    """Hash of the names and contents of `code_files(module)`."""
    digest = hashlib.sha256()
    for relative in code_files(module, root):
        digest.update(relative.encode())
        digest.update((root / relative).read_bytes())
    return digest.hexdigest()[:16]


@dataclass
class StageRecord:
    """What a finished stage left: its fingerprint, outputs (name -> location) and summary metrics."""

    stage: str
    fingerprint: str
    outputs: dict[str, str]
    metrics: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    finished_at: float = field(default_factory=time.time)
    seconds: float = 0.0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StageRecord:
        return cls(**data)


class StateDir:
    """The `runs/state/` folder of a catalog: one record per stage, plus a lock for whole runs."""

    def __init__(self, runs_dir: str | Path) -> None:
        self.runs_dir = Path(runs_dir)
        self.path = self.runs_dir / "state"

    def stage_dir(self, stage: str, stage_fingerprint: str) -> Path:
        return self.runs_dir / stage / stage_fingerprint

    def record(self, stage: str) -> StageRecord | None:
        path = self.path / f"{stage}.json"
        if not path.exists():
            return None
        try:
            return StageRecord.from_json(json.loads(path.read_text()))
        except (ValueError, TypeError) as error:  # bad JSON, bad UTF-8, or not a record's fields
            raise InvalidInputError(f"{path}: unreadable stage record ({error}); delete it to recompute {stage}") from None

    def write(self, record: StageRecord) -> None:
        write_text_atomic(self.path / f"{record.stage}.json", json.dumps(asdict(record), indent=2, default=str))

    def forget(self, stage: str) -> None:
        (self.path / f"{stage}.json").unlink(missing_ok=True)

    @contextmanager
    def lock(self, timeout_s: float = 3600.0) -> Iterator[None]:
        """Exclusive lock for one pipeline run on this catalog; a second run waits, then fails clearly."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock_path = self.path / "pipeline.lock"
        with lock_path.open("a+") as handle:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise PipelineLockedError(f"{lock_path}: another uwav run holds the lock") from None
                    time.sleep(0.2)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
