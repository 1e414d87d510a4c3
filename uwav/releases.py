"""`uwav release fetch`: a public feature release, downloaded from the Hugging Face Hub and
unpacked into the layout `stages.features.source: released` reads (`uwav.features.released`).

- `uwav`: UWAV's CLIP / CLAP features (`NTUBarista/uwav_features`, a dataset repository):
  `LLP_CLIP.zip` -> `LLP/feats_CLIP/`, `LLP_CLAP.zip` -> `LLP/feats_CLAP/`, `UnAV_CLIP.zip` ->
  `UnAV/feats_CLIP/`, `UnAV_CLAP.zip` -> `UnAV/feats_CLAP/` (each holding `segment_feats/` and
  `event_feats/`), as the release's README places them.
- `valor`: VALOR's (`NTUBarista/valor_features`): `CLIP.zip` -> `CLIP/`, `CLAP.zip` -> `CLAP/`
  (`features/`, `segment_pseudo_labels/`), and its trained HANs (`NTUBarista/valor_trained_models`,
  a model repository) -> `models/model_VALOR{,+,++}/checkpoint_best.pt`.

Downloads resume: the bytes of an interrupted download stay in `OUT/.uwav-downloads/` under the
file's content hash, and the next call asks the hub only for the rest. A finished download is
checked against the hub's content hash (SHA-256 of git-lfs files) before use, so a partial or
corrupted file never passes for the archive. An archive is unpacked with or without one folder
wrapping its content, refusing members that would land outside the target (absolute paths, `..`,
links), checking every member's CRC, into a temporary folder renamed into place once complete.
`OUT/.uwav-release.json` records what was unpacked; a second call finds everything there and
opens no connection. The LLP annotations, the AVVP features and UnAV-100's annotations are not
on the hub: the command says where they are (`ELSEWHERE`), it does not scrape them.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from uwav.atomic import atomic_dir, write_text_atomic
from uwav.errors import error_line
from uwav.hub import DownloadError, content_matches, hub_endpoint, hub_source, offline_reason

MARKER = ".uwav-release.json"
DOWNLOADS = ".uwav-downloads"


@dataclass(frozen=True)
class ReleaseFile:
    """One file of a release: where it is on the hub and where it goes under `--out`. An archive
    (`.zip`) is unpacked into the folder `target`, whose content must have the entries `expect`;
    another file is placed at the path `target`."""

    repo_id: str
    repo_type: str  # "dataset" | "model"
    filename: str
    target: str
    expect: tuple[str, ...] = ()

    @property
    def archive(self) -> bool:
        return self.filename.endswith(".zip")

    @property
    def source(self) -> str:
        return hub_source(self.repo_id, self.filename, self.repo_type)


_UWAV_FEATURES = "NTUBarista/uwav_features"
_VALOR_FEATURES = "NTUBarista/valor_features"
_VALOR_MODELS = "NTUBarista/valor_trained_models"
RELEASES: dict[str, tuple[ReleaseFile, ...]] = {
    "uwav": tuple(
        ReleaseFile(
            _UWAV_FEATURES, "dataset", f"{dataset}_{encoder}.zip", f"{dataset}/feats_{encoder}", ("segment_feats", "event_feats")
        )
        for dataset in ("LLP", "UnAV")
        for encoder in ("CLIP", "CLAP")
    ),
    "valor": (
        *(ReleaseFile(_VALOR_FEATURES, "dataset", f"{encoder}.zip", encoder, ("features",)) for encoder in ("CLIP", "CLAP")),
        *(
            ReleaseFile(_VALOR_MODELS, "model", f"{model}/checkpoint_best.pt", f"models/{model}/checkpoint_best.pt")
            for model in ("model_VALOR", "model_VALOR+", "model_VALOR++")
        ),
    ),
}
# What the layout needs besides the release, and where it comes from ({out}: the --out folder).
_LLP_ANNOTATIONS = "LLP annotations (the 6 AVVP_*.csv files): https://github.com/YapengTian/AVVP-ECCV20/tree/master/data"
_AVVP_FEATURES = (
    "AVVP features (VGGish, ResNet-152, R(2+1)D; the 'feats' folder): Google Drive, "
    "https://drive.google.com/file/d/10CeaI1G9uIyz5dKnd7XTeH9-qOehC7CL/view "
    "(linked from https://github.com/YapengTian/AVVP-ECCV20)"
)
ELSEWHERE: dict[str, tuple[str, ...]] = {
    "uwav": (
        f"{_LLP_ANNOTATIONS} -> {{out}}/LLP/",
        f"{_AVVP_FEATURES} -> {{out}}/LLP/feats/",
        (
            "UnAV-100 annotations (unav100_annotations.json): https://github.com/ttgeng233/UnAV "
            "(Google Drive, linked from its README) -> {out}/UnAV/"
        ),
    ),
    "valor": (
        f"{_LLP_ANNOTATIONS} -> {{out}}/",
        f"{_AVVP_FEATURES} -> {{out}}/feats/",
        (
            "class text embeddings (LLP/feats_{{CLIP,CLAP}}/event_feats/all_event_feats.npy): VALOR ships none, "
            "UWAV's release has them: `uwav release fetch uwav --out {out}`"
        ),
    ),
}


@dataclass(frozen=True)
class Fetched:
    """What `fetch_release` did with one file: `state` is `fetched` or `already there`."""

    file: ReleaseFile
    target: Path
    size: int
    files: int  # files unpacked (1 for a plain file)
    state: str


def _read_marker(out: Path) -> dict[str, dict]:
    path = out / MARKER
    return json.loads(path.read_text())["files"] if path.is_file() else {}


def _download(item: ReleaseFile, downloads: Path) -> tuple[Path, str, int]:
    """The file from the hub into `downloads`, resuming an interrupted download of the same
    content; returns (path, the hub's content hash, size)."""
    from huggingface_hub.file_download import get_hf_file_metadata, hf_hub_url, http_get
    from huggingface_hub.utils import build_hf_headers

    endpoint = hub_endpoint()
    url = hf_hub_url(item.repo_id, item.filename, repo_type=item.repo_type, endpoint=endpoint)
    try:
        metadata = get_hf_file_metadata(url, endpoint=endpoint)
    except Exception as error:  # unreachable hub, missing file, HTTP errors: the cause is what the user needs
        raise DownloadError(f"{item.source}: cannot get its metadata from {url}: {error_line(error)}") from error
    if not metadata.etag or metadata.size is None:
        raise DownloadError(f"{item.source}: {url} answers without a content hash or size (ETag, Content-Length)")
    name = item.filename.replace("/", "__")
    partial = downloads / f"{name}.{metadata.etag}.incomplete"
    downloads.mkdir(parents=True, exist_ok=True)
    for stale in downloads.glob(f"{name}.*.incomplete"):  # an older upstream version's bytes, or too many
        if stale != partial or stale.stat().st_size > metadata.size:
            stale.unlink()
    headers = build_hf_headers()
    if urlsplit(metadata.location).netloc != urlsplit(endpoint).netloc:
        headers.pop("authorization", None)  # a CDN's signed URL: the hub's token stays with the hub
    try:
        with partial.open("ab") as handle:
            http_get(
                metadata.location, handle, resume_size=handle.tell(), headers=headers,
                expected_size=metadata.size, displayed_filename=item.filename,
            )
    except Exception as error:
        raise DownloadError(
            f"{item.source}: the download stopped at {partial.stat().st_size} of {metadata.size} bytes "
            f"({error_line(error)}); run the command again to resume it"
        ) from error
    if content_matches(partial, metadata.etag) is False:
        partial.unlink()
        raise DownloadError(
            f"{item.source}: the downloaded file does not match the hub's content hash {metadata.etag}; deleted it, run again"
        )
    complete = downloads / name
    os.replace(partial, complete)
    return complete, metadata.etag, metadata.size


def _members(archive: zipfile.ZipFile, path: Path) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """The archive's members with their relative paths; refuses any that would land outside."""
    found = []
    for info in archive.infolist():
        relative = PurePosixPath(info.filename.replace("\\", "/"))
        is_link = stat.S_ISLNK(info.external_attr >> 16)
        if relative.is_absolute() or ".." in relative.parts or ":" in relative.parts[0] or is_link:
            raise DownloadError(
                f"{path}: member {info.filename!r} would be written outside the target folder; refused the archive"
            )
        found.append((info, relative))
    return found


def _unpack(archive_path: Path, item: ReleaseFile, target: Path) -> int:
    """Unpack into `target` (which must not exist) through a temporary folder; returns the number of files."""
    try:
        with zipfile.ZipFile(archive_path) as archive:
            members = _members(archive, archive_path)
            tops = {relative.parts[0] for _, relative in members if relative.parts}
            nested = any(len(relative.parts) > 1 for _, relative in members)
            # One folder wrapping everything (`unzip` of it gives e.g. CLIP/features/...) is dropped.
            strip = len(tops) == 1 and nested and next(iter(tops)) not in item.expect
            count = 0
            with atomic_dir(target) as folder:
                for info, relative in members:
                    parts = relative.parts[1:] if strip else relative.parts
                    if not parts:
                        continue
                    destination = folder.joinpath(*parts)
                    if info.is_dir():
                        destination.mkdir(parents=True, exist_ok=True)
                        continue
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(info) as source, destination.open("wb") as sink:
                        shutil.copyfileobj(source, sink, 1 << 20)  # reading to the end checks the member's CRC
                    count += 1
                missing = [entry for entry in item.expect if not (folder / entry).exists()]
                if missing:
                    found = sorted(child.name for child in folder.iterdir())
                    raise DownloadError(
                        f"{archive_path} ({item.source}): its content has no {', '.join(missing)} "
                        f"(found: {', '.join(found) or 'nothing'}); not the layout {target} needs"
                    )
    except zipfile.BadZipFile as error:  # a bad CRC, a truncated or foreign file
        raise DownloadError(f"{archive_path} ({item.source}): not a sound zip archive: {error}") from error
    return count


def fetch_release(name: str, out: Path, report: Callable[[Fetched], None] = lambda _: None) -> list[Fetched]:
    """Download and unpack every file of release `name` (`RELEASES`) under `out`; files recorded
    as done are not asked for again. `report` sees each file as it is done."""
    if name not in RELEASES:
        raise DownloadError(f"unknown release {name!r} (known: {', '.join(RELEASES)})")
    out = Path(out)
    done = _read_marker(out)
    results = []
    for item in RELEASES[name]:
        target = out / item.target
        record = done.get(item.source)
        if record is not None and target.exists():
            result = Fetched(item, target, record["size"], record["files"], "already there")
        else:
            if target.exists():
                raise DownloadError(
                    f"{target} exists but was not fetched by `uwav release fetch`; move it away or choose another --out"
                )
            reason = offline_reason(hub=True)
            if reason is not None:
                raise DownloadError(f"{item.source} is not fetched yet and {reason} forbids downloading it")
            downloaded, etag, size = _download(item, out / DOWNLOADS)
            if item.archive:
                files = _unpack(downloaded, item, target)
                downloaded.unlink()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(downloaded, target)
                files = 1
            done[item.source] = {"etag": etag, "size": size, "files": files, "target": item.target}
            write_text_atomic(out / MARKER, json.dumps({"files": done}, indent=1))
            result = Fetched(item, target, size, files, "fetched")
        report(result)
        results.append(result)
    shutil.rmtree(out / DOWNLOADS, ignore_errors=True)
    return results


def elsewhere(name: str, out: Path) -> list[str]:
    """What the release's layout also needs, which is not on the hub, and where it comes from."""
    return [line.format(out=out) for line in ELSEWHERE[name]]
