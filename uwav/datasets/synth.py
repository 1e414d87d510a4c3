"""Synthetic audio-visual benchmark: the parts its generators share (video ids, event layouts, dense tables).

Two generators build on this module, both deterministic by seed (`uwav.datasets.synthesize` runs either):
- `uwav.datasets.synth_media.write_media_benchmark`: real MP4 files (H.264 + AAC) with an UnAV-like
  pre-training set and an LLP-like target set, in those datasets' annotation formats;
- `uwav.datasets.synth_features.make_feature_benchmark`: per-segment feature vectors at LLP scale,
  no media at all.

An event layout is segment-level truth: for every video a boolean (T, C) matrix per modality.
Audio and visual timelines are drawn independently per class (audio-only, visual-only and
audio-visual events, the latter on the same or on partially overlapping timelines), which is
what makes weak video labels ambiguous about modality and time.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass

import numpy as np
import polars as pl

from uwav.catalog import Task
from uwav.contracts import DENSE_SCHEMA, MODALITIES, validate_dense

# YouTube-style ids: 11 characters of [A-Za-z0-9_-]. Generated ids never start with '-' so that
# they can be passed to command-line tools without being taken for an option.
ID_ALPHABET = string.ascii_letters + string.digits + "_-"
ID_LENGTH = 11


def stable_hash(*parts: str | int) -> int:
    """A 63-bit hash of `parts` that is the same in every process (Python's `hash` is salted)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def derived_rng(seed: int, *parts: str | int) -> np.random.Generator:
    """An independent generator for one named piece of a benchmark (a video, a class, a chunk).

    Keying every piece by name rather than drawing from one stream keeps results identical
    whatever the number of workers or the order in which pieces are generated.
    """
    return np.random.default_rng([seed, stable_hash(*parts)])


def draw_video_ids(rng: np.random.Generator, n: int, taken: set[str]) -> list[str]:
    """`n` distinct 11-character ids, none in `taken` (which is updated), none starting with '-'."""
    alphabet = np.array(list(ID_ALPHABET))
    ids: list[str] = []
    while len(ids) < n:
        codes = rng.integers(0, len(ID_ALPHABET), size=(n - len(ids), ID_LENGTH))
        codes[:, 0] %= len(ID_ALPHABET) - 1  # '-' is the last character of the alphabet
        for row in alphabet[codes]:
            video_id = "".join(row)
            if video_id not in taken:
                taken.add(video_id)
                ids.append(video_id)
    return ids


# ---------------------------------------------------------------- event layouts


@dataclass(frozen=True)
class LayoutConfig:
    """How event layouts are drawn. Defaults are LLP's statistics (val+test dense labels).

    segments: inclusive range of video lengths in 1-s segments.
    classes_per_video: P(k = 1), P(k = 2), ... distinct classes per video (LLP: .33/.55/.09/.03).
    class_zipf: class popularity ~ 1 / (rank + 1) ** class_zipf, rank = position in the class list,
        so the first class plays LLP's "Speech" (in half the videos).
    modality_concentration: Dirichlet concentration of each class's probabilities of occurring as
        (audio-visual, audio-only, visual-only); LLP: 61% / 35% / 5% of (video, class) pairs,
        strongly class-dependent (Speech is mostly audio-only, Car often visual-only).
    same_timeline: P(an audio-visual class has identical audio and visual timelines); otherwise the
        two are drawn independently and overlap partially or not at all (LLP: 60%).
    full_length: P(a timeline covers the whole video), (audio, visual) (LLP: 41% / 62%).
    second_event: P(a timeline has a second, independently drawn event).
    require_audio_visual: every video gets at least one audio-visual segment (UnAV-100 annotates
        only audio-visual events and has no video without one).
    """

    segments: tuple[int, int] = (10, 10)
    classes_per_video: tuple[float, ...] = (0.33, 0.55, 0.09, 0.03)
    class_zipf: float = 0.8
    modality_concentration: tuple[float, float, float] = (3.0, 2.0, 0.5)
    same_timeline: float = 0.6
    full_length: tuple[float, float] = (0.4, 0.6)
    second_event: float = 0.2
    require_audio_visual: bool = False

    def __post_init__(self) -> None:
        low, high = self.segments
        if not 2 <= low <= high:
            raise ValueError(f"LayoutConfig.segments must satisfy 2 <= low <= high, got {self.segments}")
        if not np.isclose(sum(self.classes_per_video), 1.0):
            raise ValueError(f"LayoutConfig.classes_per_video must sum to 1, got {self.classes_per_video}")


LLP_LIKE = LayoutConfig()
UNAV_LIKE = LayoutConfig(
    segments=(10, 60),
    classes_per_video=(0.55, 0.33, 0.12),
    class_zipf=0.5,
    modality_concentration=(8.0, 0.6, 0.6),
    same_timeline=0.5,
    full_length=(0.15, 0.15),
    second_event=0.4,
    require_audio_visual=True,
)
# AVE-like: one audio-visual event per 10-s clip, the same timeline in both modalities, background
# elsewhere (AVE's Annotations.txt: 66% of events span the whole clip, classes nearly balanced).
# One class per video and `require_audio_visual` make every event audio-visual whatever its drawn
# modality type: a video without an audio-visual segment gets its audio timeline in both.
AVE_LIKE = LayoutConfig(
    classes_per_video=(1.0,),
    class_zipf=0.3,
    same_timeline=1.0,
    full_length=(0.66, 0.66),
    second_event=0.0,
    require_audio_visual=True,
)
TARGET_LAYOUTS: dict[Task, LayoutConfig] = {"llp": LLP_LIKE, "ave": AVE_LIKE}


@dataclass(frozen=True)
class ClassStatistics:
    """Per-class popularity (C,) and modality probabilities (C, 3): audio-visual, audio-only, visual-only.

    Drawn once per benchmark so that every split of a dataset follows the same statistics.
    """

    classes: tuple[str, ...]
    popularity: np.ndarray
    modality_probs: np.ndarray

    @classmethod
    def draw(cls, seed: int, dataset: str, classes: tuple[str, ...], config: LayoutConfig) -> ClassStatistics:
        rng = derived_rng(seed, "class-statistics", dataset)
        popularity = 1.0 / (np.arange(len(classes)) + 1.0) ** config.class_zipf
        modality_probs = rng.dirichlet(config.modality_concentration, size=len(classes))
        return cls(classes, popularity / popularity.sum(), modality_probs)


@dataclass(frozen=True)
class Layouts:
    """Segment-level truth of N videos: `audio`/`visual` (N, T_max, C) bool; segments >= n_segments are False."""

    audio: np.ndarray
    visual: np.ndarray
    n_segments: np.ndarray

    @property
    def audio_visual(self) -> np.ndarray:
        return self.audio & self.visual

    def weak_labels(self) -> np.ndarray:
        """(N, C) bool: the class occurs somewhere in the video, in either modality."""
        return (self.audio | self.visual).any(axis=1)

    def select(self, rows: np.ndarray) -> Layouts:
        return Layouts(self.audio[rows], self.visual[rows], self.n_segments[rows])


def _random_timelines(
    rng: np.random.Generator, n_segments: np.ndarray, n_classes: int, t_max: int, full_length: float, second: float
) -> np.ndarray:
    """(N, T_max, C) bool: one event per (video, class), the whole video with P(full_length), plus a
    second one with P(second)."""
    n = len(n_segments)
    t = np.arange(t_max)[None, :, None]
    length_limit = n_segments[:, None, None]

    def one_event() -> np.ndarray:
        # Partial events are 1 .. T-1 segments long, placed uniformly.
        length = 1 + np.floor(rng.random((n, 1, n_classes)) * (length_limit - 1)).astype(np.int64)
        onset = np.floor(rng.random((n, 1, n_classes)) * (length_limit - length + 1)).astype(np.int64)
        return (t >= onset) & (t < onset + length)

    full = rng.random((n, 1, n_classes)) < full_length
    timeline = np.where(full, t < length_limit, one_event())
    with_second = rng.random((n, 1, n_classes)) < second
    return timeline | (with_second & one_event())


def sample_layouts(
    seed: int,
    dataset: str,
    split: str,
    n: int,
    stats: ClassStatistics,
    config: LayoutConfig,
    *,
    cover_classes: bool = False,
) -> Layouts:
    """Draw `n` event layouts (deterministic in seed, dataset and split); see `LayoutConfig`.

    cover_classes: the first min(n, C) videos each contain a different class (in random order),
    so that small sets still show every class.
    """
    rng = derived_rng(seed, "layouts", dataset, split)
    n_classes = len(stats.classes)
    low, high = config.segments
    n_segments = rng.integers(low, high + 1, size=n)
    # k distinct classes per video, weighted by popularity: Gumbel top-k.
    k = np.minimum(rng.choice(len(config.classes_per_video), size=n, p=config.classes_per_video) + 1, n_classes)
    keys = np.log(stats.popularity)[None, :] + rng.gumbel(size=(n, n_classes))
    if cover_classes:
        covered = min(n, n_classes)
        keys[np.arange(covered), rng.permutation(n_classes)[:covered]] = np.inf
    rank = np.argsort(np.argsort(-keys, axis=1), axis=1)
    present = rank < k[:, None]
    # Modality type per (video, class): 0 audio-visual, 1 audio-only, 2 visual-only.
    cumulative = np.cumsum(stats.modality_probs, axis=1)[None, :, :]
    kind = (rng.random((n, n_classes, 1)) > cumulative[:, :, :2]).sum(axis=2)
    audio_raw = _random_timelines(rng, n_segments, n_classes, high, config.full_length[0], config.second_event)
    visual_raw = _random_timelines(rng, n_segments, n_classes, high, config.full_length[1], config.second_event)
    same = (rng.random((n, 1, n_classes)) < config.same_timeline) & (kind == 0)[:, None, :]
    visual_raw = np.where(same, audio_raw, visual_raw)
    audio = audio_raw & (present & (kind != 2))[:, None, :]
    visual = visual_raw & (present & (kind != 1))[:, None, :]
    if config.require_audio_visual:
        # Videos without an audio-visual segment get one for their top class; with cover_classes,
        # so do the covering videos whose covered class is not audio-visual.
        top_class = np.argmin(rank, axis=1)
        both = audio & visual
        fix = ~both.any(axis=(1, 2))
        if cover_classes:
            fix |= (np.arange(n) < covered) & ~both[np.arange(n), :, top_class].any(axis=1)
        rows = np.flatnonzero(fix)
        cols = top_class[rows]
        audio[rows, :, cols] = audio_raw[rows, :, cols]
        visual[rows, :, cols] = audio_raw[rows, :, cols]
    return Layouts(audio, visual, n_segments.astype(np.int32))


def event_runs(active: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Maximal runs of True along the segment axis of (N, T, C): (video, class, onset, offset) arrays."""
    per_class = np.moveaxis(active, 2, 1).astype(np.int8)  # (N, C, T)
    padded = np.pad(per_class, ((0, 0), (0, 0), (1, 1)))
    change = np.diff(padded, axis=2)
    video, cls, onset = np.nonzero(change == 1)
    offset = np.nonzero(change == -1)[2]  # np.nonzero is ordered by (video, class, t): ends pair with starts
    return video, cls, onset, offset


def dense_table(video_ids: list[str], layouts: Layouts, classes: tuple[str, ...]) -> pl.DataFrame:
    """The dense-label contract table (one row per event and modality) of `layouts`."""
    frames = []
    for modality, active in zip(MODALITIES, (layouts.audio, layouts.visual), strict=True):
        video, cls, onset, offset = event_runs(active)
        frames.append(
            pl.DataFrame(
                {
                    "video_id": np.asarray(video_ids, dtype=object)[video].tolist(),
                    "modality": [modality] * len(video),
                    "label": np.asarray(classes, dtype=object)[cls].tolist(),
                    "onset": onset.astype(np.int32),
                    "offset": offset.astype(np.int32),
                },
                schema=DENSE_SCHEMA,
            )
        )
    return validate_dense(pl.concat(frames))


def weak_label_lists(layouts: Layouts, classes: tuple[str, ...]) -> list[list[str]]:
    """Video-level labels as class-name lists, in class order."""
    return [[classes[c] for c in np.flatnonzero(row)] for row in layouts.weak_labels()]


def split_counts(n: int, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> tuple[int, int, int]:
    """Videos per (train, validation, test) for a set of `n`; at least one in each when n >= 3."""
    val = max(1, round(n * fractions[1])) if n >= 3 else 0
    test = max(1, round(n * fractions[2])) if n >= 3 else 0
    return n - val - test, val, test
