"""Decode throughput: `uwav.media.decode_segments` on the 60-s real UnAV-100 video.

Goal (issue #3): >= 20x faster than real time on this CPU (< 3 s for 60 s of video), decoding
all outputs (centre frames, 8-frame clips, 48 kHz audio). `measure_decode` is reused by
`bench_features.py`. Usage: `.venv/bin/python benchmarks/bench_decode.py [VIDEO] [--repeats N]`;
the last line printed is the result as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from uwav.media import decode_segments

DEFAULT_VIDEO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "unav100" / "videos" / "--HuBNHXu9I.mp4"


def measure_decode(path: str | os.PathLike[str], repeats: int = 5, **decode_kwargs: Any) -> dict[str, Any]:
    """Time `decode_segments(path, **decode_kwargs)` `repeats` times after one warm-up run."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    decoded = decode_segments(path, **decode_kwargs)  # warm-up: page cache, codec initialisation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        decode_segments(path, **decode_kwargs)
        times.append(time.perf_counter() - start)
    best, median = min(times), statistics.median(times)
    return {
        "video": os.fspath(path),
        "duration_s": round(decoded.duration_s, 3),
        "n_segments": decoded.n_segments,
        "repeats": repeats,
        "best_s": round(best, 4),
        "median_s": round(median, 4),
        "segments_per_s_median": round(decoded.n_segments / median, 1),
        "x_real_time_best": round(decoded.duration_s / best, 1),
        "x_real_time_median": round(decoded.duration_s / median, 1),
        "cpu_count": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", nargs="?", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not args.video.exists():
        raise SystemExit(f"video not found: {args.video} (pass a path; the shared data folder is absent)")
    result = measure_decode(args.video, args.repeats)
    print(
        f"{result['video']}: {result['n_segments']} segments of {result['duration_s']} s; "
        f"best {result['best_s']} s, median {result['median_s']} s over {result['repeats']} runs; "
        f"{result['segments_per_s_median']} segments/s, {result['x_real_time_median']}x real time (median), "
        f"{result['x_real_time_best']}x (best); goal >= 20x"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
