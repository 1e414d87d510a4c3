"""Probe every video of a manifest (container headers only, no decoding) before features are computed.

The manifest's `n_segments` is authoritative (labels are defined on it). Media with fewer
segments than the manifest, or media that cannot be opened, are quarantined and their
`media_path` is cleared so later stages do not try them again; media with more segments are used
and cut to the manifest's count.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import polars as pl

from uwav.contracts import n_segments_for_duration
from uwav.media.decode import MediaError, probe_duration
from uwav.media.quarantine import QuarantineLog

STAGE = "segment"


def _probe(path: str) -> float | str:
    try:
        return probe_duration(path)
    except MediaError as error:
        return error.reason


def probe_manifest(manifest: pl.DataFrame, quarantine: QuarantineLog, *, workers: int = 2) -> pl.DataFrame:
    """The manifest with `media_path` cleared for media that cannot serve its segments."""
    rows = manifest.select("video_id", "media_path", "n_segments").filter(pl.col("media_path").is_not_null())
    paths = rows["media_path"].to_list()
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PyAV releases the GIL while it reads
        results = list(pool.map(_probe, paths))
    unusable: list[str] = []
    for (video_id, path, expected), result in zip(rows.iter_rows(), results, strict=True):
        if isinstance(result, str):
            quarantine.record(video_id, path, STAGE, result)
            unusable.append(video_id)
            continue
        found = n_segments_for_duration(result)
        if found < expected:
            reason = f"media has {found} segments ({result:.2f} s) but the manifest has {expected}"
            quarantine.record(video_id, path, STAGE, reason)
            unusable.append(video_id)
    if not unusable:
        return manifest
    return manifest.with_columns(
        media_path=pl.when(pl.col("video_id").is_in(unusable)).then(None).otherwise(pl.col("media_path"))
    )
