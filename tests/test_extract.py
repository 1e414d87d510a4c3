"""Extraction pipeline: real and generated videos, quarantine, missing audio, resumability, text embeddings."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import polars as pl
import pytest
import torch

from uwav.catalog import EncoderConfig, EncodersConfig, FeaturesSettings
from uwav.features.encoders import Encoders, build_clip_encoder, build_encoders
from uwav.features.extract import class_prompts, compute_text_embeddings, extract_features
from uwav.features.store import FeatureStore, FeatureStoreError
from uwav.media import QuarantineLog, decode_or_quarantine, decode_segments

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_VIDEOS = {
    "BjCEufrlXm4": SHARED_DATA / "llp" / "videos" / "BjCEufrlXm4.mp4",  # 10.03 s -> 10 segments
    "--HuBNHXu9I": SHARED_DATA / "unav100" / "videos" / "--HuBNHXu9I.mp4",  # 60.06 s -> 60 segments
}
TINY = EncodersConfig(
    clip=EncoderConfig(name="uwav-tiny-clip", random_init=True),
    clap=EncoderConfig(name="uwav-tiny-clap", random_init=True),
    r2plus1d=EncoderConfig(name="uwav-tiny-r2plus1d", random_init=True),
)
SETTINGS = FeaturesSettings(batch_size=16, workers=2)


@pytest.fixture(scope="module")
def encoders() -> Encoders:
    return build_encoders(TINY, "cpu", features=["clip", "clap", "r2plus1d"])


def manifest(rows: list[tuple[str, str | None, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "video_id": [video_id for video_id, _, _ in rows],
            "dataset": ["test"] * len(rows),
            "split": ["train"] * len(rows),
            "media_path": [path for _, path, _ in rows],
            "duration_s": [float(n) for _, _, n in rows],
            "n_segments": [n for _, _, n in rows],
            "labels": [["Dog"]] * len(rows),
        },
        schema_overrides={"n_segments": pl.Int32, "media_path": pl.String},
    )


def write_video(path: Path, seconds: int, *, audio: bool, seed: int, size: tuple[int, int] = (64, 48)) -> str:
    """A small H.264 (+ AAC) file (`size`: width, height) whose picture and tone change every second."""
    rng = np.random.default_rng(seed)
    fps, rate = 10, 48000
    width, height = size
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = container.add_stream("aac", rate=rate, layout="mono") if audio else None
        colours = rng.integers(0, 256, (seconds, 3))
        for index in range(seconds * fps):
            image = np.zeros((height, width, 3), np.uint8) + colours[index // fps].astype(np.uint8)
            image[:, (index % fps) * 6 : (index % fps) * 6 + 6] = 255  # motion within the second
            container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(video.encode(None))
        if sound is not None:
            t = np.arange(seconds * rate) / rate
            tone = (0.3 * np.sin(2 * np.pi * (220 + 110 * np.floor(t)) * t)).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(tone[None], format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
            container.mux(sound.encode(frame))
            container.mux(sound.encode(None))
    return str(path)


def test_real_videos_end_to_end_match_direct_encoding(encoders: Encoders, tmp_path: Path) -> None:
    absent = [str(path) for path in REAL_VIDEOS.values() if not path.is_file()]
    if absent:
        pytest.skip(f"real videos not found: {absent} (see ../shared/data/README.md)")
    store = FeatureStore(str(tmp_path / "features.zarr"), dtype="float32")
    log = QuarantineLog()
    summary = extract_features(
        manifest([(video_id, str(path), n) for (video_id, path), n in zip(REAL_VIDEOS.items(), (10, 60))]),
        store,
        encoders,
        SETTINGS,
        log,
    )
    assert sorted(summary.computed) == sorted(REAL_VIDEOS) and not summary.quarantined and len(log) == 0
    assert summary.n_segments == 70 and summary.features == ("clip", "clap", "r2plus1d")
    assert store.completed(["clip", "clap", "r2plus1d"]) == set(REAL_VIDEOS)
    for name, dim in encoders.feature_shapes().items():
        values, lengths = store.read(name, list(REAL_VIDEOS))
        assert values.shape == (2, 60, *dim) and lengths.tolist() == [10, 60]
        assert np.isfinite(values).all() and not np.allclose(values[1, 0], values[1, 30])
        assert store.available(name, list(REAL_VIDEOS)).all()
    # Segments batched across videos land in the right rows: compare with encoding the video alone.
    decoded = decode_segments(REAL_VIDEOS["BjCEufrlXm4"], encoders.clap.sample_rate, max_side=336)
    for encoder in encoders.active():
        stored, _ = store.read(encoder.feature, ["BjCEufrlXm4"])
        direct = encoder.encode_segments(getattr(decoded, encoder.segment_input))
        np.testing.assert_allclose(stored[0, :10], direct, rtol=1e-4, atol=1e-4)


def test_generated_videos_quarantine_missing_audio_and_resumability(encoders: Encoders, tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    broken = media / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    rows = [
        ("good", write_video(media / "good.mp4", 3, audio=True, seed=1), 3),
        ("silent", write_video(media / "silent.mp4", 2, audio=False, seed=2), 2),
        ("broken", str(broken), 3),
        ("gone", str(media / "gone.mp4"), 3),
        ("no_media", None, 3),
        ("too_short", write_video(media / "short.mp4", 2, audio=True, seed=3), 4),  # manifest promises more
    ]
    store = FeatureStore(str(tmp_path / "features.zarr"), dtype="float32")
    log = QuarantineLog()
    first = extract_features(manifest(rows), store, encoders, SETTINGS, log)
    assert sorted(first.computed) == ["good", "silent"]
    assert sorted(first.quarantined) == ["broken", "gone", "no_media", "too_short"]
    assert first.missing_audio == ("silent",) and first.n_segments == 5
    assert store.available("clap", ["good", "silent"]).tolist() == [True, False]
    assert store.available("clip", ["good", "silent"]).tolist() == [True, True]
    quarantine = log.to_frame()
    assert set(quarantine["stage"]) == {"features"}
    reasons = dict(zip(quarantine["video_id"], quarantine["reason"]))
    assert reasons["gone"] == "file not found"
    assert "decoded 2 segments but the manifest lists 4" in reasons["too_short"]
    assert "no audio stream" in reasons["silent"]  # recorded, but the video is still written
    good_before, _ = store.read("clip", ["good"])

    second = extract_features(manifest(rows), store, encoders, SETTINGS, QuarantineLog())
    assert second.computed == () and second.n_already_complete == 2 and second.n_segments == 0

    rows.append(("late", write_video(media / "late.mp4", 2, audio=True, seed=4), 2))
    third = extract_features(manifest(rows), store, encoders, SETTINGS, QuarantineLog())
    assert third.computed == ("late",) and third.n_segments == 2 and third.n_already_complete == 2
    good_after, _ = store.read("clip", ["good"])
    np.testing.assert_array_equal(good_before, good_after)
    assert store.completed() == {"good", "silent", "late"}


def test_videos_of_other_resolutions_share_a_batch(encoders: Encoders, tmp_path: Path) -> None:
    """Centre frames keep each video's size (CLIP resizes them): videos of different resolutions in
    one batch are encoded, each as it is alone (they used to fail concatenating the batch)."""
    rows = [
        ("small", write_video(tmp_path / "small.mp4", 2, audio=True, seed=8), 2),
        ("wide", write_video(tmp_path / "wide.mp4", 2, audio=True, seed=9, size=(96, 40)), 2),
    ]
    store = FeatureStore(str(tmp_path / "features.zarr"), dtype="float32")
    summary = extract_features(manifest(rows), store, encoders, SETTINGS, QuarantineLog(), progress=False)
    assert sorted(summary.computed) == ["small", "wide"] and summary.quarantined == ()
    stored, _ = store.read("clip", ["small", "wide"])
    for index, (_, path, _) in enumerate(rows):
        decoded = decode_segments(path, encoders.clap.sample_rate, max_side=SETTINGS.max_side)
        np.testing.assert_allclose(stored[index], encoders.clip.encode_images(decoded.centre_frames), rtol=1e-4, atol=1e-5)
    assert decode_segments(rows[1][1], audio=False, clip=False).centre_frames.shape[1:] == (40, 96, 3)


def test_a_store_computed_by_another_encoder_is_refused(encoders: Encoders, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = write_video(tmp_path / "v.mp4", 1, audio=False, seed=5)
    store = FeatureStore(str(tmp_path / "features.zarr"))
    extract_features(manifest([("v", path, 1)]), store, Encoders(clip=encoders.clip), SETTINGS, QuarantineLog())
    checkpoint = tmp_path / "clip.safetensors"
    save_file(encoders.clip.model.state_dict(), str(checkpoint))
    other = build_clip_encoder(EncoderConfig(name="uwav-tiny-clip", checkpoint=str(checkpoint)), torch.device("cpu"))
    with pytest.raises(FeatureStoreError, match="was computed by encoder 'clip/uwav-tiny-clip/random_init=seed0/config="):
        extract_features(manifest([("v", path, 1)]), store, Encoders(clip=other), SETTINGS, QuarantineLog())


def test_text_embeddings_are_cached_and_invalidated(encoders: Encoders, tmp_path: Path) -> None:
    store = FeatureStore(str(tmp_path / "features.zarr"))
    classes = ["Dog", "Frying_(food)", "Baby_cry_infant_cry"]
    first = compute_text_embeddings(store, encoders, classes, SETTINGS, role="target")
    assert first["clip"].prompts == ("A photo of Dog", "A photo of Frying (food)", "A photo of Baby cry infant cry")
    assert first["clap"].prompts == tuple(class_prompts("This is the sound of {}", classes))
    assert first["clip"].computed and first["clap"].computed
    assert first["clip"].embeddings.shape == (3, 64) and first["clap"].embeddings.shape == (3, 64)

    cached = compute_text_embeddings(store, encoders, classes, SETTINGS, role="target")
    assert not cached["clip"].computed and not cached["clap"].computed
    np.testing.assert_array_equal(cached["clip"].embeddings, first["clip"].embeddings)

    reworded = FeaturesSettings(prompts_visual="A video frame of {}")
    changed = compute_text_embeddings(store, encoders, classes, reworded, role="target")
    assert changed["clip"].computed and not changed["clap"].computed
    assert store.read_text_embeddings("clip.target", list(changed["clip"].prompts)) is not None

    # The other dataset's class list lives beside it instead of invalidating it.
    pretrain = compute_text_embeddings(store, encoders, ["Car"], reworded, role="pretrain")
    assert pretrain["clip"].computed and pretrain["clip"].embeddings.shape == (1, 64)
    assert not compute_text_embeddings(store, encoders, classes, reworded, role="target")["clip"].computed

    fewer = compute_text_embeddings(store, encoders, classes[:2], reworded, role="target")
    assert fewer["clip"].computed and fewer["clap"].computed and fewer["clap"].embeddings.shape == (2, 64)


# ---------------------------------------------------------------- the AVVP release's features (han.inputs: official)


def test_image_frames_are_the_imagenet_centre_crop_of_the_clip_frames(tmp_path: Path) -> None:
    """Shorter side to 256 keeping the aspect (64 x 48 -> 341 x 256), centre crop 224 (left 58, top 16)."""
    path = tmp_path / "striped.mp4"
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=8, options={"preset": "ultrafast", "crf": "0"})
        video.width, video.height, video.pix_fmt = 64, 48, "yuv444p"
        for index in range(16):
            image = np.full((48, 64, 3), 40, np.uint8)
            image[:, :16] = 250  # the left quarter: 0-85 of the 341 resized columns
            image[:, 24 + index % 8 : 25 + index % 8] = 120  # moves right, so the 8 frames of a segment differ
            container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(video.encode(None))
    decoded = decode_segments(str(path), centre=False, clip=True, audio=False, images=True)
    assert decoded.image_frames is not None and decoded.image_frames.shape == (2, 8, 224, 224, 3)
    assert decoded.image_frames.dtype == np.uint8 and decoded.centre_frames is None and decoded.audio is None
    grey = decoded.image_frames[0, 0].mean(axis=(0, 2))  # per crop column
    assert grey[:20].min() > 230 and grey[35:60].max() < 60  # bright until 85 - 58 = 27, then dark
    # the stripe (columns 24-31 of 64) moves through the crop at 24 * 5.33 - 58 = 70 onwards
    stripe = decoded.image_frames[0, :, 112, 40:].mean(axis=-1).argmax(axis=-1) + 40
    assert 64 <= stripe[0] <= 76 and (np.diff(stripe) > 0).all()
    # the same 8 frames as the R(2+1)D clip (its 112 crop of the 171 x 128 resize)
    clip_stripe = decoded.clip_frames[0, :, 56, 20:].mean(axis=-1).argmax(axis=-1)
    assert (np.diff(clip_stripe) > 0).all()


def test_official_encoders_extract_vggish_resnet_and_r2plus1d(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from uwav.features import extract

    official = build_encoders(
        TINY.model_copy(
            update={
                "vggish": EncoderConfig(name="uwav-tiny-vggish", random_init=True),
                "resnet152": EncoderConfig(name="uwav-tiny-resnet152", random_init=True),
            }
        ),
        "cpu",
        features=["vggish", "resnet152_mean", "r2plus1d"],
    )
    requested: list[dict] = []

    def recording(*args: object, **kwargs: object) -> object:
        requested.append(kwargs)
        return decode_or_quarantine(*args, **kwargs)

    monkeypatch.setattr(extract, "decode_or_quarantine", recording)
    rows = [
        ("loud", write_video(tmp_path / "loud.mp4", 2, audio=True, seed=6), 2),
        ("quiet", write_video(tmp_path / "quiet.mp4", 2, audio=False, seed=7), 2),
    ]
    store = FeatureStore(str(tmp_path / "features.zarr"), dtype="float32")
    summary = extract_features(manifest(rows), store, official, SETTINGS, QuarantineLog())
    assert summary.features == ("r2plus1d", "vggish", "resnet152_mean") and sorted(summary.computed) == ["loud", "quiet"]
    assert summary.missing_audio == ("quiet",)
    # only what these encoders read is decoded: no centre frames, no CLAP-rate audio
    assert {key: requested[0][key] for key in extract.DECODE_OPTIONS.values()} == {
        "centre": False, "clip": True, "images": True, "audio": False, "audio_16k": True, "valor_frames": False,
        "audio_track": False,
    }
    assert store.available("vggish", ["loud", "quiet"]).tolist() == [True, False]
    assert store.available("resnet152_mean", ["loud", "quiet"]).tolist() == [True, True]
    decoded = decode_segments(rows[0][1], centre=False, audio=False, images=True, audio_16k=True)
    assert decoded.audio_16k is not None and decoded.audio_16k.shape == (2, 16000)
    for encoder in official.active():
        stored, lengths = store.read(encoder.feature, ["loud"])
        assert stored.shape == (1, 2, encoder.dim) and lengths.tolist() == [2]
        direct = encoder.encode_segments(getattr(decoded, encoder.segment_input))
        np.testing.assert_allclose(stored[0], direct, rtol=1e-4, atol=1e-4)
        assert not np.allclose(stored[0, 0], stored[0, 1]), f"{encoder.feature}: the two seconds differ"
