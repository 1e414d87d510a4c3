"""The library side of `uwav parse`: HAN outputs -> audio / visual / audio-visual events.

Decisions follow the evaluation protocol (`uwav.evaluation.decide`: segment probability and
video probability both >= threshold; audio-visual = audio AND visual). An event is a maximal
run of positive segments of one class and modality; segment t covers [t, t+1) seconds, and a
video's last event ends at its duration when that is known. An event's `confidence` is the mean
over its segments of the segment probability (for audio-visual events, of the smaller of the
audio and visual probabilities: the AND is as sure as its weaker side); None without probabilities.

Decoding videos and running the encoders and the HAN happen upstream (stages / CLI); these
functions take arrays.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from uwav.atomic import atomic_path, write_text_atomic
from uwav.contracts import MODALITIES, Decision, n_segments_for_duration
from uwav.errors import InvalidInputError
from uwav.evaluation.plots import SEGMENT_S, positive_runs, save_png, timeline_figure
from uwav.evaluation.protocol import decide

EVENT_MODALITIES: tuple[str, str, str] = ("audio", "visual", "audio-visual")
EVENTS_SCHEMA: dict[str, pl.DataType] = {
    "video_id": pl.String(),
    "modality": pl.String(),  # one of EVENT_MODALITIES
    "label": pl.String(),
    "onset": pl.Float64(),  # seconds
    "offset": pl.Float64(),  # seconds, exclusive
    "confidence": pl.Float64(),  # null when no probabilities were given
}
SEGMENTS_SCHEMA: dict[str, pl.DataType] = {
    "video_id": pl.String(),
    "segment": pl.Int32(),
    "audio": pl.List(pl.String()),
    "visual": pl.List(pl.String()),
    "audio_visual": pl.List(pl.String()),
}
_AUDIO, _VISUAL = MODALITIES.index("audio"), MODALITIES.index("visual")  # the HAN's modality axis order


def segments_to_events(
    pred_audio: np.ndarray,
    pred_visual: np.ndarray,
    classes: Sequence[str],
    probs_audio: np.ndarray | None = None,
    probs_visual: np.ndarray | None = None,
    *,
    duration_s: float | None = None,
) -> list[dict[str, Any]]:
    """Events of one video from its binary (segments, classes) decisions.

    Returns dicts `modality, label, onset, offset, confidence` (seconds), ordered by modality
    (audio, visual, audio-visual), then class, then onset. Probabilities are (segments, classes)
    and both or neither must be given. With `duration_s`, the video must have
    `n_segments_for_duration(duration_s)` segments and offsets are clipped to the duration.
    """
    audio, visual = np.asarray(pred_audio, dtype=bool), np.asarray(pred_visual, dtype=bool)
    if audio.ndim != 2 or audio.shape != visual.shape or audio.shape[1] != len(classes):
        raise ValueError(
            f"segments_to_events: expected pred_audio and pred_visual (segments, {len(classes)} classes), "
            f"got {audio.shape} and {visual.shape}"
        )
    if (probs_audio is None) != (probs_visual is None):
        raise ValueError("segments_to_events: give both probs_audio and probs_visual, or neither")
    n_segments = audio.shape[0]
    end_s = n_segments * SEGMENT_S
    if duration_s is not None:
        if n_segments_for_duration(duration_s) != n_segments:
            raise ValueError(
                f"segments_to_events: a {duration_s} s video has {n_segments_for_duration(duration_s)} segments, got {n_segments}"
            )
        end_s = min(end_s, float(duration_s))

    lanes: list[tuple[str, np.ndarray, np.ndarray | None]] = [("audio", audio, None), ("visual", visual, None)]
    if probs_audio is not None and probs_visual is not None:
        pa, pv = np.asarray(probs_audio, dtype=np.float64), np.asarray(probs_visual, dtype=np.float64)
        if pa.shape != audio.shape or pv.shape != audio.shape:
            raise ValueError(f"segments_to_events: probabilities must be {audio.shape}, got {pa.shape} and {pv.shape}")
        lanes = [("audio", audio, pa), ("visual", visual, pv)]
        av_prob: np.ndarray | None = np.minimum(pa, pv)
    else:
        av_prob = None
    lanes.append(("audio-visual", audio & visual, av_prob))

    events = []
    for modality, decisions, prob in lanes:
        for c, start, end in zip(*positive_runs(decisions), strict=True):
            events.append(
                {
                    "modality": modality,
                    "label": classes[c],
                    "onset": float(start * SEGMENT_S),
                    "offset": min(float(end * SEGMENT_S), end_s),
                    "confidence": None if prob is None else float(prob[start:end, c].mean()),
                }
            )
    return events


def _segment_labels(
    pred_audio: np.ndarray, pred_visual: np.ndarray, classes: Sequence[str]
) -> list[dict[str, Any]]:
    """Per segment of one video: the class names on in audio, visual and both."""
    names = np.asarray(classes, dtype=object)
    return [
        {
            "segment": t,
            "audio": names[pred_audio[t]].tolist(),
            "visual": names[pred_visual[t]].tolist(),
            "audio_visual": names[pred_audio[t] & pred_visual[t]].tolist(),
        }
        for t in range(pred_audio.shape[0])
    ]


@dataclass(frozen=True)
class ParsedVideo:
    """One video's decisions (bool (segments, classes), padding removed), probabilities and outputs."""

    video_id: str
    duration_s: float | None
    pred_audio: np.ndarray
    pred_visual: np.ndarray
    probs_audio: np.ndarray
    probs_visual: np.ndarray
    events: list[dict[str, Any]]
    segments: list[dict[str, Any]]


def parse_videos(
    video_ids: Sequence[str],
    classes: Sequence[str],
    segment_prob: np.ndarray,
    video_prob: np.ndarray,
    threshold: float = 0.5,
    *,
    durations_s: Sequence[float] | None = None,
    decision: Decision = "at_least",
) -> list[ParsedVideo]:
    """Decide and extract events per video from HAN outputs (`predict_han`'s segment_prob (N, T, 2, C)
    [audio, visual] and video_prob (N, C)).

    With `durations_s`, video i has `n_segments_for_duration(durations_s[i])` real segments
    (the rest of the T axis is padding and is dropped) and its events end at its duration at the latest.
    """
    segment_prob, video_prob = np.asarray(segment_prob), np.asarray(video_prob)
    n_videos = len(video_ids)
    if segment_prob.ndim != 4 or segment_prob.shape[0] != n_videos or segment_prob.shape[2] != 2 or segment_prob.shape[3] != len(classes):
        raise ValueError(
            f"parse: segment_prob must be ({n_videos} videos, segments, 2, {len(classes)} classes), got {segment_prob.shape}"
        )
    if len(set(video_ids)) != n_videos:
        raise ValueError("parse: video_ids must not repeat")
    n_segments = segment_prob.shape[1]
    if durations_s is not None and len(durations_s) != n_videos:
        raise ValueError(f"parse: {len(durations_s)} durations for {n_videos} videos")
    probs_audio, probs_visual = segment_prob[:, :, _AUDIO], segment_prob[:, :, _VISUAL]
    pred_audio, pred_visual = decide(probs_audio, probs_visual, video_prob, threshold, decision)

    parsed = []
    for i, video_id in enumerate(video_ids):
        duration = None if durations_s is None else float(durations_s[i])
        length = n_segments if duration is None else n_segments_for_duration(duration)
        if not 1 <= length <= n_segments:
            raise ValueError(f"parse: video {video_id!r} of {duration} s needs {length} segments; the outputs have {n_segments}")
        audio, visual = pred_audio[i, :length], pred_visual[i, :length]
        prob_a, prob_v = probs_audio[i, :length], probs_visual[i, :length]
        parsed.append(
            ParsedVideo(
                video_id=video_id,
                duration_s=duration,
                pred_audio=audio,
                pred_visual=visual,
                probs_audio=prob_a,
                probs_visual=prob_v,
                events=segments_to_events(audio, visual, classes, prob_a, prob_v, duration_s=duration),
                segments=_segment_labels(audio, visual, classes),
            )
        )
    return parsed


def _tables(parsed: Sequence[ParsedVideo]) -> tuple[pl.DataFrame, pl.DataFrame]:
    events = [{"video_id": video.video_id, **event} for video in parsed for event in video.events]
    segments = [{"video_id": video.video_id, **segment} for video in parsed for segment in video.segments]
    return pl.DataFrame(events, schema=EVENTS_SCHEMA), pl.DataFrame(segments, schema=SEGMENTS_SCHEMA)


def parse_results_table(
    video_ids: Sequence[str],
    classes: Sequence[str],
    segment_prob: np.ndarray,
    video_prob: np.ndarray,
    threshold: float = 0.5,
    *,
    durations_s: Sequence[float] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(events `EVENTS_SCHEMA`, per-segment labels `SEGMENTS_SCHEMA`) of the videos; arguments as `parse_videos`."""
    return _tables(parse_videos(video_ids, classes, segment_prob, video_prob, threshold, durations_s=durations_s))


def timeline_file_name(video_id: str) -> str:
    """`<video_id>.png`, with characters other than letters, digits, '.', '_', '-' replaced by '_'
    (and no leading dot), so that an id never escapes the output folder or hides the file."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", video_id)
    return ("_" + safe[1:] if safe.startswith(".") else safe) + ".png"


@dataclass(frozen=True)
class ParseOutputs:
    events_json: Path
    events_parquet: Path
    segments_parquet: Path
    timelines: dict[str, Path]  # video id -> PNG
    failed: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"} of the videos skipped


def write_parse_outputs(
    out_dir: str | Path,
    video_ids: Sequence[str],
    classes: Sequence[str],
    segment_prob: np.ndarray,
    video_prob: np.ndarray,
    threshold: float = 0.5,
    *,
    durations_s: Sequence[float] | None = None,
    decision: Decision = "at_least",
    failed: Sequence[Mapping[str, str]] = (),
) -> ParseOutputs:
    """Write `events.json` (per video: its events and per-segment labels), `events.parquet`,
    `segments.parquet` and one timeline PNG per video (`timeline_file_name`) into `out_dir`.

    Every file is written atomically; arguments as `parse_videos`; `failed` lists the videos that
    could not be parsed ({"path", "reason"}), recorded in events.json.
    """
    out_dir = Path(out_dir)
    parsed = parse_videos(video_ids, classes, segment_prob, video_prob, threshold, durations_s=durations_s, decision=decision)
    names: dict[str, str] = {}
    for video in parsed:
        name = timeline_file_name(video.video_id)
        if name in names:
            raise InvalidInputError(f"parse: videos {names[name]!r} and {video.video_id!r} map to one timeline file {name!r}")
        names[name] = video.video_id

    events, segments = _tables(parsed)
    document = {
        "threshold": threshold,
        "decision": decision,
        "segment_s": SEGMENT_S,
        "classes": list(classes),
        "videos": [
            {
                "video_id": video.video_id,
                "duration_s": video.duration_s,
                "n_segments": int(video.pred_audio.shape[0]),
                "events": video.events,
                "segments": video.segments,
            }
            for video in parsed
        ],
        "failed": [dict(item) for item in failed],
    }
    events_json = write_text_atomic(out_dir / "events.json", json.dumps(document, indent=2))
    events_parquet, segments_parquet = out_dir / "events.parquet", out_dir / "segments.parquet"
    for table, path in ((events, events_parquet), (segments, segments_parquet)):
        with atomic_path(path) as tmp:
            table.write_parquet(tmp)
    timelines = {
        video.video_id: save_png(
            timeline_figure(
                video.video_id, classes, video.pred_audio, video.pred_visual,
                probs_audio=video.probs_audio, probs_visual=video.probs_visual,
            ),  # fmt: skip
            out_dir / timeline_file_name(video.video_id),
        )
        for video in parsed
    }
    return ParseOutputs(events_json, events_parquet, segments_parquet, timelines, [dict(item) for item in failed])
