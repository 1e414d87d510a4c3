"""Import the public feature releases (UWAV, VALOR) into a `FeatureStore`: the whole pipeline then
runs without a single media file (`stages.features.source: released`).

`stages.features.released_root` is laid out like the UWAV release's `data/` folder (its README), or
like VALOR's `data/` folder for LLP:

| dataset   | what                              | file(s)                                                       | shape      | store feature |
| --------- | --------------------------------- | ------------------------------------------------------------- | ---------- | ------------- |
| LLP       | CLIP ViT-L/14 image embeddings    | `LLP/feats_CLIP/segment_feats/<id11>.npy` (VALOR: `CLIP/features/<id11>.npy`) | (10, 768) | `clip` |
| LLP       | CLAP audio embeddings (UWAV)      | `LLP/feats_CLAP/segment_feats/<id11>.npy`                     | (10, 512)  | `clap`        |
| LLP       | CLAP HTSAT feature maps (VALOR)   | `CLAP/features/<id11>.npy`                                    | (64, 768)  | `clap_maps` (per clip) |
| LLP       | class text embeddings             | `LLP/feats_{CLIP,CLAP}/event_feats/all_event_feats.npy`       | (25, D)    | text          |
| LLP       | the AVVP release (HAN inputs)     | `LLP/feats/{vggish,res152,r2plus1d_18}/<id11>.npy` (VALOR: `feats/...`) | see `uwav.features.official` | |
| UnAV-100  | CLIP / CLAP embeddings            | `UnAV/feats_{CLIP,CLAP}/segment_feats/<video_id>.npy`         | (L, D), any L | `clip`, `clap` |
| UnAV-100  | class text embeddings             | `UnAV/feats_{CLIP,CLAP}/event_feats/all_event_feats.npy`      | (100, D)   | text          |
| LLP       | VALOR's segment pseudo-labels     | `CLAP/segment_pseudo_labels/<id11>.npy` (audio), `CLIP/segment_pseudo_labels/<id11>.npy` (visual) | (10, 25) | not features: `uwav.labels.released` |

What an LLP CLAP folder holds is read from its files' shape, not its name: (10, 512) segment
embeddings, or VALOR's (64, 768) feature maps (`utils/clap_preprocess.py`,
`get_audio_feature_maps`: laion_clap's fusion HTSAT over the whole 10-s clip, 48 kHz, int16 round
trip, `data_filling='repeatpad'`), which are no segment embeddings: they are stored as the
per-clip feature `clap_maps` (the store's contract for a feature whose rows are not segments),
what VALOR++'s HAN reads. A folder whose files have neither shape is refused naming the shape
found. Both CLAP folders are imported where both exist.

The release's embeddings are L2-normalised; they are stored as they are. UnAV-100 files hold any
number of rows; the release average-pools them over time to the video's segment count (torch's
adaptive average pooling: segment i is the mean of rows [floor(i L / n), ceil((i + 1) L / n))), and
so does the import, to the manifest's segment count (whole seconds plus a last partial one of at
least 0.5 s; the release uses ceil(duration), one more segment for ~17% of the videos). Text
embeddings must be in the dataset's class order (LLP's 25 classes as every LLP tool orders them,
UnAV-100's by `label_id`); only the pseudo-label generator reads them, so a release without them
(VALOR's) imports all the rest.

Store features `clip`, `clap` and `clap_maps` get the encoder identity `released/<feature>`, and
the text embeddings an identity naming their file, so released values never mix with locally
encoded ones (the store refuses a feature array with two identities; text embeddings of another
identity are recomputed). A video with a missing, unreadable, non-numeric, non-finite or
mis-shaped file is skipped and listed (video, file, problem) in the import report; the run goes
on. Videos already complete in the store are not read again.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from uwav.contracts import CLAP_MAPS, HTSAT_MAP_STEPS, text_embedding_name
from uwav.errors import InvalidInputError, MissingInputError
from uwav.features.official import LLP_SEGMENTS, OFFICIAL_KINDS, PROBLEM_SCHEMA, ImportReport, load_checked, problem_row
from uwav.features.store import FeatureStore

RELEASED_DIMS: dict[str, int] = {"clip": 768, "clap": 512}  # CLIP ViT-L/14, CLAP (HTSAT): segment and text embeddings
CLAP_MAPS_SHAPE: tuple[int, int] = (HTSAT_MAP_STEPS, 768)  # VALOR's maps: HTSAT tokens x channels of one whole clip
RELEASED_IDENTITY_PREFIX = "released/"
# Per dataset kind and encoder: the segment folders of the UWAV release, then VALOR's (LLP only).
# The first CLIP folder found is read; every CLAP folder found is read (its files' shape says what it holds).
SEGMENT_FOLDERS: dict[str, dict[str, tuple[str, ...]]] = {
    "llp": {"clip": ("LLP/feats_CLIP/segment_feats", "CLIP/features"), "clap": ("LLP/feats_CLAP/segment_feats", "CLAP/features")},
    "unav100": {"clip": ("UnAV/feats_CLIP/segment_feats",), "clap": ("UnAV/feats_CLAP/segment_feats",)},
}
TEXT_FILES: dict[str, dict[str, str]] = {
    "llp": {"clip": "LLP/feats_CLIP/event_feats/all_event_feats.npy", "clap": "LLP/feats_CLAP/event_feats/all_event_feats.npy"},
    "unav100": {"clip": "UnAV/feats_CLIP/event_feats/all_event_feats.npy", "clap": "UnAV/feats_CLAP/event_feats/all_event_feats.npy"},
}
# VALOR's segment pseudo-labels (audio from CLAP, visual from CLIP), under its `data/` folder.
RELEASED_LABEL_FOLDERS: dict[str, str] = {"audio": "CLAP/segment_pseudo_labels", "visual": "CLIP/segment_pseudo_labels"}
# The AVVP release's folder (vggish/, res152/, r2plus1d_18/) in the UWAV layout, then VALOR's.
OFFICIAL_FOLDERS: tuple[str, ...] = ("LLP/feats", "feats")
# LLP files are named by the YouTube id (the first 11 characters of the LLP filename).
LLP_FILE_ID_CHARS = 11


def release_file_stem(kind: str, video_id: str) -> str:
    """The name (without `.npy`) of a video's files in a release: LLP's by the YouTube id."""
    return video_id[:LLP_FILE_ID_CHARS] if kind == "llp" else video_id


@dataclass(frozen=True)
class ReleaseLayout:
    """Where one dataset's released CLIP / CLAP features (store feature -> folder) and class text
    embeddings (encoder -> file; those the release has) are."""

    root: Path
    kind: str  # "llp" | "unav100"
    segment_folders: dict[str, Path]
    text_files: dict[str, Path]

    def file_for(self, feature: str, video_id: str) -> Path:
        return self.segment_folders[feature] / f"{release_file_stem(self.kind, video_id)}.npy"

    def file_shape(self, feature: str, n_segments: int) -> tuple[int | None, ...]:
        """The shape of one video's file of `feature` (None: any number of rows, pooled to the segments)."""
        if feature == CLAP_MAPS:
            return CLAP_MAPS_SHAPE
        return (n_segments if self.kind == "llp" else None, RELEASED_DIMS[feature])


def _first_shape(folder: Path) -> tuple[Path, tuple[int, ...]] | None:
    """The first file of `folder` whose array header reads, and its shape (only the header is read)."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if not entry.name.endswith(".npy"):
                continue
            try:
                return Path(entry.path), np.load(entry.path, mmap_mode="r", allow_pickle=False).shape
            except (OSError, ValueError, EOFError):
                continue
    return None


def clap_folder_feature(folder: Path, kind: str) -> str:
    """The store feature a CLAP folder of dataset `kind` holds, from its files' shape: `clap`
    (segment embeddings) or, for LLP, `clap_maps` (VALOR's feature maps); raises naming the shape
    of a folder that holds neither."""
    if kind != "llp":
        return "clap"  # UnAV-100: segment embeddings of any length
    first = _first_shape(folder)
    if first is None:
        raise MissingInputError(f"released features: {folder} holds no readable .npy file")
    path, shape = first
    segments = (LLP_SEGMENTS, RELEASED_DIMS["clap"])
    if shape == segments:
        return "clap"
    if shape == CLAP_MAPS_SHAPE:
        return CLAP_MAPS
    raise InvalidInputError(
        f"released features: {folder} holds arrays of shape {shape} (e.g. {path.name}); expected {segments} "
        f"CLAP segment embeddings (the UWAV release) or {CLAP_MAPS_SHAPE} CLAP feature maps (VALOR's release)"
    )


def find_release(root: Path, kind: str) -> ReleaseLayout:
    """The layout of dataset `kind` ("llp" | "unav100") under `root`; raises naming what is missing."""
    root = Path(root)
    if kind not in SEGMENT_FOLDERS:
        raise InvalidInputError(
            f"released features: datasets of kind {kind!r} have no feature release; supported: {sorted(SEGMENT_FOLDERS)}"
        )
    folders: dict[str, Path] = {}
    for encoder, candidates in SEGMENT_FOLDERS[kind].items():
        found = [root / candidate for candidate in candidates if (root / candidate).is_dir()]
        if not found:
            raise MissingInputError(
                f"released features under {root}: no {encoder.upper()} segment folder for {kind} "
                f"(looked for {', '.join(candidates)})"
            )
        if encoder == "clip":
            folders["clip"] = found[0]
            continue
        for folder in found:
            folders.setdefault(clap_folder_feature(folder, kind), folder)
    texts = {encoder: root / relative for encoder, relative in TEXT_FILES[kind].items() if (root / relative).is_file()}
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
    """Load, check, pool (UnAV-100) and write one video's CLIP and CLAP features; its problem rows."""
    features: dict[str, np.ndarray] = {}
    problems = []
    for feature in layout.segment_folders:
        path = layout.file_for(feature, video_id)
        values, problem = load_checked(path, layout.file_shape(feature, n_segments))
        if problem is not None:
            problems.append(problem_row(video_id, str(path.parent.relative_to(layout.root)), str(path), *problem))
            continue
        assert values is not None
        if feature != CLAP_MAPS and values.shape[0] != n_segments:
            values = adaptive_average_pool(values, n_segments)
        features[feature] = values
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
    """Import the CLIP and CLAP features of the manifest's videos (`video_id`, `n_segments`); see
    the module docstring. Only videos whose files all exist are registered."""
    video_ids = manifest["video_id"].to_list()
    counts = dict(zip(video_ids, manifest["n_segments"].to_list(), strict=True))
    requested = list(dict.fromkeys(video_ids))
    names = list(layout.segment_folders)
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
    shapes = {feature: CLAP_MAPS_SHAPE if feature == CLAP_MAPS else (RELEASED_DIMS[feature],) for feature in names}
    store.allocate(
        todo, [counts[video_id] for video_id in todo], shapes,
        encoder_identities={feature: RELEASED_IDENTITY_PREFIX + feature for feature in names},
        per_clip=[feature for feature in names if feature == CLAP_MAPS],
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
        source=f"released {layout.kind} features ({', '.join(names)})",
    )
