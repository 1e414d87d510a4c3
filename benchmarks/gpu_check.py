"""GPU throughput check of the feature pipeline (issue #3, section 5), one run, no network.

What it measures, with the real pipeline (`uwav.features.extract_features`: threaded decode
overlapping cross-video batched encoding, Zarr feature store writes), on synthetic LLP-like
videos (320 x 240, 30 fps H.264 + 44.1 kHz AAC, 10 s each) generated at start:

0. decode-only segments/s of CLIP's input with cores/2, cores and 2 x cores decode threads; the
   fastest pool size is used below (or `--workers N`).
1. CLIP ViT-L-14 (open_clip, random init: no weights can be downloaded; same compute), bf16
   autocast: decode-only, encode-only and end-to-end segments/s and the ratio end-to-end /
   encode-only. Goal: ratio >= 0.7 (ViT-L/14's image tower alone does ~1,900 images/s in bf16
   on an H200).
2. R(2+1)D-18 (torchvision, random init), bf16 autocast: the same figures.

Needs (no laion_clap): torch with CUDA, torchvision, open_clip_torch, av, soxr, numpy, polars,
zarr, fsspec, tqdm, pydantic, pyyaml. Run from the repository root:

    python benchmarks/gpu_check.py                       # about 2-3 minutes on an H100
    python benchmarks/gpu_check.py --videos a.mp4 b.mp4  # real videos instead of synthetic ones

Prints one line per measurement, then everything as one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for `uwav`
from bench_features import build_encoder, decode_all, measure, synthetic_videos  # noqa: E402

CHECKS = (
    # (encoder kind, model config, batch size)
    ("clip", "ViT-L-14", 256),
    ("r2plus1d", "r2plus1d_18", 64),
)


def sweep_decode_workers(paths: list[Path], report: dict[str, object]) -> int:
    """Decode-only segments/s of CLIP's input (centre frames) for a few pool sizes; returns the fastest."""
    cores = os.cpu_count() or 1
    rates: dict[int, float] = {}
    for workers in sorted({max(1, cores // 2), cores, 2 * cores}):
        decoded, seconds = decode_all(paths, {"centre": True, "clip": False, "audio": False, "max_side": 336}, workers)
        rates[workers] = round(sum(d.n_segments for d in decoded) / seconds, 1)
        print(json.dumps({"decode_only_centre_frames_workers": workers, "segments_per_s": rates[workers]}), flush=True)
    report["decode_sweep_segments_per_s"] = rates
    return max(rates, key=rates.__getitem__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", nargs="+", type=Path, help="real videos (default: synthetic)")
    parser.add_argument("--synthetic", type=int, default=32, help="distinct synthetic videos")
    parser.add_argument("--repeat", type=int, default=16, help="list every video this many times")
    parser.add_argument("--workers", type=int, help="decode threads (default: the fastest of a short sweep)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: torch sees no CUDA device")

    report: dict[str, object] = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="uwav-gpu-check-") as folder:
        if args.videos:
            paths = list(args.videos)
        else:
            paths = synthetic_videos(Path(folder), args.synthetic, seconds=10)
        report["video_generation_s"] = round(time.perf_counter() - started, 1)
        workers = args.workers or sweep_decode_workers(paths * args.repeat, report)
        for kind, model, batch_size in CHECKS:
            encoder = build_encoder(kind, model, {"random_init": True}, "bf16", "cuda")
            result = measure(encoder, paths, repeat=args.repeat, batch_size=batch_size, workers=workers)
            result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            print(json.dumps(result), flush=True)
            report[kind] = result
            del encoder
            torch.cuda.empty_cache()
    clip_ratio = report["clip"]["end_to_end_over_encode_only"]  # type: ignore[index]
    report["goal_clip_end_to_end_over_encode_only_ge_0.7"] = clip_ratio >= 0.7
    report["total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
