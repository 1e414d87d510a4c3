"""Synthetic audio-visual benchmark: the parts its generators share (video ids, event layouts, dense tables).

Two generators build on this module, both deterministic by seed (`uwav.synthetic.synthesize` runs either):
- `uwav.synthetic.media.write_media_benchmark`: real MP4 files (H.264 + AAC) with an UnAV-like
  pre-training set and an LLP-like target set, in those datasets' annotation formats;
- `uwav.synthetic.features.make_feature_benchmark`: per-segment feature vectors at LLP scale,
  no media at all.

An event layout is segment-level truth: for every video a boolean (T, C) matrix per modality.
Audio and visual timelines are drawn independently per class (audio-only, visual-only and
audio-visual events, the latter on the same or on partially overlapping timelines), which is
what makes weak video labels ambiguous about modality and time.

Everything about a video depends on the seed, its set and its index alone: its layout and clip
start come from streams of its own, keyed by (seed, piece, dataset, split, index), its id from a
keyed permutation of (set, index) (`video_ids`), its subset from its index (`assign_subsets`), and
the generators key its media or feature values by its id. A larger set therefore adds videos and
leaves the others as they were: a benchmark grows in place.
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


def _key_digest(*parts: str | int) -> bytes:
    """SHA-256 of `parts`: the same in every process (Python's `hash` is salted)."""
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()


def stable_hash(*parts: str | int) -> int:
    """A 63-bit hash of `parts` that is the same in every process."""
    return int.from_bytes(_key_digest(*parts)[:8], "little") >> 1


def rekey(generator: np.random.Generator, seed: int, *parts: str | int) -> np.random.Generator:
    """`generator` (PCG64) put at the start of the stream keyed by (seed, parts), and returned.

    A key gives the same stream as `derived_rng` gives for it; re-keying one generator costs a fifth
    of making a new one, which counts for the per-video streams of LLP-scale sets (tens of thousands).
    """
    digest = _key_digest(seed, *parts)
    generator.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": int.from_bytes(digest[:16], "little"), "inc": int.from_bytes(digest[16:], "little") | 1},
        "has_uint32": 0,
        "uinteger": 0,
    }
    return generator


def keyable_generator() -> np.random.Generator:
    """A generator for `rekey` to key (its own seed is never used)."""
    return np.random.Generator(np.random.PCG64(0))


def derived_rng(seed: int, *parts: str | int) -> np.random.Generator:
    """An independent generator for one named piece of a benchmark (a video, a class, a chunk).

    Keying every piece by name rather than drawing from one stream keeps results identical
    whatever the number of workers or the order in which pieces are generated, and keeps a
    video's draws the same whatever the number of videos.
    """
    return rekey(keyable_generator(), seed, *parts)


def video_uniforms(seed: int, n: int, width: int, *parts: str | int) -> np.ndarray:
    """(n, width) float64 uniforms in [0, 1): row i is the start of the stream keyed (seed, *parts, i),
    so video i draws the same numbers whatever n is."""
    out = np.empty((n, width))
    generator = keyable_generator()
    for i in range(n):
        rekey(generator, seed, *parts, i).random(out=out[i])
    return out


# ---------------------------------------------------------------- video ids

# Id blocks: every set of a benchmark numbers its videos 0, 1, ... inside its own block.
ID_BLOCKS: dict[str, int] = {"pretrain": 0, "train": 1, "val": 2, "test": 3}
_BLOCK_BITS = 40  # videos per block: 2**40
_HALF_BITS = 33  # the id space, 63 * 64**10 < 2**66, is enciphered as two 33-bit halves
_HALF_MASK = np.uint64(2**_HALF_BITS - 1)
_FIRST_CHAR_SHIFT = 6 * (ID_LENGTH - 1) - _HALF_BITS  # bits of the high half below the first character
_ID_HIGH_LIMIT = np.uint64((len(ID_ALPHABET) - 1) << _FIRST_CHAR_SHIFT)  # high half of 63 * 64**10
_FEISTEL_ROUNDS = 8


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection of uint64 that scatters every input bit over the output."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def video_ids(seed: int, benchmark: str, block: str, n: int) -> list[str]:
    """Ids of videos 0..n-1 of one set (`ID_BLOCKS`) of a benchmark: 11 characters of [A-Za-z0-9_-],
    never starting with '-'.

    The id of video i is its number (block, i) enciphered by a permutation of the id space keyed by
    (seed, benchmark): a Feistel network on two 33-bit halves, applied again while the result lies
    past the id space (cycle walking), which keeps it a permutation of that space. Ids therefore look
    random, depend on (seed, benchmark, block, i) alone, and are distinct by construction. Drawing
    ids at random and redrawing on a collision cannot promise as much: whichever rule picks the
    video that redraws, some order of growing the sets changes an existing id.
    """
    if n > 2**_BLOCK_BITS:
        raise ValueError(f"at most 2**{_BLOCK_BITS} videos per set, got {n}")
    round_keys = [np.uint64(stable_hash(seed, "video-ids", benchmark, r)) for r in range(_FEISTEL_ROUNDS)]
    number = (np.uint64(ID_BLOCKS[block]) << np.uint64(_BLOCK_BITS)) + np.arange(n, dtype=np.uint64)
    high, low = number >> np.uint64(_HALF_BITS), number & _HALF_MASK
    walking = np.ones(n, dtype=bool)
    while walking.any():
        h, lo = high[walking], low[walking]
        for key in round_keys:
            h, lo = lo, h ^ (_mix64(lo ^ key) & _HALF_MASK)
        high[walking], low[walking] = h, lo
        walking &= high >= _ID_HIGH_LIMIT
    # Base 64, most significant character first: the first character (< 63, so never '-') is the top
    # of `high`, the other ten are the remaining 60 bits.
    value = ((high & np.uint64(2**_FIRST_CHAR_SHIFT - 1)) << np.uint64(_HALF_BITS)) | low
    shifts = np.uint64(6) * np.arange(ID_LENGTH - 2, -1, -1, dtype=np.uint64)
    codes = np.concatenate(
        [(high >> np.uint64(_FIRST_CHAR_SHIFT))[:, None], (value[:, None] >> shifts[None, :]) & np.uint64(63)], axis=1
    )
    return ["".join(row) for row in np.array(list(ID_ALPHABET))[codes.astype(np.int64)]]


def llp_clips(seed: int, benchmark: str, dataset: str, split: str, n: int) -> tuple[list[str], list[str]]:
    """Ids and LLP filenames (`<id>_<start>_<start + 10>`) of videos 0..n-1 of a target split.

    LLP clips are 10-s windows of longer videos: each video's start, a multiple of 10 s below 300,
    is drawn from its own stream, keyed by (seed, dataset, split, i).
    """
    ids = video_ids(seed, benchmark, split, n)
    starts = 10 * np.floor(30 * video_uniforms(seed, n, 1, "start", dataset, split)[:, 0]).astype(np.int64)
    return ids, [f"{v}_{s}_{s + 10}" for v, s in zip(ids, starts, strict=True)]


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


# Uniforms per (video, class) of one modality's timelines: full length?, first event's length and
# onset, second event?, its length and onset.
_TIMELINE_DRAWS = 6


def _random_timelines(
    u: np.ndarray, n_segments: np.ndarray, t_max: int, full_length: float, second: float
) -> np.ndarray:
    """(N, T_max, C) bool from uniforms u (N, _TIMELINE_DRAWS, C): one event per (video, class), the
    whole video with P(full_length), plus a second one with P(second)."""
    t = np.arange(t_max)[None, :, None]
    length_limit = n_segments[:, None, None]

    def one_event(u_length: np.ndarray, u_onset: np.ndarray) -> np.ndarray:
        # Partial events are 1 .. T-1 segments long, placed uniformly.
        length = 1 + np.floor(u_length[:, None, :] * (length_limit - 1)).astype(np.int64)
        onset = np.floor(u_onset[:, None, :] * (length_limit - length + 1)).astype(np.int64)
        return (t >= onset) & (t < onset + length)

    full = u[:, None, 0] < full_length
    timeline = np.where(full, t < length_limit, one_event(u[:, 1], u[:, 2]))
    with_second = u[:, None, 3] < second
    return timeline | (with_second & one_event(u[:, 4], u[:, 5]))


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

    Video i is drawn from its own stream, keyed by (seed, dataset, split, i), so a larger `n` adds
    videos and leaves the first ones as they were.
    cover_classes: the first min(n, C) videos each contain a different class (in an order drawn per
    split, whatever n), so that small sets still show every class.
    """
    n_classes = len(stats.classes)
    low, high = config.segments
    # Every draw of a video is a function of a fixed number of its uniforms, so that the masks are
    # built for all videos at once: segments and class count, then per class a Gumbel key, a
    # modality type, "same timeline", and the audio and visual timelines.
    u = video_uniforms(seed, n, 2 + (3 + 2 * _TIMELINE_DRAWS) * n_classes, "layout", dataset, split)
    per_class = u[:, 2:].reshape(n, 3 + 2 * _TIMELINE_DRAWS, n_classes)
    n_segments = low + np.floor(u[:, 0] * (high - low + 1)).astype(np.int64)
    # k distinct classes per video, weighted by popularity: Gumbel top-k.
    k_probs = np.cumsum(config.classes_per_video)
    k = np.minimum(np.searchsorted(k_probs / k_probs[-1], u[:, 1], side="right") + 1, n_classes)
    gumbel = -np.log(-np.log(np.maximum(per_class[:, 0], 2.0**-53)))  # random() can return 0
    keys = np.log(stats.popularity)[None, :] + gumbel
    covered = min(n, n_classes)
    if cover_classes:
        keys[np.arange(covered), derived_rng(seed, "cover", dataset, split).permutation(n_classes)[:covered]] = np.inf
    rank = np.argsort(np.argsort(-keys, axis=1), axis=1)
    present = rank < k[:, None]
    # Modality type per (video, class): 0 audio-visual, 1 audio-only, 2 visual-only.
    cumulative = np.cumsum(stats.modality_probs, axis=1)[None, :, :]
    kind = (per_class[:, 1, :, None] > cumulative[:, :, :2]).sum(axis=2)
    audio_raw = _random_timelines(
        per_class[:, 3 : 3 + _TIMELINE_DRAWS], n_segments, high, config.full_length[0], config.second_event
    )
    visual_raw = _random_timelines(
        per_class[:, 3 + _TIMELINE_DRAWS :], n_segments, high, config.full_length[1], config.second_event
    )
    same = ((per_class[:, 2] < config.same_timeline) & (kind == 0))[:, None, :]
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


def assign_subsets(n: int, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> np.ndarray:
    """(n,) subset of videos 0..n-1 of a set split (train, validation, test) by `fractions`: 0, 1 or 2.

    Videos 0, 1 and 2 go to train, validation and test, so that each subset has a video when n >= 3;
    every later video goes to the subset furthest below its share of the videos so far (ties to the
    first). A video's subset depends on its index alone, so a larger set keeps every video's subset,
    and every count stays within about one video of its fraction of n (1.1 at most, n < 5000).
    """
    out = np.zeros(n, dtype=np.int64)
    counts = np.zeros(3)
    for i in range(n):
        out[i] = i if i < 3 else int(np.argmax(np.asarray(fractions) * (i + 1) - counts))
        counts[out[i]] += 1
    return out
