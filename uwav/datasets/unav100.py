"""UnAV-100 (stage-1 pre-training set): `database[<youtube id>] = {duration, subset, annotations}`.

Videos are untrimmed and of varying length; `n_segments` follows `n_segments_for_duration`.
Every annotated event is audio-visual, so each positive run becomes both an 'audio' and a
'visual' dense row.

Seconds -> 1-s segments (METHOD.md decision): segment t = [t, t+1) is positive for a class when
that class's events cover at least half of it. Coverage is measured on the union of the class's
events: two events of one class covering 0.3 s of a segment each make it positive, and
overlapping events are not counted twice. Dense rows are the maximal runs of positive segments
per class. An event may end a little after the stated duration (rounding in the annotation
tool): up to END_TOLERANCE_S it is clipped to the duration, beyond that it is reported as
"offset beyond the video" and dropped (the official file has no event past its duration).

`segment_rule="any_overlap"` is the released code's rule (`dataloader.py`, UnAV_dataset.get_gt_label;
METHOD.md "The released code"): an event [start, end] s labels every segment it overlaps at all,
t in [floor(start), ceil(end)); an end on a whole second does not label the segment starting
there (end = 3.0 stops at segment 2), a start on a whole second labels its segment (start = 3.0
labels segment 3). Overlapping events of one class simply add up. Everything else (issue
checks, clipping, manifest `labels`, dense runs) is the same under both rules.

Number of segments, the one difference left under "any_overlap": the release gives a video
ceil(duration) segments (`int(d)` if d is whole, else `int(d) + 1`) and resamples its features to
that count with adaptive average pooling, so its labels always have a segment to land on. Here the
features decide the count: `n_segments = n_segments_for_duration(d)` (a trailing partial second
counts only when >= 0.5 s), and labels past it are cut. The two agree when d is whole or its
fraction is >= 0.5 (42.7 s: 43 and 43); when the fraction is in (0, 0.5) the release has one more
segment, [floor(d), ceil(d)), that does not exist here (60.06 s: 61 there, 60 here; 10.3 s: 11
there, 10 here), so an event reaching into that last partial second labels one segment fewer
here, and an event lying only inside it labels none (its class stays in the manifest `labels`,
whereas the release's weak label comes from the segment labels). Videos shorter than 0.5 s (one
segment in the release) are dropped here as before. The release also does not clip an end past
the duration (it only asserts ceil(end) <= the longest video of its split, and such labels may
fall on padding): clipping it here changes no segment that exists here; an event ending more
than END_TOLERANCE_S past the duration is dropped here (the release would keep it; the official
file has none), as is one with a negative start (the release's assert fails on it).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import polars as pl

from uwav.contracts import (
    MODALITIES,
    PARTIAL_SEGMENT_MIN_S,
    validate_dense,
    validate_manifest,
)
from uwav.datasets.validation import (
    IssueCollector,
    Reason,
    ValidationReport,
    attach_media,
    is_unsafe_name,
    n_segments_column,
    normalise_split,
)
from uwav.errors import InvalidInputError, MissingInputError

END_TOLERANCE_S = 1.0
# The same half-segment rule that decides whether a trailing partial segment exists.
MIN_COVERAGE_S = PARTIAL_SEGMENT_MIN_S

SegmentRule = Literal["half_covered", "any_overlap"]
SEGMENT_RULES: tuple[str, ...] = get_args(SegmentRule)

_EVENT_SCHEMA = {
    "position": pl.Int64,
    "video_id": pl.String,
    "index": pl.Int64,
    "label": pl.String,
    "label_id": pl.Int64,
    "start": pl.Float64,
    "end": pl.Float64,
}
_VIDEO_SCHEMA = {"position": pl.Int64, "video_id": pl.String, "split": pl.String, "duration_s": pl.Float64}


def unav100_classes(json_path: str | os.PathLike[str]) -> list[str]:
    """The class names of the annotation file, ordered by `label_id` (pairs that contradict an
    earlier (label, label_id) pair are ignored, as the reader drops them)."""
    path = Path(json_path)
    issues = IssueCollector(ValidationReport(), strict=False, dataset=f"UnAV-100 {path}")
    _, events = _flatten(_load_database(path, []), issues.file(path), issues)
    events = _consistent_events(events, issues)
    return events.unique("label_id").sort("label_id")["label"].to_list()


def read_unav100(
    json_path: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
    media_root: str | os.PathLike[str] | None = None,
    strict: bool = False,
    report: ValidationReport | None = None,
    segment_rule: SegmentRule = "half_covered",
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Read the UnAV-100 annotation JSON: (manifest, dense) per uwav.contracts.

    `video_id` is the YouTube key; split 'validation' becomes 'val'; `labels` are the video's
    distinct event classes in label_id order. Issues are located by the video key (line None).
    With `media_root`, `media_path` is `<media_root>/<youtube id>.<ext>`. With `classes`, events
    of other classes are reported and dropped (default: every class of the file).
    `segment_rule`: "half_covered" (METHOD.md decision, default) or "any_overlap" (the released
    code's rule); see the module docstring.
    """
    path = Path(json_path)
    if segment_rule not in SEGMENT_RULES:
        raise InvalidInputError(
            f"UnAV-100 {path}: unknown segment_rule {segment_rule!r} (expected one of {', '.join(SEGMENT_RULES)})"
        )
    issues = IssueCollector(report, strict, f"UnAV-100 {path}")
    file = issues.file(path)
    duplicate_keys: list[str] = []
    database = _load_database(path, duplicate_keys)
    for key in (k for k in duplicate_keys if k in database):  # a repeated video key
        issues.add(file, None, key, Reason.DUPLICATE_ID, "key repeated in the database; the first is kept")
    videos, events = _flatten(database, file, issues)
    videos = videos.with_columns(n_segments=n_segments_column(pl.col("duration_s")))
    events = _consistent_events(events, issues)
    if classes is not None:
        events = issues.drop(
            events,
            ~pl.col("label").is_in(list(classes)),
            Reason.UNKNOWN_CLASS,
            pl.format("annotations[{}]: {}", "index", "label"),
        )
    events = _valid_events(events, videos, issues)

    by_label_id = pl.struct("label_id", "label").unique().sort()
    labels = events.group_by("position").agg(labels=by_label_id.struct.field("label"))
    manifest = videos.join(labels, on="position", how="left", maintain_order="left").with_columns(
        pl.col("labels").fill_null(pl.lit([], pl.List(pl.String))), dataset=pl.lit("unav100")
    )
    manifest = attach_media(manifest, pl.col("video_id"), media_root, issues)
    issues.close()
    return validate_manifest(manifest), validate_dense(_segment_runs(events, segment_rule))


def _load_database(path: Path, duplicate_keys: list[str]) -> dict[str, Any]:
    """`database` of the JSON; keys that repeat inside an object are appended to `duplicate_keys`
    and the first value kept (plain json.load silently keeps the last)."""

    def first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) == len(pairs):
            return obj
        obj = {}
        for key, value in pairs:
            if key in obj:
                duplicate_keys.append(key)
            else:
                obj[key] = value
        return obj

    if not path.is_file():
        raise MissingInputError(f"{path}: no such file")
    try:
        document = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=first_wins)
    except ValueError as error:  # bad JSON or bad UTF-8
        raise InvalidInputError(f"{path}: not valid JSON: {error}") from None
    database = document.get("database") if isinstance(document, dict) else None
    if not isinstance(database, dict):
        raise InvalidInputError(f"{path}: expected a JSON object with a 'database' object")
    return database


def _flatten(database: dict[str, Any], file: str, issues: IssueCollector) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Videos and events as frames, dropping what is structurally unusable (per-video checks)."""
    videos: list[tuple[Any, ...]] = []
    events: list[tuple[Any, ...]] = []
    for position, (video_id, entry) in enumerate(database.items()):
        problem = _video_problem(video_id, entry)
        if problem is not None:
            issues.add(file, None, video_id, *problem, position=position)
            continue
        videos.append((position, video_id, normalise_split(entry["subset"]), float(entry["duration"])))
        for index, event in enumerate(entry["annotations"]):
            segment = event.get("segment") if isinstance(event, dict) else None
            if not (
                isinstance(segment, list)
                and len(segment) == 2
                and all(_is_number(x) for x in segment)
                and isinstance(event.get("label"), str)
                and isinstance(event.get("label_id"), int)
            ):
                detail = f"annotations[{index}]: expected segment [start_s, end_s], label, label_id"
                issues.add(file, None, video_id, Reason.MALFORMED, detail, position=position)
                continue
            events.append((position, video_id, index, event["label"], event["label_id"], *map(float, segment)))
    where = {"file": pl.lit(file), "line": pl.lit(None, pl.Int64)}  # issue location columns
    return (
        pl.DataFrame(videos, schema=_VIDEO_SCHEMA, orient="row").with_columns(**where),
        pl.DataFrame(events, schema=_EVENT_SCHEMA, orient="row").with_columns(**where),
    )


def _video_problem(video_id: str, entry: Any) -> tuple[Reason, str] | None:
    if is_unsafe_name(video_id):
        return Reason.ESCAPES_ROOT, "the key is not a plain file name"
    if not isinstance(entry, dict) or not isinstance(entry.get("annotations"), list):
        return Reason.MALFORMED, "expected an object with 'duration', 'subset' and an 'annotations' list"
    duration = entry.get("duration")
    if not _is_number(duration) or duration < PARTIAL_SEGMENT_MIN_S:
        return Reason.INVALID_DURATION, f"duration {duration!r} (needs at least one segment)"
    if not isinstance(entry.get("subset"), str) or normalise_split(entry["subset"]) is None:
        return Reason.UNKNOWN_SPLIT, f"subset {entry.get('subset')!r}"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _consistent_events(events: pl.DataFrame, issues: IssueCollector) -> pl.DataFrame:
    """Drop events whose (label, label_id) contradicts the first pair seen for that label or id."""
    events = events.with_columns(
        first_label=pl.col("label").first().over("label_id"), first_id=pl.col("label_id").first().over("label")
    )
    return issues.drop(
        events,
        (pl.col("first_label") != pl.col("label")) | (pl.col("first_id") != pl.col("label_id")),
        Reason.INCONSISTENT,
        pl.format(
            "annotations[{}]: {} with label_id {}, but label_id {} is {} and {} has label_id {}",
            "index", "label", "label_id", "label_id", "first_label", "label", "first_id",
        ),
    ).drop("first_label", "first_id")


def _valid_events(events: pl.DataFrame, videos: pl.DataFrame, issues: IssueCollector) -> pl.DataFrame:
    """Drop events with an impossible span; clip small overshoots of the duration."""
    events = events.join(videos.select("position", "duration_s", "n_segments"), on="position", maintain_order="left")
    span = pl.format("annotations[{}]: [{}, {}] s", "index", "start", "end")
    events = issues.drop(events, pl.col("start") < 0, Reason.BEFORE_START, span)
    events = issues.drop(events, pl.col("start") >= pl.col("end"), Reason.EMPTY_SPAN, span)
    events = issues.drop(
        events,
        pl.col("end") > pl.col("duration_s") + END_TOLERANCE_S,
        Reason.BEYOND_VIDEO,
        pl.format("{} in a video of {} s", span, "duration_s"),
    )
    return events.with_columns(end=pl.min_horizontal("end", "duration_s"))


def _segment_runs(events: pl.DataFrame, segment_rule: SegmentRule = "half_covered") -> pl.DataFrame:
    """Dense rows: maximal runs of segments covered >= MIN_COVERAGE_S by the union of a class's
    events ("half_covered") or touched by it at all, [floor(start), ceil(end)) ("any_overlap"),
    cut at n_segments; one 'audio' and one 'visual' row per run, in file order.

    Vectorised over all videos (no per-group windows, which are slow with ~17k classes-in-video):
    rows are kept sorted so that every grouping is "a new group starts where the key changes".
    """
    key = ["position", "label_id"]
    t = pl.col("t")
    # Union per class: an event opens a new interval when it starts after every earlier event of
    # its class ended. The running max stays inside a class because each class is offset by
    # `span` more than the previous one (a cum_max over the whole column, no window needed).
    span = (events["end"].max() or 0.0) + 1.0
    class_rank = _starts_group(key).cum_sum() * span
    merged = (
        events.select(*key, "start", "end", "n_segments")
        .sort(*key, "start")
        .with_columns(reach=(pl.col("end") + class_rank).cum_max().shift(1) - class_rank)
        .with_columns(interval=(_starts_group(key) | (pl.col("start") > pl.col("reach"))).cum_sum())
        .group_by("interval", maintain_order=True)
        .agg(pl.col(*key, "n_segments").first(), start=pl.col("start").min(), end=pl.col("end").max())
    )
    first = pl.col("start").floor().cast(pl.Int64)
    stop = pl.min_horizontal(pl.col("end").ceil().cast(pl.Int64), pl.col("n_segments").cast(pl.Int64))
    # any_overlap: every t of [floor(start), ceil(end)) counts, whatever it covers (an event that
    # starts after its clipped end still has its first second, as in the release)
    positive = pl.lit(True) if segment_rule == "any_overlap" else pl.col("cover") >= MIN_COVERAGE_S - 1e-9
    runs = (
        merged.with_columns(t=pl.int_ranges(first, stop))
        .explode("t")
        .drop_nulls("t")
        .select(*key, "t", cover=pl.min_horizontal("end", t + 1) - pl.max_horizontal("start", t))
        # a segment split by a gap between two intervals appears twice, adjacent: add them up
        .with_columns(segment=_starts_group([*key, "t"]).cum_sum())
        .group_by("segment", maintain_order=True)
        .agg(pl.col(*key, "t").first(), pl.col("cover").sum())
        .filter(positive)
        .with_columns(run=(_starts_group(key) | (t != t.shift(1) + 1)).cum_sum())
        .group_by("run", maintain_order=True)
        .agg(pl.col(*key).first(), onset=t.min(), offset=t.max() + 1)
    )
    names = events.select(*key, "video_id", "label").unique(key)
    modalities = pl.DataFrame({"modality": list(MODALITIES)})
    return (
        runs.join(names, on=key, maintain_order="left")
        .join(modalities, how="cross", maintain_order="left_right")
        .select("video_id", "modality", "label", "onset", "offset")
    )


def _starts_group(columns: list[str]) -> pl.Expr:
    """True on the first row and wherever any of `columns` differs from the row before."""
    return pl.any_horizontal([pl.col(c) != pl.col(c).shift(1) for c in columns]).fill_null(True)
