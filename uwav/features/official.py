"""Import the official pre-extracted LLP features (AVVP release) into a `FeatureStore`.

The release holds, per video, `<feats_root>/<folder>/<first 11 characters of the LLP filename>.npy`:

| folder        | file shape  | store feature(s)                                   |
| ------------- | ----------- | -------------------------------------------------- |
| `vggish`      | (10, 128)   | `vggish` (10 x 128)                                |
| `res152`      | (80, 2048)  | `resnet152` (10 x 8 x 2048) and `resnet152_mean` (10 x 2048) |
| `r2plus1d_18` | (10, 512)   | `r2plus1d` (10 x 512)                              |

`resnet152_mean` is the per-segment mean of the 8 frames (the 80 rows are 10 segments x 8
consecutive frames), computed in float32 before the cast to the store dtype: what the HAN reads
(METHOD.md: averaging before `fc_v` is the same function and 8x cheaper). With `keep_frames` the 8
frames are stored too, as `resnet152` (10 x 8 x 2048: 3.9 GB for all of LLP in float16, and most of
the import's time; nothing in uwav reads them; `stages.features.resnet_frames`).

A video is imported only when all three files are present, readable, numeric, finite and of the
right shape; every other video is skipped and reported (`ImportReport.problems`, one row per video
and file). The import is resumable: videos already complete in the store are not reloaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from uwav.errors import MissingInputError
from uwav.features.store import FeatureStore

LLP_SEGMENTS = 10
FRAMES_PER_SEGMENT = 8


@dataclass(frozen=True)
class OfficialKind:
    """One folder of the release: its file shape and the store feature it becomes."""

    folder: str
    store_name: str
    file_shape: tuple[int, int]
    segment_shape: tuple[int, ...]


OFFICIAL_KINDS: tuple[OfficialKind, ...] = (
    OfficialKind("vggish", "vggish", (LLP_SEGMENTS, 128), (128,)),
    OfficialKind("res152", "resnet152", (LLP_SEGMENTS * FRAMES_PER_SEGMENT, 2048), (FRAMES_PER_SEGMENT, 2048)),
    OfficialKind("r2plus1d_18", "r2plus1d", (LLP_SEGMENTS, 512), (512,)),
)
RESNET_MEAN_NAME = "resnet152_mean"
OFFICIAL_FEATURE_NAMES: tuple[str, ...] = (*(kind.store_name for kind in OFFICIAL_KINDS), RESNET_MEAN_NAME)
ENCODER_IDENTITY_PREFIX = "llp-official/"

PROBLEM_SCHEMA: dict[str, pl.DataType] = {
    "video_id": pl.String(),
    "kind": pl.String(),  # release folder, or "index" for a segment-count conflict with the store
    "path": pl.String(),
    "problem": pl.String(),  # missing | unreadable | misshapen | invalid values | segment count
    "detail": pl.String(),
}


@dataclass(frozen=True)
class ImportReport:
    """What an import did: imported videos, videos already in the store, and every problem found."""

    store_url: str
    requested: int
    imported: list[str]
    already_complete: list[str]
    problems: pl.DataFrame  # PROBLEM_SCHEMA, one row per (video, file) at fault
    source: str = "official LLP features"  # what was imported, for the summary

    @property
    def skipped(self) -> list[str]:
        """Videos not imported because of a problem."""
        return self.problems["video_id"].unique(maintain_order=True).to_list()

    def summary(self) -> str:
        lines = [
            f"{self.source} -> {self.store_url}: {self.requested} videos requested, "
            f"{len(self.imported)} imported, {len(self.already_complete)} already in the store, "
            f"{len(self.skipped)} skipped"
        ]
        if self.problems.height:
            counts = self.problems.group_by("kind", "problem").len().sort("kind", "problem")
            for row in counts.iter_rows(named=True):
                lines.append(f"  {row['kind']}: {row['len']} {row['problem']}")
            first = self.problems.row(0, named=True)
            lines.append(f"  e.g. {first['video_id']}: {first['problem']} {first['path']} ({first['detail']})")
        return "\n".join(lines)


def problem_row(video_id: str, kind: str, path: str, problem: str, detail: str) -> dict[str, str]:
    """One row of an import's problem report (PROBLEM_SCHEMA)."""
    return {"video_id": video_id, "kind": kind, "path": path, "problem": problem, "detail": detail}


def load_checked(path: Path, shape: tuple[int | None, ...]) -> tuple[np.ndarray | None, tuple[str, str] | None]:
    """(float32 array, None) for a good file, else (None, (problem, detail)). `shape` may hold
    None for an axis of any positive length (UnAV-100 features of any number of rows)."""
    if not path.is_file():
        return None, ("missing", "no such file")
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        return None, ("unreadable", f"{type(error).__name__}: {error}")
    if not isinstance(values, np.ndarray):
        return None, ("unreadable", f"holds {type(values).__name__}, not one array")
    fits = values.ndim == len(shape) and all(
        (size >= 1) if want is None else (size == want) for size, want in zip(values.shape, shape, strict=True)
    )
    if not fits:
        expected = tuple("any" if want is None else want for want in shape)
        return None, ("misshapen", f"shape {values.shape}, expected {expected}")
    if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
        return None, ("invalid values", f"dtype {values.dtype} is not real numbers")
    values = values.astype(np.float32)
    if not np.isfinite(values).all():
        return None, ("invalid values", "NaN or infinite values")
    return values, None


def _import_video(
    store: FeatureStore, feats_root: Path, video_id: str, names: Mapping[str, str], keep_frames: bool
) -> list[dict[str, str]]:
    """Load, check and write one video; returns its problem rows (empty when imported)."""
    features: dict[str, np.ndarray] = {}
    problems: list[dict[str, str]] = []
    for kind in OFFICIAL_KINDS:
        path = feats_root / kind.folder / f"{video_id[:11]}.npy"
        values, problem = load_checked(path, kind.file_shape)
        if problem is not None:
            problems.append(problem_row(video_id, kind.folder, str(path), *problem))
            continue
        segments = values.reshape(LLP_SEGMENTS, *kind.segment_shape)
        if kind.folder == "res152":
            features[names[RESNET_MEAN_NAME]] = segments.mean(axis=1)
            if not keep_frames:
                continue
        features[names[kind.store_name]] = segments
    if problems:
        return problems
    try:
        store.write_video(video_id, features)
    except ValueError as error:  # values the store dtype cannot hold (beyond float16 range); nothing written
        return [problem_row(video_id, "all", str(feats_root), "invalid values", str(error))]
    return []


def import_official_llp(
    store: FeatureStore,
    feats_root: Path,
    video_ids: Sequence[str],
    *,
    names: Mapping[str, str] | None = None,
    workers: int = 4,
    keep_frames: bool = True,
) -> ImportReport:
    """Import the official features of `video_ids` (LLP filenames such as `BjCEufrlXm4_20_30`).

    `feats_root` holds the `vggish/`, `res152/` and `r2plus1d_18/` folders (a missing folder
    raises FileNotFoundError: it is a wrong root, not a bad video). `names` renames store
    features (keys: `vggish`, `resnet152`, `resnet152_mean`, `r2plus1d`), e.g. when the store
    already holds an encoder-computed `r2plus1d`. Bad videos are skipped and reported; videos
    already complete are not reloaded; `workers` threads load and write files.
    """
    feats_root = Path(feats_root)
    absent = [str(feats_root / kind.folder) for kind in OFFICIAL_KINDS if not (feats_root / kind.folder).is_dir()]
    if absent:
        raise MissingInputError(f"official LLP features: missing folders {absent}")
    names = {name: name for name in OFFICIAL_FEATURE_NAMES} | dict(names or {})
    unknown = sorted(set(names) - set(OFFICIAL_FEATURE_NAMES))
    if unknown:
        raise ValueError(
            f"official LLP features: unknown feature names {unknown} (known: {list(OFFICIAL_FEATURE_NAMES)})"
        )
    imported_names = [name for name in OFFICIAL_FEATURE_NAMES if keep_frames or name != "resnet152"]
    store_names = [names[name] for name in imported_names]

    requested = list(dict.fromkeys(video_ids))
    complete = store.completed(store_names) if set(store_names) <= set(store.feature_names()) else set()
    already_complete = [video_id for video_id in requested if video_id in complete]
    registered = store.registered()
    problems = [
        problem_row(
            video_id,
            "index",
            store.url,
            "segment count",
            f"registered with {registered[video_id]} segments, the official features have {LLP_SEGMENTS}",
        )
        for video_id in requested
        if video_id not in complete and registered.get(video_id, LLP_SEGMENTS) != LLP_SEGMENTS
    ]
    conflicting = {row["video_id"] for row in problems}
    todo = [video_id for video_id in requested if video_id not in complete and video_id not in conflicting]

    shapes = {names[kind.store_name]: kind.segment_shape for kind in OFFICIAL_KINDS}
    shapes[names[RESNET_MEAN_NAME]] = (OFFICIAL_KINDS[1].segment_shape[1],)
    identities = {
        names[kind.store_name]: ENCODER_IDENTITY_PREFIX + kind.folder for kind in OFFICIAL_KINDS
    } | {names[RESNET_MEAN_NAME]: ENCODER_IDENTITY_PREFIX + "res152/segment-mean"}
    shapes = {name: shape for name, shape in shapes.items() if name in store_names}
    identities = {name: identity for name, identity in identities.items() if name in store_names}
    store.allocate(todo, [LLP_SEGMENTS] * len(todo), shapes, encoder_identities=identities)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(pool.map(lambda video_id: _import_video(store, feats_root, video_id, names, keep_frames), todo))
    imported = [video_id for video_id, rows in zip(todo, results) if not rows]
    problems.extend(row for rows in results for row in rows)
    return ImportReport(
        store_url=store.url,
        requested=len(requested),
        imported=imported,
        already_complete=already_complete,
        problems=pl.DataFrame(problems, schema=PROBLEM_SCHEMA),
    )
