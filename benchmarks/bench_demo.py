"""The demo across seeds: the encoders' alignment, the pseudo-labels' quality and the HAN's test scores.

Runs `uwav demo --seed S --out DIR/seed_S` for each seed (a subprocess each, as a user would;
`--prefect` adds the embedded server, ~25-35 s per run) and prints, per seed:
- the wall time (the aligned encoders of that seed included when they were not cached yet);
- the aligned encoders' zero-shot accuracy on held-out corpus items of the target classes, beside
  the same towers at random initialisation (their `alignment.json`), and on the test videos'
  segments that show or sound exactly one class (`segment_zero_shot_accuracy`);
- the quality of the per-segment labels of the training videos, which the HAN learns from,
  against their rendered truth: the generator's pseudo-labels and the encoders' zero-shot
  per-segment labels (both given the video labels);
- segment-level A / V / AV / Type@AV / Event@AV on the test videos of the HAN, the pseudo-labels,
  the zero-shot labels and predicting nothing, from the evaluate stage's record.
Issue #21 asks, on a 2-core machine: each seed's HAN Type@AV >= 55 and >= predict-nothing + 25,
their mean >= 60. The last line printed is the result as JSON.

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

import polars as pl

from uwav.catalog import Catalog, load_catalog
from uwav.contracts import DENSE_SCHEMA
from uwav.demo import DEMO_CATALOG
from uwav.evaluation import dense_to_arrays, pseudo_label_quality
from uwav.stages.evaluate import pseudo_label_reference, segment_zero_shot_accuracy, zero_shot_reference
from uwav.stages.planner import stage_record
from uwav.stages.tables import dataset_tables, open_store
from uwav.synthetic.encoders import ALIGNMENT_FILE

UWAV = Path(sys.executable).with_name("uwav")
SEGMENT_KEYS = ("seg_a", "seg_v", "seg_av", "seg_type", "seg_event")
LABEL_SETS = {"generator pseudo-labels": pseudo_label_reference, "zero-shot per-segment labels": zero_shot_reference}


def _rounded(scores: dict[str, Any]) -> dict[str, float]:
    return {key: round(float(scores[key]), 1) for key in SEGMENT_KEYS}


def training_label_quality(catalog: Catalog, data: Path) -> dict[str, dict[str, float]]:
    """Segment scores of each label set of `LABEL_SETS` on the training videos against the truth
    the generator rendered (`truth_audio.csv` / `truth_visual.csv`, never read by the pipeline)."""
    tables, store = dataset_tables(catalog, "target"), open_store(catalog)
    video_ids = tables.split("train")["video_id"].to_list()
    n_segments = int(tables.manifest["n_segments"].max())
    truth = pl.concat(
        pl.read_csv(data / "llp_like" / f"truth_{modality}.csv", separator="\t")
        .rename({"filename": "video_id", "event_labels": "label"})
        .with_columns(modality=pl.lit(modality))
        for modality in ("audio", "visual")
    )
    truth = truth.filter(pl.col("video_id").is_in(video_ids)).select(list(DENSE_SCHEMA)).cast(DENSE_SCHEMA)
    gt = dense_to_arrays(truth, video_ids, tables.classes, n_segments)
    quality = {}
    for name, labels_of in LABEL_SETS.items():
        labels = labels_of(catalog, tables, store, video_ids, n_segments)
        if labels is not None:
            quality[name] = _rounded(pseudo_label_quality(labels["audio"], labels["visual"], gt.audio, gt.visual))
    return quality


def encoder_alignment(catalog: Catalog) -> dict[str, Any]:
    """Zero-shot accuracy (%) of the demo's CLIP and CLAP: on held-out corpus items, aligned and
    at random initialisation (their alignment record), and on the test videos' single-class segments."""
    record = json.loads((Path(catalog.encoders.clip.checkpoint).parent / ALIGNMENT_FILE).read_text())  # type: ignore[arg-type]
    media = segment_zero_shot_accuracy(catalog, "test")
    return {
        feature: {
            "corpus_aligned": round(100 * record[feature]["zero_shot_accuracy"], 1),
            "corpus_random_init": round(100 * record[feature]["random_init_zero_shot_accuracy"], 1),
            "test_segments_aligned": round(100 * media[feature], 1),
        }
        for feature in ("clip", "clap")
    }


def run_demo(seed: int, out: Path, prefect: bool) -> dict[str, Any]:
    """One fresh demo; its wall time, its encoders' alignment, its training labels' quality and
    the evaluate record's segment-level scores per model."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    command = [str(UWAV), "demo", "--seed", str(seed), "--out", str(out), *([] if prefect else ["--no-prefect"])]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall_s = time.perf_counter() - start
    catalog = load_catalog(out / DEMO_CATALOG)
    metrics = stage_record(catalog, "evaluate").metrics
    models = {"HAN": metrics["scores"], **metrics["references"]}
    return {
        "seed": seed,
        "wall_s": round(wall_s, 1),
        "test_videos": metrics["videos"],
        "zero_shot_accuracy": encoder_alignment(catalog),
        "training_label_quality": training_label_quality(catalog, out / "data"),
        "scores": {name: _rounded(scores) for name, scores in models.items()},
        "health_warnings": metrics["health_warnings"],
    }


def _print(result: dict[str, Any]) -> None:
    print(f"seed {result['seed']}: {result['wall_s']} s, {result['test_videos']} test videos", flush=True)
    for feature, accuracy in result["zero_shot_accuracy"].items():
        print(
            f"  {feature} zero-shot accuracy: held-out corpus {accuracy['corpus_aligned']:.1f}% "
            f"(random init {accuracy['corpus_random_init']:.1f}%), test segments {accuracy['test_segments_aligned']:.1f}%"
        )
    for title, table in (("training videos' labels", result["training_label_quality"]), ("test scores", result["scores"])):
        print(f"  {title}:")
        for name, scores in table.items():
            print(f"    {name:50s} " + "  ".join(f"{key} {value:5.1f}" for key, value in scores.items()), flush=True)
    for warning in result["health_warnings"]:
        print(f"  warning: {warning}", flush=True)


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
        _print(result)
    han = [result["scores"]["HAN"]["seg_type"] for result in results]
    print(f"HAN seg Type@AV: mean {sum(han) / len(han):.1f}, min {min(han):.1f}", flush=True)
    print(json.dumps({"prefect": args.prefect, "results": results}))


if __name__ == "__main__":
    main()
