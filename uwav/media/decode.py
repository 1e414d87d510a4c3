"""Decode a video once into 1-s segments: centre frames (CLIP), 8-frame clips (R(2+1)D), 8 ImageNet
crops (ResNet-152), audio at the CLAP rate and at 16 kHz (VGGish).

One pass over the container with PyAV: video and audio packets are demuxed together and decoded
in memory (no ffmpeg subprocess, no intermediate JPEG or WAV files). H.264 forces decoding every
frame, so speed comes from converting to RGB only the frames that are selected.

Rules (ARCHITECTURE.md, "Contracts between stages"; METHOD.md):

- **Time origin** is the video stream's start time; segment t covers [t, t+1) seconds after it.
- **Duration** is the video stream's duration from the container header; when the header has none,
  the container's duration (measured from the video start); when neither exists, the end of the
  last demuxed video packet. `probe_duration` applies the same rule without decoding, so a manifest
  built with it agrees with `decode_segments` on `n_segments`.
- **Segment count** is `uwav.contracts.n_segments_for_duration(duration)`: whole seconds plus a last
  partial segment when at least 0.5 s of it exists (10.03 s -> 10, 5.6 s -> 6, 0.4 s -> error).
- **Frames are chosen by presentation time**, not index, so variable frame rate works: for each
  target time the frame on screen at that time (the last frame starting at or before it; the first
  frame for targets before it). The centre frame of segment t targets t + 0.5 s; the 8 clip frames
  target t + (k + 0.5) / 8 s. A frame's display interval is [pts, pts + duration).
- **Never garbage:** every target must lie within 0.5 s (`MAX_FRAME_GAP_S`, half a segment) of the
  display interval of the frame chosen for it. A truncated file whose header promises more than
  decodes, missing frames mid-stream, or a late first frame raise `MediaError`; a legitimate partial
  last segment (>= 0.5 s of video) always passes and takes the last frame for targets past the end.
  Packets that fail to decode are skipped and counted; the gap rule decides whether the rest is usable.
- **Clip frames** follow torchvision's R(2+1)D Kinetics-400 preprocessing: resize to 128 x 171
  (height x width, aspect not preserved, bilinear), then centre crop 112 x 112. Centre frames keep
  the native resolution unless `max_side` caps the longer side (CLIP resizes to 224 later anyway).
- **Image frames** are the 8 clip frames of each segment (same targets, same decoded frames) in the
  ImageNet evaluation crop that the AVVP release's ResNet-152 features used (`pretrainedmodels`'
  transform: shorter side to 256 keeping the aspect, bilinear, then centre crop 224 x 224, offsets
  rounded as torchvision's `CenterCrop`). The release sampled 8 frames a second from an 8-fps JPEG
  dump; here they are the frames on screen at t + (k + 0.5) / 8.
- **Audio** is decoded once, averaged to mono (as librosa does for CLAP's reference pipeline),
  resampled with soxr "HQ" (librosa's default resampler) to `audio_rate` (and, for `audio_16k`, to
  16 kHz: VGGish's rate), aligned so sample 0 is
  the video start (later audio start: leading zeros; earlier: trimmed), cut into `n_segments` rows
  of one second and zero-padded at the end (the partial last segment). Audio is marked
  missing (`audio is None`, `audio_missing_reason` says why) when there is no audio stream, when it
  decodes to nothing, or when it does not cover at least half of the first and of the last segment
  (with `AUDIO_SHORTFALL_TOLERANCE_S` of slack for codec frame granularity): visual features are still
  produced in that case.
- **VALOR's frames** (`valor_frames`, `stages.features.extraction: valor`): per segment, the source
  frame at native size that VALOR's CLIP features read: of the frames `ffmpeg -r 8` writes, the
  segment's entry of round(linspace(0, n - 1, segments)) (`uwav.media.frame_rate`, which states
  ffmpeg's rule). The choice needs every frame's timestamp first: a demux-only pass over the video
  packets (no decoding) computes it, then the decoding pass keeps those frames by pts. A chosen
  frame that does not decode raises `MediaError`. VALOR's frames went through ffmpeg's JPEG
  encoder (`%06d.jpg`, its 200 kb/s default) before CLIP: that lossy step is not reproduced.
- **The audio track** (`audio_track`, VALOR's CLAP maps): the whole track as VALOR's
  `librosa.load(path, sr=audio_rate)` reads a video file (through audioread's `ffmpeg -f s16le`):
  each channel as 16-bit PCM (round(x 32768), clipped), scaled by 1/32768, averaged to mono,
  resampled with soxr "HQ" (librosa's `soxr_hq`) to ceil(n x rate ratio) samples (librosa's
  `fix_length`); neither aligned to the video nor cut to the segments. Marked missing with the
  segment audio.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO

import av
import numpy as np
import soxr
from av.video.reformatter import VideoReformatter

from uwav.contracts import PARTIAL_SEGMENT_MIN_S, n_segments_for_duration
from uwav.errors import UwavError
from uwav.media.frame_rate import VALOR_FRAME_RATE, FrameTiming, frame_timing, valor_source_frames

FRAMES_PER_CLIP = 8
CLIP_RESIZE_HW = (128, 171)  # torchvision R2Plus1D_18_Weights.KINETICS400_V1 transforms
CLIP_CROP = 112
IMAGE_RESIZE_SHORT = 256  # ImageNet evaluation transform (pretrainedmodels / torchvision): Resize(256),
IMAGE_CROP = 224  # then CenterCrop(224)
AUDIO_16K_RATE = 16000  # VGGish's input rate
MAX_FRAME_GAP_S = PARTIAL_SEGMENT_MIN_S
AUDIO_SHORTFALL_TOLERANCE_S = 0.1  # audio streams often end a codec frame or two before the video
PCM16_SCALE = 32768  # ffmpeg's float -> s16 conversion and librosa's s16 -> float scale

# FFmpeg demuxers that render text files (chosen by file extension, e.g. `.txt` -> `tty`) or read
# still images: they "decode" to frames, but the file is not a video.
_NOT_VIDEO_DEMUXERS = frozenset({"tty", "bin", "xbin", "adf", "idf", "image2", "image2pipe"})

MediaSource = str | os.PathLike[str] | BinaryIO


class MediaError(UwavError):
    """A media file that cannot be used; `reason` says why (it goes to the quarantine table)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True, eq=False)
class DecodedSegments:
    """One video cut into `n_segments` 1-s segments. Arrays are None when not requested."""

    n_segments: int
    duration_s: float
    source_fps: float  # mean decoded frame rate
    centre_frames: np.ndarray | None  # (n, H, W, 3) uint8
    centre_times: np.ndarray  # (n,) float64: start time (s) of the frame chosen for t + 0.5
    clip_frames: np.ndarray | None  # (n, 8, 112, 112, 3) uint8
    clip_times: np.ndarray  # (n, 8) float64: start times of the frames chosen for the clips
    image_frames: np.ndarray | None  # (n, 8, 224, 224, 3) uint8: the clip frames, ImageNet crop
    audio: np.ndarray | None  # (n, audio_rate) float32 mono
    audio_16k: np.ndarray | None  # (n, 16000) float32 mono
    audio_rate: int
    audio_missing_reason: str | None  # set when audio was requested but is unusable
    n_frames_decoded: int
    n_undecodable_packets: int
    valor_frames: np.ndarray | None = None  # (n, H, W, 3) uint8: VALOR's frame of each segment, native size
    valor_times: np.ndarray | None = None  # (n,) float64: start times (s) of those frames
    audio_track: np.ndarray | None = None  # (samples,) float32 mono at audio_rate: the whole track as librosa reads it


def source_name(source: MediaSource) -> str:
    """Printable name of a media source: the path or URL, or a file object's name."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return str(getattr(source, "name", repr(source)))


def _open_container(source: MediaSource, stack: ExitStack) -> av.container.InputContainer:
    """Open a local path, an fsspec URL (the manifest's `media_path` may be one) or a binary file object."""
    name = source_name(source)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            if "://" in path and not path.startswith("file://"):
                import fsspec  # only needed for remote media

                fs, fs_path = fsspec.core.url_to_fs(path)
                size = fs.size(fs_path)
                fileobj: BinaryIO | str = stack.enter_context(fs.open(fs_path, "rb"))
            else:
                path = path.removeprefix("file://")
                size = os.path.getsize(path)
                fileobj = path
        except FileNotFoundError as exc:
            raise MediaError(name, "file not found") from exc
        except OSError as exc:
            raise MediaError(name, f"cannot read file: {exc}") from exc
        if size == 0:
            raise MediaError(name, "empty file (0 bytes)")
    else:
        fileobj = source
    try:
        container = av.open(fileobj, mode="r")
    except av.FFmpegError as exc:
        raise MediaError(name, f"not a readable media file: {exc}") from exc
    stack.callback(container.close)
    if container.format.name in _NOT_VIDEO_DEMUXERS or container.format.name.endswith("_pipe"):
        raise MediaError(name, f"not a video (FFmpeg reads it as {container.format.name!r}: text or still image)")
    return container


def _video_stream(container: av.container.InputContainer, name: str) -> av.VideoStream:
    streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not streams:
        raise MediaError(name, "no video stream")
    return streams[0]


def _header_duration(container: av.container.InputContainer, video: av.VideoStream) -> float | None:
    """Duration from the header (see module docstring), or None when the header has none."""
    if video.duration is not None and video.duration > 0:
        return float(video.duration * video.time_base)
    if container.duration is not None and container.duration > 0:
        video_start = float(video.start_time * video.time_base) if video.start_time is not None else 0.0
        container_start = container.start_time / av.time_base if container.start_time is not None else 0.0
        return container.duration / av.time_base - (video_start - container_start)
    return None


def _video_origin(video: av.VideoStream) -> float | None:
    return float(video.start_time * video.time_base) if video.start_time is not None else None


def probe_duration(source: MediaSource) -> float:
    """Duration (s) by the same rule as `decode_segments`, from the header (no decoding).

    Falls back to demuxing video packets when the header has no duration. Raises MediaError.
    """
    name = source_name(source)
    with ExitStack() as stack:
        container = _open_container(source, stack)
        video = _video_stream(container, name)
        duration = _header_duration(container, video)
        if duration is not None:
            return duration
        packet_end = _PacketEnd(_video_origin(video))
        try:
            for packet in container.demux(video):
                packet_end.update(packet)
        except av.FFmpegError as exc:
            raise MediaError(name, f"demuxing failed: {exc}") from exc
        if packet_end.end_s is None:
            raise MediaError(name, "no video packets with timestamps")
        return packet_end.end_s


class _PacketEnd:
    """End time (s, from the origin) of the last video packet: the duration of last resort."""

    def __init__(self, origin_s: float | None) -> None:
        self.origin_s = origin_s
        self.end_s: float | None = None

    def update(self, packet: av.Packet) -> None:
        if packet.pts is None:
            return
        start = float(packet.pts * packet.time_base)
        if self.origin_s is None:
            self.origin_s = start
        end = start + float((packet.duration or 0) * packet.time_base) - self.origin_s
        self.end_s = end if self.end_s is None else max(self.end_s, end)


def read_frame_timing(source: MediaSource) -> tuple[FrameTiming, float | None]:
    """The video stream's frame timing as ffmpeg's rate conversion sees it (`uwav.media.frame_rate`)
    and the duration by `decode_segments`' rule (None: no timestamps), from a demux-only pass."""
    name = source_name(source)
    position = None if isinstance(source, (str, os.PathLike)) else source.tell()
    with ExitStack() as stack:
        container = _open_container(source, stack)
        video = _video_stream(container, name)
        packet_end = _PacketEnd(_video_origin(video))
        pts: list[int] = []
        durations: list[int] = []
        try:
            for packet in container.demux(video):
                packet_end.update(packet)
                if packet.pts is not None:
                    pts.append(packet.pts)
                    durations.append(packet.duration or 0)
        except av.FFmpegError as exc:
            raise MediaError(name, f"demuxing failed: {exc}") from exc
        duration = _header_duration(container, video)
        rate = Fraction(video.guessed_rate or video.average_rate or 0)
        timing = frame_timing(pts, durations, video.time_base, container.start_time, rate)
    if position is not None:
        source.seek(position)  # type: ignore[union-attr]
    return timing, duration if duration is not None else packet_end.end_s


def _valor_frame_pts(source: MediaSource, name: str) -> list[int]:
    """The pts of each segment's VALOR frame (module docstring)."""
    timing, duration = read_frame_timing(source)
    n_segments = n_segments_for_duration(duration) if duration is not None else 0
    chosen = valor_source_frames(timing, n_segments) if n_segments else []
    if n_segments and not chosen:
        raise MediaError(name, f"no video frames for VALOR's {VALOR_FRAME_RATE}-fps sampling")
    return [timing.pts[index] for index in chosen]


def _segment_targets(segment: int) -> list[tuple[float, int]]:
    """Target times of one segment in time order, with their slot: -1 = centre frame, k = clip frame k."""
    targets = [(segment + 0.5, -1)]
    targets += [(segment + (k + 0.5) / FRAMES_PER_CLIP, k) for k in range(FRAMES_PER_CLIP)]
    return sorted(targets)


class _Candidate:
    """A decoded frame on screen over [start_s, end_s); converted to RGB lazily, once per output kind."""

    def __init__(self, frame: av.VideoFrame, start_s: float, end_s: float | None) -> None:
        self.frame: av.VideoFrame | None = frame  # released once a later frame replaces it
        self.start_s = start_s
        self.end_s = end_s
        self.centre_rgb: np.ndarray | None = None
        self.clip_rgb: np.ndarray | None = None
        self.image_rgb: np.ndarray | None = None


class _FrameSelector:
    """Streams decoded frames in presentation order and keeps RGB copies of the selected ones only."""

    def __init__(self, name: str, want_centre: bool, want_clip: bool, want_images: bool, max_side: int | None) -> None:
        self.name = name
        self.want_centre = want_centre
        self.want_clip = want_clip
        self.want_images = want_images
        self.max_side = max_side
        self.centre_size: tuple[int, int] | None = None  # (width, height), fixed by the first frame
        self.centre_reformatter = VideoReformatter()  # one each so swscale contexts are reused
        self.clip_reformatter = VideoReformatter()
        self.image_reformatter = VideoReformatter()
        self.segments: list[dict[int, _Candidate]] = []  # per segment: slot -> chosen frame
        self.pending: list[tuple[float, int]] = []  # targets of the current segment not yet served
        self.last: _Candidate | None = None
        self.n_frames = 0
        self.first_start_s: float | None = None
        self.limit: int | None = None  # segments to serve; None while unknown

    def _next_target(self) -> tuple[float, int] | None:
        if not self.pending:
            if self.limit is not None and len(self.segments) >= self.limit:
                return None
            self.segments.append({})
            self.pending = _segment_targets(len(self.segments) - 1)
        return self.pending[0]

    def _serve(self, candidate: _Candidate, time_s: float, slot: int, gap_s: float) -> None:
        if gap_s > MAX_FRAME_GAP_S:
            raise MediaError(
                self.name,
                f"no decodable video frame within {MAX_FRAME_GAP_S} s of t={time_s:.3f} s "
                f"(nearest frame shows {candidate.start_s:.3f}-{candidate.end_s:.3f} s): truncated or corrupt",
            )
        if slot == -1 and self.want_centre and candidate.centre_rgb is None:
            candidate.centre_rgb = self._centre_rgb(candidate.frame)
        if slot >= 0 and self.want_clip and candidate.clip_rgb is None:
            candidate.clip_rgb = self._clip_rgb(candidate.frame)
        if slot >= 0 and self.want_images and candidate.image_rgb is None:
            candidate.image_rgb = self._image_rgb(candidate.frame)
        self.segments[-1][slot] = candidate
        self.pending.pop(0)

    def push(self, frame: av.VideoFrame, start_s: float) -> None:
        duration_s = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else 0.0
        current = _Candidate(frame, start_s, start_s + duration_s if duration_s > 0 else None)
        self.n_frames += 1
        previous = self.last
        if previous is None:
            self.first_start_s = start_s
        elif previous.end_s is None:
            previous.end_s = max(start_s, previous.start_s)
        while (target := self._next_target()) is not None and target[0] < start_s:
            time_s, slot = target
            if previous is None:  # targets before the first frame take it
                self._serve(current, time_s, slot, start_s - time_s)
            else:
                self._serve(previous, time_s, slot, max(0.0, time_s - previous.end_s))
        if previous is not None:  # only its RGB copies (if selected) are kept: bounded memory
            previous.frame = None
        self.last = current

    def finish(self, n_segments: int) -> list[dict[int, _Candidate]]:
        """Serve the targets past the last frame (partial last segment) and return n_segments segments."""
        last = self.last
        if last is None:
            raise MediaError(self.name, "no decodable video frames")
        if last.end_s is None:  # no duration: assume the mean frame period so far
            period = (last.start_s - self.first_start_s) / (self.n_frames - 1) if self.n_frames > 1 else 0.0
            last.end_s = last.start_s + period
        if len(self.segments) > n_segments:  # decoded past the end: drop the extra segment's targets
            del self.segments[n_segments:]
            self.pending = []
        self.limit = n_segments
        while (target := self._next_target()) is not None:
            time_s, slot = target
            self._serve(last, time_s, slot, max(0.0, time_s - last.end_s))
        return self.segments

    def _centre_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        if self.centre_size is None:
            width, height = frame.width, frame.height
            if self.max_side is not None and max(width, height) > self.max_side:
                scale = self.max_side / max(width, height)
                width, height = max(1, round(width * scale)), max(1, round(height * scale))
            self.centre_size = (width, height)
        width, height = self.centre_size
        rgb = self.centre_reformatter.reformat(frame, width=width, height=height, format="rgb24", threads=1)
        return rgb.to_ndarray()

    def _clip_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        resize_h, resize_w = CLIP_RESIZE_HW
        rgb = self.clip_reformatter.reformat(frame, width=resize_w, height=resize_h, format="rgb24", threads=1)
        top, left = (resize_h - CLIP_CROP) // 2, (resize_w - CLIP_CROP) // 2
        return rgb.to_ndarray()[top : top + CLIP_CROP, left : left + CLIP_CROP]

    def _image_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        short, long = sorted((frame.width, frame.height))
        resized_long = int(IMAGE_RESIZE_SHORT * long / short)  # torchvision's Resize(int) truncates
        width, height = (
            (IMAGE_RESIZE_SHORT, resized_long) if frame.width <= frame.height else (resized_long, IMAGE_RESIZE_SHORT)
        )
        rgb = self.image_reformatter.reformat(frame, width=width, height=height, format="rgb24", threads=1)
        top, left = round((height - IMAGE_CROP) / 2), round((width - IMAGE_CROP) / 2)
        return rgb.to_ndarray()[top : top + IMAGE_CROP, left : left + IMAGE_CROP]


class _AudioCollector:
    """Decoded audio as float32 planar chunks at the source rate, with the time of the first sample."""

    def __init__(self) -> None:
        self.converter = av.AudioResampler(format="fltp")  # format only; passthrough for AAC's fltp
        self.chunks: list[np.ndarray] = []
        self.start_s: float | None = None
        self.rate: int | None = None
        self.unusable_reason: str | None = None

    def push(self, frame: av.AudioFrame) -> None:
        if self.unusable_reason is not None:
            return
        if self.rate is None:
            self.rate = frame.sample_rate
            self.start_s = frame.time
        elif frame.sample_rate != self.rate:
            self.unusable_reason = f"audio sample rate changes mid-stream ({self.rate} -> {frame.sample_rate} Hz)"
            return
        try:
            converted = self.converter.resample(frame)
        except ValueError as exc:  # PyAV refuses frames whose layout differs from the first one
            self.unusable_reason = f"audio layout changes mid-stream: {exc}"
            return
        self.chunks.extend(chunk.to_ndarray() for chunk in converted)

    def segments(
        self, origin_s: float, n_segments: int, rates: Sequence[int]
    ) -> tuple[dict[int, np.ndarray] | None, str | None]:
        """Per rate, (n_segments, rate) float32 mono aligned to the video origin; or (None, reason)."""
        if self.unusable_reason is not None:
            return None, f"{self.unusable_reason}; audio features missing"
        self.chunks.extend(chunk.to_ndarray() for chunk in self.converter.resample(None))
        if not self.chunks or self.rate is None:
            return None, "audio stream has no decodable samples; audio features missing"
        mono = np.concatenate(self.chunks, axis=1).mean(axis=0, dtype=np.float32)
        start_s = (self.start_s if self.start_s is not None else origin_s) - origin_s
        end_s = start_s + mono.size / self.rate
        needed_end_s = n_segments - 1 + PARTIAL_SEGMENT_MIN_S - AUDIO_SHORTFALL_TOLERANCE_S
        if start_s > PARTIAL_SEGMENT_MIN_S + AUDIO_SHORTFALL_TOLERANCE_S or end_s < needed_end_s:
            reason = f"audio covers only {start_s:.2f}-{end_s:.2f} s of {n_segments} segments; audio features missing"
            return None, reason
        return {rate: self._rows(mono, start_s, n_segments, rate) for rate in rates}, None

    def track(self, rate: int) -> np.ndarray:
        """The whole track as `librosa.load(path, sr=rate)` reads a video file (module docstring);
        call after `segments` (which flushes the converter)."""
        channels = np.concatenate(self.chunks, axis=1)
        pcm16 = np.clip(np.rint(channels * PCM16_SCALE), -PCM16_SCALE, PCM16_SCALE - 1) / PCM16_SCALE
        mono = pcm16.astype(np.float32).mean(axis=0, dtype=np.float32)
        if self.rate == rate:
            return mono
        resampled = soxr.resample(mono, self.rate, rate, quality="HQ").astype(np.float32, copy=False)
        length = int(np.ceil(mono.size * (float(rate) / self.rate)))  # librosa's `fix=True`: zero-pad or cut
        return np.pad(resampled[:length], (0, max(0, length - resampled.size)))

    def _rows(self, mono: np.ndarray, start_s: float, n_segments: int, rate: int) -> np.ndarray:
        if self.rate != rate:
            mono = soxr.resample(mono, self.rate, rate, quality="HQ").astype(np.float32, copy=False)
        out = np.zeros(n_segments * rate, dtype=np.float32)
        offset = round(start_s * rate)
        src = mono[max(0, -offset) :]
        dst_start = max(0, offset)
        count = min(src.size, out.size - dst_start)
        out[dst_start : dst_start + count] = src[:count]
        return out.reshape(n_segments, rate)


def decode_segments(
    path: MediaSource,
    audio_rate: int = 48000,
    *,
    centre: bool = True,
    clip: bool = True,
    audio: bool = True,
    images: bool = False,
    audio_16k: bool = False,
    max_side: int | None = None,
    valor_frames: bool = False,
    audio_track: bool = False,
) -> DecodedSegments:
    """Decode a video once into 1-s segments (rules in the module docstring).

    `path`: local path, fsspec URL or binary file object. `centre`/`clip`/`images`/`audio`/`audio_16k`/
    `valor_frames`/`audio_track` choose the outputs a caller needs (the video is always decoded: it
    defines the segments; RGB conversions and resampling happen only for requested outputs;
    `valor_frames` adds a demux-only pass). Raises MediaError for media it cannot use; a missing or
    unusable audio track is not an error (`audio_missing_reason`).
    """
    if audio_rate <= 0:
        raise ValueError(f"audio_rate must be positive, got {audio_rate}")
    if max_side is not None and max_side <= 0:
        raise ValueError(f"max_side must be positive, got {max_side}")
    name = source_name(path)
    valor_pts = _valor_frame_pts(path, name) if valor_frames else []
    valor_rgb: dict[int, tuple[float, np.ndarray] | None] = dict.fromkeys(valor_pts)  # pts -> (time, RGB) once decoded
    valor_reformatter = VideoReformatter()
    valor_size: tuple[int, int] | None = None
    with ExitStack() as stack:
        container = _open_container(path, stack)
        video = _video_stream(container, name)
        video.thread_type = "AUTO"  # frame + slice threads: decoding every frame is the main cost
        # Segment rows only at the rates asked for: the whole track (`audio_track`) is resampled on its own.
        rates = list(dict.fromkeys(rate for rate, wanted in ((audio_rate, audio), (AUDIO_16K_RATE, audio_16k)) if wanted))
        wants_audio = bool(rates) or audio_track
        audio_stream = container.streams.audio[0] if wants_audio and container.streams.audio else None
        header_duration = _header_duration(container, video)
        origin_s = _video_origin(video)
        selector = _FrameSelector(name, centre, clip, images, max_side)
        if header_duration is not None:
            selector.limit = n_segments_for_duration(header_duration)
            if selector.limit == 0:
                raise MediaError(name, f"shorter than one segment ({header_duration:.2f} s; a segment needs >= 0.5 s)")
        packet_end = _PacketEnd(origin_s)
        collector = _AudioCollector() if audio_stream is not None else None
        n_undecodable = 0
        streams = [video] if audio_stream is None else [video, audio_stream]
        try:
            for packet in container.demux(streams):
                if packet.stream is video:
                    packet_end.update(packet)
                try:
                    frames = packet.decode()
                except av.FFmpegError:  # skipped; the frame-gap rule decides if the rest is usable
                    n_undecodable += 1
                    continue
                for frame in frames:
                    if packet.stream is not video:
                        collector.push(frame)
                    elif frame.time is not None:  # a frame without a timestamp cannot be placed
                        if origin_s is None:  # no stream start time: the first packet's pts
                            origin_s = packet_end.origin_s if packet_end.origin_s is not None else frame.time
                        selector.push(frame, frame.time - origin_s)
                        if frame.pts in valor_rgb and valor_rgb[frame.pts] is None:
                            valor_size = valor_size or (frame.width, frame.height)
                            rgb = valor_reformatter.reformat(frame, width=valor_size[0], height=valor_size[1], format="rgb24", threads=1)
                            valor_rgb[frame.pts] = (frame.time - origin_s, rgb.to_ndarray())
        except av.FFmpegError as exc:
            raise MediaError(name, f"demuxing failed: {exc}") from exc
        duration_s = header_duration if header_duration is not None else packet_end.end_s
        if duration_s is None:
            raise MediaError(name, "no video packets with timestamps")
        n_segments = n_segments_for_duration(duration_s)
        if n_segments == 0:
            raise MediaError(name, f"shorter than one segment ({duration_s:.2f} s; a segment needs >= 0.5 s)")
        segments = selector.finish(n_segments)

        audio_rows: dict[int, np.ndarray] = {}
        audio_missing = None
        if wants_audio and collector is None:
            audio_missing = "no audio stream; audio features missing"
        elif collector is not None:
            found, audio_missing = collector.segments(origin_s or 0.0, n_segments, rates)
            audio_rows = found or {}
        track = collector.track(audio_rate) if audio_track and collector is not None and audio_missing is None else None
    chosen = [valor_rgb[pts] for pts in valor_pts]
    if valor_frames and len(chosen) != n_segments:
        raise MediaError(name, f"VALOR's {VALOR_FRAME_RATE}-fps sampling chose {len(chosen)} frames for {n_segments} segments")
    undecoded = [segment for segment, frame in enumerate(chosen) if frame is None]
    if undecoded:
        raise MediaError(
            name, f"the frame VALOR's {VALOR_FRAME_RATE}-fps sampling takes for segment {undecoded[0]} did not decode"
        )

    decoded_span = selector.last.end_s - selector.first_start_s
    return DecodedSegments(
        n_segments=n_segments,
        duration_s=duration_s,
        source_fps=selector.n_frames / decoded_span if decoded_span > 0 else float("nan"),
        centre_frames=np.stack([seg[-1].centre_rgb for seg in segments]) if centre else None,
        centre_times=np.array([seg[-1].start_s for seg in segments], dtype=np.float64),
        clip_frames=(
            np.stack([[seg[k].clip_rgb for k in range(FRAMES_PER_CLIP)] for seg in segments]) if clip else None
        ),
        clip_times=np.array([[seg[k].start_s for k in range(FRAMES_PER_CLIP)] for seg in segments], dtype=np.float64),
        image_frames=(
            np.stack([[seg[k].image_rgb for k in range(FRAMES_PER_CLIP)] for seg in segments]) if images else None
        ),
        audio=audio_rows.get(audio_rate) if audio else None,
        audio_16k=audio_rows.get(AUDIO_16K_RATE) if audio_16k else None,
        audio_rate=audio_rate,
        audio_missing_reason=audio_missing,
        n_frames_decoded=selector.n_frames,
        n_undecodable_packets=n_undecodable,
        valor_frames=np.stack([rgb for _, rgb in chosen]) if valor_frames else None,
        valor_times=np.array([time for time, _ in chosen], dtype=np.float64) if valor_frames else None,
        audio_track=track,
    )
