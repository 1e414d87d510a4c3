"""The evaluate stage scores the test split exactly as validation does, padding mask included.

A custom target whose videos last 3 to 8 s (so the HAN's inputs are padded to 8 segments) goes
through the real pipeline with the tiny random-initialised encoders. The evaluate stage's
metrics must equal `score_han` recomputed here (the validation path), and the data must be such
that scoring WITHOUT the padding mask gives other numbers: a low decision threshold makes the
HAN's outputs on padded segments positive, which the old evaluate stage counted as false positives.
"""

from __future__ import annotations

import csv
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import yaml

from uwav.catalog import load_catalog

CLASSES = ("beep", "flash", "hum")
# Per class: a square's colour and place (visual), a tone's frequency (audio).
COLOURS = ((230, 40, 40), (40, 230, 40), (40, 40, 230))
CORNERS = ((4, 4), (4, 36), (36, 20))
TONES_HZ = (440.0, 1200.0, 2600.0)
FPS = 4
AUDIO_RATE = 16000
SIDE = 64
SPLITS = (("train", 12), ("val", 6), ("test", 6))
THRESHOLD = 0.05  # low: padded segments of an (almost untrained) HAN are then predicted positive


def write_clip(path: Path, duration_s: int, events: list[tuple[str, int, int, int]], rng: np.random.Generator) -> None:
    """An H.264 + AAC clip: per visual event a coloured square, per audio event a tone, over noise.

    `events`: (modality, class index, onset, offset) in whole seconds (= segment indices).
    """
    def active(modality: str, second: int) -> list[int]:
        return [c for m, c, onset, offset in events if m == modality and onset <= second < offset]

    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=FPS, options={"preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = SIDE, SIDE, "yuv420p"
        video.time_base = video.codec_context.time_base = Fraction(1, 1000)
        sound = container.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        packets: list[tuple[float, int, object]] = []
        for i in range(duration_s * FPS):
            t = i / FPS
            picture = rng.integers(90, 140, (SIDE, SIDE, 3), dtype=np.uint8)
            for c in active("visual", int(t)):
                y, x = CORNERS[c]
                picture[y : y + 24, x : x + 24] = COLOURS[c]
            frame = av.VideoFrame.from_ndarray(picture, "rgb24")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            packets.append((t, 0, frame))
        times = np.arange(duration_s * AUDIO_RATE) / AUDIO_RATE
        audio = 0.02 * rng.standard_normal(times.size)
        for second in range(duration_s):
            span = slice(second * AUDIO_RATE, (second + 1) * AUDIO_RATE)
            for c in active("audio", second):
                audio[span] += 0.3 * np.sin(2 * np.pi * TONES_HZ[c] * times[span])
        audio = audio.astype(np.float32)
        for start in range(0, audio.size, 1024):
            frame = av.AudioFrame.from_ndarray(audio[None, start : start + 1024], format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE, start, Fraction(1, AUDIO_RATE)
            packets.append((start / AUDIO_RATE, 1, frame))
        for _, kind, frame in sorted(packets, key=lambda p: (p[0], p[1])):
            container.mux((video if kind == 0 else sound).encode(frame))
        for stream in (video, sound):
            container.mux(stream.encode(None))


def write_target(folder: Path) -> dict[str, int]:
    """24 clips of 3..8 s with 1-2 classes each, `videos.csv` (weak labels, split) and `dense.csv`.

    Returns the duration (= segment count) of every video."""
    rng = np.random.default_rng(7)
    media = folder / "media"
    media.mkdir(parents=True)
    rows, dense, durations = [], [], {}
    index = 0
    for split, count in SPLITS:
        for _ in range(count):
            video_id = f"pad_{index:03d}"
            duration = 3 + index % 6  # every split spans 3..8 s
            classes = [index % len(CLASSES)] + ([(index + 1) % len(CLASSES)] if index % 2 else [])
            events = []
            for c in classes:
                onset = int(rng.integers(0, duration - 1))
                offset = int(rng.integers(onset + 1, duration + 1))
                events.append(("audio", c, onset, offset))
                if c != 2:  # "hum" is only heard
                    v_onset = int(rng.integers(0, duration - 1))
                    events.append(("visual", c, v_onset, int(rng.integers(v_onset + 1, duration + 1))))
            write_clip(media / f"{video_id}.mp4", duration, events, rng)
            rows.append({"video_id": video_id, "media_path": f"media/{video_id}.mp4",
                         "labels": "|".join(CLASSES[c] for c in classes), "split": split})
            dense += [{"video_id": video_id, "modality": m, "label": CLASSES[c], "onset": on, "offset": off}
                      for m, c, on, off in events]
            durations[video_id] = duration
            index += 1
    for name, table in (("videos.csv", rows), ("dense.csv", dense)):
        with open(folder / name, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    return durations


def padding_catalog() -> dict:
    synthetic = {"mode": "media", "seed": 0, "n_pretrain": 8, "n_train": 4, "n_val": 2, "n_test": 2}
    return {
        "datasets": {
            "padded": {
                "kind": "custom", "annotations": "target/videos.csv", "dense": "target/dense.csv",
                "classes": list(CLASSES), "role": "target",
            },
            "pre": {"kind": "synthetic", "annotations": "data", "role": "pretrain", "synthetic": synthetic},
        },
        "target": "padded",
        "pretrain": "pre",
        "encoders": {
            "clip": {"name": "uwav-tiny-clip", "random_init": True},
            "clap": {"name": "uwav-tiny-clap", "random_init": True},
            "r2plus1d": {"name": "uwav-tiny-r2plus1d", "random_init": True},
        },
        "stages": {
            "features": {"device": "cpu", "max_side": 96},
            "pretrain": {"layers": 1, "heads": 4, "epochs": 2, "warmup_epochs": 1, "batch_size": 8, "device": "cpu"},
            "train": {
                "han": {"d_model": 32, "ffn": 64, "heads": 4},
                "epochs": 2, "warmup_epochs": 1, "batch_size": 8, "device": "cpu",
            },
            "evaluate": {"threshold": THRESHOLD},
        },
    }


def test_evaluate_stage_masks_padded_segments_like_validation(tmp_path: Path) -> None:
    import polars as pl

    from uwav.evaluation import avvp_scores
    from uwav.stages import STAGES, run_pipeline, state_dir
    from uwav.stages.inputs import labelled_split
    from uwav.stages.tables import dataset_tables, open_store
    from uwav.training.data import padding_mask_from_lengths
    from uwav.training.han_train import llp_decisions, load_han, predict_han, score_han

    durations = write_target(tmp_path / "target")
    path = tmp_path / "data_catalog.yaml"
    path.write_text(yaml.safe_dump(padding_catalog()))
    catalog = load_catalog(path)
    assert catalog.stages.evaluate.threshold == THRESHOLD

    records = run_pipeline(catalog, progress=False)
    assert [record.stage for record in records] == list(STAGES)

    state = state_dir(catalog)
    manifest = pl.read_parquet(state.record("segment").outputs["target_manifest"])
    assert dict(manifest.select("video_id", "n_segments").iter_rows()) == durations, "every clip kept, one segment a second"
    stage_scores = json.loads(Path(state.record("evaluate").outputs["metrics"]).read_text())

    # (a) The evaluate stage's scores are the validation path's (`score_han`) on the test split.
    model = load_han(Path(state.record("train").outputs["best_checkpoint"]))
    split, labelled = labelled_split(catalog, open_store(catalog), dataset_tables(catalog, "target"), "test")
    assert len(split.video_ids) == dict(SPLITS)["test"]
    lengths = labelled.features.lengths
    assert lengths is not None, "the test videos differ in length, so the HAN's inputs are padded"
    assert sorted(lengths.tolist()) == sorted(durations[v] for v in split.video_ids)
    expected = score_han(model, labelled, threshold=THRESHOLD).scores
    assert set(stage_scores) == set(expected)
    for key, value in expected.items():
        assert stage_scores[key] == pytest.approx(value, abs=1e-6), key

    # (b) The data exercise the fix: without the padding mask, padded segments are predicted
    # positive and the scores change (the evaluate stage before the fix would fail (a)).
    segment_prob, video_prob = predict_han(model, labelled.features)
    pred_audio, pred_visual = llp_decisions(segment_prob, video_prob, THRESHOLD)
    padded = padding_mask_from_lengths(lengths, labelled.features.n_segments).numpy()[:, :, None]
    assert (pred_audio & padded).any() or (pred_visual & padded).any(), "no padded segment predicted positive"
    unmasked = avvp_scores(pred_audio, pred_visual, labelled.gt_audio, labelled.gt_visual)
    differing = {key: (unmasked[key], expected[key]) for key in expected if abs(unmasked[key] - expected[key]) > 1e-6}
    assert differing, f"scores without the padding mask equal the masked ones: {expected}"
