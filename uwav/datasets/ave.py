"""AVE (Audio-Visual Event, ECCV 2018): `Annotations.txt` + `splits.csv`.

`Annotations.txt` has one video per line, `category&youtube_id&quality&start_s&end_s`
(the official download starts with a `Category&VideoID&...` header line, the copy in
../shared/data does not; both are read). Each clip is 10 s; the annotated [start, end) span
in whole seconds is the audio-visual event (an 'audio' and a 'visual' dense row), the rest of
the clip is background (implicit: no row). `splits.csv` assigns each annotation line (0-based,
header excluded) to train/val/test.

The official file annotates 45 YouTube videos on two or three lines with different categories
(e.g. `-9R4WPSKE3Q` as male and as female speech). The AVE protocol treats every line as its own
sample, so they stay separate videos: such a video's id is `<youtube id>_line<index>`, all
others keep the plain YouTube id; the media file is always `<youtube id>.<ext>` (the first 11
characters of the id, as for LLP). A line repeating an earlier one exactly is a duplicate.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from uwav.contracts import MODALITIES, validate_dense, validate_manifest
from uwav.errors import InvalidInputError, MissingInputError
from uwav.datasets.validation import (
    IssueCollector,
    Reason,
    ValidationReport,
    attach_media,
    read_text_rows,
    split_expr,
    unsafe_name,
)

# Category order of the AVE code bases (AVE-ECCV18 data preparation and every follow-up:
# CMRAN, CMBS, VALOR's AVE scripts); it equals first appearance in Annotations.txt.
AVE_CLASSES: tuple[str, ...] = (
    "Church bell", "Male speech, man speaking", "Bark", "Fixed-wing aircraft, airplane",
    "Race car, auto racing", "Female speech, woman speaking", "Helicopter", "Violin, fiddle",
    "Flute", "Ukulele", "Frying (food)", "Truck", "Shofar", "Motorcycle", "Acoustic guitar",
    "Train horn", "Clock", "Banjo", "Goat", "Baby cry, infant cry", "Bus", "Chainsaw", "Cat",
    "Horse", "Toilet flush", "Rodents, rats, mice", "Accordion", "Mandolin",
)  # fmt: skip

AVE_DURATION_S = 10.0
AVE_SEGMENTS = 10
AVE_ANNOTATIONS = "Annotations.txt"
AVE_SPLITS = "splits.csv"

_FIELDS = ("category", "youtube_id", "quality", "start", "end")
_YOUTUBE_ID_CHARS = 11


def read_ave(
    root: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
    media_root: str | os.PathLike[str] | None = None,
    strict: bool = False,
    report: ValidationReport | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Read AVE from the folder holding Annotations.txt and splits.csv: (manifest, dense).

    `classes` replaces AVE_CLASSES (lines with another category are reported and dropped).
    """
    classes = AVE_CLASSES if classes is None else tuple(classes)
    root = Path(root)
    missing = [name for name in (AVE_ANNOTATIONS, AVE_SPLITS) if not (root / name).is_file()]
    if missing:
        raise MissingInputError(f"AVE folder {root} lacks {missing}")
    issues = IssueCollector(report, strict, f"AVE {root}")
    rows = _read_annotations(root / AVE_ANNOTATIONS, issues)
    rows = _assign_splits(rows, root / AVE_SPLITS, issues)

    rows = issues.drop(rows, unsafe_name("youtube_id"), Reason.ESCAPES_ROOT, "the id is not a plain file name")
    rows = issues.drop(rows, ~pl.col("category").is_in(classes), Reason.UNKNOWN_CLASS, pl.col("category"))
    rows = issues.drop(
        rows,
        ~pl.struct("youtube_id", "category", "start", "end").is_first_distinct(),
        Reason.DUPLICATE_ID,
        pl.format("repeats an earlier line for {}", "youtube_id"),
    )
    rows = rows.with_columns(
        video_id=pl.when(pl.col("youtube_id").is_duplicated())
        .then(pl.format("{}_line{}", "youtube_id", "index"))
        .otherwise("youtube_id")
    )
    manifest = rows.with_columns(
        dataset=pl.lit("ave"),
        duration_s=pl.lit(AVE_DURATION_S),
        n_segments=pl.lit(AVE_SEGMENTS, pl.Int32),
        labels=pl.concat_list("category"),
    )
    manifest = attach_media(manifest, pl.col("youtube_id"), media_root, issues)

    # A bad span drops the event only: the video stays, all background.
    span = pl.format("[{}, {}) s", "start", "end")
    events = issues.drop(rows, pl.col("start") < 0, Reason.BEFORE_START, span)
    events = issues.drop(events, pl.col("start") >= pl.col("end"), Reason.EMPTY_SPAN, span)
    events = issues.drop(
        events, pl.col("end") > AVE_SEGMENTS, Reason.BEYOND_VIDEO, pl.format("{} in a 10 s clip", span)
    )
    dense = (
        events.select("video_id", label="category", onset="start", offset="end")
        .join(pl.DataFrame({"modality": list(MODALITIES)}), how="cross", maintain_order="left_right")
        .select("video_id", "modality", "label", "onset", "offset")
    )
    issues.close()
    return validate_manifest(manifest), validate_dense(dense)


def _read_annotations(path: Path, issues: IssueCollector) -> pl.DataFrame:
    """Rows with `index` (0-based line, header excluded: the key of splits.csv) and integer spans."""
    rows = read_text_rows(path, "&", _FIELDS, issues, header=False, id_column="youtube_id")
    header = rows.head(1).filter(pl.col("category").str.to_lowercase() == "category")
    rows = rows.filter(~pl.col("line").is_in(header["line"].implode()))
    first_data_line = 1 + header.height
    rows = rows.with_columns(
        index=pl.col("line") - first_data_line,
        video_id=pl.col("youtube_id"),
        start=pl.col("start").cast(pl.Int32, strict=False),
        end=pl.col("end").cast(pl.Int32, strict=False),
    )
    return issues.drop(
        rows, pl.col("start").is_null() | pl.col("end").is_null(), Reason.MALFORMED, "start/end are not whole seconds"
    )


def _assign_splits(rows: pl.DataFrame, path: Path, issues: IssueCollector) -> pl.DataFrame:
    """Join each annotation row to its splits.csv entry by 0-based index (checking the id)."""
    splits = read_text_rows(
        path, ",", ("line", "video_id", "split"), issues, header=True, id_column="video_id", rename={"line": "index"}
    ).with_columns(index=pl.col("index").cast(pl.Int64, strict=False), split_name=split_expr("split"))
    splits = issues.drop(splits, pl.col("index").is_null(), Reason.MALFORMED, "`line` is not an integer")
    splits = issues.drop(splits, pl.col("split_name").is_null(), Reason.UNKNOWN_SPLIT, pl.col("split"))
    splits = issues.drop(
        splits,
        ~pl.col("index").is_first_distinct(),
        Reason.DUPLICATE_ID,
        pl.format("annotation line {} is assigned twice", "index"),
    )
    orphans = splits.join(rows, on="index", how="anti", maintain_order="left")
    issues.drop(orphans, pl.lit(True), Reason.UNKNOWN_VIDEO, pl.format("no annotation line {}", "index"))

    listed = splits.select("index", split="split_name", listed_id="video_id")
    rows = rows.join(listed, on="index", how="left", maintain_order="left")
    rows = issues.drop(
        rows,
        pl.col("split").is_null(),
        Reason.UNKNOWN_SPLIT,
        pl.format("line {} is not in {}", "index", pl.lit(path.name)),
    )
    return issues.drop(
        rows,
        pl.col("listed_id") != pl.col("youtube_id"),
        Reason.INCONSISTENT,
        pl.format("{} gives {} for line {}", pl.lit(path.name), "listed_id", "index"),
    ).drop("listed_id")


def ave_segment_labels(manifest: pl.DataFrame, dense: pl.DataFrame, classes: Sequence[str]) -> np.ndarray:
    """Per-segment AVE truth, shape (videos in manifest order, 10): the class index where the
    audio-visual event is, `len(classes)` (background) elsewhere. Uses the 'audio' rows (AVE
    writes the same span for both modalities)."""
    lengths = manifest["n_segments"].unique().to_list()
    if lengths and lengths != [AVE_SEGMENTS]:
        raise InvalidInputError(f"AVE segment labels need {AVE_SEGMENTS}-segment videos, the manifest has {sorted(lengths)}")
    class_index = {name: i for i, name in enumerate(classes)}
    events = (
        dense.filter(pl.col("modality") == "audio")
        .join(manifest.select("video_id").with_row_index("row"), on="video_id", how="inner")
        .with_columns(class_id=pl.col("label").replace_strict(class_index, default=None, return_dtype=pl.Int64))
    )
    unknown = events.filter(pl.col("class_id").is_null())["label"].unique().to_list()
    if unknown:
        raise InvalidInputError(f"AVE segment labels: dense labels {unknown} are not among the {len(classes)} classes")
    labels = np.full((manifest.height, AVE_SEGMENTS), len(classes), dtype=np.int64)
    t = np.arange(AVE_SEGMENTS)
    rows, onsets, offsets, class_ids = (events[c].to_numpy() for c in ("row", "onset", "offset", "class_id"))
    inside = (t >= onsets[:, None]) & (t < offsets[:, None])  # (events, segments)
    event_of, segment_of = np.nonzero(inside)
    labels[rows[event_of], segment_of] = class_ids[event_of]
    return labels
