"""Feature extraction: decode videos in a worker pool, encode segments in cross-video batches, store.

`extract_features` is resumable and incremental at the video level: it computes only the videos
of the manifest that the store does not hold complete for the active encoders, so a second run
computes nothing and a manifest with new videos computes only those. Bad media is quarantined
(the run goes on); a video without usable audio gets its visual features and its audio features
(`clap`, `vggish`, `clap_maps`) recorded as missing. Videos are decoded into only the inputs the
active encoders read (`DECODE_OPTIONS`).

Throughput: decoding (PyAV releases the GIL) runs in `settings.workers` threads, a bounded number
of videos ahead of the encoder, while the calling thread encodes. Segments of consecutive videos
are packed into batches of `settings.batch_size`, so short videos still fill the accelerator.
One batch stays in flight on the device: it is copied back only after the next one has been
launched, so the GPU computes while the host packs inputs and writes. A video is written as soon
as its last segment is back. A per-clip feature (`clap_maps`) is computed when its video arrives,
one forward per video.

`compute_text_embeddings` encodes the class prompts of METHOD.md ("A photo of <EVENT NAME>" for
CLIP, "This is the sound of <EVENT NAME>" for CLAP), or with `extraction: valor` VALOR's
(`valor_class_prompts`), and caches them in the store; they are recomputed only when the prompts
or the encoder identity change.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import torch
from tqdm import tqdm

from uwav.catalog import FeaturesSettings
from uwav.contracts import text_embedding_name
from uwav.errors import InvalidInputError
from uwav.features.encoder_base import to_host
from uwav.features.encoders import Encoders, FeatureEncoder, SegmentEncoder
from uwav.features.store import FeatureStore
from uwav.media import DecodedSegments, QuarantineLog, decode_or_quarantine

QUARANTINE_STAGE = "features"
# The `decode_segments` switch of each decoded input (an encoder's `segment_input`).
DECODE_OPTIONS = {
    "centre_frames": "centre", "clip_frames": "clip", "image_frames": "images", "audio": "audio", "audio_16k": "audio_16k",
    "valor_frames": "valor_frames", "audio_track": "audio_track",
}
_PREFETCH_PER_WORKER = 2  # decoded videos waiting per worker: keeps the encoder fed, bounds memory


@dataclass(frozen=True)
class ExtractionSummary:
    """What one `extract_features` call did."""

    features: tuple[str, ...]
    n_videos: int  # rows of the manifest
    n_already_complete: int  # skipped: the store held them complete before this call
    computed: tuple[str, ...]  # video ids written by this call
    quarantined: tuple[str, ...]  # video ids that could not be used (see the quarantine log)
    missing_audio: tuple[str, ...]  # written with their audio features recorded as missing
    n_segments: int  # segments encoded by this call
    seconds: float

    @property
    def segments_per_s(self) -> float:
        return self.n_segments / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _VideoWork:
    """A decoded video whose segments are being encoded."""

    video_id: str
    decoded: DecodedSegments
    n_segments: int
    outputs: dict[str, np.ndarray]
    missing: list[str]
    next_segment: int = 0  # first segment not yet put in a batch
    encoded: int = 0  # segments whose features are all computed

    def inputs(self, encoder: FeatureEncoder) -> np.ndarray | None:
        return getattr(self.decoded, encoder.segment_input)


Span = tuple[_VideoWork, int, int]  # segments [start, stop) of one video within a batch


@dataclass
class _Batcher:
    """Packs the segments of consecutive videos into batches of at most `batch_size` segments."""

    batch_size: int
    queue: deque[_VideoWork] = field(default_factory=deque)
    queued_segments: int = 0

    def add(self, work: _VideoWork) -> None:
        self.queue.append(work)
        self.queued_segments += work.n_segments

    def take(self) -> list[Span]:
        """The next batch as (video, start, stop) spans, in arrival order."""
        spans: list[Span] = []
        room = self.batch_size
        while room and self.queue:
            work = self.queue[0]
            stop = min(work.n_segments, work.next_segment + room)
            spans.append((work, work.next_segment, stop))
            room -= stop - work.next_segment
            work.next_segment = stop
            if stop == work.n_segments:
                self.queue.popleft()
        self.queued_segments -= self.batch_size - room
        return spans


@dataclass
class _LaunchedBatch:
    """A batch whose embeddings are being computed on the device (not yet copied back)."""

    spans: list[Span]
    results: list[tuple[SegmentEncoder, list[Span], torch.Tensor]]


def _launch_batch(spans: list[Span], encoders: Sequence[SegmentEncoder]) -> _LaunchedBatch:
    """Start every encoder on the batch; on a GPU this returns while the kernels still run. Videos
    whose inputs differ in shape (frames of other resolutions) are encoded in separate calls."""
    results = []
    for encoder in encoders:
        by_shape: dict[tuple[int, ...], list[Span]] = {}
        for work, start, stop in spans:
            inputs = work.inputs(encoder)
            if inputs is not None:
                by_shape.setdefault(inputs.shape[1:], []).append((work, start, stop))
        for present in by_shape.values():
            inputs = np.concatenate([work.inputs(encoder)[start:stop] for work, start, stop in present])  # type: ignore[index]
            results.append((encoder, present, encoder.embed(inputs)))
    return _LaunchedBatch(spans, results)


def _collect_batch(batch: _LaunchedBatch) -> int:
    """Copy a launched batch's embeddings back into its videos' rows; returns the batch size."""
    for encoder, present, embeddings in batch.results:
        values = to_host(embeddings)
        offset = 0
        for work, start, stop in present:
            work.outputs[encoder.feature][start:stop] = values[offset : offset + stop - start]
            offset += stop - start
    for work, start, stop in batch.spans:
        work.encoded += stop - start
    return sum(stop - start for _, start, stop in batch.spans)


class _EncodingQueue:
    """Decoded videos -> cross-video batches -> encoders -> the store, one video at a time.

    A launched batch is collected (copied back to the host) only after the next batch has been
    launched, so on a GPU the device computes while the host packs the next batch and writes.
    """

    def __init__(self, encoders: list[FeatureEncoder], store: FeatureStore, batch_size: int, bar: tqdm, started: float):
        self.encoders = encoders
        self.segment_encoders = [encoder for encoder in encoders if not encoder.per_clip]
        self.store = store
        self.batcher = _Batcher(batch_size)
        self.bar = bar
        self.started = started
        self.videos: list[_VideoWork] = []  # added, not yet written
        self.launched: _LaunchedBatch | None = None
        self.written: list[str] = []
        self.missing_audio: list[str] = []
        self.n_encoded = 0

    def add(self, video_id: str, decoded: DecodedSegments, n_segments: int) -> None:
        # Only audio can be absent from a decode (frames always decode or the video is quarantined).
        missing = [encoder.feature for encoder in self.encoders if getattr(decoded, encoder.segment_input) is None]
        work = _VideoWork(
            video_id=video_id,
            decoded=decoded,
            n_segments=n_segments,
            outputs={
                encoder.feature: np.empty((n_segments, encoder.dim), np.float32)
                for encoder in self.segment_encoders
                if encoder.feature not in missing
            },
            missing=missing,
        )
        for encoder in self.encoders:
            if encoder.per_clip and encoder.feature not in missing:
                work.outputs[encoder.feature] = encoder.encode_clip(work.inputs(encoder))
        self.batcher.add(work)
        self.videos.append(work)

    def run(self, final: bool) -> None:
        """Launch every full batch (and the remainder when `final`, then collect everything)."""
        batch_size = self.batcher.batch_size
        while self.batcher.queued_segments >= batch_size or (final and self.batcher.queued_segments):
            launched = _launch_batch(self.batcher.take(), self.segment_encoders)
            if self.launched is not None:
                self._collect(self.launched)
            self.launched = launched
        if final and self.launched is not None:
            self._collect(self.launched)
            self.launched = None

    def _collect(self, batch: _LaunchedBatch) -> None:
        self.n_encoded += _collect_batch(batch)
        for work in [work for work in self.videos if work.encoded == work.n_segments]:
            self.store.write_video(work.video_id, work.outputs, missing=work.missing)
            self.videos.remove(work)
            self.written.append(work.video_id)
            if work.missing:
                self.missing_audio.append(work.video_id)
            self.bar.update(1)
        rate = self.n_encoded / max(time.perf_counter() - self.started, 1e-9)
        self.bar.set_postfix(segments_per_s=f"{rate:.0f}")


def _show_progress(progress: bool) -> bool:
    return progress and sys.stderr.isatty() and not os.environ.get("UWAV_NO_PROGRESS")


def extract_features(
    manifest: pl.DataFrame,
    store: FeatureStore,
    encoders: Encoders,
    settings: FeaturesSettings,
    quarantine_log: QuarantineLog,
    *,
    progress: bool = True,
) -> ExtractionSummary:
    """Compute the active encoders' features of every manifest video the store lacks (see module docstring).

    `manifest` follows `uwav.contracts.MANIFEST_SCHEMA` (`video_id`, `media_path`, `n_segments`
    are used). `settings.max_side` caps the decoded centre frames' longer side; CLIP resizes
    them to its input size anyway. Videos without
    media, too short, or whose media cannot be decoded are recorded in `quarantine_log` under
    stage 'features'. The manifest's `n_segments` is authoritative: a decode with more segments
    is cut to it, one with fewer is quarantined.
    """
    started = time.perf_counter()
    active = encoders.active()
    if not active:
        raise ValueError("extract_features: no encoders given")
    features = tuple(encoder.feature for encoder in active)
    absent = [column for column in ("video_id", "media_path", "n_segments") if column not in manifest.columns]
    if absent:
        raise ValueError(f"extract_features: the manifest lacks columns {absent}")
    duplicated = manifest.filter(pl.col("video_id").is_duplicated())["video_id"].unique().to_list()
    if duplicated:
        raise ValueError(f"extract_features: duplicate video ids in the manifest: {duplicated[:5]}")
    rows = manifest.select("video_id", "media_path", "n_segments").to_dicts()

    usable: list[dict] = []
    quarantined: list[str] = []
    for row in rows:
        if row["media_path"] is None:
            quarantine_log.record(row["video_id"], "", QUARANTINE_STAGE, "media not available (manifest has no media_path)")
            quarantined.append(row["video_id"])
        elif row["n_segments"] is None or row["n_segments"] < 1:
            reason = f"manifest lists {row['n_segments']} segments; a video needs at least 1"
            quarantine_log.record(row["video_id"], row["media_path"], QUARANTINE_STAGE, reason)
            quarantined.append(row["video_id"])
        else:
            usable.append(row)

    # Allocation is idempotent and refuses a feature computed by another encoder (stale values).
    store.allocate(
        [row["video_id"] for row in usable],
        [row["n_segments"] for row in usable],
        encoders.feature_shapes(),
        encoder_identities=encoders.identities(),
        per_clip=encoders.per_clip_features(),
    )
    complete = store.completed(list(features))
    todo = [row for row in usable if row["video_id"] not in complete]

    inputs = {encoder.segment_input for encoder in active}
    decode_options: dict[str, object] = {option: name in inputs for name, option in DECODE_OPTIONS.items()}
    clap = encoders.clap or (encoders.clap_maps.clap if encoders.clap_maps is not None else None)
    decode_options["audio_rate"] = clap.sample_rate if clap is not None else 48000
    decode_options["max_side"] = settings.max_side

    def decode(row: dict) -> DecodedSegments | None:
        return decode_or_quarantine(row["video_id"], row["media_path"], quarantine_log, QUARANTINE_STAGE, **decode_options)

    bar = tqdm(total=len(todo), unit="video", disable=not _show_progress(progress), dynamic_ncols=True)
    encoding = _EncodingQueue(active, store, settings.batch_size, bar, started)
    pending: Iterator[dict] = iter(todo)
    in_flight: dict[Future[DecodedSegments | None], dict] = {}
    prefetch = settings.workers * _PREFETCH_PER_WORKER
    try:
        with ThreadPoolExecutor(settings.workers, thread_name_prefix="uwav-decode") as pool:
            try:
                while True:
                    while len(in_flight) < prefetch and (row := next(pending, None)) is not None:
                        in_flight[pool.submit(decode, row)] = row
                    if not in_flight:
                        break
                    done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in done:
                        row, decoded = in_flight.pop(future), future.result()
                        n_segments = int(row["n_segments"])
                        if decoded is not None and decoded.n_segments >= n_segments:  # extra segments are ignored
                            encoding.add(row["video_id"], decoded, n_segments)
                            continue
                        if decoded is not None:  # (decode_or_quarantine has recorded why it returned None)
                            reason = f"decoded {decoded.n_segments} segments but the manifest lists {n_segments}"
                            quarantine_log.record(row["video_id"], row["media_path"], QUARANTINE_STAGE, reason)
                        quarantined.append(row["video_id"])
                        bar.update(1)
                    encoding.run(final=False)
                encoding.run(final=True)
            finally:
                for future in in_flight:
                    future.cancel()
    finally:
        bar.close()

    return ExtractionSummary(
        features=features,
        n_videos=len(rows),
        n_already_complete=len(usable) - len(todo),
        computed=tuple(encoding.written),
        quarantined=tuple(quarantined),
        missing_audio=tuple(encoding.missing_audio),
        n_segments=encoding.n_encoded,
        seconds=time.perf_counter() - started,
    )


# ---------------------------------------------------------------- class text embeddings


@dataclass(frozen=True)
class TextEmbeddings:
    """Class text embeddings (C, D) of one encoder, with the prompts that produced them."""

    prompts: tuple[str, ...]
    embeddings: np.ndarray
    encoder_identity: str
    computed: bool  # False: they were fresh in the store and read back


def class_prompts(template: str, class_names: Sequence[str]) -> list[str]:
    """METHOD.md's prompts; underscores in dataset class names ("Frying_(food)") become spaces."""
    return [template.format(name.replace("_", " ")) for name in class_names]


# VALOR's `utils/clip_preprocess.py` captions of LLP's classes, as written there (typos included:
# the embeddings VALOR used are those of these strings).
VALOR_VISUAL_CAPTIONS: dict[str, str] = {
    "Speech": "A photo of people talking.", "Car": "A photo of a car.", "Cheering": "A photo of people cheering.",
    "Dog": "A photo of a dog.", "Cat": "A photo of a cat.", "Frying_(food)": "A photo of frying food.",
    "Basketball_bounce": "A photo of people playing basketball.", "Fire_alarm": "A photo of a fire alarm.",
    "Chainsaw": "A photo of a chainsaw.", "Cello": "A photo of a cello.", "Banjo": "A photo of a banjo.",
    "Singing": "A photo of people singing.", "Chicken_rooster": "A photo of a chicken or a rooster.",
    "Violin_fiddle": "A photo of a violin.", "Vacuum_cleaner": "A photo of a vaccum cleaner.",
    "Baby_laughter": "A photo of a laughing baby.", "Accordion": "A photo of an accordion.",
    "Lawn_mower": "A photo of a lawnmower.", "Motorcycle": "A photo of a motorcycle.",
    "Helicopter": "A photo of a helicopter.", "Acoustic_guitar": "A photo of a acoustic guiter.",
    "Telephone_bell_ringing": "A photo of a ringing telephone.", "Baby_cry_infant_cry": "A photo of a crying baby.",
    "Blender": "A photo of a blender.", "Clapping": "A photo of hands clapping.",
}
# VALOR's `utils/clap_preprocess.py` writes LLP's class names with spaces for underscores, except these.
VALOR_AUDIO_NAMES: dict[str, str] = {"Chicken_rooster": "Chicken, rooster", "Baby_cry_infant_cry": "Baby cry, infant cry"}
VALOR_AUDIO_PROMPT = "This is a sound of "


def valor_class_prompts(feature: str, class_names: Sequence[str]) -> list[str]:
    """VALOR's prompts: for CLIP ('clip') its caption of each LLP class, for CLAP ('clap') "This is a
    sound of " and the lower-cased name. CLIP captions exist for LLP's classes only: other classes
    raise `InvalidInputError` naming them."""
    if feature == "clip":
        uncaptioned = [name for name in class_names if name not in VALOR_VISUAL_CAPTIONS]
        if uncaptioned:
            raise InvalidInputError(
                f"stages.features.extraction: valor has VALOR's CLIP captions of LLP's 25 classes only; none for "
                f"{', '.join(map(repr, uncaptioned[:5]))}{', ...' if len(uncaptioned) > 5 else ''} "
                "(use extraction: paper for this dataset)"
            )
        return [VALOR_VISUAL_CAPTIONS[name] for name in class_names]
    return [VALOR_AUDIO_PROMPT + VALOR_AUDIO_NAMES.get(name, name.replace("_", " ")).lower() for name in class_names]


def extraction_prompts(settings: FeaturesSettings, feature: str, class_names: Sequence[str]) -> list[str]:
    """The class prompts of CLIP ('clip') or CLAP ('clap') under `settings.extraction`."""
    if settings.extraction == "valor":
        return valor_class_prompts(feature, class_names)
    return class_prompts(settings.prompts_visual if feature == "clip" else settings.prompts_audio, class_names)


def compute_text_embeddings(
    store: FeatureStore, encoders: Encoders, class_names: Sequence[str], settings: FeaturesSettings, *, role: str
) -> dict[str, TextEmbeddings]:
    """CLIP ('clip') and CLAP ('clap') class embeddings of `extraction_prompts`.

    Reads them from the store when the stored prompts and encoder identity match, otherwise
    encodes and writes them. Encoders that are None are skipped.
    """
    results: dict[str, TextEmbeddings] = {}
    for encoder in (encoders.clip, encoders.clap):
        if encoder is None:
            continue
        prompts = extraction_prompts(settings, encoder.feature, class_names)
        name = text_embedding_name(encoder.feature, role)
        embeddings = store.read_text_embeddings(name, prompts, encoder.identity)
        computed = embeddings is None
        if embeddings is None:
            embeddings = encoder.encode_text(prompts)
            store.write_text_embeddings(name, prompts, embeddings, encoder.identity)
        results[encoder.feature] = TextEmbeddings(tuple(prompts), embeddings, encoder.identity, computed)
    return results
