"""Typed access to what the catalog's datasets and the stages' outputs hold.

Stages, the CLI (`uwav parse`, `uwav status`) and the report read artifacts through these
functions, so every layout is decided in one place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from uwav.catalog import Catalog, DatasetConfig
from uwav.contracts import validate_dense, validate_manifest
from uwav.datasets import ValidationReport, dataset_classes, read_dataset

Role = str  # 'target' | 'pretrain'
ROLES: tuple[str, str] = ("target", "pretrain")
SYNTH_DONE = ".uwav-synth-complete"


@dataclass(frozen=True)
class DatasetTables:
    """A dataset as the pipeline sees it: its classes, manifest and dense labels."""

    role: str
    name: str
    classes: list[str]
    manifest: pl.DataFrame
    dense: pl.DataFrame

    def split(self, split: str) -> pl.DataFrame:
        return self.manifest.filter(pl.col("split") == split)


def dataset_name(catalog: Catalog, role: Role) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown dataset role {role!r}; roles: {ROLES}")
    return catalog.target if role == "target" else catalog.pretrain


def ensure_synthetic(catalog: Catalog, config: DatasetConfig) -> Path:
    """Generate a synthetic dataset into its `annotations` folder unless it is already complete."""
    from uwav.datasets.synthesize import synth_main

    assert config.synthetic is not None
    root = Path(catalog.resolve(config.annotations) or "")
    marker = root / SYNTH_DONE
    spec = config.synthetic.model_dump(mode="json")
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return root
    synth_main(
        config.synthetic.mode,
        root,
        config.synthetic.seed,
        n_pretrain=config.synthetic.n_pretrain,
        n_train=config.synthetic.n_train,
        n_val=config.synthetic.n_val,
        n_test=config.synthetic.n_test,
        target_layout=config.synthetic.target_layout,
    )
    marker.write_text(json.dumps(spec))
    return root


def read_catalog_dataset(catalog: Catalog, role: Role, report: ValidationReport) -> DatasetTables:
    """Read (and for synthetic datasets, first generate) the dataset playing `role`."""
    name = dataset_name(catalog, role)
    config = catalog.dataset(name)
    if config.kind == "synthetic":
        return _read_synthetic(catalog, role, name, config, report)
    annotations = catalog.resolve(config.annotations)
    kwargs: dict = {"media_root": catalog.resolve(config.media_root), "report": report}
    if config.kind == "custom":
        kwargs.update(dense_path=catalog.resolve(config.dense), classes=config.classes)
    elif config.classes is not None:
        kwargs["classes"] = config.classes
    manifest, dense = read_dataset(config.kind, annotations, **kwargs)  # type: ignore[arg-type]
    classes = list(config.classes) if config.classes else dataset_classes(config.kind, annotations)  # type: ignore[arg-type]
    return DatasetTables(role, name, classes, manifest.with_columns(dataset=pl.lit(name)), dense)


def _read_synthetic(
    catalog: Catalog, role: Role, name: str, config: DatasetConfig, report: ValidationReport
) -> DatasetTables:
    root = ensure_synthetic(catalog, config)
    assert config.synthetic is not None
    if config.synthetic.mode == "features":
        from uwav.datasets.synth_features import SyntheticFeatureBenchmark

        benchmark = SyntheticFeatureBenchmark.load(root)
        part = benchmark.target if role == "target" else benchmark.pretrain
        return DatasetTables(role, name, list(part.classes), part.manifest.with_columns(dataset=pl.lit(name)), part.dense)
    folder, media, reader = (
        ("llp_like", "llp_like/videos", "llp") if role == "target" else ("unav_like", "unav_like/videos", "unav100")
    )
    classes = json.loads((root / folder / "classes.json").read_text())
    annotations = root / folder if reader == "llp" else root / folder / "annotations.json"
    kwargs = {"classes": classes} if reader == "llp" else {}
    manifest, dense = read_dataset(reader, annotations, media_root=root / media, report=report, **kwargs)
    return DatasetTables(role, name, classes, manifest.with_columns(dataset=pl.lit(name)), dense)


# ---------------------------------------------------------------- segment stage outputs


def write_tables(out_dir: Path, tables: DatasetTables) -> dict[str, str]:
    manifest_path = out_dir / f"{tables.role}_manifest.parquet"
    dense_path = out_dir / f"{tables.role}_dense.parquet"
    classes_path = out_dir / f"{tables.role}_classes.json"
    tables.manifest.write_parquet(manifest_path)
    tables.dense.write_parquet(dense_path)
    classes_path.write_text(json.dumps({"name": tables.name, "classes": tables.classes}, indent=1))
    return {
        f"{tables.role}_manifest": str(manifest_path),
        f"{tables.role}_dense": str(dense_path),
        f"{tables.role}_classes": str(classes_path),
    }


def load_tables(segment_outputs: dict[str, str], role: Role) -> DatasetTables:
    """The manifest, dense labels and classes that the segment stage wrote for `role`."""
    info = json.loads(Path(segment_outputs[f"{role}_classes"]).read_text())
    manifest = validate_manifest(pl.read_parquet(segment_outputs[f"{role}_manifest"]))
    dense = validate_dense(pl.read_parquet(segment_outputs[f"{role}_dense"]))
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
    """(N, C, T) bool dense truth per modality for `video_ids`, or None when none of them has dense labels."""
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
    return (truth["audio"] & truth["visual"]).transpose(0, 2, 1).astype(np.float32)
