"""Import the public feature releases (UWAV, VALOR) into a `FeatureStore`: the whole pipeline then
runs without a single media file (`stages.features.source: released`).

`stages.features.released_root` is laid out like the UWAV release's `data/` folder (its README):

| dataset   | what                              | file(s)                                                       | shape      |
| --------- | --------------------------------- | ------------------------------------------------------------- | ---------- |
| LLP       | CLIP ViT-L/14 image embeddings    | `LLP/feats_CLIP/segment_feats/<id11>.npy` (VALOR: `CLIP/features/<id11>.npy`) | (10, 768) |
| LLP       | CLAP audio embeddings             | `LLP/feats_CLAP/segment_feats/<id11>.npy` (VALOR: `CLAP/features/<id11>.npy`) | (10, 512) |
| LLP       | class text embeddings             | `LLP/feats_{CLIP,CLAP}/event_feats/all_event_feats.npy`       | (25, D)    |
| LLP       | the AVVP release (HAN inputs)     | `LLP/feats/{vggish,res152,r2plus1d_18}/<id11>.npy` (VALOR: `feats/...`) | see `uwav.features.official` |
| UnAV-100  | CLIP / CLAP embeddings            | `UnAV/feats_{CLIP,CLAP}/segment_feats/<video_id>.npy`         | (L, D), any L |
| UnAV-100  | class text embeddings             | `UnAV/feats_{CLIP,CLAP}/event_feats/all_event_feats.npy`      | (100, D)   |

The release's embeddings are L2-normalised; they are stored as they are. UnAV-100 files hold any
number of rows; the release average-pools them over time to the video's segment count (torch's
adaptive average pooling: segment i is the mean of rows [floor(i L / n), ceil((i + 1) L / n))), and
so does the import, to the manifest's segment count (whole seconds plus a last partial one of at
least 0.5 s; the release uses ceil(duration), one more segment for ~17% of the videos). Text
embeddings must be in the dataset's class order (LLP's 25 classes as every LLP tool orders them,
UnAV-100's by `label_id`).

Store features `clip` and `clap` get the encoder identity `released/clip` / `released/clap`, and
the text embeddings an identity naming their file, so released values never mix with locally
encoded ones (the store refuses a feature array with two identities; text embeddings of another
identity are recomputed). A video with a missing, unreadable, non-numeric, non-finite or
mis-shaped file is skipped and listed (video, file, problem) in the import report; the run goes
on. Videos already complete in the store are not read again.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from uwav.contracts import text_embedding_name
from uwav.errors import InvalidInputError, MissingInputError
from uwav.features.official import OFFICIAL_KINDS, PROBLEM_SCHEMA, ImportReport, load_checked, problem_row
from uwav.features.store import FeatureStore

RELEASED_FEATURES: tuple[str, str] = ("clip", "clap")
RELEASED_DIMS: dict[str, int] = {"clip": 768, "clap": 512}  # CLIP ViT-L/14, CLAP (HTSAT)
RELEASED_IDENTITY_PREFIX = "released/"
# Per dataset kind and feature: the segment folders of the UWAV release, then VALOR's (LLP only).
SEGMENT_FOLDERS: dict[str, dict[str, tuple[str, ...]]] = {
    "llp": {"clip": ("LLP/feats_CLIP/segment_feats", "CLIP/features"), "clap": ("LLP/feats_CLAP/segment_feats", "CLAP/features")},
    "unav100": {"clip": ("UnAV/feats_CLIP/segment_feats",), "clap": ("UnAV/feats_CLAP/segment_feats",)},
}
TEXT_FILES: dict[str, dict[str, str]] = {
    "llp": {"clip": "LLP/feats_CLIP/event_feats/all_event_feats.npy", "clap": "LLP/feats_CLAP/event_feats/all_event_feats.npy"},
    "unav100": {"clip": "UnAV/feats_CLIP/event_feats/all_event_feats.npy", "clap": "UnAV/feats_CLAP/event_feats/all_event_feats.npy"},
}
# The AVVP release's folder (vggish/, res152/, r2plus1d_18/) in the UWAV layout, then VALOR's.
OFFICIAL_FOLDERS: tuple[str, ...] = ("LLP/feats", "feats")
# LLP files are named by the YouTube id (the first 11 characters of the LLP filename).
LLP_FILE_ID_CHARS = 11


@dataclass(frozen=True)
class ReleaseLayout:
    """Where one dataset's released CLIP / CLAP segment features and text embeddings are."""

    root: Path
    kind: str  # "llp" | "unav100"
    segment_folders: dict[str, Path]
    text_files: dict[str, Path]

    def file_for(self, feature: str, video_id: str) -> Path:
        stem = video_id[:LLP_FILE_ID_CHARS] if self.kind == "llp" else video_id
        return self.segment_folders[feature] / f"{stem}.npy"


def find_release(root: Path, kind: str) -> ReleaseLayout:
    """The layout of dataset `kind` ("llp" | "unav100") under `root`; raises naming what is missing."""
    root = Path(root)
    if kind not in SEGMENT_FOLDERS:
        raise InvalidInputError(
            f"released features: datasets of kind {kind!r} have no feature release; supported: {sorted(SEGMENT_FOLDERS)}"
        )
    folders: dict[str, Path] = {}
    for feature, candidates in SEGMENT_FOLDERS[kind].items():
        found = next((root / candidate for candidate in candidates if (root / candidate).is_dir()), None)
        if found is None:
            raise MissingInputError(
                f"released features under {root}: no {feature.upper()} segment folder for {kind} "
                f"(looked for {', '.join(candidates)})"
            )
        folders[feature] = found
    texts = {feature: root / relative for feature, relative in TEXT_FILES[kind].items()}
    absent = [str(path) for path in texts.values() if not path.is_file()]
    if absent:
        raise MissingInputError(f"released features: missing class text embeddings {absent}")
    return ReleaseLayout(root, kind, folders, texts)


def official_features_folder(root: Path) -> Path:
    """The AVVP release's feature folder under `root` (UWAV layout `LLP/feats`, VALOR's `feats`)."""
    for relative in OFFICIAL_FOLDERS:
        folder = Path(root) / relative
        if all((folder / kind.folder).is_dir() for kind in OFFICIAL_KINDS):
            return folder
    wanted = ", ".join(kind.folder for kind in OFFICIAL_KINDS)
    raise MissingInputError(
        f"released features under {root}: no AVVP feature folder ({wanted}) in {' or '.join(OFFICIAL_FOLDERS)}"
    )


def adaptive_average_pool(values: np.ndarray, n_segments: int) -> np.ndarray:
    """(L, D) -> (n_segments, D) float32 as torch's `adaptive_avg_pool1d` over the rows: segment i
    is the mean of rows [floor(i L / n), ceil((i + 1) L / n))."""
    length = values.shape[0]
    index = np.arange(n_segments + 1, dtype=np.int64)
    starts = (index[:-1] * length) // n_segments
    ends = -((-index[1:] * length) // n_segments)
    running = np.concatenate([np.zeros((1, values.shape[1])), np.cumsum(values, axis=0, dtype=np.float64)])
    return ((running[ends] - running[starts]) / (ends - starts)[:, None]).astype(np.float32)


def import_released_text(store: FeatureStore, layout: ReleaseLayout, classes: Sequence[str], role: str) -> None:
    """The release's class text embeddings of a dataset role, stored under the role's text names."""
    for feature, path in layout.text_files.items():
        values, problem = load_checked(path, (len(classes), RELEASED_DIMS[feature]))
        if problem is not None:
            raise InvalidInputError(
                f"{path}: {problem[0]}: {problem[1]} (the {feature.upper()} text embeddings of the "
                f"{len(classes)} {layout.kind} classes, in the dataset's class order)"
            )
        identity = f"{RELEASED_IDENTITY_PREFIX}{path.relative_to(layout.root).as_posix()}"
        store.write_text_embeddings(text_embedding_name(feature, role), list(classes), values, identity)  # type: ignore[arg-type]


def _import_video(store: FeatureStore, layout: ReleaseLayout, video_id: str, n_segments: int) -> list[dict[str, str]]:
    """Load, check, pool (UnAV-100) and write one video's CLIP and CLAP rows; its problem rows."""
    features: dict[str, np.ndarray] = {}
    problems = []
    for feature in RELEASED_FEATURES:
        path = layout.file_for(feature, video_id)
        rows = n_segments if layout.kind == "llp" else None
        values, problem = load_checked(path, (rows, RELEASED_DIMS[feature]))
        if problem is not None:
            problems.append(problem_row(video_id, str(path.parent.relative_to(layout.root)), str(path), *problem))
            continue
        assert values is not None
        features[feature] = values if values.shape[0] == n_segments else adaptive_average_pool(values, n_segments)
    if problems:
        return problems
    try:
        store.write_video(video_id, features)
    except ValueError as error:  # beyond the store dtype's range; nothing written
        return [problem_row(video_id, "all", str(layout.root), "invalid values", str(error))]
    return []


def import_released_segments(
    store: FeatureStore, layout: ReleaseLayout, manifest: pl.DataFrame, *, workers: int = 4
) -> ImportReport:
    """Import the CLIP and CLAP segment features of the manifest's videos (`video_id`,
    `n_segments`); see the module docstring. Only videos whose two files exist are registered."""
    video_ids = manifest["video_id"].to_list()
    counts = dict(zip(video_ids, manifest["n_segments"].to_list(), strict=True))
    requested = list(dict.fromkeys(video_ids))
    names = list(RELEASED_FEATURES)
    complete = store.completed(names) if set(names) <= set(store.feature_names()) else set()
    already_complete = [video_id for video_id in requested if video_id in complete]
    registered = store.registered()
    problems: list[dict[str, str]] = []
    todo: list[str] = []
    for video_id in requested:
        if video_id in complete:
            continue
        absent = [path for path in (layout.file_for(feature, video_id) for feature in names) if not path.is_file()]
        if absent:
            problems += [problem_row(video_id, str(p.parent.relative_to(layout.root)), str(p), "missing", "no such file") for p in absent]
        elif registered.get(video_id, counts[video_id]) != counts[video_id]:
            problems.append(problem_row(
                video_id, "index", store.url, "segment count",
                f"registered with {registered[video_id]} segments, the manifest has {counts[video_id]}",
            ))  # fmt: skip
        else:
            todo.append(video_id)
    store.allocate(
        todo, [counts[video_id] for video_id in todo], {feature: (RELEASED_DIMS[feature],) for feature in names},
        encoder_identities={feature: RELEASED_IDENTITY_PREFIX + feature for feature in names},
    )  # fmt: skip
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(pool.map(lambda video_id: _import_video(store, layout, video_id, counts[video_id]), todo))
    problems += [row for rows in results for row in rows]
    return ImportReport(
        store_url=store.url,
        requested=len(requested),
        imported=[video_id for video_id, rows in zip(todo, results, strict=True) if not rows],
        already_complete=already_complete,
        problems=pl.DataFrame(problems, schema=PROBLEM_SCHEMA),
        source=f"released {layout.kind} CLIP/CLAP features",
    )
