"""LLP evaluator speed: vectorised `avvp_scores` vs the plain per-video loop, on the 1,200-video test split.

Ground truth is the real LLP test split (`../shared/data/llp`, or --llp-dir); predictions are
random probabilities through the test-time decision rule. Both evaluators run in this process
on the same arrays and must agree exactly. Prints readable lines, then one JSON line:
{"vectorised_ms", "loop_ms", "speedup", ...} (medians over --repeats runs).

    .venv/bin/python benchmarks/bench_eval.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from uwav.datasets.llp import LLP_CLASSES, read_llp
from uwav.evaluation import avvp_scores, decide, dense_to_arrays
from uwav.evaluation.reference import avvp_scores_reference

DEFAULT_LLP_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "llp"


def _median_ms(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llp-dir", type=Path, default=DEFAULT_LLP_DIR, help="folder with the LLP CSVs")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs of the vectorised evaluator")
    parser.add_argument("--loop-repeats", type=int, default=3, help="timed runs of the per-video loop")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.llp_dir.is_dir():
        sys.exit(f"LLP annotation folder not found: {args.llp_dir} (pass --llp-dir)")

    manifest, dense = read_llp(args.llp_dir)
    video_ids = manifest.filter(pl.col("split") == "test")["video_id"].to_list()
    gt_audio, gt_visual = dense_to_arrays(dense.filter(pl.col("video_id").is_in(video_ids)), video_ids, LLP_CLASSES, 10)
    rng = np.random.default_rng(args.seed)
    shape = gt_audio.shape  # (videos, segments, classes)
    pred_audio, pred_visual = decide(rng.random(shape), rng.random(shape), rng.random((shape[0], shape[2])))
    arrays = (pred_audio, pred_visual, gt_audio, gt_visual)

    fast = avvp_scores(*arrays)  # warm-up, and the scores to compare
    vectorised_ms, vectorised_min_ms = _median_ms(lambda: avvp_scores(*arrays), args.repeats)
    slow = avvp_scores_reference(*arrays)
    loop_ms, loop_min_ms = _median_ms(lambda: avvp_scores_reference(*arrays), args.loop_repeats)
    max_abs_diff = max(abs(fast[key] - slow[key]) for key in fast)

    print(f"LLP test split: {shape[0]} videos x {shape[1]} segments x {shape[2]} classes, random predictions")
    print(f"vectorised: median {vectorised_ms:.2f} ms, min {vectorised_min_ms:.2f} ms ({args.repeats} runs)")
    print(f"loop:       median {loop_ms:.1f} ms, min {loop_min_ms:.1f} ms ({args.loop_repeats} runs)")
    print(f"speedup (medians): {loop_ms / vectorised_ms:.0f}x; max |difference| over the 10 scores: {max_abs_diff:.3g}")
    print("scores: " + ", ".join(f"{key} {value:.2f}" for key, value in fast.items()))
    result = {
        "videos": shape[0],
        "classes": shape[2],
        "segments": shape[1],
        "vectorised_ms": round(vectorised_ms, 3),
        "vectorised_min_ms": round(vectorised_min_ms, 3),
        "loop_ms": round(loop_ms, 1),
        "speedup": round(loop_ms / vectorised_ms, 1),
        "max_abs_diff": max_abs_diff,
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
