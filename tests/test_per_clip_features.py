"""The feature store's per-clip features (one array per clip whose rows are not segments, such as
VALOR's CLAP feature maps): written, read and grown beside per-segment features, on a local
store (chunk files read and written directly) and an fsspec one (zarr's own path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from uwav.features import FeatureStore, FeatureStoreError

MAPS = (6, 4)  # a small stand-in for (64, 768)


def maps_of(index: int) -> np.ndarray:
    return index + np.arange(np.prod(MAPS), dtype=np.float32).reshape(MAPS) / 8


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> FeatureStore:
    url = str(tmp_path / "f.zarr") if request.param == "local" else f"memory://per-clip-{tmp_path.name}.zarr"
    return FeatureStore(url, dtype="float32")


def test_a_per_clip_feature_is_one_array_per_video_beside_per_segment_ones(store: FeatureStore) -> None:
    store.allocate(["a", "b"], [10, 7], {"clip": (3,), "maps": MAPS}, per_clip=["maps"])
    for index, (video_id, n) in enumerate((("a", 10), ("b", 7))):
        store.write_video(video_id, {"clip": np.full((n, 3), index + 1.0), "maps": maps_of(index)})
    assert store.is_per_clip("maps") and not store.is_per_clip("clip")
    assert store.feature_shape("maps") == MAPS

    values, lengths = store.read("maps", ["b", "a"])
    assert values.shape == (2, *MAPS) and values.dtype == np.float32  # no segment axis
    np.testing.assert_array_equal(values, np.stack([maps_of(1), maps_of(0)]))
    assert lengths.tolist() == [7, 10]  # the videos' segment counts, as for every feature
    segments, lengths = store.read("clip", ["b", "a"])
    assert segments.shape == (2, 10, 3) and lengths.tolist() == [7, 10]

    # A longer video grows the segment axis of per-segment features only.
    store.allocate(["long"], [60], {"clip": (3,), "maps": MAPS}, per_clip=["maps"])
    store.write_video("long", {"clip": np.ones((60, 3)), "maps": maps_of(2)})
    values, lengths = store.read("maps", ["a", "long"])
    np.testing.assert_array_equal(values, np.stack([maps_of(0), maps_of(2)]))
    assert lengths.tolist() == [10, 60]
    assert store.read("clip", ["a", "long"])[0].shape == (2, 60, 3)
    assert store.read("maps", [])[0].shape == (0, *MAPS)


def test_a_per_clip_feature_written_as_missing_reads_as_zeros(store: FeatureStore) -> None:
    store.allocate(["a", "b"], [10, 10], {"maps": MAPS}, per_clip=["maps"])
    store.write_video("a", {"maps": maps_of(3)})
    store.write_video("b", {}, missing=["maps"])
    values, _ = store.read("maps", ["a", "b"])
    assert store.available("maps", ["a", "b"]).tolist() == [True, False]
    np.testing.assert_array_equal(values[0], maps_of(3))
    assert not values[1].any()


def test_per_clip_contract_errors_name_the_feature(store: FeatureStore) -> None:
    store.allocate(["a"], [10], {"maps": MAPS, "clip": (3,)}, per_clip=["maps"])
    with pytest.raises(ValueError, match=r"'maps' has shape \(10, 6, 4\), expected \(6, 4\)"):
        store.write_video("a", {"maps": np.zeros((10, *MAPS))})  # a clip's array has no segment axis
    with pytest.raises(FeatureStoreError, match="'maps' is per-clip, allocate asked for a per-segment one"):
        store.allocate(["a"], [10], {"maps": MAPS})
    with pytest.raises(FeatureStoreError, match="'clip' is per-segment, allocate asked for a per-clip one"):
        store.allocate(["a"], [10], {"clip": (3,)}, per_clip=["clip"])
    with pytest.raises(FeatureStoreError, match=r"'maps' has clip shape \(6, 4\), allocate asked for \(6, 5\)"):
        store.allocate(["a"], [10], {"maps": (6, 5)}, per_clip=["maps"])
    with pytest.raises(ValueError, match="per-clip features not in `shapes`"):
        store.allocate(["a"], [10], {"clip": (3,)}, per_clip=["maps"])


def test_a_reopened_store_knows_its_per_clip_features(tmp_path: Path) -> None:
    url = str(tmp_path / "f.zarr")
    first = FeatureStore(url, dtype="float16")
    first.allocate(["a"], [10], {"maps": MAPS}, per_clip=["maps"])
    first.write_video("a", {"maps": maps_of(1)})
    again = FeatureStore(url, dtype=None)
    assert again.is_per_clip("maps")
    np.testing.assert_array_equal(again.read("maps", ["a"])[0][0], maps_of(1).astype(np.float16))
