"""The datasets as the stages see them: the tables the segment stage writes and the label arrays
later stages derive from them, so every layout is decided in one place."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from uwav.contracts import SegmentOutputs, validate_dense, validate_manifest

Role = str  # 'target' | 'pretrain'


@dataclass(frozen=True)
class DatasetTables:
    """A dataset as the pipeline sees it: its classes, manifest and dense labels."""

    role: str
    name: str | None  # None: the catalog names no dataset for the role (no pre-training set)
    classes: list[str]
    manifest: pl.DataFrame
    dense: pl.DataFrame

    def split(self, split: str) -> pl.DataFrame:
        return self.manifest.filter(pl.col("split") == split)


# ---------------------------------------------------------------- segment stage outputs


def write_tables(out_dir: Path, tables: DatasetTables) -> dict[str, Path]:
    """The segment stage's files of one role: {`<role>_manifest` | `_dense` | `_classes`: path}."""
    paths = {f"{tables.role}_{part}": out_dir / f"{tables.role}_{part}.{suffix}"
             for part, suffix in (("manifest", "parquet"), ("dense", "parquet"), ("classes", "json"))}
    tables.manifest.write_parquet(paths[f"{tables.role}_manifest"])
    tables.dense.write_parquet(paths[f"{tables.role}_dense"])
    paths[f"{tables.role}_classes"].write_text(json.dumps({"name": tables.name, "classes": tables.classes}, indent=1))
    return paths


def load_tables(segment: SegmentOutputs, role: Role) -> DatasetTables:
    """The manifest, dense labels and classes that the segment stage wrote for `role`."""
    info = json.loads(getattr(segment, f"{role}_classes").read_text())
    manifest = validate_manifest(pl.read_parquet(getattr(segment, f"{role}_manifest")))
    dense = validate_dense(pl.read_parquet(getattr(segment, f"{role}_dense")))
    return DatasetTables(role, info["name"], info["classes"], manifest, dense)


def weak_label_matrix(manifest: pl.DataFrame, classes: list[str]) -> np.ndarray:
    """(N, C) float32 video-level labels in manifest order."""
    index = {name: c for c, name in enumerate(classes)}
    labels = np.zeros((manifest.height, len(classes)), dtype=np.float32)
    for row, names in enumerate(manifest["labels"].to_list()):
        for name in names or []:
            labels[row, index[name]] = 1.0
    return labels


def dense_truth(tables: DatasetTables, video_ids: list[str], n_segments: int) -> dict[str, np.ndarray] | None:
    """(N, T, C) bool dense truth per modality for `video_ids`, or None when none of them has dense labels."""
    from uwav.evaluation import dense_to_arrays

    rows = tables.dense.filter(pl.col("video_id").is_in(video_ids))
    if rows.height == 0:
        return None
    audio, visual = dense_to_arrays(rows, video_ids, tables.classes, n_segments)
    return {"audio": audio, "visual": visual}


def segment_label_matrix(tables: DatasetTables, video_ids: list[str], n_segments: int) -> np.ndarray:
    """(N, T, C) float32 audio-visual segment labels (stage-1 targets): segments where the class is
    both heard and seen (UnAV-100's events are audio-visual, so both rows exist)."""
    truth = dense_truth(tables, video_ids, n_segments)
    if truth is None:
        return np.zeros((len(video_ids), n_segments, len(tables.classes)), dtype=np.float32)
    return (truth["audio"] & truth["visual"]).astype(np.float32)
