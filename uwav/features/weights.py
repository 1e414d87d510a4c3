"""Encoder weights from the hubs: what each file is, where it lies in the standard caches, and
getting it there on first use.

- `HubFile`: a file of a Hugging Face repository (open_clip's pretrained tags and `hf-hub:` models,
  laion_clap's released checkpoints, RoBERTa's config and tokenizer for CLAP's text branch),
  downloaded by huggingface_hub into its cache (`HF_HOME`; `HF_ENDPOINT` names a mirror of the
  hub). A fresh download is checked against the content hash the hub gives for it.
- `UrlFile`: a file at a plain URL whose name carries the first hex digits of its SHA-256 (torch
  hub's convention: torchvision's weights, torchvggish's), downloaded by torch.hub into its cache
  (`TORCH_HOME`) and refused unless the digits match. A mirror (`encoders.weights_mirror`, or the
  environment's `UWAV_WEIGHTS_MIRROR`, which wins) serves the same files under the same names.

A file in the cache is used as it is, without contacting anything, so a run after
`uwav weights fetch` opens no connection. A missing file is downloaded, with a progress bar,
unless downloads are off (`uwav.hub.offline_reason`); then the error names the file, the cache
and the command that fills it. Either library writes to a temporary file and renames it only once
complete, so a partial download never passes for a complete one.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from uwav.errors import error_line
from uwav.features.encoder_base import EncoderError, file_digest
from uwav.hub import content_matches, hub_cache_dir, hub_endpoint, hub_source, offline_reason

MIRROR_ENV = "UWAV_WEIGHTS_MIRROR"
FETCH_COMMAND = "uwav weights fetch -c CATALOG"
_IDENTITY_DIGITS = 16  # of a content hash in an encoder identity, as `file_digest` gives for local files


class WeightsError(EncoderError):
    """Weights that are not in the cache and cannot be downloaded (offline, or the download failed
    or did not match its hash); the message names the file, its source and the cache."""


def weights_mirror(setting: str | None) -> str | None:
    """Where URL weights come from instead of their upstream: `UWAV_WEIGHTS_MIRROR`, else the
    catalog's `encoders.weights_mirror`, else None (upstream)."""
    return os.environ.get(MIRROR_ENV) or setting


@dataclass(frozen=True)
class HubFile:
    """The first of `filenames` that the Hugging Face model repository `repo_id` has (open_clip's
    weights come as safetensors or as a torch pickle)."""

    repo_id: str
    filenames: tuple[str, ...]

    @property
    def source(self) -> str:
        names = self.filenames[0] if len(self.filenames) == 1 else "{" + ",".join(self.filenames) + "}"
        return hub_source(self.repo_id, names)

    def cache_folder(self) -> Path:
        from huggingface_hub.file_download import repo_folder_name

        return hub_cache_dir() / repo_folder_name(repo_id=self.repo_id, repo_type="model")

    def offline_reason(self) -> str | None:
        return offline_reason(hub=True)

    def cached(self) -> Path | None:
        from huggingface_hub import try_to_load_from_cache

        for name in self.filenames:
            found = try_to_load_from_cache(self.repo_id, name, cache_dir=hub_cache_dir())
            if isinstance(found, str):  # not None, nor the marker of a file the repository lacks
                return Path(found)
        return None

    def download(self, what: str, mirror: str | None) -> Path:
        """Through huggingface_hub into its cache (from `HF_ENDPOINT`, the hub's own mirror setting,
        not `mirror`, which serves URL files)."""
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import RemoteEntryNotFoundError

        for name in self.filenames:
            try:
                path = Path(
                    hf_hub_download(self.repo_id, name, cache_dir=hub_cache_dir(), endpoint=hub_endpoint())
                )
            except RemoteEntryNotFoundError:
                continue  # the repository has no such file: try the next name
            except Exception as error:  # network, HTTP and disk failures alike: the user needs the cause
                raise WeightsError(
                    f"{what}: cannot download {self.source} from {hub_endpoint()} into {self.cache_folder()}: "
                    f"{error_line(error)}"
                ) from error
            blob = path.resolve()
            if content_matches(blob, blob.name) is False:  # the blob is named by the hub's content hash
                path.unlink(missing_ok=True)
                blob.unlink(missing_ok=True)
                raise WeightsError(
                    f"{what}: the download of {self.source} does not match the hub's content hash {blob.name}; removed it"
                )
            return path
        raise WeightsError(f"{what}: the Hugging Face repository {self.repo_id!r} has none of {', '.join(self.filenames)}")

    def identity(self, path: Path) -> str:
        """Repository, file and content (the hub's content hash, which names the cached blob)."""
        blob = path.resolve()
        content = blob.name[:_IDENTITY_DIGITS] if blob.parent.name == "blobs" else file_digest(blob)
        return f"{self.repo_id}/{path.name}@{content}"


@dataclass(frozen=True)
class UrlFile:
    """A file at a URL whose name ends in `-<first hex digits of its SHA-256>.<ext>`."""

    url: str

    def __post_init__(self) -> None:
        if self.hash_prefix is None:
            raise EncoderError(
                f"weights URL {self.url}: the file name carries no hash (torch hub's `name-<sha256 prefix>.ext`)"
            )

    @property
    def name(self) -> str:
        return posixpath.basename(urlsplit(self.url).path)

    @property
    def hash_prefix(self) -> str | None:
        from torch.hub import HASH_REGEX

        found = HASH_REGEX.search(self.name)
        return found.group(1) if found else None

    @property
    def source(self) -> str:
        return self.url

    def cache_folder(self) -> Path:
        import torch.hub

        return Path(torch.hub.get_dir()) / "checkpoints"  # where torch.hub.load_state_dict_from_url keeps them

    def cached(self) -> Path | None:
        path = self.cache_folder() / self.name
        return path if path.is_file() else None

    def offline_reason(self) -> str | None:
        return offline_reason(hub=False)

    def download(self, what: str, mirror: str | None) -> Path:
        """Through torch.hub, from `mirror` when given, refused unless the content has the name's hash."""
        import torch.hub

        url = f"{mirror.rstrip('/')}/{self.name}" if mirror else self.url
        path = self.cache_folder() / self.name
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(path), hash_prefix=self.hash_prefix, progress=True)
        except Exception as error:  # HTTP errors, a wrong hash (RuntimeError), disk failures
            raise WeightsError(f"{what}: cannot download {url} into {path}: {error_line(error)}") from error
        return path

    def identity(self, path: Path) -> str:
        return self.name  # the name carries the content's hash


WeightFile = HubFile | UrlFile


@dataclass(frozen=True)
class LocalWeights:
    """A weights file in its cache."""

    file: WeightFile
    path: Path

    @property
    def identity(self) -> str:
        return self.file.identity(self.path)

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def fetch_weights(files: Sequence[WeightFile], *, what: str, mirror: str | None) -> list[LocalWeights]:
    """Each file from its cache, downloaded first when missing (`what` names the encoder in messages)."""
    found = []
    for file in files:
        path = file.cached()
        if path is None:
            reason = file.offline_reason()
            if reason is not None:
                raise WeightsError(
                    f"{what}: weights file {file.source} is not in the cache {file.cache_folder()} and {reason} "
                    f"forbids downloading it; run `{FETCH_COMMAND}` on a machine with network and copy its cache here"
                )
            path = file.download(what, mirror)
        found.append(LocalWeights(file, path))
    return found


def weights_identity(weights: Sequence[LocalWeights]) -> str:
    """The files' identities joined, for an encoder identity."""
    return "+".join(item.identity for item in weights)

