"""Data contracts shared by every stage, defined once (ARCHITECTURE.md, "Contracts between stages").

- the array layout at module edges and the modality order (below);
- tables: polars DataFrames with exactly these columns and dtypes; `empty_*` builders and
  `validate_*` checks keep producers and consumers honest;
- stage outputs: what each stage of `uwav.stages` leaves for the next, as types.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Generic, Literal, NamedTuple, Self, TypeVar

import polars as pl

from uwav.errors import InvalidInputError

T = TypeVar("T")

# ---------------------------------------------------------------- array layout
#
# One layout for every array that crosses a module boundary (models' outputs, pseudo-labels,
# ground truth, decisions, calibration, evaluation, reports, synthetic data):
#   - per-segment arrays are (videos, segments, classes) = (N, T, C);
#   - where both modalities are stacked in one array, the modality axis comes just before the
#     classes, in MODALITIES order: (N, T, 2, C) with index 0 = audio, 1 = visual;
#   - where they travel separately, they are named: arguments `*_audio` before `*_visual`, and
#     pairs as `AudioVisual(audio=..., visual=...)`.
# Modules may use another layout inside (the evaluation protocol runs segment-major), never at
# their edges. Padded segments (videos shorter than T) are marked by `lengths` (N,) or a (N, T)
# padding mask that is True on padding.
# The test-time rule's comparison: p >= 0.5 and P >= 0.5 ("at_least", the LLP protocol) or
# p > 0.5 and P > 0.5 ("above", the UWAV release's `get_pred`).
Decision = Literal["at_least", "above"]

MODALITIES: tuple[str, str] = ("audio", "visual")


class AudioVisual(NamedTuple, Generic[T]):
    """A value per modality, audio first."""

    audio: T
    visual: T
SPLITS: tuple[str, ...] = ("train", "val", "test")

MANIFEST_SCHEMA: dict[str, pl.DataType] = {
    "video_id": pl.String(),
    "dataset": pl.String(),
    "split": pl.String(),
    "media_path": pl.String(),  # absolute path or fsspec URL; null when the media is not available
    "duration_s": pl.Float64(),
    "n_segments": pl.Int32(),
    "labels": pl.List(pl.String()),  # video-level (weak) labels, class names
}

# Dense labels: one row per event and modality, `onset`/`offset` are segment indices (half-open).
DENSE_SCHEMA: dict[str, pl.DataType] = {
    "video_id": pl.String(),
    "modality": pl.String(),  # 'audio' | 'visual'
    "label": pl.String(),
    "onset": pl.Int32(),
    "offset": pl.Int32(),
}

# Quarantine table (bad media never stops a run).
QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "video_id": pl.String(),
    "path": pl.String(),
    "stage": pl.String(),
    "reason": pl.String(),
    "time": pl.Datetime("us", "UTC"),
}

# Minimum length of a trailing partial segment for it to count (METHOD.md decision: a segment
# is positive when an event covers at least half of it, so a segment exists when at least half of it exists).
PARTIAL_SEGMENT_MIN_S = 0.5


def n_segments_for_duration(duration_s: float) -> int:
    """Number of 1-s segments of a video: whole seconds, plus the last partial one when it is >= 0.5 s.

    10.03 s -> 10, 60.06 s -> 60, 42.7 s -> 43, 0.4 s -> 0 (too short to use).
    """
    if not math.isfinite(duration_s) or duration_s < 0:
        raise ValueError(f"invalid duration {duration_s!r}")
    return int(math.floor(duration_s + 1.0 - PARTIAL_SEGMENT_MIN_S + 1e-9))


def empty_manifest() -> pl.DataFrame:
    return pl.DataFrame(schema=MANIFEST_SCHEMA)


def empty_dense() -> pl.DataFrame:
    return pl.DataFrame(schema=DENSE_SCHEMA)


def empty_quarantine() -> pl.DataFrame:
    return pl.DataFrame(schema=QUARANTINE_SCHEMA)


def _check_schema(df: pl.DataFrame, schema: dict[str, pl.DataType], what: str) -> pl.DataFrame:
    missing = [c for c in schema if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing columns {missing}")
    try:
        return df.select([pl.col(c).cast(t, strict=True) for c, t in schema.items()])
    except pl.exceptions.PolarsError as exc:
        raise ValueError(f"{what}: columns do not match the contract: {exc}") from exc


def validate_manifest(df: pl.DataFrame) -> pl.DataFrame:
    """Cast to the manifest contract and check invariants; raises ValueError naming the problem."""
    df = _check_schema(df, MANIFEST_SCHEMA, "manifest")
    dup = df.filter(pl.col("video_id").is_duplicated())["video_id"].unique().to_list()
    if dup:
        raise InvalidInputError(f"manifest: duplicate video ids {dup[:5]}")
    return df


def validate_dense(df: pl.DataFrame) -> pl.DataFrame:
    df = _check_schema(df, DENSE_SCHEMA, "dense labels")
    bad = df.filter(~pl.col("modality").is_in(list(MODALITIES)) | (pl.col("onset") >= pl.col("offset")))
    if bad.height:
        raise ValueError(f"dense labels: invalid rows, first: {bad.row(0, named=True)}")
    return df


# ---------------------------------------------------------------- which store features feed which model

# Tokens of an HTSAT map: 2 frequency bands x 32 time steps, band-major (token 32 f + t), as
# VALOR's CLAP feature files hold them ((64, 768) per 10-s clip).
HTSAT_MAP_STEPS = 64
# The store feature of CLAP's HTSAT maps: per clip, not per segment, one (HTSAT_MAP_STEPS, D) array.
CLAP_MAPS = "clap_maps"

# The store features the HAN reads (audio, 2-D visual, 3-D visual) for each `stages.train.han.inputs`.
HAN_INPUT_FEATURES: dict[str, tuple[str, str, str]] = {
    "clip_clap": ("clap", "clip", "r2plus1d"),
    "official": ("vggish", "resnet152_mean", "r2plus1d"),
    "clap_maps": (CLAP_MAPS, "clip", "r2plus1d"),  # VALOR++
}
# The form of the HAN's audio input for each `stages.train.han.inputs` (`uwav.models.han`):
# `segments`, one vector per segment, (N, T, D) like the visual streams; `htsat_maps`, per video
# the last token map of CLAP's audio encoder (HTSAT), (N, HTSAT_MAP_STEPS, D), which the HAN
# resamples to the video's segments (VALOR++).
HanAudioInput = Literal["segments", "htsat_maps"]
HAN_AUDIO_INPUT: dict[str, HanAudioInput] = {"clip_clap": "segments", "official": "segments", "clap_maps": "htsat_maps"}
PLG_FEATURES: tuple[str, str] = ("clip", "clap")  # (visual, audio) inputs of the generator


def text_embedding_name(feature: str, role: str) -> str:
    """Feature-store name of a dataset role's ('target' | 'pretrain') class text embeddings in an
    encoder's space ('clip' | 'clap'): both datasets' class lists live in one store."""
    return f"{feature}.{role}"


# ---------------------------------------------------------------- stage outputs
#
# What each stage leaves for the next, as types: a stage returns one of these, the record in
# `runs/state/<stage>.json` stores it as {field: location}, and a later stage reads it back with
# `<Type>.of(record_outputs)`. Files are Paths; the feature store is a URL (it may be fsspec).


@dataclass(frozen=True)
class StageOutputs:
    def locations(self) -> dict[str, str]:
        """{field: location} as the stage record stores it."""
        return {item.name: str(getattr(self, item.name)) for item in fields(self)}

    @classmethod
    def of(cls, locations: Mapping[str, str]) -> Self:
        """The typed outputs of a stage record's {field: location}."""
        missing = [item.name for item in fields(cls) if item.name not in locations]
        if missing:
            raise KeyError(f"{cls.__name__}: the stage record lacks {missing}; rerun the stage")
        return cls(**{
            item.name: locations[item.name] if item.type == "str" else Path(locations[item.name]) for item in fields(cls)
        })


@dataclass(frozen=True)
class SegmentOutputs(StageOutputs):
    target_manifest: Path
    target_dense: Path
    target_classes: Path
    pretrain_manifest: Path
    pretrain_dense: Path
    pretrain_classes: Path
    validation_report: Path


@dataclass(frozen=True)
class FeaturesOutputs(StageOutputs):
    store: str
    quarantine: Path


@dataclass(frozen=True)
class PretrainOutputs(StageOutputs):
    checkpoint: Path
    history: Path


@dataclass(frozen=True)
class CalibrateOutputs(StageOutputs):
    thresholds: Path


@dataclass(frozen=True)
class PseudoLabelsOutputs(StageOutputs):
    pseudo_labels: Path  # folder of Parquet shards
    quality: Path


@dataclass(frozen=True)
class TrainOutputs(StageOutputs):
    best_checkpoint: Path
    history: Path


@dataclass(frozen=True)
class EvaluateOutputs(StageOutputs):
    metrics: Path
    predictions: Path
    report: Path
    timelines: Path  # folder of PNGs
