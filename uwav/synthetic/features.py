"""Synthetic feature benchmark: per-segment feature vectors with known truth, at LLP scale, no media.

The generative model, per feature space S of modality m (audio: clap, vggish; visual: clip,
resnet152, r2plus1d) and segment t of video n:

    x[n, t] = sum_c (y^m[n, t, c] * s^m_c * a^m[n, c] + g^m[n, t, c]) * d^S_c + b^S[n] + gap^S + e^S[n, t]

- y^m: the segment-level truth of modality m only, so audio spaces respond to audio events and
  visual spaces to visual events;
- s^m_c: per-class signal strength (some classes are barely visible or audible, as Speech is
  rarely visible in LLP); a^m: amplitude jitter per video and class;
- g^m: "confusion" activations of every class in every segment (shared by the spaces of a
  modality), the part of the noise that a linear read-out cannot average away;
- d^S_c: the class's unit direction. In the CLIP and CLAP spaces it has cosine
  `text_alignment` with the class's text embedding, so inner products with the text embeddings
  are informative but imperfect, as for the real encoders (plus a constant modality gap `gap^S`);
  in the VGGish / ResNet-152 / R(2+1)D spaces it is a random direction (a class-conditional
  random projection, unrelated to any text);
- b^S: a per-video offset shared by its segments; e^S: isotropic per-segment noise.

Class-level quantities (text embeddings, directions, strengths) are keyed by (seed, space,
class name), so a class name shared by the pre-training and target sets has the same embedding
and the same feature direction in both: stage 1 trained on the pre-training set transfers.

Layouts are LLP-like by default (many audio-only and visual-only events, co-occurring classes),
or resampled from a real LLP dense-label file (`layouts_from`).

Video-level quantities (layout, id, a, g, b, e) come from streams keyed by the video
(`uwav.synthetic.layouts`), so larger sizes add videos and leave every other video's ids, labels and
feature values as they were.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from threadpoolctl import threadpool_limits

from uwav.atomic import atomic_dir
from uwav.contracts import MANIFEST_SCHEMA, MODALITIES, validate_manifest
from uwav.datasets.llp import LLP_CLASSES, read_llp
from uwav.errors import InvalidInputError, MissingInputError
from uwav.synthetic.layouts import (
    LLP_LIKE,
    UNAV_LIKE,
    ClassStatistics,
    LayoutConfig,
    Layouts,
    assign_subsets,
    dense_table,
    derived_rng,
    keyable_generator,
    llp_clips,
    rekey,
    sample_layouts,
    video_ids,
    video_uniforms,
    weak_label_lists,
)

FORMAT_VERSION = 1
DATASET_NAME = "synthetic"


@dataclass(frozen=True)
class FeatureSpace:
    modality: Literal["audio", "visual"]
    text_aligned: bool  # CLIP / CLAP: a joint space with a text encoder
    default_dim: int


FEATURE_SPACES: dict[str, FeatureSpace] = {
    "clip": FeatureSpace("visual", True, 768),
    "clap": FeatureSpace("audio", True, 512),
    "r2plus1d": FeatureSpace("visual", False, 512),
    "vggish": FeatureSpace("audio", False, 128),
    "resnet152": FeatureSpace("visual", False, 2048),
}
TEXT_SPACES: tuple[str, ...] = tuple(name for name, space in FEATURE_SPACES.items() if space.text_aligned)

# Pre-training classes: 21 of LLP's 25 (UnAV-100 covers about as many of LLP's classes under
# other names), plus 19 others. Frying_(food), Fire_alarm, Chicken_rooster and Blender are left
# to the text embeddings alone (zero-shot transfer).
PRETRAIN_ONLY_CLASSES: tuple[str, ...] = (
    "Bird_chirping", "Piano", "Drum_kit", "Train_horn", "Thunder", "Raining", "Trumpet", "Flute",
    "Saxophone", "Sheep_bleating", "Horse_clip-clop", "Frog_croaking", "Church_bell", "Airplane_flyby",
    "Sailing", "Typing", "People_laughing", "Wind_noise", "Sea_waves",
)  # fmt: skip
PRETRAIN_CLASSES: tuple[str, ...] = tuple(
    c for c in LLP_CLASSES if c not in ("Frying_(food)", "Fire_alarm", "Chicken_rooster", "Blender")
) + PRETRAIN_ONLY_CLASSES


@dataclass(frozen=True)
class FeatureDifficulty:
    """Knobs of the generative model (module docstring); the defaults make an LLP-like task.

    strength: range of the per-class, per-modality signal strength s (uniform).
    amplitude_jitter: amplitude a ~ U(1 - j, 1 + j), one per video and class.
    confusion: std of the spurious activation g of every class direction in every segment.
    noise: norm of the isotropic per-segment noise e.
    video_noise: norm of the per-video offset b.
    text_alignment: cosine between a class's feature direction and its text embedding (CLIP, CLAP).
    modality_gap: norm of the constant offset of CLIP/CLAP features from the text embeddings.
    """

    strength: tuple[float, float] = (0.5, 1.5)
    amplitude_jitter: float = 0.3
    confusion: float = 0.3
    noise: float = 1.0
    video_noise: float = 0.5
    text_alignment: float = 0.7
    modality_gap: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.text_alignment <= 1.0:
            raise ValueError(f"text_alignment must be in [0, 1], got {self.text_alignment}")
        if not 0.0 <= self.amplitude_jitter < 1.0:
            raise ValueError(f"amplitude_jitter must be in [0, 1), got {self.amplitude_jitter}")


# ---------------------------------------------------------------- class-level quantities


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def text_embeddings(seed: int, space: str, classes: Sequence[str], dim: int) -> np.ndarray:
    """(C, dim) float32 unit class text embeddings; a class name gives the same row in every set."""
    rows = [derived_rng(seed, "text", space, name).standard_normal(dim) for name in classes]
    return _unit(np.stack(rows)).astype(np.float32)


def class_directions(seed: int, space: str, classes: Sequence[str], dim: int, text_alignment: float) -> np.ndarray:
    """(C, dim) unit feature directions of the classes in `space` (module docstring)."""
    own = _unit(np.stack([derived_rng(seed, "direction", space, name).standard_normal(dim) for name in classes]))
    if not FEATURE_SPACES[space].text_aligned:
        return own.astype(np.float32)
    text = text_embeddings(seed, space, classes, dim).astype(np.float64)
    # Remove the text component of `own` so that the cosine with the text embedding is exactly the alignment.
    orthogonal = _unit(own - np.sum(own * text, axis=1, keepdims=True) * text)
    mixed = text_alignment * text + math.sqrt(1.0 - text_alignment**2) * orthogonal
    return mixed.astype(np.float32)


def class_strengths(seed: int, modality: str, classes: Sequence[str], strength: tuple[float, float]) -> np.ndarray:
    """(C,) per-class signal strength in one modality, keyed by class name."""
    low, high = strength
    return np.array([derived_rng(seed, "strength", modality, name).uniform(low, high) for name in classes])


# ---------------------------------------------------------------- the benchmark


@dataclass(frozen=True)
class SyntheticFeatureSet:
    """One set of the benchmark, all arrays in manifest order.

    classes: the class list; manifest, dense: the contract tables (for the target set, dense
    labels of val/test only, the only dense labels a method may use; for the pre-training set,
    its audio-visual events as both modalities, as `read_unav100` gives them); features[space]:
    (N, T_max, D) float32, zero past a video's length; text_embeddings[space]: (C, D) float32 for
    CLIP and CLAP; layouts: the full truth per modality, training videos included, for
    diagnostics (pseudo-label quality), never for training.
    """

    classes: tuple[str, ...]
    manifest: pl.DataFrame
    dense: pl.DataFrame
    features: dict[str, np.ndarray]
    text_embeddings: dict[str, np.ndarray]
    layouts: Layouts

    @property
    def lengths(self) -> np.ndarray:
        """(N,) segments per video."""
        return self.layouts.n_segments

    def _save(self, folder: Path) -> None:
        (folder / "features").mkdir(parents=True)
        (folder / "text_embeddings").mkdir()
        (folder / "classes.json").write_text(json.dumps(list(self.classes), indent=1))
        self.manifest.write_parquet(folder / "manifest.parquet")
        self.dense.write_parquet(folder / "dense.parquet")
        np.savez_compressed(
            folder / "layouts.npz", audio=self.layouts.audio, visual=self.layouts.visual, n_segments=self.lengths
        )
        for sub, arrays in (("features", self.features), ("text_embeddings", self.text_embeddings)):
            for space, array in arrays.items():
                np.save(folder / sub / f"{space}.npy", array)

    @classmethod
    def _load(cls, folder: Path, mmap: bool) -> SyntheticFeatureSet:
        arrays = {
            sub: {p.stem: np.load(p, mmap_mode="r" if mmap else None) for p in sorted((folder / sub).glob("*.npy"))}
            for sub in ("features", "text_embeddings")
        }
        with np.load(folder / "layouts.npz") as saved:
            layouts = Layouts(saved["audio"], saved["visual"], saved["n_segments"])
        return cls(
            classes=tuple(json.loads((folder / "classes.json").read_text())),
            manifest=pl.read_parquet(folder / "manifest.parquet"),
            dense=pl.read_parquet(folder / "dense.parquet"),
            features=arrays["features"],
            text_embeddings=arrays["text_embeddings"],
            layouts=layouts,
        )


@dataclass(frozen=True)
class SyntheticFeatureBenchmark:
    """The LLP-like target set, the UnAV-like pre-training set, and the settings that made them."""

    target: SyntheticFeatureSet
    pretrain: SyntheticFeatureSet
    settings: dict = field(default_factory=dict)

    def save(self, out_dir: Path) -> Path:
        """Write to `out_dir`, replacing it as a whole: `benchmark.json` and per set `classes.json`,
        `manifest.parquet`, `dense.parquet`, `layouts.npz`, `features/<space>.npy`,
        `text_embeddings/<space>.npy`."""
        out_dir = Path(out_dir)
        with atomic_dir(out_dir) as tmp:
            self.target._save(tmp / "target")
            self.pretrain._save(tmp / "pretrain")
            meta = {"format_version": FORMAT_VERSION, "settings": self.settings}
            (tmp / "benchmark.json").write_text(json.dumps(meta, indent=1))
        return out_dir

    @classmethod
    def load(cls, in_dir: Path, *, mmap: bool = True) -> SyntheticFeatureBenchmark:
        """Read a saved benchmark. Feature arrays are memory-mapped (read-only) unless `mmap=False`,
        so reading the tables of an LLP-scale benchmark does not read its 1.5 GB of features."""
        in_dir = Path(in_dir)
        meta_path = in_dir / "benchmark.json"
        if not meta_path.is_file():
            raise MissingInputError(f"{in_dir} is not a saved synthetic feature benchmark (no benchmark.json)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise InvalidInputError(f"{meta_path}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
        return cls(
            SyntheticFeatureSet._load(in_dir / "target", mmap),
            SyntheticFeatureSet._load(in_dir / "pretrain", mmap),
            meta["settings"],
        )


# ---------------------------------------------------------------- generation


CHUNK_VIDEOS = 500  # unit of parallel work; every video's values come from its own streams


@dataclass(frozen=True)
class _SetTruth:
    """What the feature generator needs of one set."""

    video_ids: list[str]  # the keys of every video's streams: a video's values do not depend on the others
    classes: tuple[str, ...]
    layouts: Layouts


def _chunks(n: int) -> list[range]:
    return [range(start, min(n, start + CHUNK_VIDEOS)) for start in range(0, n, CHUNK_VIDEOS)]


def _coefficients(
    seed: int, truth: _SetTruth, modalities: Sequence[str], difficulty: FeatureDifficulty, pool: ThreadPoolExecutor
) -> dict[str, np.ndarray]:
    """(N, T, C) float32 weights of the class directions per modality: truth * strength * amplitude + confusion."""
    n, t_max, n_classes = truth.layouts.audio.shape
    jitter = difficulty.amplitude_jitter
    # Per video, one stream gives both modalities' draws (whichever are used): one key per video.
    amplitude = np.empty((n, len(MODALITIES), n_classes))
    confusion = np.empty((n, len(MODALITIES), t_max, n_classes), dtype=np.float32)

    def draw(rows: range) -> None:
        generator = keyable_generator()
        for row in rows:
            rng = rekey(generator, seed, "coefficients", truth.video_ids[row])
            rng.random(out=amplitude[row])
            rng.standard_normal(dtype=np.float32, out=confusion[row])

    list(pool.map(draw, _chunks(n)))
    weights = {}
    for m in modalities:
        index = MODALITIES.index(m)
        active = truth.layouts.audio if m == "audio" else truth.layouts.visual
        strength = class_strengths(seed, m, truth.classes, difficulty.strength)
        scale = strength[None, :] * (1.0 - jitter + 2.0 * jitter * amplitude[:, index])  # amplitude ~ U(1 - j, 1 + j)
        weights[m] = (active * scale[:, None, :]).astype(np.float32)
        weights[m] += difficulty.confusion * confusion[:, index]
    return weights


def _space_features(
    seed: int,
    truth: _SetTruth,
    space: str,
    dim: int,
    weights: np.ndarray,
    difficulty: FeatureDifficulty,
    pool: ThreadPoolExecutor,
) -> np.ndarray:
    n, t_max, _ = weights.shape
    directions = class_directions(seed, space, truth.classes, dim, difficulty.text_alignment)
    gap = np.zeros(dim, dtype=np.float32)
    if FEATURE_SPACES[space].text_aligned:
        gap = (difficulty.modality_gap * _unit(derived_rng(seed, "gap", space).standard_normal(dim))).astype(np.float32)
    valid = np.arange(t_max)[None, :] < truth.layouts.n_segments[:, None]
    out = np.empty((n, t_max, dim), dtype=np.float32)
    # Noise e and offset b are uniform of the right variance: 4x cheaper to draw than Gaussian, and
    # their projection on any direction (all a model sees of them in 512+ dimensions) is Gaussian
    # all the same. Per video, one draw from its own stream: row 0 is b, rows 1.. are e.
    scale = np.array([difficulty.video_noise] + [difficulty.noise] * t_max, dtype=np.float32)
    scale *= math.sqrt(12.0 / dim)

    def fill(rows: range) -> None:
        block = out[rows.start : rows.stop]
        np.matmul(weights[rows.start : rows.stop], directions, out=block)
        noise = np.empty((len(rows), 1 + t_max, dim), dtype=np.float32)
        generator = keyable_generator()
        for j, row in enumerate(rows):
            rekey(generator, seed, "noise", space, truth.video_ids[row]).random(dtype=np.float32, out=noise[j])
        noise -= 0.5
        noise *= scale[None, :, None]
        block += noise[:, 1:]
        block += noise[:, :1] + gap
        block[~valid[rows.start : rows.stop]] = 0.0  # padding past a video's end

    list(pool.map(fill, _chunks(n)))
    return out


def _features(
    seed: int,
    truth: _SetTruth,
    spaces: Sequence[str],
    dims: Mapping[str, int],
    difficulty: FeatureDifficulty,
    pool: ThreadPoolExecutor,
) -> dict[str, np.ndarray]:
    if not spaces:
        return {}
    modalities = [m for m in MODALITIES if any(FEATURE_SPACES[s].modality == m for s in spaces)]
    weights = _coefficients(seed, truth, modalities, difficulty, pool)
    return {
        s: _space_features(seed, truth, s, dims[s], weights[FEATURE_SPACES[s].modality], difficulty, pool)
        for s in spaces
    }


def _real_llp_layouts(layouts_from: Path, classes: tuple[str, ...]) -> Layouts:
    """The dense audio/visual labels of a real LLP folder (val+test videos) as layouts."""
    root = layouts_from if layouts_from.is_dir() else layouts_from.parent
    manifest, dense = read_llp(root)
    unknown = sorted(set(dense["label"].unique()) - set(classes))
    if unknown:
        raise InvalidInputError(f"{root}: dense labels {unknown} are not among the target classes")
    videos = manifest.filter(pl.col("video_id").is_in(dense["video_id"].unique().implode()))
    index = {v: i for i, v in enumerate(videos["video_id"])}
    t_max = int(videos["n_segments"].max())
    arrays = {m: np.zeros((len(index), t_max, len(classes)), dtype=bool) for m in MODALITIES}
    class_index = {c: i for i, c in enumerate(classes)}
    for video_id, modality, label, onset, offset in dense.iter_rows():
        arrays[modality][index[video_id], onset:offset, class_index[label]] = True
    return Layouts(arrays["audio"], arrays["visual"], videos["n_segments"].to_numpy().astype(np.int32))


def _resample_layouts(seed: int, split: str, n: int, real: Layouts) -> Layouts:
    """`n` layouts drawn with replacement from real ones, each reversed in time with P = 0.5 (per
    video: a larger `n` keeps the first ones)."""
    u = video_uniforms(seed, n, 2, "resample", split)
    picked = real.select(np.floor(u[:, 0] * len(real.n_segments)).astype(np.int64))
    if len(set(picked.n_segments.tolist())) > 1:
        raise ValueError("resampled layouts must all have the same number of segments")
    flip = u[:, 1] < 0.5
    audio = np.where(flip[:, None, None], picked.audio[:, ::-1], picked.audio)
    visual = np.where(flip[:, None, None], picked.visual[:, ::-1], picked.visual)
    return Layouts(audio, visual, picked.n_segments)


def _concat(parts: list[Layouts]) -> Layouts:
    return Layouts(
        np.concatenate([p.audio for p in parts]),
        np.concatenate([p.visual for p in parts]),
        np.concatenate([p.n_segments for p in parts]),
    )


def _manifest(video_ids: list[str], splits: list[str], layouts: Layouts, labels: list[list[str]]) -> pl.DataFrame:
    return validate_manifest(
        pl.DataFrame(
            {
                "video_id": video_ids,
                "dataset": [DATASET_NAME] * len(video_ids),
                "split": splits,
                "media_path": [None] * len(video_ids),
                "duration_s": layouts.n_segments.astype(np.float64),
                "n_segments": layouts.n_segments,
                "labels": labels,
            },
            schema=MANIFEST_SCHEMA,
        )
    )


def make_feature_benchmark(
    *,
    seed: int = 0,
    n_train: int = 10000,
    n_val: int = 649,
    n_test: int = 1200,
    n_pretrain: int = 2000,
    features: Sequence[str] = ("clip", "clap", "r2plus1d"),
    pretrain_features: Sequence[str] = ("clip", "clap"),
    dims: Mapping[str, int] | None = None,
    target_classes: Sequence[str] | None = None,
    pretrain_classes: Sequence[str] = PRETRAIN_CLASSES,
    layouts_from: Path | None = None,
    target_layout: LayoutConfig = LLP_LIKE,
    pretrain_layout: LayoutConfig = UNAV_LIKE,
    difficulty: FeatureDifficulty = FeatureDifficulty(),
    workers: int | None = None,
) -> SyntheticFeatureBenchmark:
    """Generate the feature benchmark (deterministic by seed, whatever `workers` is).

    features / pretrain_features: the spaces to generate for each set (FEATURE_SPACES); dims
    overrides their sizes (defaults: CLIP ViT-L/14 768, CLAP 512, R(2+1)D-18 512, VGGish 128,
    ResNet-152 2048). target_classes default to LLP's 25. layouts_from: a real LLP folder (or a
    file in it); target layouts are then drawn from its val+test dense labels instead of from
    `target_layout`. Text embeddings are made for the text-aligned spaces (CLIP, CLAP) in either set.
    """
    dims = {name: space.default_dim for name, space in FEATURE_SPACES.items()} | dict(dims or {})
    unknown = sorted((set(features) | set(pretrain_features)) - set(FEATURE_SPACES))
    if unknown:
        raise ValueError(f"unknown feature spaces {unknown}; known: {sorted(FEATURE_SPACES)}")
    target_classes = tuple(target_classes or LLP_CLASSES)
    pretrain_classes = tuple(pretrain_classes)
    sizes = {"train": n_train, "val": n_val, "test": n_test}

    if layouts_from is not None:
        real = _real_llp_layouts(Path(layouts_from), target_classes)
        target_parts = [_resample_layouts(seed, split, n, real) for split, n in sizes.items()]
    else:
        stats = ClassStatistics.draw(seed, "features-llp", target_classes, target_layout)
        target_parts = [
            sample_layouts(seed, "features-llp", split, n, stats, target_layout) for split, n in sizes.items()
        ]
    target_layouts = _concat(target_parts)
    pretrain_stats = ClassStatistics.draw(seed, "features-unav", pretrain_classes, pretrain_layout)
    pretrain_layouts = sample_layouts(seed, "features-unav", "all", n_pretrain, pretrain_stats, pretrain_layout)

    # Ids, clip starts and pre-training subsets are keyed per video, as the layouts: larger sizes
    # add videos and keep the others.
    pretrain_ids = video_ids(seed, "features", "pretrain", n_pretrain)
    target_ids = [v for split, n in sizes.items() for v in llp_clips(seed, "features", "features-llp", split, n)[1]]
    target_splits = [split for split, n in sizes.items() for _ in range(n)]
    manifest = _manifest(target_ids, target_splits, target_layouts, weak_label_lists(target_layouts, target_classes))
    all_dense = dense_table(target_ids, target_layouts, target_classes)
    evaluated = {v for v, s in zip(target_ids, target_splits, strict=True) if s in ("val", "test")}
    dense = all_dense.filter(pl.col("video_id").is_in(list(evaluated)))

    pretrain_splits = np.array(["train", "val", "test"])[assign_subsets(n_pretrain)].tolist()
    # UnAV-100 annotates audio-visual events only: its labels and dense rows are the AV runs.
    annotated = Layouts(pretrain_layouts.audio_visual, pretrain_layouts.audio_visual, pretrain_layouts.n_segments)
    pretrain_manifest = _manifest(
        pretrain_ids, pretrain_splits, pretrain_layouts, weak_label_lists(annotated, pretrain_classes)
    )
    pretrain_dense = dense_table(pretrain_ids, annotated, pretrain_classes)

    # Parallel across chunks of videos; BLAS kept to one thread, as its idle threads otherwise
    # spin and take the cores from the workers (3x the CPU time on 2 cores).
    workers = workers or min(8, os.cpu_count() or 1)
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(max_workers=workers) as pool:
        target_features = _features(
            seed, _SetTruth(target_ids, target_classes, target_layouts), features, dims, difficulty, pool
        )
        pretrain_feature_arrays = _features(
            seed, _SetTruth(pretrain_ids, pretrain_classes, pretrain_layouts), pretrain_features, dims, difficulty, pool
        )
    settings = {  # JSON-ready (lists, not tuples), so that a loaded benchmark compares equal
        "generator": "uwav.synthetic.features",
        "seed": seed,
        "sizes": {**sizes, "pretrain": n_pretrain},
        "dims": {s: dims[s] for s in sorted(set(features) | set(pretrain_features))},
        "layouts_from": str(layouts_from) if layouts_from is not None else None,
        "target_layout": asdict(target_layout),
        "pretrain_layout": asdict(pretrain_layout),
        "difficulty": asdict(difficulty),
    }
    return SyntheticFeatureBenchmark(
        target=SyntheticFeatureSet(
            target_classes,
            manifest,
            dense,
            target_features,
            {s: text_embeddings(seed, s, target_classes, dims[s]) for s in TEXT_SPACES},
            target_layouts,
        ),
        pretrain=SyntheticFeatureSet(
            pretrain_classes,
            pretrain_manifest,
            pretrain_dense,
            pretrain_feature_arrays,
            {s: text_embeddings(seed, s, pretrain_classes, dims[s]) for s in TEXT_SPACES},
            pretrain_layouts,
        ),
        settings=json.loads(json.dumps(settings)),
    )
