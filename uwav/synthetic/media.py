"""Synthetic media benchmark: real MP4 files (H.264 + AAC) with known segment-level truth.

Every class is drawn with its audio and visual signature (`uwav.synthetic.signatures`). Audio and
visual timelines come from `uwav.synthetic.layouts.sample_layouts`, drawn independently per class,
over a background of visual noise, grey distractor shapes, audio noise and distractor noise
bursts. Two sets are written, in the real datasets' formats so that the readers
take them unchanged:

- `unav_like/`: the stage-1 pre-training set (variable-length videos, `annotations.json` in
  UnAV-100's format; only audio-visual events are annotated, as in UnAV-100), plus
  `modality_events.csv` with the rendered audio and visual events in seconds;
- `llp_like/`: the target set of 10-s clips (LLP's CSVs: weak labels for every split, dense audio
  and visual labels for val+test).

Both also get `classes.json` (the class list in order) and `truth_audio.csv` / `truth_visual.csv`:
the segment-level truth of every video per modality, training videos included, in the columns
of LLP's eval CSVs, for checking pseudo-labels and stage-1 predictions (never for training).

Every video depends on the settings and its own keys alone (`uwav.synthetic.layouts`): larger sizes
add videos, and `write_media_benchmark` renders only those a folder lacks.

Event boundaries of the UnAV-like set are whole seconds moved by at most 0.2 s, so that the
"at least half of a segment" rule gives back the drawn segment labels exactly; LLP-like events are
on whole seconds.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import av
import numpy as np
import polars as pl

from uwav.atomic import atomic_path, write_text_atomic
from uwav.synthetic.layouts import (
    LLP_LIKE,
    UNAV_LIKE,
    ClassStatistics,
    LayoutConfig,
    Layouts,
    assign_subsets,
    dense_table,
    derived_rng,
    event_runs,
    llp_clips,
    sample_layouts,
    video_ids,
    weak_label_lists,
)
from uwav.synthetic.signatures import (
    PRETRAIN_CLASSES,
    TARGET_CLASSES,
    NoiseSettings,
    TimedEvent,
    render_audio,
    render_frames,
)

AAC_RATES = (16000, 22050, 24000, 32000, 44100, 48000)
# Written into synth_media.json and raised whenever the same settings would give other files, so
# that files of an older generator are never taken for this one's.
GENERATOR_VERSION = 2
MAX_BOUNDARY_JITTER_S = 0.2  # < 0.25 keeps every segment covered by >= 75% or <= 25%


# ---------------------------------------------------------------- encoding


def encode_mp4(path: Path, frames: np.ndarray, audio: np.ndarray, fps: int, audio_rate: int) -> None:
    """Write H.264 (yuv420p, one keyframe per second) + mono AAC to `path` via a temporary file.

    x264 runs single-threaded and without macroblock-tree rate control and adaptive quantisation:
    those two use SIMD float code whose results were seen to vary from run to run with identical
    input, and the files must depend on the input alone. Parallelism is across videos instead.
    """
    height, width = frames.shape[1:3]
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.gop_size = fps
        video.options = {"preset": "veryfast", "crf": "23", "threads": "1", "x264-params": "mbtree=0:aq-mode=0"}
        sound = container.add_stream("aac", rate=audio_rate)
        sound.layout = "mono"
        sound.codec_context.bit_rate = 64000
        sound.options = {"aac_coder": "fast"}
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        samples = av.AudioFrame.from_ndarray(audio[None, :], format="flt", layout="mono")
        samples.sample_rate = audio_rate
        samples.pts = 0
        container.mux(sound.encode(samples))
        container.mux(sound.encode(None))


# ---------------------------------------------------------------- the two sets


@dataclass(frozen=True)
class SynthMediaPaths:
    """Where `write_media_benchmark` put things."""

    root: Path
    unav_json: Path
    unav_classes: Path
    unav_media: Path
    llp_dir: Path
    llp_classes: Path
    llp_media: Path


@dataclass(frozen=True)
class _VideoJob:
    path: Path
    seed_key: tuple[str, ...]
    duration_s: float
    events: list[TimedEvent]


def _timed_events(
    layouts: Layouts, classes: tuple[str, ...], durations: np.ndarray, jitter: list[np.random.Generator] | None
) -> list[list[TimedEvent]]:
    """Segment runs -> events in seconds; with a generator per video (`jitter`), boundaries move by
    up to 0.2 s (never past the video's ends)."""
    per_video: list[list[TimedEvent]] = [[] for _ in range(len(durations))]
    for modality, active in (("audio", layouts.audio), ("visual", layouts.visual)):
        for v, c, onset, offset in zip(*event_runs(active), strict=True):
            start, end = float(onset), float(offset)
            if jitter is not None:
                rng = jitter[v]
                start = 0.0 if onset == 0 else start + rng.uniform(-MAX_BOUNDARY_JITTER_S, MAX_BOUNDARY_JITTER_S)
                end = float(durations[v]) if offset == layouts.n_segments[v] else (
                    end + rng.uniform(-MAX_BOUNDARY_JITTER_S, MAX_BOUNDARY_JITTER_S)
                )
            per_video[v].append(TimedEvent(classes[c], modality, round(start, 3), round(end, 3)))
    return per_video


def _audio_visual_spans(events: list[TimedEvent], label: str) -> list[tuple[float, float]]:
    """Intersections of a class's audio and visual spans: the audio-visual events UnAV-100 annotates."""
    audio = [(e.start_s, e.end_s) for e in events if e.label == label and e.modality == "audio"]
    visual = [(e.start_s, e.end_s) for e in events if e.label == label and e.modality == "visual"]
    spans = [(max(a0, v0), min(a1, v1)) for a0, a1 in audio for v0, v1 in visual if min(a1, v1) > max(a0, v0)]
    return sorted(spans)


def _without_sizes(settings: dict) -> dict:
    return {key: value for key, value in settings.items() if key != "sizes"}


def _write_json(path: Path, payload: object) -> None:
    write_text_atomic(path, json.dumps(payload, indent=1))


def _write_tsv(path: Path, table: pl.DataFrame) -> None:
    with atomic_path(path) as tmp:
        table.write_csv(tmp, separator="\t")


def _eval_format(video_ids: list[str], layouts: Layouts, classes: tuple[str, ...]) -> dict[str, pl.DataFrame]:
    """Segment-level truth per modality in LLP's eval-CSV columns (filename, onset, offset, event_labels)."""
    dense = dense_table(video_ids, layouts, classes)
    return {
        m: dense.filter(pl.col("modality") == m).select(
            filename="video_id", onset="onset", offset="offset", event_labels="label"
        )
        for m in ("audio", "visual")
    }


def _pretrain_set(
    media: Path, seed: int, n: int, seconds: tuple[int, int], fps: int
) -> tuple[list[_VideoJob], dict, dict[str, pl.DataFrame]]:
    """The UnAV-like videos: the annotation JSON, the truth tables and one render job per video."""
    config = replace(UNAV_LIKE, segments=seconds)
    stats = ClassStatistics.draw(seed, "media-unav", PRETRAIN_CLASSES, config)
    layouts = sample_layouts(seed, "media-unav", "all", n, stats, config, cover_classes=True)
    ids = video_ids(seed, "media", "pretrain", n)
    timing = [derived_rng(seed, "timing", "media-unav", "all", i) for i in range(n)]
    # A trailing part of up to 2 frames, shorter than half a segment, keeps the segment count at n_segments.
    extra_frames = np.array([rng.integers(0, min(2, (fps - 1) // 2) + 1) for rng in timing], dtype=np.int64)
    durations = layouts.n_segments + extra_frames / fps
    events = _timed_events(layouts, PRETRAIN_CLASSES, durations, timing)
    subsets = np.array(["train", "validation", "test"])[assign_subsets(n)].tolist()
    database = {}
    for video_id, duration, subset, video_events in zip(ids, durations, subsets, events, strict=True):
        annotations = [
            {"segment": [start, end], "label": label, "label_id": PRETRAIN_CLASSES.index(label)}
            for label in PRETRAIN_CLASSES
            for start, end in _audio_visual_spans(video_events, label)
        ]
        database[video_id] = {"duration": round(float(duration), 3), "subset": subset, "annotations": annotations}
    truth = _eval_format(ids, layouts, PRETRAIN_CLASSES)
    tables = {
        "modality_events.csv": pl.DataFrame(
            [
                {"video_id": v, "modality": e.modality, "label": e.label, "start_s": e.start_s, "end_s": e.end_s}
                for v, video_events in zip(ids, events, strict=True)
                for e in video_events
            ],
            schema={
                "video_id": pl.String, "modality": pl.String, "label": pl.String,
                "start_s": pl.Float64, "end_s": pl.Float64,
            },  # fmt: skip
        ),
        "truth_audio.csv": truth["audio"],
        "truth_visual.csv": truth["visual"],
    }
    jobs = [
        _VideoJob(media / f"{v}.mp4", ("media-unav", v), float(d), e)
        for v, d, e in zip(ids, durations, events, strict=True)
    ]
    return jobs, {"version": "uwav-synth-1", "database": database}, tables


def _target_set(
    media: Path, seed: int, sizes: dict[str, int], layout: LayoutConfig
) -> tuple[list[_VideoJob], dict[str, pl.DataFrame]]:
    """The target clips in LLP's format (CSV tables, the truth of every clip) with events laid out
    by `layout`, and one render job per clip."""
    stats = ClassStatistics.draw(seed, "media-llp", TARGET_CLASSES, layout)
    weak: dict[str, pl.DataFrame] = {}
    truth: dict[str, dict[str, pl.DataFrame]] = {}
    jobs: list[_VideoJob] = []
    for split, n in sizes.items():
        # Every class occurs in the training clips, however few there are.
        layouts = sample_layouts(seed, "media-llp", split, n, stats, layout, cover_classes=split == "train")
        ids, filenames = llp_clips(seed, "media", "media-llp", split, n)
        labels = [",".join(names) for names in weak_label_lists(layouts, TARGET_CLASSES)]
        weak[split] = pl.DataFrame(
            {"filename": filenames, "event_labels": labels}, schema={"filename": pl.String, "event_labels": pl.String}
        )
        truth[split] = _eval_format(filenames, layouts, TARGET_CLASSES)
        events = _timed_events(layouts, TARGET_CLASSES, np.full(n, 10.0), None)
        jobs += [_VideoJob(media / f"{v}.mp4", ("media-llp", v), 10.0, e) for v, e in zip(ids, events, strict=True)]
    tables = {
        "AVVP_train.csv": weak["train"],
        "AVVP_val_pd.csv": weak["val"],
        "AVVP_test_pd.csv": weak["test"],
        "AVVP_dataset_full.csv": pl.concat(weak.values()),
    }
    for modality in ("audio", "visual"):
        tables[f"AVVP_eval_{modality}.csv"] = pl.concat([truth["val"][modality], truth["test"][modality]])
        tables[f"truth_{modality}.csv"] = pl.concat([truth[split][modality] for split in sizes])
    return jobs, tables


def _render_and_encode(job: _VideoJob, seed: int, fps: int, size: int, audio_rate: int, noise: NoiseSettings) -> None:
    rng = derived_rng(seed, "render", *job.seed_key)
    frames = render_frames(job.events, job.duration_s, fps, size, rng, noise)
    audio = render_audio(job.events, job.duration_s, audio_rate, rng, noise)
    encode_mp4(job.path, frames, audio, fps, audio_rate)


def write_media_benchmark(
    out_dir: Path,
    *,
    seed: int = 0,
    n_pretrain: int = 24,
    n_train: int = 40,
    n_val: int = 12,
    n_test: int = 12,
    pretrain_seconds: tuple[int, int] = (10, 30),
    size: int = 96,
    fps: int = 8,
    audio_rate: int = 16000,
    noise: NoiseSettings = NoiseSettings(),
    workers: int | None = None,
    target_layout: LayoutConfig = LLP_LIKE,
) -> SynthMediaPaths:
    """Write the UnAV-like pre-training set and the target set (LLP's format, events laid out by
    `target_layout`: LLP-like by default) under `out_dir`.

    Deterministic by seed: the same arguments give byte-identical files whatever `workers` is
    (default: the CPU count, at most 8). `pretrain_seconds` is the inclusive range of pre-training
    video lengths (UnAV-100: up to 60 s).

    Sets grow in place: every video is drawn from its own keyed streams, so larger sizes add videos
    and leave the others (ids, files, labels, subsets) as they were. When `out_dir` holds a benchmark
    of the same settings apart from the sizes (its `synth_media.json`), only the videos missing
    there are rendered; the annotation tables are written anew.
    """
    if audio_rate not in AAC_RATES:
        raise ValueError(f"audio_rate {audio_rate} is not an AAC sample rate {AAC_RATES}")
    if fps < 1:
        raise ValueError(f"fps must be a positive integer, got {fps}")
    if size % 2 or size < 32:
        raise ValueError(f"size must be even and >= 32 (yuv420p), got {size}")
    if min(pretrain_seconds) < 2 or pretrain_seconds[0] > pretrain_seconds[1]:
        raise ValueError(f"pretrain_seconds must be an increasing range of at least 2 s, got {pretrain_seconds}")
    out_dir = Path(out_dir)
    paths = SynthMediaPaths(
        root=out_dir,
        unav_json=out_dir / "unav_like" / "annotations.json",
        unav_classes=out_dir / "unav_like" / "classes.json",
        unav_media=out_dir / "unav_like" / "videos",
        llp_dir=out_dir / "llp_like",
        llp_classes=out_dir / "llp_like" / "classes.json",
        llp_media=out_dir / "llp_like" / "videos",
    )
    paths.unav_media.mkdir(parents=True, exist_ok=True)
    paths.llp_media.mkdir(parents=True, exist_ok=True)
    settings = {
        "generator": "uwav.synthetic.media",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "sizes": {"pretrain": n_pretrain, "train": n_train, "val": n_val, "test": n_test},
        "pretrain_seconds": list(pretrain_seconds),
        "size": size,
        "fps": fps,
        "audio_rate": audio_rate,
        "noise": asdict(noise),
        "target_layout": asdict(target_layout),
    }
    settings = json.loads(json.dumps(settings))  # as read back: lists, not tuples
    settings_path = out_dir / "synth_media.json"
    previous = json.loads(settings_path.read_text()) if settings_path.is_file() else None
    pretrain_jobs, unav, unav_tables = _pretrain_set(paths.unav_media, seed, n_pretrain, pretrain_seconds, fps)
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    target_jobs, llp_tables = _target_set(paths.llp_media, seed, sizes, target_layout)
    jobs = pretrain_jobs + target_jobs
    if previous is not None and _without_sizes(previous) == _without_sizes(settings):
        # Every video depends on the settings and its own key alone, and files are written whole
        # (atomically): those already there are this benchmark's, whatever the sizes they were made with.
        jobs = [job for job in jobs if not job.path.exists()]
    workers = workers or min(8, os.cpu_count() or 1)
    # Threads suffice: numpy and libav release the GIL for the heavy parts.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda job: _render_and_encode(job, seed, fps, size, audio_rate, noise), jobs))
    _write_json(paths.unav_json, unav)
    _write_json(paths.unav_classes, list(PRETRAIN_CLASSES))
    for name, table in unav_tables.items():
        _write_tsv(paths.unav_json.parent / name, table)
    for name, table in llp_tables.items():
        _write_tsv(paths.llp_dir / name, table)
    _write_json(paths.llp_classes, list(TARGET_CLASSES))
    _write_json(settings_path, settings)  # last: the folder holds a complete benchmark of these settings
    return paths
