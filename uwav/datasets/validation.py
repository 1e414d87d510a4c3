"""Row validation shared by the dataset readers.

A bad annotation row never fails a whole read: it is dropped (or, for a missing media file, kept
with a null `media_path`) and recorded as an `Issue` naming the file, the line and the video.
`strict=True` turns the first issue, in file order, into a `DatasetValidationError`.
Also here: the pieces every reader needs to get rows out of text files with their line numbers,
to find media files, and to normalise split names.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

import polars as pl

from uwav.contracts import MODALITIES, n_segments_for_duration
from uwav.errors import InvalidInputError, MissingInputError, UwavError

log = logging.getLogger(__name__)

_UNSAFE_NAME = r"^\.{0,2}$|[/\\\x00]"  # '', '.', '..', or any path separator / NUL

MEDIA_EXTENSIONS: tuple[str, ...] = (".mp4", ".mkv", ".webm", ".avi", ".mov")  # preference order

_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


class Reason(StrEnum):
    """Why a row was dropped (or, for MISSING_MEDIA, kept without media)."""

    MALFORMED = "malformed row"
    UNKNOWN_CLASS = "unknown class"
    UNKNOWN_SPLIT = "unknown split"
    UNKNOWN_VIDEO = "video not in manifest"
    INCONSISTENT = "inconsistent annotation"
    INVALID_DURATION = "invalid duration"
    EMPTY_SPAN = "onset >= offset"
    BEFORE_START = "onset before the video"
    BEYOND_VIDEO = "offset beyond the video"
    DUPLICATE_ID = "duplicate id"
    MISSING_MEDIA = "missing media file"
    ESCAPES_ROOT = "escapes media root"


@dataclass(frozen=True)
class Issue:
    """One bad row. `line` is 1-based as a person opens the file (for Parquet: the 1-based row;
    for JSON: None, the row is the video key in `video_id`)."""

    file: str
    line: int | None
    video_id: str | None
    reason: str
    detail: str = ""

    @property
    def location(self) -> str:
        if self.line is not None:
            return f"{self.file}:{self.line}"
        return f"{self.file}[{self.video_id!r}]"

    def __str__(self) -> str:
        video = f" video {self.video_id!r}:" if self.video_id is not None else ""
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.location}:{video} {self.reason}{detail}"


class DatasetValidationError(UwavError, ValueError):
    """Raised by a reader in strict mode on the first bad row; the message names file and line."""

    def __init__(self, issue: Issue) -> None:
        super().__init__(str(issue))
        self.issue = issue


ISSUE_SCHEMA: dict[str, pl.DataType] = {
    "file": pl.String(),
    "line": pl.Int64(),
    "video_id": pl.String(),
    "reason": pl.String(),
    "detail": pl.String(),
}


class ValidationReport:
    """Issues collected by one or more reads; pass the same report to several readers to pool them."""

    def __init__(self, issues: Iterable[Issue] = ()) -> None:
        self.issues: list[Issue] = list(issues)

    def __len__(self) -> int:
        return len(self.issues)

    def __iter__(self) -> Iterator[Issue]:
        return iter(self.issues)

    def extend(self, issues: Iterable[Issue]) -> None:
        self.issues.extend(issues)

    def counts(self) -> dict[str, int]:
        """Number of issues per reason, most frequent first."""
        counts: dict[str, int] = {}
        for issue in self.issues:
            counts[issue.reason] = counts.get(issue.reason, 0) + 1
        return dict(sorted(counts.items(), key=lambda item: -item[1]))

    def to_frame(self) -> pl.DataFrame:
        return pl.DataFrame([asdict(i) for i in self.issues], schema=ISSUE_SCHEMA)

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the issues as Parquet (`.parquet`) or JSON (`.json`, a list of records)."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            self.to_frame().write_parquet(path)
        elif suffix == ".json":
            path.write_text(json.dumps([asdict(i) for i in self.issues], indent=1), encoding="utf-8")
        else:
            raise ValueError(f"validation report {path}: unsupported suffix {suffix!r} (use .parquet or .json)")
        return path

    def summary(self, max_issues: int = 10) -> str:
        if not self.issues:
            return "no dataset validation issues"
        files = {i.file for i in self.issues}
        by_reason = ", ".join(f"{n} {reason}" for reason, n in self.counts().items())
        lines = [f"{len(self.issues)} dataset validation issue(s) in {len(files)} file(s): {by_reason}"]
        lines += [f"  {issue}" for issue in self.issues[:max_issues]]
        if len(self.issues) > max_issues:
            lines.append(f"  ... and {len(self.issues) - max_issues} more")
        return "\n".join(lines)


class IssueCollector:
    """The issues of one read. `close()` orders them by file (in reading order) and line, then
    raises the first in strict mode, or hands them to the report (logging a summary when the
    caller gave no report to look at)."""

    def __init__(self, report: ValidationReport | None, strict: bool, dataset: str) -> None:
        self._report = report
        self._strict = strict
        self._dataset = dataset
        self._file_rank: dict[str, int] = {}
        self._pending: list[tuple[tuple[int, int], Issue]] = []

    def file(self, path: Path) -> str:
        """Register a file in reading order; returns the name issues carry."""
        name = str(path)
        self._file_rank.setdefault(name, len(self._file_rank))
        return name

    def add(
        self,
        file: str,
        line: int | None,
        video_id: str | None,
        reason: Reason,
        detail: str = "",
        position: int | None = None,
    ) -> None:
        """`position` orders issues without a line (JSON: the video's index in the file)."""
        order = (self._file_rank.setdefault(file, len(self._file_rank)), line if line is not None else position or 0)
        self._pending.append((order, Issue(file, line, video_id, reason.value, detail)))

    def add_rows(self, rows: pl.DataFrame, reason: Reason) -> None:
        """Add one issue per row of a frame with columns file, line, video_id, detail (and
        `position` where rows have no line)."""
        position = pl.col("position") if "position" in rows.columns else pl.lit(None, pl.Int64)
        columns = rows.select("file", "line", "video_id", "detail", position)
        for file, line, video_id, detail, pos in columns.iter_rows():
            self.add(file, line, video_id, reason, detail or "", pos)

    def drop(self, frame: pl.DataFrame, bad: pl.Expr, reason: Reason, detail: pl.Expr | str = "") -> pl.DataFrame:
        """Report the rows of `frame` where `bad` holds and return the others.

        `frame` needs the columns file, line, video_id; a null `bad` counts as good, so checks
        that parse a column must run before checks that use the parsed value.
        """
        bad = bad.fill_null(False)
        detail_expr = pl.lit(detail) if isinstance(detail, str) else detail
        flagged = frame.filter(bad)
        if flagged.height:
            self.add_rows(flagged.with_columns(detail=detail_expr.cast(pl.String)), reason)
        return frame.filter(~bad)

    def close(self) -> ValidationReport:
        ordered = [issue for _, issue in sorted(self._pending, key=lambda item: item[0])]
        self._pending = []
        if self._strict and ordered:
            raise DatasetValidationError(ordered[0])
        report = self._report if self._report is not None else ValidationReport()
        report.extend(ordered)
        if self._report is None and ordered:
            log.warning("%s: %s", self._dataset, ValidationReport(ordered).summary())
        return report


# ---------------------------------------------------------------- reading rows with line numbers


def read_text_rows(
    path: Path,
    separator: str,
    columns: Sequence[str],
    issues: IssueCollector,
    *,
    header: bool,
    id_column: str | None = None,
    rename: dict[str, str] | None = None,
) -> pl.DataFrame:
    """Rows of a delimited text file as stripped strings, with `file` and 1-based `line`.

    With `header`, the first non-blank line must name every column in `columns` (extra columns
    are ignored); without, rows have exactly these columns in order. Rows with another number
    of fields are reported as malformed; blank lines are skipped. `id_column` names the column
    copied to `video_id` for issue reports; `rename` gives output names (a file column called
    `line` or `file` must be renamed, those names hold the location).
    """
    rename = rename or {}
    name = issues.file(path)
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    raw = pl.DataFrame(
        {"line": pl.int_range(1, len(lines) + 1, eager=True, dtype=pl.Int64), "text": lines},
        schema={"line": pl.Int64, "text": pl.String},
    ).filter(pl.col("text").str.strip_chars() != "")
    if header:
        if raw.height == 0:
            raise InvalidInputError(f"{path}: empty file, expected a header with columns {list(columns)}")
        names = [field.strip() for field in raw["text"][0].split(separator)]
        missing = [c for c in columns if c not in names]
        if missing:
            raise InvalidInputError(f"{path}: header {names} lacks columns {missing}")
        raw = raw.slice(1)
    else:
        names = list(columns)
    fields = raw.with_columns(pl.col("text").str.split(separator).alias("fields"), file=pl.lit(name))
    n_fields = pl.col("fields").list.len()
    fields = fields.with_columns(
        video_id=pl.col("fields").list.get(names.index(id_column), null_on_oob=True)
        if id_column
        else pl.lit(None, pl.String)
    )
    fields = issues.drop(
        fields, n_fields != len(names), Reason.MALFORMED, pl.format("expected {} fields, found {}", pl.lit(len(names)), n_fields)
    )
    return fields.select(
        "file",
        "line",
        *[pl.col("fields").list.get(names.index(c)).str.strip_chars().alias(rename.get(c, c)) for c in columns],
    )


def read_table(path: Path, issues: IssueCollector) -> pl.DataFrame:
    """A CSV (header, one record per line) or Parquet table with `file` and 1-based `line`
    (for Parquet the 1-based row number). CSV cells are read as strings; blank lines are skipped."""
    if not path.is_file():
        raise MissingInputError(f"{path}: no such file")
    name = issues.file(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        table = (
            pl.read_csv(path, infer_schema=False)
            .with_row_index("line", offset=2)  # line 1 is the header
            .filter(~pl.all_horizontal(pl.exclude("line").is_null()))  # blank lines
        )
    elif suffix == ".parquet":
        table = pl.read_parquet(path).with_row_index("line", offset=1)
    else:
        raise InvalidInputError(f"{path}: unsupported table format {suffix!r} (use .csv or .parquet)")
    return table.with_columns(pl.col("line").cast(pl.Int64), file=pl.lit(name))


# ---------------------------------------------------------------- splits, names, media


def split_expr(column: str) -> pl.Expr:
    """The split normalised to 'train' | 'val' | 'test' (null when unknown)."""
    return pl.col(column).str.strip_chars().str.to_lowercase().replace_strict(_SPLIT_ALIASES, default=None)


def normalise_split(name: str) -> str | None:
    return _SPLIT_ALIASES.get(name.strip().lower())


def unsafe_name(column: str | pl.Expr) -> pl.Expr:
    """True where a value is not a plain file name (a path separator, NUL, '.', '..', empty):
    a media file named after it could land outside the media root."""
    col = pl.col(column) if isinstance(column, str) else column
    return col.str.contains(_UNSAFE_NAME)


def is_unsafe_name(name: str) -> bool:
    """`unsafe_name` for one value."""
    return re.search(_UNSAFE_NAME, name) is not None


def index_media(media_root: str | os.PathLike[str]) -> dict[str, str]:
    """File stem -> absolute path for the media files directly inside `media_root`.

    One directory listing instead of a stat per video; when a stem exists with several
    extensions, the earliest in MEDIA_EXTENSIONS wins.
    """
    root = Path(media_root).expanduser().resolve()
    if not root.is_dir():
        raise MissingInputError(f"media root {root} is not a directory")
    rank = {ext: i for i, ext in enumerate(MEDIA_EXTENSIONS)}
    found: dict[str, tuple[int, str]] = {}
    with os.scandir(root) as entries:
        for entry in entries:
            stem, ext = os.path.splitext(entry.name)
            ext = ext.lower()
            if ext in rank and entry.is_file() and (stem not in found or rank[ext] < found[stem][0]):
                found[stem] = (rank[ext], os.path.join(root, entry.name))
    return {stem: path for stem, (_, path) in found.items()}


def attach_media(
    manifest: pl.DataFrame, stem: pl.Expr, media_root: str | os.PathLike[str] | None, issues: IssueCollector
) -> pl.DataFrame:
    """Set `media_path` from the file named `<stem>.<ext>` in `media_root`; a missing file keeps
    the row with a null path and is reported. Without `media_root` the path stays null unchecked."""
    if media_root is None:
        return manifest.with_columns(media_path=pl.lit(None, pl.String))
    media = index_media(media_root)
    manifest = manifest.with_columns(
        media_path=stem.replace_strict(media, default=None, return_dtype=pl.String), _stem=stem
    )
    missing = manifest.filter(pl.col("media_path").is_null()).with_columns(
        detail=pl.format("no file {}[{}] in {}", "_stem", pl.lit("|".join(MEDIA_EXTENSIONS)), pl.lit(str(media_root)))
    )
    issues.add_rows(missing, Reason.MISSING_MEDIA)
    return manifest.drop("_stem")


def n_segments_column(duration_s: pl.Expr) -> pl.Expr:
    """`n_segments_for_duration` over a column (evaluated once per distinct duration)."""
    return duration_s.map_batches(
        lambda s: s.replace_strict(
            {d: n_segments_for_duration(d) for d in s.unique().drop_nulls()}, default=None, return_dtype=pl.Int32
        ),
        return_dtype=pl.Int32,
    )


# ---------------------------------------------------------------- checks shared by several readers


def clean_labels(labels: pl.Expr) -> pl.Expr:
    """A list-of-class-names column stripped, without empty names or repeats (null: no labels)."""
    name = pl.element().cast(pl.String).str.strip_chars()
    return (
        labels.list.eval(name.filter(name != ""))
        .list.unique(maintain_order=True)
        .fill_null(pl.lit([], pl.List(pl.String)))
    )


def drop_unknown_labels(rows: pl.DataFrame, classes: Sequence[str], issues: IssueCollector) -> pl.DataFrame:
    """Drop rows whose `labels` list names a class outside `classes` (the whole row: a weak label
    with an unknown class cannot be trusted for the others either)."""
    unknown = pl.col("labels").list.set_difference(pl.lit(list(classes), pl.List(pl.String)))
    return issues.drop(rows, unknown.list.len() > 0, Reason.UNKNOWN_CLASS, unknown.list.join(", "))


def _whole_number(column: str) -> pl.Expr:
    """The column as Int32 where it holds a whole number (int, "3", 3.0), else null."""
    value = pl.col(column).cast(pl.Float64, strict=False)
    return pl.when(value == value.floor()).then(value.cast(pl.Int32, strict=False))


def check_dense_rows(
    rows: pl.DataFrame, manifest: pl.DataFrame, classes: Sequence[str] | None, issues: IssueCollector
) -> pl.DataFrame:
    """Validate dense rows (file, line, video_id, modality, label, onset, offset; onset/offset
    segment indices of any type) against the manifest; each bad row is dropped on its own."""
    rows = rows.with_columns(onset=_whole_number("onset"), offset=_whole_number("offset")).join(
        manifest.select("video_id", "n_segments"), on="video_id", how="left", maintain_order="left"
    )
    rows = issues.drop(
        rows,
        pl.col("onset").is_null() | pl.col("offset").is_null(),
        Reason.MALFORMED,
        "onset/offset are not whole numbers",
    )
    rows = issues.drop(
        rows, ~pl.col("modality").is_in(MODALITIES), Reason.MALFORMED, pl.format("modality {}", "modality")
    )
    rows = issues.drop(rows, pl.col("n_segments").is_null(), Reason.UNKNOWN_VIDEO, "no such video in the manifest")
    if classes is not None:
        rows = issues.drop(rows, ~pl.col("label").is_in(list(classes)), Reason.UNKNOWN_CLASS, pl.col("label"))
    span = pl.format("[{}, {})", "onset", "offset")
    rows = issues.drop(rows, pl.col("onset") < 0, Reason.BEFORE_START, span)
    rows = issues.drop(rows, pl.col("onset") >= pl.col("offset"), Reason.EMPTY_SPAN, span)
    rows = issues.drop(
        rows,
        pl.col("offset") > pl.col("n_segments"),
        Reason.BEYOND_VIDEO,
        pl.format("{} in a video of {} segments", span, "n_segments"),
    )
    return rows.select("video_id", "modality", "label", "onset", "offset")
