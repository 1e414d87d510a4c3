"""Pseudo-label materialisation (METHOD.md eq. 10 and 12) to Parquet (ARCHITECTURE.md contract).

One row per (video, segment): `video_id, segment, audio_logit, visual_logit, audio_soft,
visual_soft, audio_hard, visual_hard` as fixed-size lists over the classes, plus
`threshold_set_id`. A pseudo-label set is a folder of part files, one per shard of videos, each
written to a temporary name and renamed into place, so an interrupted run resumes at the first
missing shard and readers never see half a file.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from uwav.atomic import atomic_path
from uwav.contracts import MODALITIES
from uwav.errors import InvalidInputError, MissingInputError

LIST_COLUMNS = tuple(f"{m}_{kind}" for kind in ("logit", "soft", "hard") for m in MODALITIES)


def pseudo_label_schema(n_classes: int) -> pa.Schema:
    real = pa.list_(pa.float32(), n_classes)
    binary = pa.list_(pa.int8(), n_classes)
    fields = [pa.field("video_id", pa.string()), pa.field("segment", pa.int32())]
    for name in LIST_COLUMNS:
        fields.append(pa.field(name, binary if name.endswith("_hard") else real))
    fields.append(pa.field("threshold_set_id", pa.string()))
    return pa.schema(fields, metadata={b"n_classes": str(n_classes).encode()})


@dataclass
class PseudoLabelArrays:
    """Pseudo-labels of a list of videos as padded arrays, in the order asked for.

    Each `{modality}_{kind}` entry is (N, T, C); `valid` (N, T) marks real segments.
    """

    video_ids: list[str]
    arrays: dict[str, np.ndarray]
    valid: np.ndarray
    threshold_set_id: str


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def completed_shards(folder: Path) -> set[str]:
    folder = Path(folder)
    return {p.name for p in folder.glob("part-*.parquet")} if folder.is_dir() else set()


def write_shard(
    folder: Path,
    index: int,
    video_ids: Sequence[str],
    lengths: np.ndarray,
    columns: dict[str, np.ndarray],
    threshold_set_id: str,
) -> Path:
    """Write one shard: `columns[name]` are (n_videos, T, C) arrays; only the first lengths[i] segments count."""
    missing = [name for name in LIST_COLUMNS if name not in columns]
    if missing:
        raise ValueError(f"pseudo-label shard {index}: missing columns {missing}")
    n_classes = columns[LIST_COLUMNS[0]].shape[-1]
    lengths = np.asarray(lengths, dtype=np.int64)
    max_t = columns[LIST_COLUMNS[0]].shape[1]
    valid = np.arange(max_t)[None, :] < lengths[:, None]
    rows_video = np.repeat(np.arange(len(video_ids)), lengths)
    rows_segment = np.concatenate([np.arange(n) for n in lengths]) if len(lengths) else np.zeros(0, np.int64)
    arrays: list[pa.Array] = [
        pa.array(np.asarray(video_ids, dtype=object)[rows_video], pa.string()),
        pa.array(rows_segment.astype(np.int32), pa.int32()),
    ]
    schema = pseudo_label_schema(n_classes)
    for name in LIST_COLUMNS:
        dtype = np.int8 if name.endswith("_hard") else np.float32
        flat = np.ascontiguousarray(columns[name][valid], dtype=dtype).reshape(-1)
        arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat), n_classes))
    arrays.append(pa.array([threshold_set_id] * len(rows_video), pa.string()))
    table = pa.Table.from_arrays(arrays, schema=schema)
    final = Path(folder) / shard_name(index)
    with atomic_path(final) as tmp:
        pq.write_table(table, tmp)
    return final


def read_pseudo_labels(folder: Path, video_ids: Sequence[str]) -> PseudoLabelArrays:
    """Load the pseudo-labels of `video_ids` (in that order) into padded arrays with one dataset read."""
    folder = Path(folder)
    if not completed_shards(folder):
        raise MissingInputError(f"{folder}: no pseudo-label shards")
    table = pq.read_table(folder, filters=[("video_id", "in", list(video_ids))])
    set_ids = pc.unique(table["threshold_set_id"]).to_pylist()
    if len(set_ids) > 1:
        raise InvalidInputError(f"{folder}: shards made with different threshold sets {set_ids}")
    position = {video_id: i for i, video_id in enumerate(video_ids)}
    found = set(pc.unique(table["video_id"]).to_pylist())
    absent = [v for v in video_ids if v not in found]
    if absent:
        raise KeyError(f"{folder}: no pseudo-labels for {len(absent)} videos, e.g. {absent[:3]}")
    rows = np.fromiter((position[v] for v in table["video_id"].to_pylist()), dtype=np.int64, count=table.num_rows)
    segments = table["segment"].to_numpy()
    n_segments = np.zeros(len(video_ids), dtype=np.int64)
    np.maximum.at(n_segments, rows, segments + 1)
    max_t = int(n_segments.max()) if len(n_segments) else 0
    valid = np.arange(max_t)[None, :] < n_segments[:, None]
    arrays: dict[str, np.ndarray] = {}
    for name in LIST_COLUMNS:
        column = table[name].combine_chunks()
        n_classes = column.type.list_size
        values = column.values.to_numpy(zero_copy_only=False).reshape(-1, n_classes)
        out = np.zeros((len(video_ids), max_t, n_classes), dtype=values.dtype)
        out[rows, segments] = values
        arrays[name] = out
    return PseudoLabelArrays(list(video_ids), arrays, valid, set_ids[0] if set_ids else "")


def iter_shards(n_items: int, shard_size: int) -> Iterator[tuple[int, slice]]:
    for index, start in enumerate(range(0, n_items, shard_size)):
        yield index, slice(start, min(start + shard_size, n_items))
