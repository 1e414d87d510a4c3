"""Feature store (Zarr v3) and the official LLP feature import (issue #3, sections 3 and 4)."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from uwav.features import FeatureStore, FeatureStoreError, import_official_llp

SHAPES = {"clip": (16,), "frames": (4, 8)}


def expected_features(index: int, n_segments: int = 10) -> dict[str, np.ndarray]:
    """Deterministic features of video number `index`, exact in float16 (the kill -9 child uses it too)."""
    ramp = np.arange(n_segments, dtype=np.float32)[:, None]
    clip = (index % 97) + ramp + np.arange(16, dtype=np.float32)[None, :] / 8
    frames = -((index % 89) + ramp[:, :, None] + np.arange(32, dtype=np.float32).reshape(1, 4, 8) / 8)
    return {"clip": clip, "frames": frames}


def video_ids(n: int, prefix: str = "vid") -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(n)]


def write_all(store: FeatureStore, ids: list[str], first_index: int = 0) -> None:
    for i, video_id in enumerate(ids, start=first_index):
        store.write_video(video_id, expected_features(i, store.registered()[video_id]))


def assert_store_holds(store: FeatureStore, ids: list[str], first_index: int = 0) -> None:
    lengths_wanted = store.registered()
    for name in SHAPES:
        values, lengths = store.read(name, ids)
        assert values.dtype == np.float32
        for row, (i, video_id) in enumerate(enumerate(ids, start=first_index)):
            n = lengths_wanted[video_id]
            assert lengths[row] == n
            np.testing.assert_array_equal(values[row, :n], expected_features(i, n)[name], err_msg=f"{name} {video_id}")
            assert not values[row, n:].any(), f"{name} {video_id}: padding is not zero"


# ---------------------------------------------------------------- round trip and dtype


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip_keeps_values_at_the_store_precision(tmp_path: Path, dtype: str) -> None:
    store = FeatureStore(str(tmp_path / "f.zarr"), dtype=dtype)  # type: ignore[arg-type]
    store.allocate(["long", "short"], [10, 6], {"clip": (3,)})
    long_values = np.random.default_rng(0).standard_normal((10, 3))
    short_values = np.random.default_rng(1).standard_normal((6, 3))
    store.write_video("long", {"clip": long_values})
    store.write_video("short", {"clip": short_values})

    reader = FeatureStore(str(tmp_path / "f.zarr"), dtype=dtype)  # type: ignore[arg-type]
    values, lengths = reader.read("clip", ["short", "long", "short"])
    assert values.shape == (3, 10, 3) and values.dtype == np.float32
    assert lengths.tolist() == [6, 10, 6]
    cast = np.dtype(dtype).type
    np.testing.assert_array_equal(values[0, :6], short_values.astype(cast).astype(np.float32))
    np.testing.assert_array_equal(values[1], long_values.astype(cast).astype(np.float32))
    np.testing.assert_array_equal(values[2], values[0])
    assert not values[0, 6:].any()
    if dtype == "float16":
        assert not np.array_equal(values[1], long_values.astype(np.float32)), "float16 storage should round"
    # only the requested videos' span is returned
    only_short, _ = store.read("clip", ["short"])
    assert only_short.shape == (1, 6, 3)


def test_store_dtype_is_fixed_at_creation(tmp_path: Path) -> None:
    url = str(tmp_path / "f.zarr")
    FeatureStore(url, dtype="float32")
    with pytest.raises(FeatureStoreError, match="holds float32 features"):
        FeatureStore(url)  # default float16
    assert FeatureStore(url, dtype=None).dtype == "float32"


def test_write_checks_shapes_and_values(tmp_path: Path) -> None:
    store = FeatureStore(str(tmp_path / "f.zarr"))
    store.allocate(["a"], [4], {"clip": (3,)})
    with pytest.raises(ValueError, match=r"'a'.*'clip'.*\(4, 3\)"):
        store.write_video("a", {"clip": np.zeros((5, 3))})
    with pytest.raises(ValueError, match="non-finite"):
        store.write_video("a", {"clip": np.full((4, 3), 1e6)})  # beyond float16 range
    with pytest.raises(KeyError, match="never allocated.*'b'"):
        store.write_video("b", {"clip": np.zeros((4, 3))})
    with pytest.raises(KeyError, match="no feature 'clap'"):
        store.write_video("a", {"clap": np.zeros((4, 3))})
    assert store.completed() == set()


# ---------------------------------------------------------------- allocation


def test_allocate_is_idempotent_and_incremental(tmp_path: Path) -> None:
    url = str(tmp_path / "f.zarr")
    store = FeatureStore(url)
    first = video_ids(4)
    store.allocate(first, [10] * 4, SHAPES)
    write_all(store, first)
    old_chunk = tmp_path / "f.zarr" / "features" / "clip" / "c" / "2" / "0"
    written_at = old_chunk.stat().st_mtime_ns

    # The same manifest again changes nothing; a grown manifest adds only the new videos.
    store.allocate(first, [10] * 4, SHAPES)
    grown = first + ["new0", "new1"]
    store.allocate(grown, [10, 10, 10, 10, 10, 23], SHAPES)  # new1 is longer than the time chunk
    assert list(store.registered()) == grown
    todo = [video_id for video_id in grown if video_id not in FeatureStore(url).completed()]
    assert todo == ["new0", "new1"]
    write_all(store, todo, first_index=4)
    assert old_chunk.stat().st_mtime_ns == written_at, "an old video's chunk was rewritten"
    assert FeatureStore(url).completed() == set(grown)
    assert_store_holds(FeatureStore(url), grown)
    values, lengths = store.read("clip", ["vid0000", "new1"])
    assert values.shape == (2, 23, 16) and lengths.tolist() == [10, 23]


def test_allocate_interrupted_before_the_index_is_replaced_leaves_a_usable_store(tmp_path: Path) -> None:
    url = str(tmp_path / "f.zarr")
    store = FeatureStore(url)
    store.allocate(video_ids(3), [10] * 3, SHAPES)
    write_all(store, video_ids(3))
    # What a kill inside `allocate` can leave: arrays already grown, a temporary index never renamed.
    for name in SHAPES:
        store._array(name).resize((8, 20, *SHAPES[name]))
    (tmp_path / "f.zarr" / "index.json.0123abcd.tmp").write_text('{"videos": [["vid00')

    rerun = FeatureStore(url)
    assert list(rerun.registered()) == video_ids(3) and rerun.completed() == set(video_ids(3))
    rerun.allocate(video_ids(5), [10] * 5, SHAPES)
    write_all(rerun, video_ids(5)[3:], first_index=3)
    assert_store_holds(FeatureStore(url), video_ids(5))


def test_allocate_refuses_conflicts(tmp_path: Path) -> None:
    store = FeatureStore(str(tmp_path / "f.zarr"))
    store.allocate(["a"], [10], {"clip": (16,)}, encoder_identities={"clip": "ViT-B-32/openai"})
    with pytest.raises(FeatureStoreError, match="'a' is registered with 10 segments"):
        store.allocate(["a"], [9], {})
    # Both say what to do: the configured encoders are not those the stored features came from.
    with pytest.raises(FeatureStoreError, match=r"'clip' has segment shape \(16,\).*delete this one to encode every video again"):
        store.allocate([], [], {"clip": (32,)})
    with pytest.raises(FeatureStoreError, match="computed by encoder 'ViT-B-32/openai'.*point `stores.features` at another store"):
        store.allocate([], [], {"clip": (16,)}, encoder_identities={"clip": "ViT-L-14/openai"})
    with pytest.raises(ValueError, match="at least 1"):
        store.allocate(["empty"], [0], {})
    store.allocate(["a", "b"], [10, 10], {"clip": (16,)}, encoder_identities={"clip": "ViT-B-32/openai"})
    assert store.encoder_identity("clip") == "ViT-B-32/openai"
    assert store.feature_shape("clip") == (16,)


# ---------------------------------------------------------------- completion


def test_data_without_completion_record_is_invisible(tmp_path: Path) -> None:
    url = str(tmp_path / "f.zarr")
    store = FeatureStore(url)
    store.allocate(["done", "torn"], [10, 10], SHAPES)
    store.write_video("done", expected_features(0))
    # A writer killed after its data and before its completion records: the data is there ...
    for name, values in expected_features(1).items():
        store._array(name)[1] = values  # slot 1 is "torn"
    # ... and one killed between the records of two features.
    (tmp_path / "f.zarr" / "done" / "clip" / "1").touch()

    reader = FeatureStore(url)
    assert reader.completed() == {"done"}
    assert reader.completed(["clip"]) == {"done", "torn"}
    assert not reader.has("torn") and reader.has("torn", ["clip"]) and reader.has("done")
    with pytest.raises(KeyError, match="'frames' is not complete for videos \\['torn'\\]"):
        reader.read("frames", ["done", "torn"])
    # The next run rewrites it and it becomes visible.
    reader.write_video("torn", expected_features(1))
    assert reader.completed() == {"done", "torn"}
    assert_store_holds(reader, ["done", "torn"])


def test_missing_features_read_as_zeros_and_are_reported(tmp_path: Path) -> None:
    store = FeatureStore(str(tmp_path / "f.zarr"))
    store.allocate(["with_audio", "silent"], [10, 10], {"clap": (4,), "clip": (4,)})
    store.write_video("with_audio", {"clap": np.ones((10, 4)), "clip": np.ones((10, 4))})
    store.write_video("silent", {"clap": np.ones((10, 4)), "clip": np.ones((10, 4))})
    # Recomputed without an audio stream: the old audio values must not survive.
    store.write_video("silent", {"clip": np.full((10, 4), 2.0)}, missing=["clap"])
    assert store.completed() == {"with_audio", "silent"}
    clap, _ = store.read("clap", ["with_audio", "silent"])
    assert clap[0].all() and not clap[1].any()
    assert store.available("clap", ["with_audio", "silent"]).tolist() == [True, False]
    assert store.available("clip", ["silent"]).tolist() == [True]
    # Written again with audio: available again.
    store.write_video("silent", {"clap": np.full((10, 4), 3.0)})
    assert store.available("clap", ["silent"]).tolist() == [True]
    with pytest.raises(ValueError, match="both given and missing"):
        store.write_video("silent", {"clap": np.ones((10, 4))}, missing=["clap"])


# ---------------------------------------------------------------- parallel writers


def test_parallel_writes_from_threads(tmp_path: Path) -> None:
    store = FeatureStore(str(tmp_path / "f.zarr"))
    ids = video_ids(48)
    store.allocate(ids, [10] * 48, SHAPES)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: store.write_video(ids[i], expected_features(i)), range(len(ids))))
    reader = FeatureStore(str(tmp_path / "f.zarr"))
    assert reader.completed() == set(ids)
    assert_store_holds(reader, ids)


def test_parallel_writes_from_a_process_pool(tmp_path: Path) -> None:
    store = FeatureStore(str(tmp_path / "f.zarr"))
    ids = video_ids(24)
    store.allocate(ids, [10] * 24, SHAPES)
    # The store pickles to its location, so a bound `write_video` ships to worker processes.
    assert pickle.loads(pickle.dumps(store)).url == store.url
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(store.write_video, ids, [expected_features(i) for i in range(len(ids))]))
    assert store.completed() == set(ids)
    assert_store_holds(FeatureStore(str(tmp_path / "f.zarr")), ids)


# ---------------------------------------------------------------- fsspec URLs and the local fast path


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_fsspec_urls(tmp_path: Path, scheme: str) -> None:
    url = f"memory://uwav-test-{uuid.uuid4().hex}/f.zarr" if scheme == "memory" else (tmp_path / "f.zarr").as_uri()
    store = FeatureStore(url, storage_options={})
    ids = video_ids(5)
    store.allocate(ids, [10, 10, 10, 10, 14], SHAPES)
    write_all(store, ids[:4])
    store.write_video(ids[4], {"clip": expected_features(4, 14)["clip"]}, missing=["frames"])
    store.write_text_embeddings("clip", ["a dog", "a cat"], np.eye(2, 16), "ViT-B-32/openai")

    reopened = FeatureStore(url)
    assert reopened.completed() == set(ids)
    assert_store_holds(reopened, ids[:4])
    assert reopened.available("frames", ids).tolist() == [True] * 4 + [False]
    values, lengths = reopened.read("clip", ids[3:])
    np.testing.assert_array_equal(values[1], expected_features(4, 14)["clip"])
    assert lengths.tolist() == [10, 14]
    assert reopened.read_text_embeddings("clip", ["a dog", "a cat"], "ViT-B-32/openai").shape == (2, 16)


def test_local_fast_read_matches_zarr_read(tmp_path: Path) -> None:
    """The plain-file read of a local store gives what zarr itself reads (the file:// URL path)."""
    store = FeatureStore(str(tmp_path / "f.zarr"))
    ids = video_ids(7)
    store.allocate(ids[:5], [10] * 5, SHAPES)
    store.allocate(ids[5:], [25, 3], SHAPES)  # a row spanning three time chunks, and a short one
    for i, video_id in enumerate(ids[:6]):
        store.write_video(video_id, expected_features(i, store.registered()[video_id]))
    store.write_video(ids[6], {"clip": expected_features(6, 3)["clip"]}, missing=["frames"])
    through_zarr = FeatureStore((tmp_path / "f.zarr").as_uri())
    order = [ids[5], ids[0], ids[6], ids[3], ids[0]]
    for name in SHAPES:
        fast, fast_lengths = store.read(name, order)
        slow, slow_lengths = through_zarr.read(name, order)
        assert fast.shape == slow.shape == (5, 25, *SHAPES[name])
        np.testing.assert_array_equal(fast, slow)
        np.testing.assert_array_equal(fast_lengths, slow_lengths)


def test_local_fast_write_gives_what_zarr_writes(tmp_path: Path) -> None:
    """Chunk files written directly on a local disk are what zarr writes through a file:// URL
    (byte for byte, the same files), including a row over several time chunks and a missing
    feature (its chunks deleted, as zarr deletes chunks of zeros)."""
    stores = {kind: FeatureStore(str(tmp_path / f"{kind}.zarr")) for kind in ("local", "url")}
    stores["url"] = FeatureStore((tmp_path / "url.zarr").as_uri())
    ids = video_ids(4)
    for store in stores.values():
        store.allocate(ids[:2], [10, 10], SHAPES)
        store.allocate(ids[2:], [25, 3], SHAPES)
        for i, video_id in enumerate(ids[:3]):
            store.write_video(video_id, expected_features(i, store.registered()[video_id]))
        store.write_video(ids[3], {"clip": expected_features(3, 3)["clip"]}, missing=["frames"])
        store.write_video(ids[0], expected_features(9, 10))  # a rewrite replaces the chunks

    def chunk_files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "features").rglob("*")) if p.is_file() and "/c/" in str(p)}

    local, through_zarr = chunk_files(tmp_path / "local.zarr"), chunk_files(tmp_path / "url.zarr")
    assert local.keys() == through_zarr.keys() and local == through_zarr
    assert not any(name.endswith(".partial") for name in local)
    read, _ = stores["url"].read("frames", [ids[3]])
    assert not read.any()


# ---------------------------------------------------------------- text embeddings


def test_text_embeddings_are_invalidated_by_other_prompts_or_encoder(tmp_path: Path) -> None:
    store = FeatureStore(str(tmp_path / "f.zarr"))
    prompts = ["A photo of Dog", "A photo of Cat"]
    assert store.read_text_embeddings("clip", prompts, "ViT-B-32/openai") is None
    embeddings = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    store.write_text_embeddings("clip", prompts, embeddings, "ViT-B-32/openai")

    reader = FeatureStore(str(tmp_path / "f.zarr"))
    np.testing.assert_array_equal(reader.read_text_embeddings("clip", prompts, "ViT-B-32/openai"), embeddings)
    np.testing.assert_array_equal(reader.read_text_embeddings("clip"), embeddings)
    assert reader.text_embedding_info("clip") == (prompts, "ViT-B-32/openai")
    assert reader.read_text_embeddings("clip", ["A photo of Cat", "A photo of Dog"], "ViT-B-32/openai") is None
    assert reader.read_text_embeddings("clip", prompts[:1], "ViT-B-32/openai") is None
    assert reader.read_text_embeddings("clip", prompts, "ViT-L-14/openai") is None
    assert reader.read_text_embeddings("clap", prompts) is None
    with pytest.raises(ValueError, match="3 prompts"):
        reader.write_text_embeddings("clip", prompts + ["x"], embeddings, "ViT-B-32/openai")
    # Replaced with new prompts: the old ones no longer match.
    reader.write_text_embeddings("clip", prompts[:1], embeddings[:1], "ViT-B-32/openai")
    assert reader.read_text_embeddings("clip", prompts, "ViT-B-32/openai") is None
    # Values written but the prompts not yet recorded (an interrupted write) read as absent.
    store._text.create_array("clap", shape=(2, 8), dtype="float32", fill_value=0)
    assert store.read_text_embeddings("clap") is None


# ---------------------------------------------------------------- kill -9 and resume

WRITER = """
import sys, time
sys.path.insert(0, {tests_dir!r})
from test_feature_store import expected_features
from uwav.features import FeatureStore

store = FeatureStore({url!r})
ids = list(store.registered())
done = store.completed()
for index, video_id in enumerate(ids):
    if video_id in done:
        continue
    store.write_video(video_id, expected_features(index))
    print(video_id, flush=True)
    time.sleep({delay})
"""


def run_writer(url: str, tmp_path: Path, delay: float) -> subprocess.Popen[str]:
    script = tmp_path / f"writer_{delay}.py"
    script.write_text(WRITER.format(tests_dir=str(Path(__file__).parent), url=url, delay=delay))
    return subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_9_then_rerun_completes_only_the_missing_videos(tmp_path: Path) -> None:
    url = str(tmp_path / "f.zarr")
    ids = video_ids(60)
    FeatureStore(url).allocate(ids, [10] * len(ids), SHAPES)

    writer = run_writer(url, tmp_path, delay=0.002)
    assert writer.stdout is not None
    written_before_kill = [writer.stdout.readline().strip() for _ in range(12)]
    time.sleep(0.003)  # a write takes a few ms: the kill lands inside one, after some of its chunks or none
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL
    assert all(written_before_kill), writer.stderr.read() if writer.stderr else ""

    after_kill = FeatureStore(url).completed()
    assert set(written_before_kill) <= after_kill and len(after_kill) < len(ids)
    for name in SHAPES:  # every visible video holds exactly its values
        values, _ = FeatureStore(url).read(name, sorted(after_kill))
        for row, video_id in enumerate(sorted(after_kill)):
            np.testing.assert_array_equal(values[row], expected_features(ids.index(video_id))[name])

    rerun = run_writer(url, tmp_path, delay=0)
    stdout, stderr = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, stderr
    written_in_rerun = stdout.split()
    assert len(written_in_rerun) == len(ids) - len(after_kill)
    assert set(written_in_rerun) == set(ids) - after_kill
    final = FeatureStore(url)
    assert final.completed() == set(ids)
    assert_store_holds(final, ids)


# ---------------------------------------------------------------- official LLP features

LLP_SHAPES = {"vggish": (10, 128), "res152": (80, 2048), "r2plus1d_18": (10, 512)}


def official_values(video_number: int, folder: str) -> np.ndarray:
    rows, columns = LLP_SHAPES[folder]
    return (np.arange(rows * columns, dtype=np.float32).reshape(rows, columns) % 251) / 4 + video_number


def make_release(root: Path, videos: dict[str, int]) -> None:
    for folder in LLP_SHAPES:
        (root / folder).mkdir(parents=True, exist_ok=True)
        for video_id, number in videos.items():
            np.save(root / folder / f"{video_id[:11]}.npy", official_values(number, folder))


def test_official_import_reports_bad_files_and_imports_the_good(tmp_path: Path) -> None:
    feats = tmp_path / "feats"
    good = {"BjCEufrlXm4_20_30": 1, "--HuBNHXu9I_0_10": 2, "aaaaaaaaaaa_5_15": 3}
    bad = {"noVggish000_0_10": 4, "shortRes152_0_10": 5, "nanR2plus1d_0_10": 6, "garbage0000_0_10": 7}
    make_release(feats, good | bad)
    (feats / "vggish" / "noVggish000.npy").unlink()
    np.save(feats / "res152" / "shortRes152.npy", np.zeros((79, 2048), np.float32))
    nan_values = official_values(6, "r2plus1d_18")
    nan_values[3, 7] = np.nan
    np.save(feats / "r2plus1d_18" / "nanR2plus1d.npy", nan_values)
    (feats / "vggish" / "garbage0000.npy").write_bytes(b"not a numpy file")
    np.save(feats / "res152" / "garbage0000.npy", np.array([{"pickled": 1}], dtype=object), allow_pickle=True)

    store = FeatureStore(str(tmp_path / "f.zarr"))
    requested = [*good, *bad]
    report = import_official_llp(store, feats, requested, workers=3)

    assert sorted(report.imported) == sorted(good)
    assert report.already_complete == []
    problems = {(row["video_id"], row["kind"], row["problem"]) for row in report.problems.iter_rows(named=True)}
    assert problems == {
        ("noVggish000_0_10", "vggish", "missing"),
        ("shortRes152_0_10", "res152", "misshapen"),
        ("nanR2plus1d_0_10", "r2plus1d_18", "invalid values"),
        ("garbage0000_0_10", "vggish", "unreadable"),
        ("garbage0000_0_10", "res152", "unreadable"),
    }
    assert report.problems.filter(pl.col("problem") == "misshapen")["detail"].item() == (
        "shape (79, 2048), expected (80, 2048)"
    )
    assert sorted(report.skipped) == sorted(bad)
    summary = report.summary()
    assert "7 videos requested, 3 imported, 0 already in the store, 4 skipped" in summary
    assert "res152: 1 misshapen" in summary and "vggish: 1 missing" in summary

    names = ["vggish", "resnet152", "resnet152_mean", "r2plus1d"]
    assert store.completed(names) == set(good)
    video_id, number = "BjCEufrlXm4_20_30", good["BjCEufrlXm4_20_30"]
    frames, lengths = store.read("resnet152", [video_id])
    assert frames.shape == (1, 10, 8, 2048) and lengths.tolist() == [10]
    source = official_values(number, "res152").astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(frames[0].reshape(80, 2048), source)
    mean, _ = store.read("resnet152_mean", [video_id])
    np.testing.assert_allclose(
        mean[0], official_values(number, "res152").reshape(10, 8, 2048).mean(axis=1), rtol=1e-3, atol=1e-3
    )
    vggish, _ = store.read("vggish", [video_id])
    np.testing.assert_array_equal(vggish[0], official_values(number, "vggish").astype(np.float16))
    assert store.encoder_identity("r2plus1d") == "llp-official/r2plus1d_18"

    # Resumable: the good ones are not reloaded; a repaired file is imported on the next run.
    np.save(feats / "vggish" / "noVggish000.npy", official_values(4, "vggish"))
    again = import_official_llp(store, feats, requested)
    assert sorted(again.already_complete) == sorted(good)
    assert again.imported == ["noVggish000_0_10"]
    assert store.completed(names) == set(good) | {"noVggish000_0_10"}


def test_official_import_refuses_a_wrong_root_and_segment_conflicts(tmp_path: Path) -> None:
    store = FeatureStore(str(tmp_path / "f.zarr"))
    with pytest.raises(FileNotFoundError, match="res152"):
        (tmp_path / "feats" / "vggish").mkdir(parents=True)
        import_official_llp(store, tmp_path / "feats", ["BjCEufrlXm4_20_30"])
    make_release(tmp_path / "feats", {"BjCEufrlXm4_20_30": 1, "abcdefghijk_0_9": 2})
    store.allocate(["abcdefghijk_0_9"], [9], {"clip": (4,)})  # registered from a 9-s manifest entry
    report = import_official_llp(store, tmp_path / "feats", ["BjCEufrlXm4_20_30", "abcdefghijk_0_9"])
    assert report.imported == ["BjCEufrlXm4_20_30"]
    assert report.problems.select("video_id", "problem").rows() == [("abcdefghijk_0_9", "segment count")]
    # Renamed features leave room for an encoder-computed r2plus1d in the same store.
    store.allocate([], [], {"r2plus1d_tv": (512,)}, encoder_identities={"r2plus1d_tv": "torchvision/r2plus1d_18"})
    renamed = import_official_llp(
        store, tmp_path / "feats", ["BjCEufrlXm4_20_30"], names={"r2plus1d": "r2plus1d_official"}
    )
    assert renamed.imported == ["BjCEufrlXm4_20_30"]
    assert "r2plus1d_official" in store.feature_names()
