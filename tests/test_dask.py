"""Scale-out: the features stage fanned out over a 2-worker Dask LocalCluster fills the store
exactly as the threaded run does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from uwav.catalog import load_catalog
from uwav.demo import RANDOM_INIT_ENCODERS, demo_catalog
from uwav.features.store import FeatureStore
from uwav.stages import state_dir

pytestmark = pytest.mark.usefixtures("prefect_server")


def media_catalog(folder: Path, media: Path, **orchestration: object) -> Path:
    """The demo catalog at a few videos; both runs read the synthetic media generated in `media`."""
    data = demo_catalog(4, RANDOM_INIT_ENCODERS)
    for dataset in data["datasets"].values():
        dataset["synthetic"].update(n_pretrain=3, n_train=6, n_val=2, n_test=2)
        dataset["annotations"] = str(media)
    data["orchestration"] = orchestration
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "data_catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_features_on_a_local_dask_cluster_equal_the_threaded_run(tmp_path: Path) -> None:
    from flows.pipeline import uwav_flow

    threaded = media_catalog(tmp_path / "threaded", tmp_path / "media")
    clustered = media_catalog(tmp_path / "dask", tmp_path / "media", dask_local_workers=2)
    for path in (threaded, clustered):
        state = uwav_flow(catalog=str(path), stages=["features"], return_state=True)
        assert state.is_completed(), state

    stores = [FeatureStore(load_catalog(path).store("features"), dtype=None) for path in (threaded, clustered)]
    assert stores[0].completed() == stores[1].completed() and len(stores[0].completed()) == 3 + 6 + 2 + 2
    videos = sorted(stores[0].completed())
    for name in ("clip", "clap", "r2plus1d"):
        values, lengths = stores[0].read(name, videos)
        other_values, other_lengths = stores[1].read(name, videos)
        np.testing.assert_array_equal(lengths, other_lengths)
        np.testing.assert_array_equal(values, other_values)
    # Segment fan-out: the cluster probed every media file and the stage used the cached results.
    from uwav.media.probe import load_probe_cache
    from uwav.stages.segment import probe_cache_path

    manifests = [pl.read_parquet(state_dir(load_catalog(p)).record("segment").outputs["target_manifest"]) for p in (threaded, clustered)]
    assert manifests[0].equals(manifests[1])
    cache = load_probe_cache(probe_cache_path(load_catalog(clustered)))
    assert cache.height == 3 + 6 + 2 + 2 and cache["reason"].null_count() == cache.height
    # In the clustered run the stage itself found every video done by the fan-out tasks.
    extraction = state_dir(load_catalog(clustered)).record("features").metrics["target_extraction"]
    assert extraction["computed"] == 0 and extraction["already_complete"] == 6 + 2 + 2
