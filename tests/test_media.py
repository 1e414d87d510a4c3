"""uwav.media: segment decoding on the two real videos and on media written (and damaged) here."""

from __future__ import annotations

import io
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import polars as pl
import pytest

from uwav.contracts import QUARANTINE_SCHEMA, n_segments_for_duration
from uwav.media import (
    CLIP_CROP,
    FRAMES_PER_CLIP,
    DecodedSegments,
    MediaError,
    QuarantineLog,
    decode_or_quarantine,
    decode_segments,
    probe_duration,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LLP_VIDEO = DATA / "llp" / "videos" / "BjCEufrlXm4.mp4"
UNAV_VIDEO = DATA / "unav100" / "videos" / "--HuBNHXu9I.mp4"

needs_real_videos = pytest.mark.skipif(
    not (LLP_VIDEO.exists() and UNAV_VIDEO.exists()),
    reason=f"real videos not found under {DATA} (the shared data folder is absent in this checkout)",
)

# Test media: frame i is a uniform grey of level BASE + STEP * i, so the chosen frame can be read back.
GREY_BASE, GREY_STEP = 20, 4
TONE_HZ = 440.0


def grey_index(frame: np.ndarray) -> int:
    return round((float(frame.mean()) - GREY_BASE) / GREY_STEP)


def tone(duration_s: float, rate: int, onset_s: float = 0.0) -> np.ndarray:
    """440 Hz tone whose amplitude is 0.1 * (second + 1), silent before `onset_s`."""
    t = np.arange(round(duration_s * rate)) / rate
    return np.where(t >= onset_s, 0.1 * (np.floor(t) + 1) * np.sin(2 * np.pi * TONE_HZ * t), 0.0).astype(np.float32)


def write_media(
    path: Path,
    frame_times: list[float] | np.ndarray | None,
    audio: np.ndarray | None = None,
    audio_rate: int = 22050,
    audio_codec: str = "aac",
    options: dict[str, str] | None = None,
    image: np.ndarray | None = None,
    audio_start_s: float = 0.0,
) -> Path:
    """Write H.264 frames at the given presentation times (s) and mono audio, interleaved by time.

    Frames are 64x48 uniform greys (`grey_index` reads them back) unless `image` gives every frame's picture.
    """
    height, width = image.shape[:2] if image is not None else (48, 64)
    with av.open(str(path), "w", options=options or {}) as container:
        video = None
        if frame_times is not None:
            video = container.add_stream("libx264", rate=10, options={"preset": "ultrafast", "qp": "0"})
            video.width, video.height, video.pix_fmt = width, height, "yuv420p"
            video.time_base = video.codec_context.time_base = Fraction(1, 1000)
        sound = container.add_stream(audio_codec, rate=audio_rate, layout="mono") if audio is not None else None
        events: list[tuple[float, int, object]] = []
        for i, t in enumerate(frame_times if frame_times is not None else []):
            picture = image if image is not None else np.full((height, width, 3), GREY_BASE + GREY_STEP * i, np.uint8)
            frame = av.VideoFrame.from_ndarray(picture, "rgb24")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            events.append((t, 0, frame))
        if sound is not None:
            chunk_size = 1024
            sample_format = "flt" if audio_codec == "aac" else "s16"
            for start in range(0, audio.size, chunk_size):
                samples = audio[start : start + chunk_size]
                if sample_format == "s16":
                    samples = (samples * 32767).astype(np.int16)
                frame = av.AudioFrame.from_ndarray(samples[None], format=sample_format, layout="mono")
                pts = start + round(audio_start_s * audio_rate)
                frame.sample_rate, frame.pts, frame.time_base = audio_rate, pts, Fraction(1, audio_rate)
                events.append((pts / audio_rate, 1, frame))
        for _, kind, frame in sorted(events, key=lambda e: (e[0], e[1])):
            stream = video if kind == 0 else sound
            container.mux(stream.encode(frame))
        for stream in (video, sound):
            if stream is not None:
                container.mux(stream.encode(None))
    return path


def cfr(duration_s: float, fps: int = 10) -> np.ndarray:
    return np.arange(round(duration_s * fps)) / fps


def expected_frame(frame_times: np.ndarray, target_s: float) -> int:
    """Index of the frame on screen at target_s (the first frame for targets before it)."""
    return max(0, int(np.searchsorted(frame_times, target_s, side="right")) - 1)


def segment_rms(rows: np.ndarray, rate: int, margin_s: float = 0.15) -> np.ndarray:
    """RMS of each 1-s row away from its edges (codec and resampler transients)."""
    margin = round(margin_s * rate)
    return np.sqrt((rows[:, margin:-margin].astype(np.float64) ** 2).mean(axis=1))


# --- real videos -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llp() -> DecodedSegments:
    return decode_segments(LLP_VIDEO)


@pytest.fixture(scope="module")
def unav() -> DecodedSegments:
    return decode_segments(UNAV_VIDEO)


def check_frame_times(decoded: DecodedSegments, fps: float) -> None:
    """Chosen frames start at most one frame period before their target and never after it."""
    period = 1.0 / fps
    segment = np.arange(decoded.n_segments)
    centre_lag = segment + 0.5 - decoded.centre_times
    assert np.all(centre_lag >= 0) and np.all(centre_lag < period + 1e-6)
    clip_targets = segment[:, None] + (np.arange(FRAMES_PER_CLIP) + 0.5) / FRAMES_PER_CLIP
    clip_lag = clip_targets - decoded.clip_times
    assert np.all(clip_lag >= 0) and np.all(clip_lag < period + 1e-6)


@needs_real_videos
def test_llp_clip_decodes_to_ten_segments(llp: DecodedSegments) -> None:
    assert llp.duration_s == pytest.approx(10.03, abs=0.01)
    assert llp.n_segments == 10 == n_segments_for_duration(probe_duration(LLP_VIDEO))
    assert llp.centre_frames.shape == (10, 240, 320, 3) and llp.centre_frames.dtype == np.uint8
    assert llp.clip_frames.shape == (10, FRAMES_PER_CLIP, CLIP_CROP, CLIP_CROP, 3)
    assert llp.clip_frames.dtype == np.uint8
    assert llp.audio.shape == (10, 48000) and llp.audio.dtype == np.float32 and llp.audio_rate == 48000
    assert llp.audio_missing_reason is None and llp.n_undecodable_packets == 0
    assert llp.source_fps == pytest.approx(29.92, abs=0.05)
    check_frame_times(llp, llp.source_fps)
    # real content, not padding: every segment has sound, frames differ over time
    assert np.all(segment_rms(llp.audio, 48000) > 1e-3)
    assert np.abs(llp.centre_frames[0].astype(int) - llp.centre_frames[-1]).mean() > 1.0


@needs_real_videos
def test_unav_video_decodes_to_sixty_segments(unav: DecodedSegments) -> None:
    assert unav.duration_s == pytest.approx(60.06, abs=0.01)
    assert unav.n_segments == 60 == n_segments_for_duration(probe_duration(UNAV_VIDEO))
    assert unav.centre_frames.shape == (60, 240, 320, 3)
    assert unav.clip_frames.shape == (60, FRAMES_PER_CLIP, CLIP_CROP, CLIP_CROP, 3)
    assert unav.audio.shape == (60, 48000)
    assert unav.n_frames_decoded == 900
    check_frame_times(unav, unav.source_fps)


@needs_real_videos
@pytest.mark.parametrize("rate", [16000, 44100])
def test_real_audio_at_other_rates_has_exact_counts_and_same_loudness(llp: DecodedSegments, rate: int) -> None:
    decoded = decode_segments(LLP_VIDEO, audio_rate=rate, centre=False, clip=False)
    assert decoded.audio.shape == (10, rate) and decoded.audio.dtype == np.float32
    assert decoded.centre_frames is None and decoded.clip_frames is None
    # the same signal at every rate: per-segment loudness agrees (16 kHz drops only the top band)
    np.testing.assert_allclose(segment_rms(decoded.audio, rate), segment_rms(llp.audio, 48000), rtol=0.15)


@needs_real_videos
def test_audio_at_the_source_rate_is_the_channel_mean() -> None:
    decoded = decode_segments(LLP_VIDEO, audio_rate=44100, centre=False, clip=False)
    with av.open(str(LLP_VIDEO)) as container:
        stereo = np.concatenate([frame.to_ndarray() for frame in container.decode(audio=0)], axis=1)
    assert stereo.shape[0] == 2
    expected = stereo.mean(axis=0)[: 10 * 44100]  # the stream starts with the video at 0 s
    np.testing.assert_allclose(decoded.audio.reshape(-1), expected, atol=1e-6)


@needs_real_videos
def test_max_side_caps_centre_frames() -> None:
    decoded = decode_segments(LLP_VIDEO, clip=False, audio=False, max_side=160)
    assert decoded.centre_frames.shape == (10, 120, 160, 3)
    assert decoded.audio is None and decoded.audio_missing_reason is None  # not requested


@needs_real_videos
def test_file_objects_and_fsspec_urls(llp: DecodedSegments) -> None:
    import fsspec

    with open(LLP_VIDEO, "rb") as handle:
        from_handle = decode_segments(handle, clip=False)
    url = "memory://uwav-test/BjCEufrlXm4.mp4"
    fs = fsspec.filesystem("memory")
    fs.pipe(url, LLP_VIDEO.read_bytes())
    try:
        from_url = decode_segments(url, clip=False)
    finally:
        fs.rm(url)
    for decoded in (from_handle, from_url):
        assert decoded.n_segments == 10
        np.testing.assert_array_equal(decoded.centre_frames, llp.centre_frames)
        np.testing.assert_array_equal(decoded.audio, llp.audio)


@needs_real_videos
def test_truncated_file_whose_header_promises_more_is_rejected(tmp_path: Path) -> None:
    # remux with the index first (faststart) so the truncated copy still opens and claims 10 s
    remuxed = tmp_path / "faststart.mp4"
    with av.open(str(LLP_VIDEO)) as source, av.open(str(remuxed), "w", options={"movflags": "faststart"}) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in source.streams}
        for packet in source.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
    data = remuxed.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    assert probe_duration(truncated) == pytest.approx(10.03, abs=0.01)
    with pytest.raises(MediaError, match="truncated or corrupt"):
        decode_segments(truncated)


# --- media written here ----------------------------------------------------------------------------


def test_variable_frame_rate_picks_frames_by_timestamp(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame_times = np.round(np.cumsum(np.r_[0.0, rng.uniform(0.04, 0.25, size=40)]), 3)
    frame_times = frame_times[frame_times < 4.2]
    path = write_media(tmp_path / "vfr.mp4", frame_times, tone(4.2, 11025), audio_rate=11025)
    decoded = decode_segments(path, audio_rate=48000)
    assert decoded.n_segments == 4
    for segment in range(4):
        expected = expected_frame(frame_times, segment + 0.5)
        assert decoded.centre_times[segment] == pytest.approx(frame_times[expected], abs=1e-6)
        assert grey_index(decoded.centre_frames[segment]) == expected
        for k in range(FRAMES_PER_CLIP):
            expected = expected_frame(frame_times, segment + (k + 0.5) / FRAMES_PER_CLIP)
            assert grey_index(decoded.clip_frames[segment, k]) == expected
    # odd source rate (11025 Hz) resampled to exact counts and aligned: amplitude 0.1 * (t + 1)
    assert decoded.audio.shape == (4, 48000)
    np.testing.assert_allclose(segment_rms(decoded.audio, 48000), 0.1 * np.arange(1, 5) / np.sqrt(2), rtol=0.05)


def test_clip_frames_are_resized_to_128x171_then_centre_cropped(tmp_path: Path) -> None:
    # red ramps with the column, green with the row: each output pixel shows where it came from
    rows, cols = np.mgrid[0:240, 0:320]
    image = np.stack([cols * 255 / 319, rows * 255 / 239, np.full_like(rows, 128)], axis=-1).round().astype(np.uint8)
    decoded = decode_segments(write_media(tmp_path / "ramps.mp4", cfr(1.0), image=image), audio=False)
    assert np.abs(decoded.centre_frames[0].astype(int) - image).max() <= 6  # native size, colour round trip
    # bilinear 240x320 -> 128x171 maps output pixel i to source coordinate (i + 0.5) * scale - 0.5
    source_col = (np.arange(29, 29 + CLIP_CROP) + 0.5) * 320 / 171 - 0.5
    source_row = (np.arange(8, 8 + CLIP_CROP) + 0.5) * 240 / 128 - 0.5
    clip = decoded.clip_frames[0].astype(float)
    assert np.abs(clip[:, :, :, 0] - source_col[None, None, :] * 255 / 319).max() <= 6
    assert np.abs(clip[:, :, :, 1] - source_row[None, :, None] * 255 / 239).max() <= 6


def test_last_partial_segment_counts_from_half_a_second(tmp_path: Path) -> None:
    long_path = write_media(tmp_path / "5.6s.mp4", cfr(5.6), tone(5.6, 22050))
    decoded = decode_segments(long_path, audio_rate=16000)
    assert decoded.duration_s == pytest.approx(5.6, abs=0.01)
    assert decoded.n_segments == 6 == n_segments_for_duration(probe_duration(long_path))
    assert decoded.audio.shape == (6, 16000)
    # the partial segment: its frames are the nearest available (the last frame, 5.5 s) ...
    assert grey_index(decoded.centre_frames[5]) == 55
    assert [grey_index(f) for f in decoded.clip_frames[5]] == [50, 51, 53, 54, 55, 55, 55, 55]
    # ... and its audio is the 0.6 s that exist, then zeros
    np.testing.assert_allclose(segment_rms(decoded.audio[:5], 16000), 0.1 * np.arange(1, 6) / np.sqrt(2), rtol=0.05)
    assert np.abs(decoded.audio[5, : round(0.5 * 16000)]).mean() > 0.1
    assert not decoded.audio[5, round(0.75 * 16000) :].any()

    short_path = write_media(tmp_path / "5.4s.mp4", cfr(5.4), tone(5.4, 22050))
    assert decode_segments(short_path).n_segments == 5


@pytest.mark.parametrize("audio_start_s", [0.0, 0.25])
def test_pcm_audio_is_aligned_to_the_video_start(tmp_path: Path, audio_start_s: float) -> None:
    # Matroska (no per-stream duration: the container's is used), 16-bit PCM at 22050 Hz whose tone
    # starts 1.5 s into the audio stream; the audio stream itself may start after the video
    audio = tone(2.5, 22050, onset_s=1.5)
    path = write_media(tmp_path / "pcm.mkv", cfr(3.0), audio, audio_codec="pcm_s16le", audio_start_s=audio_start_s)
    decoded = decode_segments(path, audio_rate=48000)
    assert decoded.n_segments == 3 and decoded.audio.shape == (3, 48000)
    flat = decoded.audio.reshape(-1)
    onset = int(np.argmax(np.abs(flat) > 0.02))
    assert abs(onset - round((1.5 + audio_start_s) * 48000)) <= 48  # within 1 ms
    assert np.abs(flat[: onset - 48]).max() < 0.01


def test_audio_much_shorter_than_the_video_is_marked_missing(tmp_path: Path) -> None:
    path = write_media(tmp_path / "short_audio.mp4", cfr(4.0), tone(1.0, 22050))
    decoded = decode_segments(path)
    assert decoded.n_segments == 4 and decoded.centre_frames.shape[0] == 4
    assert decoded.audio is None and decoded.audio_missing_reason.startswith("audio covers only 0.00-1.0")


def test_video_without_audio_keeps_visual_segments(tmp_path: Path) -> None:
    path = write_media(tmp_path / "silent.mp4", cfr(3.0))
    log = QuarantineLog()
    decoded = decode_or_quarantine("silent", path, log)
    assert decoded is not None and decoded.n_segments == 3
    assert decoded.audio is None and decoded.centre_frames.shape == (3, 48, 64, 3)
    assert log.to_frame()["reason"].to_list() == ["no audio stream; audio features missing"]


def test_bad_media_is_quarantined_and_the_batch_completes(tmp_path: Path) -> None:
    good = write_media(tmp_path / "good.mp4", cfr(2.0), tone(2.0, 22050))
    truncated = tmp_path / "truncated.mp4"  # index at the end (FFmpeg's default): nothing opens
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "random.mp4").write_bytes(np.random.default_rng(1).bytes(20_000))
    (tmp_path / "notes.txt").write_text("not a video\n" * 200)  # FFmpeg renders .txt files as 'tty' video
    audio_only = write_media(tmp_path / "audio_only.m4a", None, tone(3.0, 22050))
    still = tmp_path / "still.jpg"
    with av.open(str(still), "w") as container:  # one JPEG frame through FFmpeg's image2 muxer
        stream = container.add_stream("mjpeg", rate=1)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), "rgb24")))
        container.mux(stream.encode(None))
    too_short = write_media(tmp_path / "short.mp4", cfr(0.3), tone(0.3, 22050))
    batch = {
        "good": (good, None),
        "truncated": (truncated, "not a readable media file"),
        "empty": (tmp_path / "empty.mp4", "empty file (0 bytes)"),
        "random": (tmp_path / "random.mp4", "not a readable media file"),
        "text": (tmp_path / "notes.txt", "not a video"),
        "audio_only": (audio_only, "no video stream"),
        "still": (still, "not a video"),
        "too_short": (too_short, "shorter than one segment"),
        "missing": (tmp_path / "missing.mp4", "file not found"),
    }
    log = QuarantineLog()
    results = {video_id: decode_or_quarantine(video_id, path, log) for video_id, (path, _) in batch.items()}
    assert results["good"] is not None and results["good"].n_segments == 2
    assert all(results[video_id] is None for video_id in batch if video_id != "good")

    table_path = tmp_path / "quarantine" / "quarantine.parquet"
    log.write(table_path)
    table = pl.read_parquet(table_path)
    assert table.schema == pl.Schema(QUARANTINE_SCHEMA)
    assert sorted(table["video_id"]) == sorted(v for v in batch if v != "good")
    for row in table.iter_rows(named=True):
        path, reason = batch[row["video_id"]]
        assert reason in row["reason"], row
        assert row["path"] == str(path) and row["stage"] == "segment"
    assert not [p for p in table_path.parent.iterdir() if p.name != table_path.name]  # no temporary left

    # a re-run appends to the stored table and sees the same problems once each
    rerun = QuarantineLog.load(table_path)
    decode_or_quarantine("empty", tmp_path / "empty.mp4", rerun)
    rerun.record("good", str(good), "features", "encoder failed: out of memory")
    rerun.write(table_path)
    again = pl.read_parquet(table_path)
    assert again.height == table.height + 1
    assert again.filter(pl.col("video_id") == "empty")["time"].item() > table.filter(pl.col("video_id") == "empty")[
        "time"
    ].item()
    assert QuarantineLog.load(table_path).video_ids("features") == {"good"}


@needs_real_videos
def test_corrupt_middle_is_rejected_not_decoded_to_garbage(tmp_path: Path) -> None:
    data = bytearray(LLP_VIDEO.read_bytes())
    start = len(data) * 3 // 10
    data[start : start + 50_000] = np.random.default_rng(0).bytes(50_000)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(bytes(data))
    log = QuarantineLog()
    assert decode_or_quarantine("corrupt", corrupt, log) is None
    assert "truncated or corrupt" in log.to_frame()["reason"].item()


def test_media_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    with pytest.raises(MediaError) as excinfo:
        decode_segments(path)
    assert str(path) in str(excinfo.value) and excinfo.value.reason == "empty file (0 bytes)"
    with pytest.raises(MediaError, match="not a readable media file"):
        decode_segments(io.BytesIO(b"\x00" * 4096))


def test_quarantine_log_collects_from_threads_and_round_trips(tmp_path: Path) -> None:
    log = QuarantineLog()

    def worker(n: int) -> None:
        for i in range(200):
            log.record(f"v{n}-{i}", f"/media/v{n}-{i}.mp4", "segment", "corrupt")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(log) == 800
    log.write(tmp_path / "q.parquet")
    assert QuarantineLog.load(tmp_path / "q.parquet").to_frame().height == 800
    assert QuarantineLog.load(tmp_path / "absent.parquet").to_frame().schema == pl.Schema(QUARANTINE_SCHEMA)
