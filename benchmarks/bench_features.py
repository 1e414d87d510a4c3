"""Feature-extraction throughput: decode-only, encode-only and end-to-end segments/s for one encoder.

- decode-only: `decode_segments` over every video in a pool of `--workers` threads, decoding only
  what the encoder reads (centre frames / 8-frame clips / audio);
- encode-only: the encoder on the pre-decoded segments in batches of `--batch-size` (after one
  warm-up batch), host-to-device copy and preprocessing included;
- end-to-end: `uwav.features.extract_features` into a fresh feature store (decode pool overlapping
  with encoding, cross-video batches, store writes), and the ratio end-to-end / encode-only.

Goals (issue #3): on a GPU with ViT-L/14 (bf16), end-to-end >= 0.7 x encode-only; on the CPU,
decoding the 60-s real video >= 20x faster than real time (`decode_one_video` in the output:
one worker, all outputs, via `bench_decode.measure_decode`).

Usage (the last line printed is the result as JSON):
  .venv/bin/python benchmarks/bench_features.py --encoder clip --device cpu \
      --videos ../shared/data/unav100/videos/--HuBNHXu9I.mp4 ../shared/data/llp/videos/BjCEufrlXm4.mp4
  python benchmarks/bench_features.py --encoder clip --model ViT-L-14 --random-init --precision bf16 \
      --device cuda --synthetic 32 --repeat 10 --batch-size 256
Without `--model` the tiny offline config of the encoder is used. No weights can be downloaded, so
real architectures run with `--random-init` (same compute as with trained weights).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_decode, next to this file
from bench_decode import measure_decode  # noqa: E402

from uwav.catalog import EncoderConfig, EncodersConfig, FeaturesSettings  # noqa: E402
from uwav.contracts import n_segments_for_duration  # noqa: E402
from uwav.synthetic.media import encode_mp4  # noqa: E402
from uwav.features.encoder_base import to_host  # noqa: E402
from uwav.features.encoders import Encoders, SegmentEncoder, build_encoders  # noqa: E402
from uwav.features.extract import extract_features  # noqa: E402
from uwav.features.store import FeatureStore  # noqa: E402
from uwav.media import DecodedSegments, QuarantineLog, decode_segments, probe_duration  # noqa: E402

TINY_MODELS = {"clip": "uwav-tiny-clip", "clap": "uwav-tiny-clap", "r2plus1d": "uwav-tiny-r2plus1d"}
REAL_SHAPE = (240, 320)  # LLP / UnAV-100 videos: 320 x 240, ~30 fps, AAC 44.1 kHz
SYNTH_FPS, SYNTH_AUDIO_RATE = 30, 44100


def write_synthetic_video(path: Path, seconds: int, seed: int) -> Path:
    """A 320 x 240, 30 fps H.264 + AAC clip with moving textured content (bit rate close to LLP's)."""
    rng = np.random.default_rng(seed)
    height, width = REAL_SHAPE
    n_frames = seconds * SYNTH_FPS
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    texture = rng.integers(0, 48, (height // 8, width // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    frames = np.empty((n_frames, height, width, 3), np.uint8)
    for index in range(n_frames):
        phase = index / SYNTH_FPS
        base = 96 + 64 * np.sin(xx / 23.0 + phase * (1 + seed % 3)) * np.cos(yy / 17.0 - phase)
        frames[index] = np.clip(base[..., None] + np.roll(texture, index * 2, axis=1), 0, 255).astype(np.uint8)
        cy, cx = int(height / 2 + 80 * np.sin(phase)), int(width / 2 + 120 * np.cos(phase * 0.7))
        frames[index, max(0, cy - 20) : cy + 20, max(0, cx - 20) : cx + 20] = (255, 64 * (seed % 4), 32)
    t = np.arange(seconds * SYNTH_AUDIO_RATE) / SYNTH_AUDIO_RATE
    audio = (0.2 * np.sin(2 * np.pi * (200 + 40 * seed) * t) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)
    encode_mp4(path, frames, audio, SYNTH_FPS, SYNTH_AUDIO_RATE)
    return path


def synthetic_videos(folder: Path, count: int, seconds: int) -> list[Path]:
    """`count` distinct synthetic videos, encoded in parallel processes."""
    with ProcessPoolExecutor(min(count, os.cpu_count() or 1)) as pool:
        jobs = [pool.submit(write_synthetic_video, folder / f"synth{i:03d}.mp4", seconds, i) for i in range(count)]
        return [job.result() for job in jobs]


def decode_options(encoder: SegmentEncoder, max_side: int | None) -> dict[str, Any]:
    """What `extract_features` decodes for this encoder alone."""
    return {
        "audio_rate": getattr(encoder, "sample_rate", 48000),
        "centre": encoder.feature == "clip",
        "clip": encoder.feature == "r2plus1d",
        "audio": encoder.feature == "clap",
        "max_side": max_side,
    }


def decode_all(paths: list[Path], options: dict[str, Any], workers: int) -> tuple[list[DecodedSegments], float]:
    """Decode every path in a pool of `workers` threads, as `extract_features` does; (results, seconds)."""
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        decoded = list(pool.map(lambda path: decode_segments(path, **options), paths))
    return decoded, time.perf_counter() - start


def measure(
    encoder: SegmentEncoder,
    paths: list[Path],
    *,
    repeat: int,
    batch_size: int,
    workers: int,
    max_side: int | None = 336,
) -> dict[str, Any]:
    """Decode-only, encode-only and end-to-end segments/s of `encoder` over `paths` listed `repeat` times."""
    options = decode_options(encoder, max_side)
    listed = [path for path in paths for _ in range(repeat)]

    decoded, decode_s = decode_all(listed, options, workers)
    inputs = np.concatenate([getattr(d, encoder.segment_input) for d in decoded])
    n_segments = len(inputs)
    del decoded

    encoder.encode_segments(inputs[:batch_size])  # warm-up: kernels, allocator, autotuning
    start = time.perf_counter()
    in_flight = None  # as in extract_features: one batch computes while the next is launched
    for offset in range(0, n_segments, batch_size):
        launched = encoder.embed(inputs[offset : offset + batch_size])
        if in_flight is not None:
            to_host(in_flight)
        in_flight = launched
    to_host(in_flight)
    encode_s = time.perf_counter() - start
    del inputs

    # the manifest's segment counts, as the dataset readers get them from `probe_duration`
    durations = [probe_duration(path) for path in listed]
    manifest = pl.DataFrame(
        {
            "video_id": [f"v{i:05d}" for i in range(len(listed))],
            "media_path": [str(path) for path in listed],
            "n_segments": [n_segments_for_duration(duration) for duration in durations],
        },
        schema_overrides={"n_segments": pl.Int32},
    )
    with tempfile.TemporaryDirectory(prefix="uwav-bench-store-") as folder:
        summary = extract_features(
            manifest,
            FeatureStore(str(Path(folder) / "features.zarr")),
            Encoders(**{encoder.feature: encoder}),
            FeaturesSettings(batch_size=batch_size, workers=workers),
            QuarantineLog(),
            max_side=max_side,
            progress=False,
        )
    if summary.quarantined or summary.n_segments != n_segments:
        raise RuntimeError(f"end-to-end run incomplete: {summary}")
    decode_rate, encode_rate = n_segments / decode_s, n_segments / encode_s
    return {
        "encoder": encoder.identity,
        "device": str(encoder.device),
        "autocast_bf16": encoder.autocast,
        "videos": len(listed),
        "distinct_videos": len(paths),
        "segments": n_segments,
        "batch_size": batch_size,
        "workers": workers,
        "decode_only_segments_per_s": round(decode_rate, 1),
        "encode_only_segments_per_s": round(encode_rate, 1),
        "end_to_end_segments_per_s": round(summary.segments_per_s, 1),
        "end_to_end_over_encode_only": round(summary.segments_per_s / encode_rate, 3),
    }


def build_encoder(kind: str, model: str | None, weights: dict[str, Any], precision: str, device: str) -> SegmentEncoder:
    config = EncoderConfig(name=model or TINY_MODELS[kind], precision=precision, **weights)
    encoders = build_encoders(EncodersConfig(**{kind: config}), device, features=[kind])
    return getattr(encoders, kind)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", choices=sorted(TINY_MODELS), default="clip")
    parser.add_argument("--model", help="model config name (default: the tiny offline config of --encoder)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--random-init", action="store_true", help="random weights (the default)")
    source.add_argument("--pretrained", help="pretrained tag (downloaded into the standard caches on first use; `uwav weights fetch` fetches ahead)")
    source.add_argument("--checkpoint", help="local weights file")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16", help="bf16 autocast applies on CUDA only")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    videos = parser.add_mutually_exclusive_group(required=True)
    videos.add_argument("--videos", nargs="+", type=Path)
    videos.add_argument("--synthetic", type=int, metavar="N", help="generate N distinct synthetic videos")
    parser.add_argument("--seconds", type=int, default=10, help="length of synthetic videos")
    parser.add_argument("--repeat", type=int, default=1, help="list every video this many times (distinct ids)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decode threads")
    parser.add_argument("--max-side", type=int, default=336)
    args = parser.parse_args()

    weights: dict[str, Any] = (
        {"pretrained": args.pretrained} if args.pretrained else
        {"checkpoint": args.checkpoint} if args.checkpoint else
        {"random_init": True}
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="uwav-bench-media-") as folder:
        if args.synthetic:
            paths = synthetic_videos(Path(folder), args.synthetic, args.seconds)
        else:
            missing = [str(path) for path in args.videos if not path.is_file()]
            if missing:
                raise SystemExit(f"videos not found: {missing}")
            paths = list(args.videos)
        encoder = build_encoder(args.encoder, args.model, weights, args.precision, args.device)
        result = measure(
            encoder, paths, repeat=args.repeat, batch_size=args.batch_size, workers=args.workers, max_side=args.max_side
        )
        longest = max(paths, key=probe_duration)
        result["decode_one_video"] = measure_decode(longest, repeats=3)  # one worker, all outputs
    result["torch_threads"] = torch.get_num_threads()
    result["cpu_count"] = os.cpu_count()
    if encoder.device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(encoder.device)
    print(
        f"{result['encoder']} on {result['device']}: {result['segments']} segments of {result['videos']} videos; "
        f"decode-only {result['decode_only_segments_per_s']}/s, encode-only {result['encode_only_segments_per_s']}/s, "
        f"end-to-end {result['end_to_end_segments_per_s']}/s = {result['end_to_end_over_encode_only']} x encode-only; "
        f"one video, one worker, all outputs: {result['decode_one_video']['x_real_time_median']}x real time"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
