"""Probe every video of a manifest (container headers only, no decoding) before features are computed.

The manifest's `n_segments` is authoritative (labels are defined on it). Media with fewer
segments than the manifest, or media that cannot be opened, are quarantined and their
`media_path` is cleared so later stages do not try them again; media with more segments are used
and cut to the manifest's count. Probe results are cached by (path, size, modification time), so
a re-run (new videos arriving) probes only new or changed files, and a cluster can fill the cache
in shards (`probe_paths`) before the stage runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl

from uwav.atomic import atomic_path
from uwav.contracts import n_segments_for_duration
from uwav.media.decode import MediaError, probe_duration
from uwav.media.quarantine import QuarantineLog

STAGE = "segment"
PROBE_SCHEMA: dict[str, pl.DataType] = {
    "path": pl.String(),
    "size": pl.Int64(),
    "mtime_ns": pl.Int64(),
    "duration_s": pl.Float64(),  # null when the media cannot be used
    "reason": pl.String(),  # why not, else null
}


def _probe_one(path: str) -> dict:
    try:
        stat = os.stat(path)
    except OSError as error:
        return {"path": path, "size": -1, "mtime_ns": -1, "duration_s": None, "reason": f"cannot stat: {error.strerror}"}
    try:
        duration, reason = probe_duration(path), None
    except MediaError as error:
        duration, reason = None, error.reason
    return {"path": path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "duration_s": duration, "reason": reason}


def probe_paths(paths: Sequence[str], *, workers: int = 2) -> pl.DataFrame:
    """Probe results (PROBE_SCHEMA) of `paths`; PyAV releases the GIL while it reads, so threads overlap."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = list(pool.map(_probe_one, paths))
    return pl.DataFrame(rows, schema=PROBE_SCHEMA)


def load_probe_cache(path: Path) -> pl.DataFrame:
    return pl.read_parquet(path).select(list(PROBE_SCHEMA)) if Path(path).exists() else pl.DataFrame(schema=PROBE_SCHEMA)


def update_probe_cache(path: Path, rows: pl.DataFrame) -> None:
    """Merge new probe results into the cache file (the newest result of a path wins), atomically."""
    merged = pl.concat([load_probe_cache(path), rows.select(list(PROBE_SCHEMA))]).unique("path", keep="last")
    with atomic_path(path) as tmp:
        merged.write_parquet(tmp)


def unprobed_paths(paths: Sequence[str], cache: pl.DataFrame) -> list[str]:
    """The paths whose cached result is absent or stale (the file changed since)."""
    known = {row["path"]: (row["size"], row["mtime_ns"]) for row in cache.iter_rows(named=True)}
    stale = []
    for path in paths:
        try:
            stat = os.stat(path)
            current = (stat.st_size, stat.st_mtime_ns)
        except OSError:
            current = (-1, -1)
        if known.get(path) != current:
            stale.append(path)
    return stale


def probe_manifest(
    manifest: pl.DataFrame, quarantine: QuarantineLog, *, cache_path: Path, workers: int = 2
) -> pl.DataFrame:
    """The manifest with `media_path` cleared for media that cannot serve its segments."""
    rows = manifest.select("video_id", "media_path", "n_segments").filter(pl.col("media_path").is_not_null())
    paths = rows["media_path"].to_list()
    cache = load_probe_cache(cache_path)
    missing = unprobed_paths(paths, cache)
    if missing:
        update_probe_cache(cache_path, probe_paths(missing, workers=workers))
        cache = load_probe_cache(cache_path)
    results = {row["path"]: row for row in cache.iter_rows(named=True)}
    unusable: list[str] = []
    for video_id, path, expected in rows.iter_rows():
        result = results[path]
        if result["duration_s"] is None:
            quarantine.record(video_id, path, STAGE, result["reason"])
            unusable.append(video_id)
            continue
        found = n_segments_for_duration(result["duration_s"])
        if found < expected:
            reason = f"media has {found} segments ({result['duration_s']:.2f} s) but the manifest has {expected}"
            quarantine.record(video_id, path, STAGE, reason)
            unusable.append(video_id)
    if not unusable:
        return manifest
    return manifest.with_columns(
        media_path=pl.when(pl.col("video_id").is_in(unusable)).then(None).otherwise(pl.col("media_path"))
    )
