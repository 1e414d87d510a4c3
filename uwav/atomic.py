"""Atomic writes of files and folders: readers see the old content or the new, never a part of it.

Everything is written under a temporary dot-name beside its destination (the same file system, so
the final rename is atomic) and renamed into place; a failed write removes its temporary. Temporary
names are `.<name>.<pid>.<random>.tmp`, unique per process and per call, so concurrent writers of
one path never share one (the last rename wins). They keep no extension of their own so that a
reader globbing `*.parquet` never sees a half-written file.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.\d+\.[0-9a-f]{8}\.(?P<kind>tmp|old)$")


def _sibling(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.{kind}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    # Bottom-up: a folder is synced after the entries it names.
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            _fsync(Path(folder, name))
        _fsync(Path(folder))


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path` for a writer to create; on success it is renamed over
    `path`, on failure removed. Creates the parent folder.

    The temporary path has no meaningful extension: give writers that add one (`np.save` appends
    `.npy`) an open file instead: `with atomic_path(p) as tmp, open(tmp, "wb") as f: np.save(f, a)`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` atomically (creating the parent folder); returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (creating the parent folder); returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


@contextmanager
def atomic_dir(path: str | os.PathLike[str], *, durable: bool = False) -> Iterator[Path]:
    """Yield a new empty folder beside `path` to fill; on success it replaces `path` as a whole, on
    failure it is removed. Creates the parent folder.

    A folder cannot be renamed over a non-empty one, so an existing `path` is first renamed aside
    and deleted only once the new folder is in place: at every instant one of the two exists, and
    after a crash `clean_interrupted(path.parent)` puts the old copy back if the new one never landed.
    durable: fsync every file and folder written before the rename, and the parent after it, so
    that the new folder also survives a power loss.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        if durable:
            _fsync_tree(tmp)
        if path.exists():
            old = _sibling(path, "old")
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if durable:
        _fsync(path.parent)


def clean_interrupted(directory: str | os.PathLike[str]) -> None:
    """Undo what crashed atomic writes left in `directory`: remove their temporaries, and put back
    an old folder (`atomic_dir`) whose replacement never landed. Run it only while nothing writes
    there: it cannot tell a crashed writer's temporary from a live one's."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for entry in sorted(directory.iterdir()):
        match = _LEFTOVER.match(entry.name)
        if match is None:
            continue
        final = directory / match["name"]
        if match["kind"] == "old" and not final.exists():
            os.rename(entry, final)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
