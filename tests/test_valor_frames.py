"""VALOR's frames and audio for `stages.features.extraction: valor` (`uwav.media.frame_rate`,
`decode_segments(valor_frames=True, audio_track=True)`): which source frames `ffmpeg -r 8` writes
(VALOR's `utils/extract_frames.py`), which of them `utils/clip_preprocess.py` reads, and the track
`librosa.load(sr=48000)` gives `utils/clap_preprocess.py`."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from uwav.media.decode import MediaError, decode_segments, read_frame_timing
from uwav.media.frame_rate import FrameTiming, ffmpeg_rate_conversion, valor_frame_choice, valor_source_frames

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
LLP_VIDEO = SHARED / "llp" / "videos" / "BjCEufrlXm4.mp4"
needs_llp_video = pytest.mark.skipif(not LLP_VIDEO.is_file(), reason=f"the real LLP clip is not at {LLP_VIDEO} (../shared/data)")

# What `ffmpeg -i BjCEufrlXm4.mp4 -y -r 8 DIR/%06d.png` wrote (ffmpeg n9.0.2; each written frame
# matched by its pixels to the source frames `-fps_mode passthrough` writes): 82 frames, by source
# frame index. The clip is H.264 at 359/12 fps, where ffmpeg 4.2.2 (VALOR's) and 9 agree.
FFMPEG_LLP_WRITTEN = [
    0, 1, 3, 7, 10, 14, 18, 22, 25, 29, 33, 37, 40, 44, 48, 51, 55, 59, 63, 66, 70, 74, 78, 81, 85, 89, 93, 96, 100,
    104, 108, 111, 115, 119, 123, 126, 130, 134, 137, 141, 145, 149, 152, 156, 160, 164, 167, 171, 175, 179, 182,
    186, 190, 194, 197, 201, 205, 209, 212, 216, 220, 224, 227, 231, 235, 238, 242, 246, 250, 253, 257, 261, 265,
    268, 272, 276, 280, 283, 287, 291, 295, 298,
]


# ---------------------------------------------------------------- a transcription of ffmpeg 4.2.2


def ffmpeg_4_2_written_frames(positions: list[float], packet_ticks: list[float], frame_rate_ticks: float) -> list[int]:
    """`fftools/ffmpeg.c` (4.2.2) `do_video_out` with `-r 8` and VSYNC_CFR, restated statement by
    statement for frames already in output ticks: `positions` are the `float_pts` reap_filters
    passes (sync_ipts), `packet_ticks` each frame's pkt_duration in ticks, `frame_rate_ticks`
    1 / (buffersink frame rate x encoder time base). Returns the source index of each frame sent."""
    sync_opts, last_nb0_frames, last_frame, sent = 0, [0, 0, 0], None, []

    def mid_pred(a: int, b: int, c: int) -> int:
        return sorted((a, b, c))[1]

    for index, sync_ipts in [*enumerate(positions), (None, None)]:
        duration = min(frame_rate_ticks, 1.0)  # FFMIN(duration, 1 / (ost->frame_rate * enc tb))
        if index is not None and round(packet_ticks[index]) > 0:  # lrintf(pkt_duration ...) > 0
            duration = round(packet_ticks[index])
        if index is None:  # end, flushing
            nb0_frames = nb_frames = mid_pred(*last_nb0_frames)
        else:
            delta0 = sync_ipts - sync_opts
            delta = delta0 + duration
            nb0_frames, nb_frames = 0, 1
            if delta0 < 0 and delta > 0:
                sync_ipts = sync_opts
                duration += delta0
                delta0 = 0
            if delta < -1.1:
                nb_frames = 0
            elif delta > 1.1:
                nb_frames = round(delta)
                if delta0 > 1.1:
                    nb0_frames = round(delta0 - 0.6)
        nb0_frames = min(nb0_frames, nb_frames)
        last_nb0_frames = [nb0_frames, *last_nb0_frames[:2]]
        for i in range(nb_frames):
            in_picture = last_frame if i < nb0_frames and last_frame is not None else index
            if in_picture is None:
                break
            sent.append(in_picture)
            sync_opts += 1
        if index is not None:
            last_frame = index
    return sent


def float_pts(seconds: Fraction) -> float:
    """reap_filters' float_pts at -r 8: 2^16 extra bits, rounded to nearest, then FFSIGN * 2^-17."""
    scaled = seconds * 8 * 65536
    rounded = int(abs(scaled) + Fraction(1, 2)) * (1 if scaled >= 0 else -1)
    return rounded / 65536 + (1 if rounded / 65536 > 0 else -1) / (1 << 17)


def timing(starts: list[Fraction], durations: list[Fraction], rate: Fraction) -> FrameTiming:
    return FrameTiming(tuple(range(len(starts))), tuple(starts), tuple(durations), rate)


def cfr(fps: Fraction, seconds: int, start: Fraction = Fraction(0)) -> tuple[list[Fraction], list[Fraction]]:
    count = int(seconds * fps)
    return [start + i / fps for i in range(count)], [1 / fps] * count


def test_rate_conversion_equals_the_transcription_of_ffmpeg_4_2() -> None:
    """Constant rates around, above and below 8 and 16 fps, a variable rate, a late first frame
    (duplicated), a gap mid-stream (the previous frame written again), missing packet durations."""
    vfr_starts = [Fraction(0)]
    for i in range(260):
        vfr_starts.append(vfr_starts[-1] + (Fraction(1, 30) if (i // 20) % 2 == 0 else Fraction(1, 20)))
    gap_starts = [i / Fraction(25) for i in range(100)] + [6 + i / Fraction(25) for i in range(100)]
    cases = {
        "25 fps": (*cfr(Fraction(25), 10), Fraction(25)),
        "29.97 fps": (*cfr(Fraction(30000, 1001), 10), Fraction(30000, 1001)),
        "359/12 fps (LLP)": (*cfr(Fraction(359, 12), 10), Fraction(359, 12)),
        "60 fps": (*cfr(Fraction(60), 10), Fraction(60)),
        "24 fps": (*cfr(Fraction(24), 10), Fraction(24)),
        "15 fps": (*cfr(Fraction(15), 10), Fraction(15)),
        "10 fps": (*cfr(Fraction(10), 10), Fraction(10)),
        "8 fps": (*cfr(Fraction(8), 10), Fraction(8)),
        "5 fps": (*cfr(Fraction(5), 10), Fraction(5)),
        "variable": (vfr_starts, [b - a for a, b in zip(vfr_starts, vfr_starts[1:])] + [Fraction(1, 30)], Fraction(30)),
        "late start": (*cfr(Fraction(30), 10, start=Fraction(3, 10)), Fraction(30)),
        "gap": (gap_starts, [Fraction(1, 25)] * 200, Fraction(25)),
        "no durations": (cfr(Fraction(25), 10)[0], [Fraction(0)] * 250, Fraction(25)),
    }
    for name, (starts, durations, rate) in cases.items():
        expected = ffmpeg_4_2_written_frames(
            [float_pts(start) for start in starts], [float(d * 8) for d in durations], float(8 / rate)
        )
        ours = ffmpeg_rate_conversion(timing(starts, durations, rate))
        assert ours == expected, name
        assert len(ours) >= 79, name  # ~8 frames a second of 10 s: the comparison is not vacuous
    late = ffmpeg_rate_conversion(timing(*cfr(Fraction(30), 10, start=Fraction(3, 10)), Fraction(30)))
    assert late[:5] == [0, 0, 0, 1, 2]  # 0.3 s late: the first frame written for the ticks before it
    gap = ffmpeg_rate_conversion(timing(gap_starts, [Fraction(1, 25)] * 200, Fraction(25)))
    assert gap.count(99) > 10  # the last frame before the gap fills it


@needs_llp_video
def test_rate_conversion_picks_ffmpegs_frames_of_the_real_llp_clip() -> None:
    frame_timing, duration = read_frame_timing(LLP_VIDEO)
    assert frame_timing.stream_rate == Fraction(359, 12) and duration == pytest.approx(10.03, abs=0.01)
    assert ffmpeg_rate_conversion(frame_timing) == FFMPEG_LLP_WRITTEN


def test_valor_frame_choice_is_clip_preprocess_linspace(tmp_path: Path) -> None:
    """clip_preprocess.py: `image_list = sorted(glob(...*.jpg))`, `np.round(np.linspace(0, len - 1, 10))`."""
    for count in (82, 80, 79, 10, 7):
        names = sorted(f"{k + 1:06d}.jpg" for k in range(count))
        samples = np.round(np.linspace(0, len(names) - 1, 10))
        expected = [names.index(names[int(sample)]) for sample in samples]
        assert valor_frame_choice(count, 10).tolist() == expected
    assert valor_frame_choice(82, 10).tolist() == [0, 9, 18, 27, 36, 45, 54, 63, 72, 81]
    assert valor_frame_choice(82, 3).tolist() == [0, 40, 81]  # half to even, as numpy rounds 40.5


@needs_llp_video
def test_decoded_valor_frames_are_the_chosen_source_frames_at_native_size() -> None:
    decoded = decode_segments(LLP_VIDEO, centre=False, clip=False, audio=False, valor_frames=True)
    chosen = [FFMPEG_LLP_WRITTEN[k] for k in valor_frame_choice(len(FFMPEG_LLP_WRITTEN), 10)]
    assert chosen == [0, 29, 63, 96, 130, 164, 197, 231, 265, 298]
    with av.open(str(LLP_VIDEO)) as container:
        frames = list(container.decode(video=0))
        source = {i: frames[i].to_ndarray(format="rgb24") for i in chosen}
        times = [frames[i].time for i in chosen]
    assert decoded.valor_frames.shape == (10, 240, 320, 3) and decoded.valor_frames.dtype == np.uint8
    np.testing.assert_allclose(decoded.valor_times, times, atol=1e-9)
    for segment, index in enumerate(chosen):
        np.testing.assert_array_equal(decoded.valor_frames[segment], source[index])
    assert decoded.centre_frames is None and decoded.audio_track is None  # only what was asked for


# ---------------------------------------------------------------- against an ffmpeg binary


def write_numbered_video(path: Path, starts: list[Fraction], *, audio_from: float | None = None) -> Path:
    """H.264 64x48 frames, each with its own colours (so a written frame is found by its pixels),
    at the given start times; with an AAC track from `audio_from` seconds when given."""
    time_base = Fraction(1, 90000)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=Fraction(1) / (starts[1] - starts[0]))
        video.width, video.height, video.pix_fmt, video.time_base = 64, 48, "yuv420p", time_base
        video.codec_context.time_base = time_base
        sound = container.add_stream("aac", rate=48000) if audio_from is not None else None
        for i, start in enumerate(starts):
            image = np.zeros((48, 64, 3), np.uint8)
            image[..., 0], image[..., 1], image[:24, :32, 2] = (i * 37) % 256, (i * 91) % 256, (i // 7) * 20 % 256
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = round(start / time_base), time_base
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None:
            first = round(audio_from * 48000)
            for offset in range(0, round(float(starts[-1]) * 48000) - first, 1024):
                chunk = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = 48000, first + offset
                container.mux(sound.encode(chunk))
            container.mux(sound.encode(None))
    return path


def ffmpeg_written_frames(ffmpeg: str, video: Path, folder: Path) -> list[int]:
    """Run VALOR's `ffmpeg -i VIDEO -y -r 8 DIR/%06d...` (PNG: lossless, so frames match by pixels)."""
    def digests(pattern: Path) -> list[str]:
        from PIL import Image

        return [hashlib.sha1(np.asarray(Image.open(p)).tobytes()).hexdigest() for p in sorted(pattern.parent.glob("*.png"))]

    for name, args in (("r8", ["-r", "8"]), ("all", ["-fps_mode", "passthrough"])):
        (folder / name).mkdir(parents=True)
        subprocess.run([ffmpeg, "-v", "error", "-i", str(video), "-y", *args, str(folder / name / "%06d.png")], check=True)
    source = {digest: index for index, digest in reversed(list(enumerate(digests(folder / "all" / "x"))))}
    return [source[digest] for digest in digests(folder / "r8" / "x")]


FFMPEG = os.environ.get("UWAV_TEST_FFMPEG") or shutil.which("ffmpeg")


@pytest.mark.skipif(FFMPEG is None, reason="no ffmpeg command (PATH or UWAV_TEST_FFMPEG) to compare the frame choice with")
def test_rate_conversion_matches_an_ffmpeg_binary(tmp_path: Path) -> None:
    """Synthetic videos where ffmpeg 4.2.2 and later versions convert alike (constant rates of 16 fps
    or more, and 8 fps), with a late video start among them: uwav's choice is ffmpeg's."""
    cases = {
        "25": cfr(Fraction(25), 10)[0],
        "ntsc": cfr(Fraction(30000, 1001), 10)[0],
        "24": cfr(Fraction(24), 10)[0],
        "8": cfr(Fraction(8), 10)[0],
        "late": cfr(Fraction(30), 10, start=Fraction(3, 10))[0],
    }
    for name, starts in cases.items():
        video = write_numbered_video(tmp_path / f"{name}.mp4", starts, audio_from=0.0 if name == "late" else None)
        frame_timing, _ = read_frame_timing(video)
        assert ffmpeg_rate_conversion(frame_timing) == ffmpeg_written_frames(FFMPEG, video, tmp_path / name), name


def test_a_late_video_start_takes_ffmpegs_duplicates(tmp_path: Path) -> None:
    """Video from 0.3 s, audio from 0 (ffmpeg's time origin is the file's start): the first 8-fps
    frames repeat the first video frame, as ffmpeg n9.0.2 wrote for this file."""
    video = write_numbered_video(tmp_path / "late.mp4", cfr(Fraction(30), 10, start=Fraction(3, 10))[0], audio_from=0.0)
    frame_timing, _ = read_frame_timing(video)
    written = ffmpeg_rate_conversion(frame_timing)
    assert len(written) == 84 and written[:12] == [0, 0, 0, 1, 2, 5, 9, 13, 16, 20, 24, 28]
    with open(video, "rb") as handle:  # a file object: the demux-only pass rewinds it for decoding
        decoded = decode_segments(handle, centre=False, clip=False, audio=False, valor_frames=True)
    assert decoded.n_segments == 10
    chosen = valor_source_frames(frame_timing, 10)
    np.testing.assert_allclose(decoded.valor_times, [float(frame_timing.starts[i]) - 0.3 for i in chosen], atol=1e-6)


def test_a_chosen_frame_that_does_not_decode_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from uwav.media import decode

    video = write_numbered_video(tmp_path / "v.mp4", cfr(Fraction(25), 3)[0])
    real = decode.read_frame_timing

    def shifted(source: object) -> tuple[FrameTiming, float | None]:
        frame_timing, duration = real(source)  # a pts no decoded frame has
        return FrameTiming(tuple(p + 1 for p in frame_timing.pts), frame_timing.starts, frame_timing.durations, frame_timing.stream_rate), duration

    monkeypatch.setattr(decode, "read_frame_timing", shifted)
    with pytest.raises(MediaError, match=r"v.mp4: the frame VALOR's 8-fps sampling takes for segment 0 did not decode"):
        decode_segments(video, centre=False, clip=False, audio=False, valor_frames=True)


# ---------------------------------------------------------------- the audio track


@needs_llp_video
def test_audio_track_is_what_librosa_load_reads_from_the_video() -> None:
    """librosa 0.10's `load(path.mp4, sr=48000)`: audioread's `ffmpeg -i path -f s16le -` (ffmpeg's
    float -> s16 conversion: here PyAV's resampler, the same libswresample), `buf_to_float`,
    `to_mono`, `resample(res_type='soxr_hq')`: librosa's own functions on those 16-bit samples."""
    import librosa

    with av.open(str(LLP_VIDEO)) as container:
        stream = container.streams.audio[0]
        to_s16 = av.AudioResampler(format="s16")  # interleaved int16, the native rate and channels
        chunks = [out.to_ndarray() for frame in container.decode(stream) for out in to_s16.resample(frame)]
        chunks += [out.to_ndarray() for out in to_s16.resample(None)]
        channels, rate = stream.codec_context.channels, stream.codec_context.sample_rate
    interleaved = np.concatenate(chunks, axis=1).reshape(-1)
    samples = librosa.util.buf_to_float(interleaved.tobytes(), n_bytes=2, dtype=np.float32)
    mono = librosa.to_mono(samples.reshape((-1, channels)).T)
    expected = librosa.resample(mono, orig_sr=rate, target_sr=48000, res_type="soxr_hq")

    decoded = decode_segments(LLP_VIDEO, 48000, centre=False, clip=False, audio=False, audio_track=True)
    assert channels == 2 and rate == 44100
    assert decoded.audio_track.dtype == np.float32 and decoded.audio_track.shape == expected.shape
    np.testing.assert_allclose(decoded.audio_track, expected, atol=1e-6)
    assert np.abs(expected).max() > 0.05  # real sound, not silence
    assert decoded.audio is None and decoded.n_segments == 10
    # the 16-bit step is there: the decoder's float samples (which exceed 1 here, where 16 bits clip),
    # averaged and resampled, differ from it
    with av.open(str(LLP_VIDEO)) as container:
        floats = np.concatenate([frame.to_ndarray() for frame in container.decode(audio=0)], axis=1)
    unquantised = librosa.resample(floats.mean(axis=0), orig_sr=rate, target_sr=48000, res_type="soxr_hq")
    assert np.abs(floats).max() > 1 and np.abs(unquantised - decoded.audio_track).max() > 1e-2


@needs_llp_video
def test_the_audio_track_alone_resamples_only_the_track(monkeypatch: pytest.MonkeyPatch) -> None:
    """Asking for the track without segment audio (VALOR++'s inputs) once also resampled the whole
    track into segment rows that were thrown away."""
    from uwav.media import decode

    resampled: list[int] = []
    resample = decode.soxr.resample

    def counted(samples: np.ndarray, *args: object, **kwargs: object) -> np.ndarray:
        resampled.append(samples.size)
        return resample(samples, *args, **kwargs)

    monkeypatch.setattr(decode.soxr, "resample", counted)
    decoded = decode_segments(LLP_VIDEO, 48000, centre=False, clip=False, audio=False, audio_track=True)
    assert decoded.audio is None and decoded.audio_missing_reason is None and decoded.audio_track is not None
    assert len(resampled) == 1  # 44.1 kHz -> 48 kHz, the track's
