"""The synthetic benchmark: media files and annotations (uwav.synthetic.media), feature vectors
(uwav.synthetic.features) and their import into the feature store (uwav.synthetic.store_import),
the shared layout code (uwav.synthetic.layouts) and the entry point (uwav.synthetic.synthesize)."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import av
import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from uwav.cli import app
from uwav.contracts import validate_dense, validate_manifest
from uwav.datasets import read_llp, read_unav100
from uwav.synthetic.layouts import (
    AVE_LIKE,
    ID_BLOCKS,
    LLP_LIKE,
    UNAV_LIKE,
    ClassStatistics,
    assign_subsets,
    derived_rng,
    event_runs,
    llp_clips,
    sample_layouts,
    video_ids,
)
from uwav.synthetic.features import (
    FEATURE_SPACES,
    FeatureDifficulty,
    SyntheticFeatureBenchmark,
    SyntheticFeatureSet,
    make_feature_benchmark,
)
from uwav.synthetic.media import SynthMediaPaths, write_media_benchmark
from uwav.synthetic.signatures import (
    CATALOGUE,
    PRETRAIN_CLASSES,
    TARGET_CLASSES,
    NoiseSettings,
    TimedEvent,
    render_audio,
    render_audio_signature,
    render_frames,
)
from uwav.synthetic.synthesize import synth_main
from uwav.features.official import RESNET_MEAN_NAME
from uwav.features.store import FeatureStore, FeatureStoreError
from uwav.synthetic.store_import import import_into_store
from uwav.contracts import text_embedding_name

ID11 = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{10}$")
LLP_FILENAME = re.compile(r"^(?P<id>[A-Za-z0-9_-]{11})_(?P<start>\d+)_(?P<end>\d+)$")
MEDIA_SIZES = {"n_pretrain": 4, "n_train": 10, "n_val": 3, "n_test": 3, "pretrain_seconds": (4, 12)}
FPS, RATE, SIZE = 8, 16000, 96


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney U)."""
    _, inverse, counts = np.unique(np.concatenate([positive, negative]), return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # 1-based, ties share their mean rank
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def read_tsv(path: Path) -> pl.DataFrame:
    return pl.read_csv(path, separator="\t", infer_schema=False)


def truth_arrays(folder: Path, classes: list[str], n_segments: dict[str, int]) -> dict[str, dict[str, np.ndarray]]:
    """truth_<modality>.csv -> {modality: {video: (T, C) bool}}."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for modality in ("audio", "visual"):
        arrays = {v: np.zeros((t, len(classes)), dtype=bool) for v, t in n_segments.items()}
        for filename, onset, offset, label in read_tsv(folder / f"truth_{modality}.csv").iter_rows():
            arrays[filename][int(onset) : int(offset), classes.index(label)] = True
        out[modality] = arrays
    return out


# ---------------------------------------------------------------- media mode


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> SynthMediaPaths:
    return write_media_benchmark(tmp_path_factory.mktemp("synth") / "seed0", seed=0, workers=2, **MEDIA_SIZES)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_media_is_deterministic_by_seed(media: SynthMediaPaths, tmp_path: Path) -> None:
    again = write_media_benchmark(tmp_path / "again", seed=0, workers=1, **MEDIA_SIZES)
    other = write_media_benchmark(tmp_path / "other", seed=1, workers=2, **MEDIA_SIZES)
    reference = tree_bytes(media.root)
    assert len(reference) == 1 + 5 + 9 + 4 + 16  # settings, UnAV-like files, LLP-like files, videos
    assert tree_bytes(again.root) == reference  # byte-identical, whatever the worker count
    different = tree_bytes(other.root)
    assert different.keys() != reference.keys()  # other ids
    assert different["llp_like/AVVP_train.csv"] != reference["llp_like/AVVP_train.csv"]


GROWTH_SETTINGS = {"pretrain_seconds": (4, 6), "size": 32, "workers": 2}
SMALL_MEDIA = {"n_pretrain": 3, "n_train": 3, "n_val": 1, "n_test": 1}
GROWN_MEDIA = {"n_pretrain": 5, "n_train": 6, "n_val": 2, "n_test": 2}


def media_files(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*.mp4"))}


def test_media_benchmark_grows_in_place(tmp_path: Path) -> None:
    """Larger sizes add videos: the existing ones keep their ids, labels, subsets and files (not even
    rewritten), only the new ones are rendered, and the result is the benchmark written afresh."""
    grown = write_media_benchmark(tmp_path / "grown", seed=0, **SMALL_MEDIA, **GROWTH_SETTINGS)
    for path in grown.root.rglob("*.mp4"):  # a time no rewrite could give them
        os.utime(path, ns=(10**18, 10**18))
    before = media_files(grown.root)
    small_weak = read_tsv(grown.llp_dir / "AVVP_dataset_full.csv")
    small_truth = {m: read_tsv(grown.llp_dir / f"truth_{m}.csv") for m in ("audio", "visual")}
    small_unav = json.loads(grown.unav_json.read_text())["database"]
    assert len(before) == 8

    write_media_benchmark(tmp_path / "grown", seed=0, **GROWN_MEDIA, **GROWTH_SETTINGS)
    after = media_files(grown.root)
    assert len(after) == 15 and {k: after[k] for k in before} == before  # same bytes, same mtimes
    fresh = write_media_benchmark(tmp_path / "fresh", seed=0, **GROWN_MEDIA, **GROWTH_SETTINGS)
    assert tree_bytes(grown.root) == tree_bytes(fresh.root)

    # Every existing clip keeps its filename, split, weak labels and truth; every UnAV-like video its entry.
    splits = (("AVVP_train.csv", 3), ("AVVP_val_pd.csv", 1), ("AVVP_test_pd.csv", 1))  # the small sizes
    assert pl.concat([read_tsv(grown.llp_dir / name).head(n) for name, n in splits]).equals(small_weak)
    kept = pl.col("filename").is_in(small_weak["filename"].implode())
    for modality, truth in small_truth.items():
        rows = read_tsv(grown.llp_dir / f"truth_{modality}.csv").filter(kept)
        assert rows.sort(pl.all()).equals(truth.sort(pl.all()))
    database = json.loads(grown.unav_json.read_text())["database"]
    assert {v: database[v] for v in small_unav} == small_unav
    assert sorted(e["subset"] for e in database.values()) == ["test", "train", "train", "train", "validation"]

    # Other settings draw other videos: every file is rendered again.
    write_media_benchmark(tmp_path / "grown", seed=0, **GROWN_MEDIA, **(GROWTH_SETTINGS | {"size": 34}))
    resized = media_files(grown.root)
    assert resized.keys() == after.keys() and all(resized[k][0] != after[k][0] for k in after)


def test_media_files_decode_to_the_declared_streams(media: SynthMediaPaths) -> None:
    database = json.loads(media.unav_json.read_text())["database"]
    expected = {media.unav_media / f"{v}.mp4": entry["duration"] for v, entry in database.items()}
    for filename in read_tsv(media.llp_dir / "AVVP_dataset_full.csv")["filename"]:
        expected[media.llp_media / f"{filename[:11]}.mp4"] = 10.0
    assert sorted(expected) == sorted([*media.unav_media.glob("*.mp4"), *media.llp_media.glob("*.mp4")])
    for path, duration in expected.items():
        with av.open(str(path)) as container:
            video, audio = container.streams.video[0], container.streams.audio[0]
            assert video.codec_context.name == "h264" and audio.codec_context.name == "aac", path
            assert (video.codec_context.width, video.codec_context.height) == (SIZE, SIZE)
            assert video.average_rate == FPS and audio.rate == RATE and audio.layout.nb_channels == 1
            assert container.duration / 1e6 == pytest.approx(duration, abs=0.07), path
            frames = list(container.decode(video=0))
        assert len(frames) == round(duration * FPS), path
        with av.open(str(path)) as container:
            samples = sum(f.samples for f in container.decode(audio=0))
        # AAC pads the last frame of 1024 samples; nothing is missing.
        assert duration * RATE <= samples < duration * RATE + 2048, path


def test_llp_like_set_has_llp_formats(media: SynthMediaPaths) -> None:
    classes = json.loads(media.llp_classes.read_text())
    assert classes == list(TARGET_CLASSES)
    weak = {
        split: read_tsv(media.llp_dir / name)
        for split, name in (("train", "AVVP_train.csv"), ("val", "AVVP_val_pd.csv"), ("test", "AVVP_test_pd.csv"))
    }
    assert {split: t.height for split, t in weak.items()} == {"train": 10, "val": 3, "test": 3}
    everything = pl.concat(weak.values())
    assert everything.columns == ["filename", "event_labels"]
    assert read_tsv(media.llp_dir / "AVVP_dataset_full.csv").equals(everything)
    for filename in everything["filename"]:
        match = LLP_FILENAME.match(filename)
        assert match and ID11.match(match["id"]) and int(match["end"]) - int(match["start"]) == 10, filename
        assert (media.llp_media / f"{match['id']}.mp4").is_file()
    # Every class occurs in the training clips (cover_classes), and weak labels are the union of the truth.
    assert {c for labels in weak["train"]["event_labels"] for c in labels.split(",")} == set(classes)
    truth = truth_arrays(media.llp_dir, classes, dict.fromkeys(everything["filename"], 10))
    for filename, labels in everything.iter_rows():
        present = truth["audio"][filename].any(0) | truth["visual"][filename].any(0)
        assert labels.split(",") == [c for c, p in zip(classes, present, strict=True) if p], filename
    evaluated = set(weak["val"]["filename"]) | set(weak["test"]["filename"])
    for modality in ("audio", "visual"):
        dense = read_tsv(media.llp_dir / f"AVVP_eval_{modality}.csv")
        assert dense.columns == ["filename", "onset", "offset", "event_labels"]
        assert set(dense["filename"]) <= evaluated
        onset, offset = dense["onset"].cast(pl.Int32), dense["offset"].cast(pl.Int32)
        assert ((onset >= 0) & (onset < offset) & (offset <= 10)).all()
        truth_rows = read_tsv(media.llp_dir / f"truth_{modality}.csv")
        assert truth_rows.filter(pl.col("filename").is_in(evaluated)).equals(dense)


def test_unav_like_set_has_unav_format(media: SynthMediaPaths) -> None:
    classes = json.loads(media.unav_classes.read_text())
    assert classes == list(PRETRAIN_CLASSES)
    document = json.loads(media.unav_json.read_text())
    assert set(document) == {"version", "database"} and len(document["database"]) == 4
    durations = {}
    for video_id, entry in document["database"].items():
        assert ID11.match(video_id) and set(entry) == {"duration", "subset", "annotations"}
        assert entry["subset"] in ("train", "validation", "test") and entry["annotations"], video_id
        assert 4 <= entry["duration"] < 12 + 0.5
        durations[video_id] = int(entry["duration"])  # whole segments: the extra part is < 0.5 s
        for event in entry["annotations"]:
            start, end = event["segment"]
            assert 0 <= start < end <= entry["duration"], video_id
            assert classes[event["label_id"]] == event["label"]
    assert sorted(e["subset"] for e in document["database"].values()) == ["test", "train", "train", "validation"]
    # The annotated events are the audio-visual parts of the true timelines (half-segment rule).
    truth = truth_arrays(media.unav_json.parent, classes, durations)
    for video_id, entry in document["database"].items():
        annotated = np.zeros_like(truth["audio"][video_id])
        for event in entry["annotations"]:
            start, end = event["segment"]
            for t in range(durations[video_id]):
                if min(end, t + 1) - max(start, t) >= 0.5:
                    annotated[t, event["label_id"]] = True
        assert np.array_equal(annotated, truth["audio"][video_id] & truth["visual"][video_id]), video_id


def test_readers_take_both_sets_unchanged(media: SynthMediaPaths) -> None:
    manifest, dense = read_llp(media.llp_dir, media_root=media.llp_media, strict=True)
    assert manifest.height == 16 and manifest["media_path"].null_count() == 0
    assert (manifest["n_segments"] == 10).all()
    expected = pl.concat(
        [
            read_tsv(media.llp_dir / f"AVVP_eval_{m}.csv").select(
                video_id="filename", modality=pl.lit(m), label="event_labels", onset="onset", offset="offset"
            )
            for m in ("audio", "visual")
        ]
    )
    assert validate_dense(expected).sort(pl.all()).equals(dense.sort(pl.all()))
    classes = json.loads(media.llp_classes.read_text())
    assert read_llp(media.llp_dir, classes=classes, strict=True)[1].sort(pl.all()).equals(dense.sort(pl.all()))

    manifest, dense = read_unav100(media.unav_json, media_root=media.unav_media, strict=True)
    assert manifest.height == 4 and manifest["media_path"].null_count() == 0
    segments = dict(zip(manifest["video_id"], manifest["n_segments"], strict=True))
    truth = truth_arrays(media.unav_json.parent, list(PRETRAIN_CLASSES), segments)
    for video_id, t in segments.items():
        got = np.zeros((t, len(PRETRAIN_CLASSES)), dtype=bool)
        for _, modality, label, onset, offset in dense.filter(pl.col("video_id") == video_id).iter_rows():
            got[onset:offset, PRETRAIN_CLASSES.index(label)] = True
        assert np.array_equal(got, truth["audio"][video_id] & truth["visual"][video_id]), video_id


def test_decoded_media_follow_the_truth(media: SynthMediaPaths) -> None:
    """Per segment, the energy in a class's signature bins and the pixels of its colour separate the
    segments where the truth has that class from those where it does not."""
    classes = list(TARGET_CLASSES)
    filenames = read_tsv(media.llp_dir / "AVVP_dataset_full.csv")["filename"].to_list()
    truth = truth_arrays(media.llp_dir, classes, dict.fromkeys(filenames, 10))
    signature_bins = []
    for name in classes:
        template = np.abs(np.fft.rfft(render_audio_signature(_class(name).audio, RATE, RATE, derived_rng(0, "t")))) ** 2
        order = np.argsort(template)[::-1]
        signature_bins.append(order[: np.searchsorted(np.cumsum(template[order]), 0.5 * template.sum()) + 1])
    colours = np.array([_class(name).visual.colour for name in classes], dtype=np.float32)
    audio_scores, visual_scores = [], []
    for filename in filenames:
        path = media.llp_media / f"{filename[:11]}.mp4"
        with av.open(str(path)) as container:
            wave = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)])[: 10 * RATE]
        with av.open(str(path)) as container:
            # Every other frame and pixel: objects are 20 px wide and last whole seconds.
            frames = np.stack([f.to_ndarray(format="rgb24")[::2, ::2] for f in container.decode(video=0)][::2])
        power = np.abs(np.fft.rfft(wave.reshape(10, RATE), axis=1)) ** 2
        audio_scores.append(np.stack([power[:, b].sum(1) / power.sum(1) for b in signature_bins], axis=1))
        # Fraction of pixels within 40 of the class colour, over the frames of each segment.
        distance = np.linalg.norm(frames[:, :, :, None, :].astype(np.float32) - colours[None, None, None], axis=-1)
        near = (distance < 40).mean(axis=(1, 2)).reshape(10, FPS // 2, len(classes)).mean(1)
        visual_scores.append(near)
    for modality, scores in (("audio", audio_scores), ("visual", visual_scores)):
        score = np.stack(scores)  # (videos, T, C)
        labels = np.stack([truth[modality][f] for f in filenames])
        per_class = [
            auc(score[..., c][labels[..., c]], score[..., c][~labels[..., c]])
            for c in range(len(classes))
            if labels[..., c].any()
        ]
        assert np.mean(per_class) > 0.95 and min(per_class) > 0.8, (modality, np.round(per_class, 2))


def _class(name: str):  # noqa: ANN202 (a SynthClass)
    return next(c for c in CATALOGUE if c.name == name)


def test_every_class_has_distinct_audio_and_visual_signatures() -> None:
    """Nearest-template classification of fresh renders is always right: by the spectrum for sounds,
    by the dominant colour for pictures."""
    quiet = NoiseSettings(audio_noise=0.03, bursts_per_s=0.0, visual_noise=0.0, distractor_shapes=0.0)
    edges = np.geomspace(40, 6000, 49)
    freqs = np.fft.rfftfreq(2 * RATE, 1 / RATE)
    band = np.digitize(freqs, edges)

    def fingerprint(name: str, key: str) -> np.ndarray:
        wave = render_audio([TimedEvent(name, "audio", 0.0, 2.0)], 2.0, RATE, derived_rng(0, key, name), quiet)
        power = np.bincount(band, np.abs(np.fft.rfft(wave)) ** 2, minlength=len(edges) + 1)[1:-1]
        return np.log(power / power.sum() + 1e-7)

    names = [c.name for c in CATALOGUE]
    templates = np.stack([fingerprint(n, "template") for n in names])
    for i, name in enumerate(names):
        distances = np.linalg.norm(templates - fingerprint(name, "query"), axis=1)
        assert np.argmin(distances) == i, (name, names[int(np.argmin(distances))])

    colours = np.array([c.visual.colour for c in CATALOGUE], dtype=float)
    pairwise = np.linalg.norm(colours[:, None] - colours[None], axis=-1)
    assert pairwise[~np.eye(len(names), dtype=bool)].min() > 60
    for i, name in enumerate(names):
        background = render_frames([], 1.0, FPS, SIZE, derived_rng(0, "frame", name), quiet)
        event = [TimedEvent(name, "visual", 0.0, 1.0)]
        drawn = render_frames(event, 1.0, FPS, SIZE, derived_rng(0, "frame", name), quiet)
        changed = np.abs(drawn.astype(int) - background).max(-1) > 10
        pixels = drawn[changed].astype(float)
        bright = pixels[pixels.sum(1) >= np.quantile(pixels.sum(1), 0.75)]  # the unshaded part of a texture
        nearest = np.argmin(np.linalg.norm(colours - np.median(bright, axis=0), axis=1))
        assert nearest == i, (name, names[int(nearest)])


def test_layouts_follow_their_configuration() -> None:
    stats = ClassStatistics.draw(0, "t", TARGET_CLASSES, LLP_LIKE)
    layouts = sample_layouts(0, "t", "train", 4000, stats, LLP_LIKE)
    assert layouts.audio.shape == (4000, 10, len(TARGET_CLASSES)) and (layouts.n_segments == 10).all()
    weak = layouts.weak_labels()
    k = np.bincount(weak.sum(1), minlength=5)[1:5] / 4000
    assert np.allclose(k, LLP_LIKE.classes_per_video, atol=0.03)
    audio_any, visual_any = layouts.audio.any(1), layouts.visual.any(1)
    pairs = weak.sum()
    kinds = ((audio_any, visual_any), (audio_any, ~visual_any), (~audio_any, visual_any))
    fractions = [(a & v).sum() / pairs for a, v in kinds]
    assert all(f > 0.05 for f in fractions), fractions  # audio-visual, audio-only and visual-only all occur
    again = sample_layouts(0, "t", "train", 4000, stats, LLP_LIKE)
    assert np.array_equal(again.audio, layouts.audio) and np.array_equal(again.visual, layouts.visual)
    assert not np.array_equal(sample_layouts(0, "t", "val", 4000, stats, LLP_LIKE).audio, layouts.audio)
    long = sample_layouts(0, "u", "all", 300, ClassStatistics.draw(0, "u", PRETRAIN_CLASSES, UNAV_LIKE), UNAV_LIKE)
    assert long.n_segments.min() >= 10 and long.n_segments.max() <= 60
    assert long.audio_visual.any(axis=(1, 2)).all()  # require_audio_visual
    beyond = np.arange(60)[None, :] >= long.n_segments[:, None]
    assert not long.audio[beyond].any() and not long.visual[beyond].any()


def test_videos_are_keyed_one_by_one() -> None:
    """Layouts, ids, clip names and subsets of the first videos do not depend on how many follow."""
    for config, classes in ((LLP_LIKE, TARGET_CLASSES), (UNAV_LIKE, PRETRAIN_CLASSES)):
        stats = ClassStatistics.draw(0, "t", classes, config)
        for small, large in ((3, 40), (len(classes), 3 * len(classes))):  # fewer videos than classes, then more
            first = sample_layouts(0, "t", "train", small, stats, config, cover_classes=True)
            more = sample_layouts(0, "t", "train", large, stats, config, cover_classes=True)
            for name in ("audio", "visual", "n_segments"):
                assert np.array_equal(getattr(first, name), getattr(more, name)[:small]), (config, small, name)
        # cover_classes: the first C videos each show a different class, so together they show all.
        covering = sample_layouts(0, "t", "train", 2 * len(classes), stats, config, cover_classes=True)
        assert covering.weak_labels()[: len(classes)].any(axis=0).all()
    ids = {block: video_ids(0, "media", block, 2000) for block in ID_BLOCKS}
    assert all(ids[block][:50] == video_ids(0, "media", block, 50) for block in ID_BLOCKS)
    every = [v for block_ids in ids.values() for v in block_ids]
    assert len(set(every)) == len(every) and all(ID11.match(v) for v in every)
    assert not set(every) & set(video_ids(1, "media", "train", 2000))  # another seed, other ids
    assert llp_clips(0, "media", "t", "val", 30) == tuple(names[:30] for names in llp_clips(0, "media", "t", "val", 90))
    subsets = assign_subsets(1000)
    assert subsets[:3].tolist() == [0, 1, 2] and np.array_equal(assign_subsets(50), subsets[:50])
    for n in (3, 4, 10, 24, 1000):  # every subset has a video, and the counts are the fractions to a video
        counts = np.bincount(assign_subsets(n), minlength=3)
        assert counts.min() >= 1 and np.abs(counts - n * np.array([0.7, 0.15, 0.15])).max() <= 1.5, (n, counts)


def test_ave_like_layouts_have_one_audio_visual_event_per_video() -> None:
    stats = ClassStatistics.draw(0, "t", TARGET_CLASSES, AVE_LIKE)
    layouts = sample_layouts(0, "t", "train", 4000, stats, AVE_LIKE)
    assert (layouts.weak_labels().sum(1) == 1).all()
    assert np.array_equal(layouts.audio, layouts.visual)  # every event is audio-visual
    video, _, onset, offset = event_runs(layouts.audio)
    assert np.array_equal(video, np.arange(4000))  # exactly one event per video
    assert ((offset - onset) == 10).mean() == pytest.approx(AVE_LIKE.full_length[0], abs=0.03)
    assert (np.bincount(layouts.weak_labels().argmax(1), minlength=len(TARGET_CLASSES)) > 80).all()


def test_synth_cli_writes_an_ave_like_media_set(tmp_path: Path) -> None:
    sizes = ["--n-pretrain", "2", "--n-train", "4", "--n-val", "2", "--n-test", "2"]
    out = tmp_path / "ave"
    result = CliRunner().invoke(app, ["synth", "--out", str(out), "--target-layout", "ave", *sizes])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "synth_media.json").read_text())["target_layout"]["classes_per_video"] == [1.0]
    weak = read_tsv(out / "llp_like" / "AVVP_dataset_full.csv")
    assert weak.height == 8 and not weak["event_labels"].str.contains(",").any()
    classes = json.loads((out / "llp_like" / "classes.json").read_text())
    truth = truth_arrays(out / "llp_like", classes, dict.fromkeys(weak["filename"], 10))
    for filename in weak["filename"]:
        assert np.array_equal(truth["audio"][filename], truth["visual"][filename]) and truth["audio"][filename].any()
    refused = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "x"), "--target-layout", "unav"])
    assert refused.exit_code == 2 and "--target-layout" in refused.output
    with pytest.raises(ValueError, match="layouts-from"):
        synth_main("features", tmp_path / "y", layouts_from=tmp_path, target_layout="ave")


def test_synth_cli_needs_out_for_a_benchmark_and_names_its_modes(tmp_path: Path) -> None:
    # --out is optional only for --mode encoders (the cache folder), so the others say it is needed.
    missing = CliRunner().invoke(app, ["synth", "--mode", "features"])
    assert missing.exit_code == 2 and "error: --out is required with --mode features" in missing.output
    unknown = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "x"), "--mode", "video"])
    assert unknown.exit_code == 2 and "'media', 'features' or 'encoders'" in unknown.output
    assert not (tmp_path / "x").exists()
    sized = CliRunner().invoke(app, ["synth", "--mode", "encoders", "--out", str(tmp_path / "x"), "--n-train", "5"])
    assert sized.exit_code == 2 and "--n-train: not used by --mode encoders" in sized.output
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- feature mode


SMALL_DIMS = {"clip": 64, "clap": 48, "r2plus1d": 32, "vggish": 16, "resnet152": 40}
SMALL = {"n_train": 400, "n_val": 60, "n_test": 80, "n_pretrain": 120, "dims": SMALL_DIMS}


@pytest.fixture(scope="module")
def features() -> SyntheticFeatureBenchmark:
    return make_feature_benchmark(seed=0, features=tuple(FEATURE_SPACES), **SMALL)


def test_feature_benchmark_shapes_and_contracts(features: SyntheticFeatureBenchmark) -> None:
    b = features
    n = 400 + 60 + 80
    validate_manifest(b.target.manifest)
    validate_dense(b.target.dense)
    assert b.target.manifest["split"].to_list() == ["train"] * 400 + ["val"] * 60 + ["test"] * 80
    assert b.target.manifest["video_id"].str.contains(LLP_FILENAME.pattern).all()
    for space, array in b.target.features.items():
        assert array.shape == (n, 10, SMALL_DIMS[space]) and array.dtype == np.float32
    # Dense labels: val/test only, and they are the truth of those videos.
    evaluated = b.target.manifest.filter(pl.col("split") != "train")["video_id"]
    assert set(b.target.dense["video_id"]) <= set(evaluated)
    rows = {v: i for i, v in enumerate(b.target.manifest["video_id"])}
    from_dense = np.zeros_like(b.target.layouts.audio)
    for video_id, modality, label, onset, offset in b.target.dense.iter_rows():
        if modality == "audio":
            from_dense[rows[video_id], onset:offset, b.target.classes.index(label)] = True
    assert np.array_equal(from_dense[400:], b.target.layouts.audio[400:])
    weak = [[b.target.classes[c] for c in np.flatnonzero(w)] for w in b.target.layouts.weak_labels()]
    assert b.target.manifest["labels"].to_list() == weak

    validate_manifest(b.pretrain.manifest)
    validate_dense(b.pretrain.dense)
    lengths = b.pretrain.lengths
    assert lengths.tolist() == b.pretrain.manifest["n_segments"].to_list()
    assert lengths.min() >= 10 and lengths.max() <= 60
    assert set(b.pretrain.manifest["split"]) == {"train", "val", "test"}
    for space in ("clip", "clap"):
        array = b.pretrain.features[space]
        assert array.shape == (120, 60, SMALL_DIMS[space]) and array.dtype == np.float32
        padded = np.arange(60)[None, :] >= lengths[:, None]
        assert not array[padded].any() and np.abs(array[~padded]).sum(-1).min() > 0
    assert set(b.pretrain.features) == {"clip", "clap"}  # the default pre-training spaces


def test_text_embeddings_are_shared_by_class_name(features: SyntheticFeatureBenchmark) -> None:
    b = features
    shared = [c for c in b.target.classes if c in b.pretrain.classes]
    assert 15 <= len(shared) < len(b.target.classes)
    for space in ("clip", "clap"):
        target, pretrain = b.target.text_embeddings[space], b.pretrain.text_embeddings[space]
        assert target.shape == (len(b.target.classes), SMALL_DIMS[space]) and target.dtype == np.float32
        assert np.allclose(np.linalg.norm(target, axis=1), 1.0, atol=1e-5)
        for name in shared:
            assert np.array_equal(target[b.target.classes.index(name)], pretrain[b.pretrain.classes.index(name)])
        cosine = target @ target.T
        assert np.abs(cosine[~np.eye(len(target), dtype=bool)]).max() < 0.6  # distinct classes differ
    assert not np.allclose(b.target.text_embeddings["clip"][:, :48], b.target.text_embeddings["clap"])  # spaces differ


def test_features_respond_only_to_their_own_modality(features: SyntheticFeatureBenchmark) -> None:
    """Per class, segments with the class in the feature's modality score high; segments where the
    class is only in the other modality score like segments without it."""
    b = features
    layouts = b.target.layouts
    train = (b.target.manifest["split"] == "train").to_numpy()
    for space, spec in FEATURE_SPACES.items():
        own = layouts.audio if spec.modality == "audio" else layouts.visual
        other = layouts.visual if spec.modality == "audio" else layouts.audio
        x = b.target.features[space]
        if spec.text_aligned:
            score = x @ b.target.text_embeddings[space].T  # zero-shot: inner products with the text embeddings
        else:  # a least-squares read-out trained on the training videos' truth
            design = np.concatenate([x, np.ones(x.shape[:2] + (1,), np.float32)], -1)
            rows, targets = design[train].reshape(-1, design.shape[-1]), own[train].reshape(-1, own.shape[-1])
            weights = np.linalg.lstsq(rows, targets.astype(np.float32), rcond=None)[0]
            score = design @ weights
        held_out = ~train
        s, o, t = score[held_out], own[held_out], other[held_out]
        own_auc, leak_auc = [], []
        for c in range(len(b.target.classes)):
            positive = s[..., c][o[..., c]]
            absent = s[..., c][~o[..., c] & ~t[..., c]]
            other_only = s[..., c][~o[..., c] & t[..., c]]
            if len(positive) > 5:
                own_auc.append(auc(positive, absent))
            if len(other_only) > 5:
                leak_auc.append(auc(other_only, absent))
        assert np.mean(own_auc) > 0.8, (space, np.mean(own_auc))
        assert abs(np.mean(leak_auc) - 0.5) < 0.08, (space, np.mean(leak_auc))


def test_feature_difficulty_knobs_change_separability() -> None:
    def zero_shot_auc(difficulty: FeatureDifficulty) -> float:
        b = make_feature_benchmark(
            seed=3, n_train=200, n_val=1, n_test=1, n_pretrain=3,
            features=("clap",), pretrain_features=(), dims=SMALL_DIMS, difficulty=difficulty,
        )  # fmt: skip
        score = b.target.features["clap"] @ b.target.text_embeddings["clap"].T
        truth = b.target.layouts.audio
        return auc(score[truth], score[~truth])

    easy = zero_shot_auc(FeatureDifficulty(confusion=0.05, noise=0.2, text_alignment=0.95))
    default = zero_shot_auc(FeatureDifficulty())
    hard = zero_shot_auc(FeatureDifficulty(confusion=0.8, text_alignment=0.3))
    assert easy > default > hard > 0.5


def assert_same_set(ours: SyntheticFeatureSet, theirs: SyntheticFeatureSet) -> None:
    assert ours.classes == theirs.classes
    assert ours.manifest.equals(theirs.manifest) and ours.dense.equals(theirs.dense)
    for name in ("features", "text_embeddings"):
        mine, other = getattr(ours, name), getattr(theirs, name)
        assert mine.keys() == other.keys() and all(np.array_equal(mine[k], other[k]) for k in mine), name
    for name in ("audio", "visual", "n_segments"):
        assert np.array_equal(getattr(ours.layouts, name), getattr(theirs.layouts, name)), name


def test_feature_benchmark_is_deterministic_and_round_trips(
    features: SyntheticFeatureBenchmark, tmp_path: Path
) -> None:
    again = make_feature_benchmark(seed=0, features=tuple(FEATURE_SPACES), workers=1, **SMALL)
    assert_same_set(again.target, features.target)
    assert_same_set(again.pretrain, features.pretrain)
    other = make_feature_benchmark(seed=1, features=("clip",), **SMALL)
    assert not other.target.manifest["video_id"].equals(features.target.manifest["video_id"])
    assert not np.allclose(other.target.features["clip"], features.target.features["clip"])

    features.save(tmp_path / "bench")
    for mmap in (False, True):
        loaded = SyntheticFeatureBenchmark.load(tmp_path / "bench", mmap=mmap)
        assert loaded.settings == features.settings
        assert_same_set(loaded.target, features.target)
        assert_same_set(loaded.pretrain, features.pretrain)
        assert isinstance(loaded.target.features["clip"], np.memmap) == mmap
    with pytest.raises(FileNotFoundError, match="benchmark.json"):
        SyntheticFeatureBenchmark.load(tmp_path)


def test_feature_benchmark_grows_in_place() -> None:
    """Larger sizes add videos: the existing ones keep their ids, splits, labels, truth and features."""
    common = {"seed": 0, "features": ("clap", "clip"), "dims": SMALL_DIMS}
    small = make_feature_benchmark(n_train=30, n_val=5, n_test=6, n_pretrain=7, **common)
    large = make_feature_benchmark(n_train=50, n_val=9, n_test=8, n_pretrain=12, **common)
    for ours, theirs in ((small.target, large.target), (small.pretrain, large.pretrain)):
        rows = {v: i for i, v in enumerate(theirs.manifest["video_id"])}
        kept = np.array([rows[v] for v in ours.manifest["video_id"]])  # KeyError: an id changed
        assert ours.manifest.equals(theirs.manifest[kept])
        assert ours.dense.equals(theirs.dense.filter(pl.col("video_id").is_in(ours.manifest["video_id"].implode())))
        for name in ("audio", "visual", "n_segments"):
            assert np.array_equal(getattr(ours.layouts, name), getattr(theirs.layouts, name)[kept]), name
        for space, values in ours.features.items():
            assert np.array_equal(values, theirs.features[space][kept]), space
    assert large.pretrain.manifest["video_id"].to_list()[:7] == small.pretrain.manifest["video_id"].to_list()


def test_import_into_feature_store(tmp_path: Path) -> None:
    sizes = {"n_train": 20, "n_val": 4, "n_test": 6, "n_pretrain": 10, "dims": SMALL_DIMS}
    features = make_feature_benchmark(seed=0, features=tuple(FEATURE_SPACES), **sizes)
    features.save(tmp_path / "bench")
    store = FeatureStore(str(tmp_path / "store.zarr"), dtype="float32")
    counts = import_into_store(tmp_path / "bench", store)
    assert counts == {
        "target_imported": 30, "target_already_complete": 0, "pretrain_imported": 10, "pretrain_already_complete": 0
    }  # fmt: skip
    target_ids = features.target.manifest["video_id"].to_list()
    assert set(store.feature_names()) == {"clip", "clap", "r2plus1d", "vggish", RESNET_MEAN_NAME}
    for space, name in (("clip", "clip"), ("resnet152", RESNET_MEAN_NAME)):
        values, lengths = store.read(name, target_ids)
        assert np.array_equal(values, features.target.features[space]) and (lengths == 10).all()
    pretrain_ids = features.pretrain.manifest["video_id"].to_list()
    values, lengths = store.read("clap", pretrain_ids)
    assert np.array_equal(lengths, features.pretrain.lengths)
    assert np.array_equal(values, features.pretrain.features["clap"][:, : lengths.max()])
    for role, part in (("target", features.target), ("pretrain", features.pretrain)):
        for space in ("clip", "clap"):
            stored = store.read_text_embeddings(text_embedding_name(space, role))
            assert np.array_equal(stored, part.text_embeddings[space])
            assert store.text_embedding_info(text_embedding_name(space, role))[0] == list(part.classes)
    again = import_into_store(tmp_path / "bench", store)
    assert again["target_imported"] == 0 and again["target_already_complete"] == 30
    # Another benchmark's features would be stale next to these: refused.
    make_feature_benchmark(seed=5, features=tuple(FEATURE_SPACES), **sizes).save(tmp_path / "other")
    with pytest.raises(FeatureStoreError, match="encoder"):
        import_into_store(tmp_path / "other", store)


def test_layouts_drawn_from_real_llp_labels(shared_data: Path) -> None:
    b = make_feature_benchmark(
        seed=0, n_train=50, n_val=10, n_test=10, n_pretrain=5, features=("clap",), pretrain_features=(),
        dims=SMALL_DIMS, layouts_from=shared_data / "llp" / "AVVP_eval_audio.csv",
    )  # fmt: skip
    manifest, dense = read_llp(shared_data / "llp")
    real = {}
    for video_id in dense["video_id"].unique():
        layout = np.zeros((2, 10, 25), dtype=bool)
        for _, modality, label, onset, offset in dense.filter(pl.col("video_id") == video_id).iter_rows():
            layout[0 if modality == "audio" else 1, onset:offset, b.target.classes.index(label)] = True
        real[layout.tobytes()] = True
        real[layout[:, ::-1].tobytes()] = True  # time-reversed copies are allowed
    assert len(b.target.classes) == 25
    for i in range(70):
        layout = np.stack([b.target.layouts.audio[i], b.target.layouts.visual[i]])
        assert layout.tobytes() in real, i


def test_synth_cli_entry_writes_a_loadable_benchmark(tmp_path: Path) -> None:
    out = synth_main("features", tmp_path / "features", seed=2, n_pretrain=20, n_train=30, n_val=5, n_test=5)
    loaded = SyntheticFeatureBenchmark.load(out)
    assert loaded.target.manifest.height == 40 and loaded.target.features["clip"].shape == (40, 10, 768)
    assert set(loaded.target.features) == {"clip", "clap", "r2plus1d"}
    with pytest.raises(ValueError, match="unknown synth mode"):
        synth_main("video", tmp_path / "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="layouts-from"):
        synth_main("media", tmp_path / "y", layouts_from=tmp_path)


@pytest.mark.benchmark
def test_feature_generation_time_at_llp_scale() -> None:
    """Not a pass/fail timing: prints how long LLP-scale generation takes (10,000 + 649 + 1,200 + 2,000 videos)."""
    start, cpu = time.perf_counter(), time.process_time()
    b = make_feature_benchmark(seed=0)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    gigabytes = sum(a.nbytes for a in (*b.target.features.values(), *b.pretrain.features.values())) / 1e9
    print(f"\nfeature benchmark at LLP scale: {wall:.1f} s wall, {cpu:.1f} s CPU, {gigabytes:.2f} GB of features")
    assert b.target.manifest.height == 11849
