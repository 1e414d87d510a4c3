"""LLP (Look, Listen and Parse; AVVP-ECCV20): weak split CSVs and the dense audio/visual eval CSVs.

Every file is tab-separated with a header. A video is named by its LLP `filename`
(`<youtube id>_<start>_<end>`, e.g. `BjCEufrlXm4_20_30`; a few train clips have fractional
times such as `ApKgnUPayqU_8.5_18.5`), its media file by the first 11 characters
(`<media_root>/BjCEufrlXm4.mp4`), as every LLP tool does. Dense rows are segment indices,
half-open, one row per CSV row (the official files repeat a few rows; repeats are harmless
to the evaluator and kept).

The official eval CSVs hold 25 rows for 7 clips that are not in val/test (misspelt ids such
as `VMTJRpjbE_150_160`) and 6 audio rows with onset >= offset; the reader reports and drops
them, which is what the reference evaluator does implicitly (it never looks them up / marks
an empty range).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from uwav.contracts import PARTIAL_SEGMENT_MIN_S, validate_dense, validate_manifest
from uwav.errors import MissingInputError
from uwav.datasets.validation import (
    IssueCollector,
    Reason,
    ValidationReport,
    attach_media,
    check_dense_rows,
    clean_labels,
    drop_unknown_labels,
    n_segments_column,
    read_text_rows,
    unsafe_name,
)

# The order every LLP tool uses (../shared/data/README.md); class index = position.
LLP_CLASSES: tuple[str, ...] = (
    "Speech", "Car", "Cheering", "Dog", "Cat", "Frying_(food)", "Basketball_bounce", "Fire_alarm",
    "Chainsaw", "Cello", "Banjo", "Singing", "Chicken_rooster", "Violin_fiddle", "Vacuum_cleaner",
    "Baby_laughter", "Accordion", "Lawn_mower", "Motorcycle", "Helicopter", "Acoustic_guitar",
    "Telephone_bell_ringing", "Baby_cry_infant_cry", "Blender", "Clapping",
)  # fmt: skip

LLP_SPLIT_FILES: dict[str, str] = {"train": "AVVP_train.csv", "val": "AVVP_val_pd.csv", "test": "AVVP_test_pd.csv"}
LLP_DENSE_FILES: dict[str, str] = {"audio": "AVVP_eval_audio.csv", "visual": "AVVP_eval_visual.csv"}
LLP_MEDIA_ID_CHARS = 11  # a YouTube id

_FILENAME = r"^(?<youtube_id>.+)_(?<start>\d+(?:\.\d+)?)_(?<end>\d+(?:\.\d+)?)$"
_SEPARATOR = "\t"


def read_llp(
    root: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
    media_root: str | os.PathLike[str] | None = None,
    strict: bool = False,
    report: ValidationReport | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Read LLP from the folder holding its CSVs: (manifest, dense) per uwav.contracts.

    Splits: AVVP_train.csv -> train, AVVP_val_pd.csv -> val, AVVP_test_pd.csv -> test. With
    `media_root`, `media_path` is the found `<id11>.<ext>` there (missing ones are reported and
    kept with a null path); without, `media_path` is null. `classes` replaces LLP_CLASSES for
    LLP-format data with other classes (labels outside them are reported, their rows dropped).
    """
    classes = LLP_CLASSES if classes is None else tuple(classes)
    root = Path(root)
    missing = [name for name in (*LLP_SPLIT_FILES.values(), *LLP_DENSE_FILES.values()) if not (root / name).is_file()]
    if missing:
        raise MissingInputError(f"LLP folder {root} lacks {missing}")
    issues = IssueCollector(report, strict, f"LLP {root}")
    manifest = _read_weak(root, classes, issues)
    manifest = attach_media(manifest, pl.col("video_id").str.slice(0, LLP_MEDIA_ID_CHARS), media_root, issues)
    dense = _read_dense(root, manifest, classes, issues)
    issues.close()
    return validate_manifest(manifest), validate_dense(dense)


def _read_weak(root: Path, classes: Sequence[str], issues: IssueCollector) -> pl.DataFrame:
    rows = pl.concat(
        [
            read_text_rows(
                root / name,
                _SEPARATOR,
                ("filename", "event_labels"),
                issues,
                header=True,
                id_column="filename",
                rename={"filename": "video_id"},
            ).with_columns(split=pl.lit(split))
            for split, name in LLP_SPLIT_FILES.items()
        ]
    )
    times = pl.col("video_id").str.extract_groups(_FILENAME)
    rows = rows.with_columns(
        start=times.struct.field("start").cast(pl.Float64),
        end=times.struct.field("end").cast(pl.Float64),
        labels=clean_labels(pl.col("event_labels").str.split(",")),
    ).with_columns(duration_s=pl.col("end") - pl.col("start"))
    rows = issues.drop(rows, pl.col("start").is_null(), Reason.MALFORMED, "filename is not <youtube id>_<start>_<end>")
    rows = issues.drop(
        rows,
        unsafe_name("video_id") | unsafe_name(pl.col("video_id").str.slice(0, LLP_MEDIA_ID_CHARS)),
        Reason.ESCAPES_ROOT,
        "the id is not a plain file name",
    )
    rows = issues.drop(
        rows, pl.col("duration_s") < PARTIAL_SEGMENT_MIN_S, Reason.INVALID_DURATION, pl.format("{} s", "duration_s")
    )
    rows = drop_unknown_labels(rows, classes, issues)
    rows = issues.drop(
        rows,
        ~pl.col("video_id").is_first_distinct(),
        Reason.DUPLICATE_ID,
        pl.format("first listed at {}:{}", pl.col("file"), pl.col("line")).first().over("video_id"),
    )
    return rows.select(
        "file",
        "line",
        "video_id",
        dataset=pl.lit("llp"),
        split="split",
        duration_s="duration_s",
        n_segments=n_segments_column(pl.col("duration_s")),
        labels="labels",
    )


def _read_dense(root: Path, manifest: pl.DataFrame, classes: Sequence[str], issues: IssueCollector) -> pl.DataFrame:
    rows = pl.concat(
        [
            read_text_rows(
                root / name,
                _SEPARATOR,
                ("filename", "onset", "offset", "event_labels"),
                issues,
                header=True,
                id_column="filename",
                rename={"filename": "video_id", "event_labels": "label"},
            ).with_columns(modality=pl.lit(modality))
            for modality, name in LLP_DENSE_FILES.items()
        ]
    )
    return check_dense_rows(rows, manifest, classes, issues)
