"""A user's own data: a CSV or Parquet table `video_id, media_path, labels[, split][, duration_s]`
plus, optionally, a dense table with the DENSE_SCHEMA columns.

- `labels`: a list column (Parquet) or class names separated by `|` (CSV, or a string column).
- `split`: 'train' | 'val' | 'test' ('validation' etc. accepted); 'train' when absent or empty.
- `duration_s`: seconds; where absent or null, the media file is probed (`uwav.media.probe_duration`,
  the rule segment decoding uses, so `n_segments` agrees with the decoded segments).
- `media_path`: an absolute path, an fsspec URL (opened only to probe a missing duration), or a
  path relative to `media_root` (default: the table's folder) that must stay inside it.
A missing or unreadable media file keeps the row with a null `media_path` (features may already
exist) when `duration_s` is known, and drops it otherwise; both are reported.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from uwav.contracts import DENSE_SCHEMA, PARTIAL_SEGMENT_MIN_S, validate_dense, validate_manifest
from uwav.errors import InvalidInputError
from uwav.datasets.validation import (
    IssueCollector,
    Reason,
    ValidationReport,
    check_dense_rows,
    clean_labels,
    drop_unknown_labels,
    n_segments_column,
    read_table,
    split_expr,
    unsafe_name,
)
from uwav.media import MediaError, probe_duration

LABEL_SEPARATOR = "|"
REQUIRED_COLUMNS: tuple[str, ...] = ("video_id", "media_path", "labels")


def read_custom(
    path: str | os.PathLike[str],
    *,
    dense_path: str | os.PathLike[str] | None = None,
    classes: Sequence[str] | None = None,
    media_root: str | os.PathLike[str] | None = None,
    strict: bool = False,
    report: ValidationReport | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Read a custom manifest table (and dense table): (manifest, dense) per uwav.contracts.

    With `classes`, labels (weak and dense) outside them are reported and their rows dropped.
    """
    path = Path(path)
    root = Path(os.path.abspath(media_root if media_root is not None else path.parent))
    issues = IssueCollector(report, strict, f"custom {path}")
    table = read_table(path, issues)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise InvalidInputError(f"{path}: missing columns {missing} (needs {list(REQUIRED_COLUMNS)}[, split][, duration_s])")

    rows = table.with_columns(
        video_id=pl.col("video_id").cast(pl.String).str.strip_chars(),
        labels=_labels_expr(table.schema["labels"]),
        split_given=pl.col("split").cast(pl.String).fill_null("train") if "split" in table.columns else pl.lit("train"),
        duration_given=pl.col("duration_s") if "duration_s" in table.columns else pl.lit(None, pl.Float64),
        media_given=pl.col("media_path").cast(pl.String).str.strip_chars(),
    ).with_columns(split=split_expr("split_given"), duration_s=pl.col("duration_given").cast(pl.Float64, strict=False))
    too_short = pl.col("duration_s") < PARTIAL_SEGMENT_MIN_S
    too_short_detail = pl.format("{} s (needs at least one segment)", "duration_s")
    rows = issues.drop(rows, pl.col("video_id").is_null() | (pl.col("video_id") == ""), Reason.MALFORMED, "no video_id")
    rows = issues.drop(
        rows,
        pl.col("duration_s").is_null() & pl.col("duration_given").is_not_null(),
        Reason.MALFORMED,
        pl.format("duration_s {} is not a number", pl.col("duration_given").cast(pl.String)),
    )
    rows = issues.drop(rows, too_short, Reason.INVALID_DURATION, too_short_detail)
    rows = issues.drop(rows, unsafe_name("video_id"), Reason.ESCAPES_ROOT, "the id is not a plain file name")
    rows = issues.drop(rows, pl.col("split").is_null(), Reason.UNKNOWN_SPLIT, pl.col("split_given"))
    if classes is not None:
        rows = drop_unknown_labels(rows, classes, issues)
    rows = issues.drop(
        rows,
        ~pl.col("video_id").is_first_distinct(),
        Reason.DUPLICATE_ID,
        pl.format("first listed at line {}", pl.col("line").first().over("video_id")),
    )
    rows = _locate_media(rows, root, issues)
    rows = issues.drop(rows, too_short, Reason.INVALID_DURATION, too_short_detail)  # probed durations
    manifest = rows.with_columns(dataset=pl.lit("custom"), n_segments=n_segments_column(pl.col("duration_s")))

    dense = pl.DataFrame(schema=DENSE_SCHEMA)
    if dense_path is not None:
        dense_table = read_table(Path(dense_path), issues)
        absent = [c for c in DENSE_SCHEMA if c not in dense_table.columns]
        if absent:
            raise InvalidInputError(f"{dense_path}: missing columns {absent} (needs {list(DENSE_SCHEMA)})")
        dense_rows = dense_table.with_columns(
            pl.col("video_id", "modality", "label").cast(pl.String).str.strip_chars()
        )
        dense = check_dense_rows(dense_rows, manifest, classes, issues)
    issues.close()
    return validate_manifest(manifest), validate_dense(dense)


def _labels_expr(dtype: pl.DataType) -> pl.Expr:
    """`labels` as a clean list: a list column as it is, a string column split at `|`."""
    labels = pl.col("labels")
    return clean_labels(labels if isinstance(dtype, pl.List) else labels.cast(pl.String).str.split(LABEL_SEPARATOR))


def _locate_media(rows: pl.DataFrame, root: Path, issues: IssueCollector) -> pl.DataFrame:
    """Resolve `media_path` and fill missing durations by probing the media (row by row:
    file-system checks and probes do not vectorise)."""
    media_paths: list[str | None] = []
    durations: list[float | None] = []
    for file, line, video_id, given, duration in rows.select(
        "file", "line", "video_id", "media_given", "duration_s"
    ).iter_rows():
        media, problem = _find_media(given, root)
        if problem is not None and problem[0] is Reason.ESCAPES_ROOT:
            media, duration = None, None
        elif media is not None and duration is None:
            try:
                duration = probe_duration(media)
            except MediaError as exc:
                media, problem = None, (Reason.MISSING_MEDIA, f"cannot read a duration: {exc}")
        if problem is not None:
            reason, detail = problem
            if duration is None and reason is Reason.MISSING_MEDIA:
                detail += "; no duration_s either, row dropped"
            issues.add(file, line, video_id, reason, detail)
        media_paths.append(media)
        durations.append(duration)
    return rows.with_columns(
        media_path=pl.Series(media_paths, dtype=pl.String), duration_s=pl.Series(durations, dtype=pl.Float64)
    ).filter(pl.col("duration_s").is_not_null())


def _find_media(given: str | None, root: Path) -> tuple[str | None, tuple[Reason, str] | None]:
    """The media location of a row, or the problem with it."""
    if not given:
        return None, (Reason.MISSING_MEDIA, "empty media_path")
    if _is_url(given):
        return given, None  # fsspec URL: only opened when its duration must be probed
    local = Path(given)
    if not local.is_absolute():
        local = Path(os.path.normpath(root / local))  # lexical: '..' may not climb out of the root
        if not local.is_relative_to(root):
            return None, (Reason.ESCAPES_ROOT, f"{given!r} resolves outside {root}")
    if not local.is_file():
        return None, (Reason.MISSING_MEDIA, f"no file {local}")
    return str(local), None


def _is_url(location: str) -> bool:
    return "://" in location
