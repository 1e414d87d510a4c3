"""The demo across seeds: wall time and test segment-level scores of the HAN beside its references.

Runs `uwav demo --seed S --out DIR/seed_S` for each seed (a subprocess each, as a user would;
`--prefect` adds the embedded server, ~25-35 s per run) and prints, per seed, the wall time and
segment-level A / V / AV / Type@AV / Event@AV of the HAN, the pseudo-labels (given the video
labels) and predicting nothing, from the evaluate stage's record. Issue #13 asks for the demo to
end within 3 minutes on a 2-core machine with Type@AV >= 60, A >= 50, V >= 50; the last line
printed is the result as JSON.

Usage: `.venv/bin/python benchmarks/bench_demo.py [--seeds 0 1 2] [--out DIR] [--prefect]`
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from uwav.catalog import load_catalog
from uwav.demo import DEMO_CATALOG
from uwav.stages.planner import stage_record

UWAV = Path(sys.executable).with_name("uwav")
SEGMENT_KEYS = ("seg_a", "seg_v", "seg_av", "seg_type", "seg_event")


def run_demo(seed: int, out: Path, prefect: bool) -> dict[str, Any]:
    """One fresh demo; its wall time and the evaluate record's segment-level scores per model."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    command = [str(UWAV), "demo", "--seed", str(seed), "--out", str(out), *([] if prefect else ["--no-prefect"])]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall_s = time.perf_counter() - start
    metrics = stage_record(load_catalog(out / DEMO_CATALOG), "evaluate").metrics
    models = {"HAN": metrics["scores"], **metrics["references"]}
    return {
        "seed": seed,
        "wall_s": round(wall_s, 1),
        "test_videos": metrics["videos"],
        "scores": {name: {key: round(float(scores[key]), 1) for key in SEGMENT_KEYS} for name, scores in models.items()},
        "health_warnings": metrics["health_warnings"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None, help="Folder for the demos (default: a temporary one).")
    parser.add_argument("--prefect", action="store_true", help="Run through the Prefect flow, as `make demo` does.")
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="uwav-bench-demo-"))
    results = []
    for seed in args.seeds:
        result = run_demo(seed, root / f"seed_{seed}", args.prefect)
        results.append(result)
        print(f"seed {seed}: {result['wall_s']} s, {result['test_videos']} test videos", flush=True)
        for name, scores in result["scores"].items():
            print(f"  {name:36s} " + "  ".join(f"{key} {value:5.1f}" for key, value in scores.items()), flush=True)
        for warning in result["health_warnings"]:
            print(f"  warning: {warning}", flush=True)
    print(json.dumps({"prefect": args.prefect, "results": results}))


if __name__ == "__main__":
    main()
