"""Importing a whole feature release (issue #12 section 3): LLP (11,849 videos, five files each:
CLIP, CLAP, VGGish, ResNet-152, R(2+1)D) and UnAV-100 (10,790 videos, CLIP and CLAP) into a
feature store, in under 2 minutes on a 2-core machine.

A release of the real shapes and sizes (float32 .npy files; UnAV-100 files with one row per
0.96 s of the video's duration, as a feature extractor would give) is generated under a temporary
folder for the video ids of the real annotation files (`--data`, default ../shared/data), or for
made-up ids of the same counts when they are absent. Then, timed: the features stage's import
(`uwav.stages.features.import_release` reads the same functions: the released CLIP/CLAP segment
features and text embeddings of both datasets, and the AVVP features of LLP) into a float16 store;
then a second import of the unchanged release, which must read no array file.

Reported: seconds and videos/s per part and in total, the number of array files read by the
second import, and whether the generated files were in the page cache (they are, right after
generation, unless `--drop-caches` can drop them: a cold read of ~11 GB takes longer on a slow disk).

    .venv/bin/python benchmarks/bench_import.py                     # full scale (~11 GB of files)
    .venv/bin/python benchmarks/bench_import.py --fraction 0.05     # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl

from uwav.datasets import read_llp, read_unav100
from uwav.datasets.llp import LLP_CLASSES
from uwav.features import official, released
from uwav.features.store import FeatureStore

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LLP_VIDEOS, UNAV_VIDEOS, UNAV_MEAN_S = 11_849, 10_790, 42.0
UNAV_ROWS_PER_S = 1 / 0.96  # one feature row per 0.96-s window


def manifests(data: Path, fraction: float) -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:
    """(LLP manifest, UnAV-100 manifest, UnAV-100 classes): the real ones when `data` holds them."""
    llp_dir, unav_json = data / "llp", data / "unav100" / "unav100_annotations.json"
    if (llp_dir / "AVVP_train.csv").is_file() and unav_json.is_file():
        llp, _ = read_llp(llp_dir)
        unav, _ = read_unav100(unav_json)
        classes = json.loads(unav_json.read_text())["database"]
        labels = sorted({(a["label_id"], a["label"]) for v in classes.values() for a in v["annotations"]})
        unav_classes = [label for _, label in labels]
    else:
        rng = np.random.default_rng(0)
        llp = pl.DataFrame({"video_id": [f"v{i:010d}_0_10" for i in range(LLP_VIDEOS)], "n_segments": [10] * LLP_VIDEOS})
        durations = rng.gamma(4.0, UNAV_MEAN_S / 4.0, UNAV_VIDEOS).clip(2, 60)
        unav = pl.DataFrame({
            "video_id": [f"u{i:010d}" for i in range(UNAV_VIDEOS)],
            "duration_s": durations, "n_segments": np.ceil(durations).astype(int),
        })  # fmt: skip
        unav_classes = [f"class {i}" for i in range(100)]
    take = lambda frame: frame.head(max(1, round(frame.height * fraction)))  # noqa: E731
    return take(llp), take(unav), unav_classes


def generate_release(root: Path, llp: pl.DataFrame, unav: pl.DataFrame, n_unav_classes: int) -> float:
    """Write the release's files (random values, the real shapes); returns the bytes written."""
    rng = np.random.default_rng(0)
    # A few random arrays per shape, written round-robin: generating 11 GB of random numbers
    # would dominate the set-up for nothing.
    pool = {shape: [rng.standard_normal(shape).astype(np.float32) for _ in range(4)] for shape in
            [(10, 768), (10, 512), (10, 128), (80, 2048)]}  # fmt: skip
    jobs: list[tuple[Path, np.ndarray]] = []
    for i, video_id in enumerate(llp["video_id"].to_list()):
        stem = video_id[:11]
        for folder, shape in (
            ("LLP/feats_CLIP/segment_feats", (10, 768)), ("LLP/feats_CLAP/segment_feats", (10, 512)),
            ("LLP/feats/vggish", (10, 128)), ("LLP/feats/res152", (80, 2048)), ("LLP/feats/r2plus1d_18", (10, 512)),
        ):  # fmt: skip
            jobs.append((root / folder / f"{stem}.npy", pool[shape][i % 4]))
    unav_pool = {dim: rng.standard_normal((64, dim)).astype(np.float32) for dim in (768, 512)}
    for video_id, duration in zip(unav["video_id"].to_list(), unav["duration_s"].to_list(), strict=True):
        rows = max(1, round(duration * UNAV_ROWS_PER_S))
        for folder, dim in (("UnAV/feats_CLIP/segment_feats", 768), ("UnAV/feats_CLAP/segment_feats", 512)):
            jobs.append((root / folder / f"{video_id}.npy", np.resize(unav_pool[dim], (rows, dim))))
    for dataset, count in (("LLP", len(LLP_CLASSES)), ("UnAV", n_unav_classes)):
        for encoder, dim in (("CLIP", 768), ("CLAP", 512)):
            jobs.append((root / dataset / f"feats_{encoder}/event_feats/all_event_feats.npy", rng.standard_normal((count, dim)).astype(np.float32)))
    for folder in {path.parent for path, _ in jobs}:
        folder.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(8) as pool_exec:
        list(pool_exec.map(lambda job: np.save(job[0], job[1]), jobs))
    return float(sum(values.nbytes for _, values in jobs))


def drop_page_cache() -> bool:
    """Drop the OS page cache (root on Linux only); True when it worked."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def timed_import(store: FeatureStore, root: Path, llp: pl.DataFrame, unav: pl.DataFrame, unav_classes: list[str], workers: int) -> dict[str, float]:
    """The features stage's import of both datasets; seconds per part."""
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    for kind, manifest, classes, role in (("llp", llp, list(LLP_CLASSES), "target"), ("unav100", unav, unav_classes, "pretrain")):
        layout = released.find_release(root, kind)
        released.import_released_text(store, layout, classes, role)
        report = released.import_released_segments(store, layout, manifest, workers=workers)
        seconds[f"{kind}_clip_clap_s"] = time.perf_counter() - started
        seconds[f"{kind}_clip_clap_imported"] = len(report.imported)
        started = time.perf_counter()
    report = official.import_official_llp(
        store, released.official_features_folder(root), llp["video_id"].to_list(), workers=workers, keep_frames=False
    )  # the features stage's default (`stages.features.resnet_frames: false`)
    seconds["llp_avvp_s"] = time.perf_counter() - started
    seconds["llp_avvp_imported"] = len(report.imported)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="real annotation files (video ids and durations)")
    parser.add_argument("--fraction", type=float, default=1.0, help="share of the videos (1 = full scale)")
    parser.add_argument("--workers", type=int, default=4, help="import threads (the features stage's `workers`)")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the release and store go (default: a temporary folder)")
    parser.add_argument("--drop-caches", action="store_true", help="drop the page cache before the first import (needs root)")
    args = parser.parse_args()

    llp, unav, unav_classes = manifests(args.data, args.fraction)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_import_"))
    try:
        started = time.perf_counter()
        written = generate_release(work / "release", llp, unav, len(unav_classes))
        generate_s = time.perf_counter() - started
        print(f"generated {llp.height} LLP + {unav.height} UnAV-100 videos, {written / 1e9:.1f} GB in {generate_s:.0f} s", flush=True)
        cold = drop_page_cache() if args.drop_caches else False
        store = FeatureStore(str(work / "store.zarr"), dtype="float16")
        started = time.perf_counter()
        parts = timed_import(store, work / "release", llp, unav, unav_classes, args.workers)
        total_s = time.perf_counter() - started
        videos = llp.height + unav.height
        print(f"first import: {total_s:.1f} s, {videos / total_s:.0f} videos/s ({json.dumps({k: round(v, 1) for k, v in parts.items()})})")

        reads = 0
        real_load = np.load

        def counting_load(*a: object, **k: object) -> object:
            nonlocal reads
            reads += 1
            return real_load(*a, **k)

        np.load = counting_load  # type: ignore[assignment]
        try:
            started = time.perf_counter()
            timed_import(store, work / "release", llp, unav, unav_classes, args.workers)
            second_s = time.perf_counter() - started
        finally:
            np.load = real_load  # type: ignore[assignment]
        text_reads = 4  # the class text embeddings are re-read (4 small files)
        print(f"second import of the unchanged release: {second_s:.1f} s, {reads - text_reads} segment array files read")
        print(json.dumps({
            "llp_videos": llp.height, "unav_videos": unav.height, "files_gb": round(written / 1e9, 2),
            "generate_s": round(generate_s, 1), "import_s": round(total_s, 1), "videos_per_s": round(videos / total_s, 1),
            "parts": {k: round(v, 1) for k, v in parts.items()}, "second_import_s": round(second_s, 2),
            "second_import_segment_files_read": reads - text_reads, "page_cache_dropped": cold,
            "workers": args.workers, "cpus": os.cpu_count(),
        }))  # fmt: skip
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
