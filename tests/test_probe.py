"""Media probing of the segment stage: cached by (path, size, mtime), unusable media quarantined."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import polars as pl
import pytest

from uwav.contracts import validate_manifest
from uwav.media.probe import load_probe_cache, probe_manifest, unprobed_paths
from uwav.media.quarantine import QuarantineLog


def manifest(rows: list[tuple[str, str | None, int]]) -> pl.DataFrame:
    return validate_manifest(pl.DataFrame(
        [{"video_id": v, "dataset": "t", "split": "train", "media_path": p, "duration_s": float(n), "n_segments": n, "labels": []}
         for v, p, n in rows]
    ))


def test_probe_cache_and_quarantine(shared_data: Path, tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    shutil.copyfile(shared_data / "llp" / "videos" / "BjCEufrlXm4.mp4", video)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not media")
    cache = tmp_path / "probe_cache.parquet"
    log = QuarantineLog()
    table = manifest([("good", str(video), 10), ("long", str(video), 12), ("junk", str(junk), 10), ("none", None, 10)])
    probed = probe_manifest(table, log, cache_path=cache)
    paths = dict(probed.select("video_id", "media_path").iter_rows())
    assert paths == {"good": str(video), "long": None, "junk": None, "none": None}
    assert log.video_ids("segment") == {"long", "junk"}
    assert load_probe_cache(cache).height == 2
    assert unprobed_paths([str(video), str(junk)], load_probe_cache(cache)) == []
    # A changed file is probed again; an unchanged one is not.
    junk.write_bytes(b"still not media, but longer")
    os.utime(junk, ns=(1, 1))
    assert unprobed_paths([str(video), str(junk)], load_probe_cache(cache)) == [str(junk)]


def test_missing_file_is_reported_not_raised(tmp_path: Path) -> None:
    log = QuarantineLog()
    probed = probe_manifest(manifest([("gone", str(tmp_path / "gone.mp4"), 10)]), log, cache_path=tmp_path / "c.parquet")
    assert probed["media_path"].to_list() == [None]
    assert log.video_ids() == {"gone"}


@pytest.mark.parametrize("workers", [1, 3])
def test_probe_results_do_not_depend_on_workers(shared_data: Path, tmp_path: Path, workers: int) -> None:
    from uwav.media.probe import probe_paths

    paths = [str(shared_data / "llp" / "videos" / "BjCEufrlXm4.mp4"), str(shared_data / "unav100" / "videos" / "--HuBNHXu9I.mp4")]
    durations = probe_paths(paths, workers=workers)["duration_s"].to_list()
    assert [round(d) for d in durations] == [10, 60]
