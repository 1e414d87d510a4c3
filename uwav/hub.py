"""Downloads as uwav does them: the Hugging Face Hub's endpoint and cache, whether a download may
open a connection at all, and checking a downloaded file against the hub's content hash.

huggingface_hub reads `HF_ENDPOINT`, `HF_HOME` / `HF_HUB_CACHE` and `HF_HUB_OFFLINE` once, when it
is first imported. uwav reads them each time it downloads and hands them to huggingface_hub
explicitly, so a process that sets them later (a notebook, a test) gets the endpoint, cache and
offline mode it set, in-process and in the subprocesses it starts alike.

Offline modes: `HF_HUB_OFFLINE=1` (or transformers' `TRANSFORMERS_OFFLINE=1`) forbids hub
downloads, `UWAV_OFFLINE=1` every download (hub, torch hub, plain URLs). Files already in the
caches are used either way; nothing else opens a connection.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from uwav.errors import UwavError

DEFAULT_ENDPOINT = "https://huggingface.co"
OFFLINE_ENV = "UWAV_OFFLINE"
HUB_OFFLINE_ENVS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's reading of a boolean variable


class DownloadError(UwavError, OSError):
    """A file that cannot be downloaded, or whose download failed its check; the message names the
    file, where it comes from and where it was to go."""


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in _TRUE


def offline_reason(*, hub: bool) -> str | None:
    """The setting that forbids this download (`UWAV_OFFLINE=1`; for hub files also
    `HF_HUB_OFFLINE=1` / `TRANSFORMERS_OFFLINE=1`), or None when it may go ahead."""
    names = (OFFLINE_ENV, *HUB_OFFLINE_ENVS) if hub else (OFFLINE_ENV,)
    return next((f"{name}=1" for name in names if env_flag(name)), None)


def hub_source(repo_id: str, names: str, repo_type: str = "model") -> str:
    """A hub file as messages name it: `hf://[datasets/]ORG/REPO/NAME`."""
    return f"hf://{'datasets/' if repo_type == 'dataset' else ''}{repo_id}/{names}"


def hub_endpoint() -> str:
    """`HF_ENDPOINT` (a mirror of the hub) or huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_cache_dir() -> Path:
    """The Hugging Face cache folder as huggingface_hub resolves it: `HF_HUB_CACHE`, else
    `HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub` (`~/.cache` by default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expandvars(os.environ["HF_HUB_CACHE"])).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def content_matches(path: Path, etag: str) -> bool | None:
    """Whether the file's content is the one the hub's ETag names: the SHA-256 for files stored
    with git-lfs (64 hex digits), the git blob SHA-1 for others (40); None for any other ETag,
    which names no content."""
    etag = etag.lower()
    if len(etag) == 64:
        digest = hashlib.sha256()
    elif len(etag) == 40:
        digest = hashlib.sha1()
        digest.update(b"blob %d\0" % path.stat().st_size)
    else:
        return None
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest() == etag
