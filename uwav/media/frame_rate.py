"""VALOR's frame sampling: which source frames `ffmpeg -i VIDEO -r 8 DIR/%06d.jpg` writes
(VALOR's `utils/extract_frames.py`), and which of them `utils/clip_preprocess.py` reads.

`-r 8` on an image-sequence output makes ffmpeg's command line convert the frame rate itself
(constant-frame-rate video sync; the image2 muxer does not take variable rates), not with the
`fps` filter, and that conversion is neither "nearest frame" nor "frame on screen at each tick".
`ffmpeg_rate_conversion` restates the rule of ffmpeg 4.2.2 (`fftools/ffmpeg.c`, `do_video_out`;
the version VALOR's `environment.yaml` pins) for one video stream, in output frame periods (ticks):

- a frame's position P is its timestamp, relative to the file's start (the earliest stream start:
  ffmpeg shifts the input so), times the rate, kept to 2^-16 of a tick and then moved 2^-17 of a
  tick away from zero (towards -1 for 0, ffmpeg's FFSIGN); its duration d is its packet duration
  in ticks rounded to an integer when that is at least one, else min(rate / stream frame rate, 1);
- with R the number of frames written so far, delta0 = P - R and delta = delta0 + d; the frame is
  dropped when delta < -1.1, written once when -1.1 <= delta <= 1.1, and written round(delta)
  times when delta > 1.1, the first round(delta0 - 0.6) of them being the previous frame when
  delta0 > 1.1 (a gap in the source); every written frame advances R by one;
- at the end of the stream the previous frame is written again the median number of times the
  last three frames wrote their previous frame (0 unless the source has gaps).

So with a 29.92-fps source output frame k shows the first source frame with P >= k - 1.1 - d, about
0.17 s before k / 8 (source frames 0, 1, 3, 7, 10, ... for LLP's clips). Since ffmpeg 6.1 the
duration d is the frame's own, unrounded: the two versions pick the same frames for
constant-rate sources of 16 fps or more whose stream frame rate is their rate (nearly every
video); below 16 fps or for variable rates they may differ, and uwav follows 4.2.2.

`valor_frame_choice` is `clip_preprocess.py`'s `np.round(np.linspace(0, n - 1, 10))` over the n
frames written, with the video's segment count in place of LLP's 10.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

VALOR_FRAME_RATE = 8  # `ffmpeg -r 8` in VALOR's utils/extract_frames.py
_TICK_FRACTION_BITS = 16  # ffmpeg's `extra_bits` for an output time base of 1/8
_DROP_BELOW = -1.1  # ffmpeg's thresholds on delta (frame periods)
_DUPLICATE_ABOVE = 1.1
_GAP_OFFSET = 0.6


@dataclass(frozen=True)
class FrameTiming:
    """One video stream's frames in presentation order: pts (stream time base), start (s, from the
    file's start) and packet duration (s; 0 when the container gives none)."""

    pts: tuple[int, ...]
    starts: tuple[Fraction, ...]
    durations: tuple[Fraction, ...]
    stream_rate: Fraction  # the stream's frame rate as ffmpeg guesses it


def _round_half_away(value: Fraction) -> int:
    """av_rescale_q's rounding (AV_ROUND_NEAR_INF)."""
    magnitude = math.floor(abs(value) + Fraction(1, 2))
    return magnitude if value >= 0 else -magnitude


def _tick_position(start: Fraction, rate: int) -> float:
    """ffmpeg's `float_pts`: the start in output ticks at 2^-16 precision, nudged off exact midpoints."""
    scale = 1 << _TICK_FRACTION_BITS
    position = _round_half_away(start * rate * scale) / scale
    return position + (1.0 if position > 0 else -1.0) / (1 << (_TICK_FRACTION_BITS + 1))


def ffmpeg_rate_conversion(timing: FrameTiming, rate: int = VALOR_FRAME_RATE) -> list[int]:
    """For every frame `ffmpeg -r RATE` writes, the index (presentation order) of the source frame
    it shows; ffmpeg 4.2.2's rule (module docstring)."""
    base_duration = min(float(rate / timing.stream_rate), 1.0) if timing.stream_rate > 0 else 1.0
    written: list[int] = []
    previous: int | None = None
    gap_history = [0, 0, 0]  # times the previous frame was written, for the last three frames
    for index, (start, duration) in enumerate(zip(timing.starts, timing.durations, strict=True)):
        rounded = round(float(duration * rate))
        ticks = rounded if rounded > 0 else base_duration
        delta0 = _tick_position(start, rate) - len(written)
        delta = delta0 + ticks
        if delta0 < 0 < delta:  # ffmpeg clips the frame's start to the next output tick
            delta0 = 0.0
        count, previous_count = 1, 0
        if delta < _DROP_BELOW:
            count = 0
        elif delta > _DUPLICATE_ABOVE:
            count = round(delta)
            if delta0 > _DUPLICATE_ABOVE:
                previous_count = min(round(delta0 - _GAP_OFFSET), count)
        # before the first frame there is no previous one: ffmpeg writes the frame itself
        written += [index if previous is None else previous] * previous_count + [index] * (count - previous_count)
        gap_history = [previous_count, *gap_history[:2]]
        previous = index
    if previous is not None:
        written += [previous] * sorted(gap_history)[1]
    return written


def valor_frame_choice(n_written: int, n_segments: int) -> np.ndarray:
    """Indices into the written frames that VALOR's CLIP reads: round(linspace(0, n - 1, segments))
    (numpy's rounding, half to even, as VALOR's script)."""
    return np.round(np.linspace(0, n_written - 1, n_segments)).astype(np.int64)


def valor_source_frames(timing: FrameTiming, n_segments: int) -> list[int]:
    """Per segment, the index of the source frame VALOR's CLIP features read."""
    written = ffmpeg_rate_conversion(timing)
    if not written:
        return []
    return [written[int(k)] for k in valor_frame_choice(len(written), n_segments)]


def frame_timing(pts: Sequence[int], durations: Sequence[int], time_base: Fraction, file_start_us: int | None, stream_rate: Fraction) -> FrameTiming:
    """`FrameTiming` from a stream's packet pts and durations (its time base) and the file's start
    (microseconds, AV_TIME_BASE; None: 0), shifted as ffmpeg shifts an input: by the file's start
    rounded to the stream's time base."""
    offset = _round_half_away(Fraction(file_start_us or 0, 1_000_000) / time_base)
    order = sorted(range(len(pts)), key=lambda i: pts[i])
    return FrameTiming(
        pts=tuple(int(pts[i]) for i in order),
        starts=tuple((pts[i] - offset) * time_base for i in order),
        durations=tuple(max(int(durations[i] or 0), 0) * time_base for i in order),
        stream_rate=stream_rate,
    )
