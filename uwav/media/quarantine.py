"""Quarantine table: media that could not be used (or only partly), recorded instead of stopping the run.

One row per (video, stage, reason) with the time it was last seen, in the contract's schema
(`uwav.contracts.QUARANTINE_SCHEMA`), stored as Parquet. A re-run loads the table, records again
and writes it back: the same problem seen again updates its time instead of adding a row.
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import av
import polars as pl

from uwav.atomic import atomic_path
from uwav.contracts import QUARANTINE_SCHEMA, empty_quarantine
from uwav.errors import InvalidInputError
from uwav.media.decode import DecodedSegments, MediaError, MediaSource, decode_segments, source_name

_KEY = ("video_id", "path", "stage", "reason")


class QuarantineLog:
    """Thread-safe collector of quarantine rows (parallel decode workers share one)."""

    def __init__(self, rows: list[dict[str, Any]] | None = None) -> None:
        self._lock = threading.Lock()
        self._rows: dict[tuple[str, ...], dict[str, Any]] = {}
        for row in rows or []:
            self._add(row)

    def _add(self, row: dict[str, Any]) -> None:
        key = tuple(row[c] for c in _KEY)
        seen = self._rows.get(key)
        if seen is None or row["time"] >= seen["time"]:
            self._rows[key] = row

    def record(self, video_id: str, path: str, stage: str, reason: str) -> None:
        row = {"video_id": video_id, "path": path, "stage": stage, "reason": reason, "time": datetime.now(UTC)}
        with self._lock:
            self._add(row)

    def __len__(self) -> int:
        with self._lock:
            return len(self._rows)

    def video_ids(self, stage: str | None = None) -> set[str]:
        """Videos with at least one entry (for `stage` only, when given)."""
        with self._lock:
            return {row["video_id"] for row in self._rows.values() if stage is None or row["stage"] == stage}

    def to_frame(self) -> pl.DataFrame:
        with self._lock:
            rows = list(self._rows.values())
        if not rows:
            return empty_quarantine()
        return pl.DataFrame(rows, schema=QUARANTINE_SCHEMA).sort("time", "video_id")

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write the table as Parquet atomically (temporary file in the same folder, then rename)."""
        with atomic_path(path) as tmp:
            self.to_frame().write_parquet(tmp)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> QuarantineLog:
        """The table written by `write`; an empty log when the file does not exist yet."""
        if not Path(path).exists():
            return cls()
        try:
            frame = pl.read_parquet(path).select([pl.col(c).cast(t) for c, t in QUARANTINE_SCHEMA.items()])
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise InvalidInputError(f"quarantine table {path}: not readable in the contract's schema: {exc}") from exc
        return cls(frame.to_dicts())


def decode_or_quarantine(
    video_id: str,
    path: MediaSource,
    log: QuarantineLog,
    stage: str = "segment",
    **decode_kwargs: Any,
) -> DecodedSegments | None:
    """`decode_segments`, recording bad media in `log` instead of raising.

    Returns None when the video is unusable. A video whose audio is missing is still returned
    (visual features can be computed) and its audio problem is recorded too.
    """
    path_text = source_name(path)
    try:
        decoded = decode_segments(path, **decode_kwargs)
    except MediaError as exc:
        log.record(video_id, path_text, stage, exc.reason)
        return None
    except av.FFmpegError as exc:  # a failure decode_segments did not anticipate is still bad media
        log.record(video_id, path_text, stage, f"unexpected FFmpeg error: {type(exc).__name__}: {exc}")
        return None
    if decoded.audio_missing_reason is not None:
        log.record(video_id, path_text, stage, decoded.audio_missing_reason)
    return decoded
