"""Zarr v3 feature store: per-segment (and per-clip) features of every video, written in parallel, read in bulk.

Layout of one store (a local folder or an fsspec URL such as `memory://x` or `s3://bucket/x`)::

    zarr.json                  root group; attributes {uwav_feature_store: 1, dtype: float16|float32}
    index.json                 the video index: [[video_id, n_segments], ...]; a video's slot is its position
    features/<name>            array (slots, T, *shape) of the store dtype, chunks (1, Tc, *shape), fill 0;
                               attributes {encoder_identity, segment_shape}; a per-clip feature is
                               (slots, 1, *shape) with chunks (1, 1, *shape) and attributes
                               {encoder_identity, clip_shape}
    text/<name>                array (C, D) float32; attributes {prompts, encoder_identity}
    done/<name>/<slot>         empty object: the video in <slot> is complete for feature <name>
    missing/<name>/<slot>      empty object: the video has no <name> feature (e.g. no audio stream)

Design (why it is safe to run writers in parallel and to kill them):

- Every video owns one row of slots in every feature array and the chunk shape is one slot wide,
  so two videos never share a chunk, hence parallel writers (threads, processes, Dask workers)
  never read-modify-write the same object. Sharding is not used: a shard holds several videos and
  a write to one of them rewrites the whole shard. Chunks are uncompressed: float features barely
  compress (zstd saves ~8% on float16 CLIP-like data) and the codec doubles the read time.
- The time axis: `Tc`, the chunk length in segments, is fixed when an array is created (the
  longest allocated video rounded up to a multiple of 10). A later, longer video grows the time
  axis with `resize` (metadata only); its row then spans several chunks, all in its own slot, so
  nothing is ever re-chunked or rewritten.
- `allocate` is the single coordinator step: it registers new videos (slots are appended, never
  reused), creates or resizes the arrays, and replaces `index.json` atomically (temporary object,
  then a rename), so a kill during it leaves the old or the new index, never a torn one.
- `write_video` removes the video's completion records for the features it (re)writes, writes
  each feature's full row (zero padded; a missing feature is written as zeros, which deletes its
  chunks), then writes the `missing/` records and, LAST, one `done/` record per feature. Zarr's
  local store writes each chunk to a temporary file and renames it. A kill at any point leaves the
  video without some `done/` records: invisible to readers and recomputed by the next run.
- Completion records are separate small objects, not a shared attributes JSON, so concurrent
  writers never race on one object. They are keyed by slot, not by video id: ids may contain
  characters that are unsafe in file names or differ only by case on case-insensitive disks.
- Completion is per feature, because one store can hold features written by different producers
  (encoders over decoded media, the official LLP import); a video is visible for a feature once
  its `done/<name>/<slot>` exists, and `completed(names)` lists the videos visible for all of them.

Per-segment and per-clip features. Most features have one row per segment of the video: the
array's second axis is the segment axis, a video uses its first `n_segments` rows, and `read`
returns (N, Tmax, *segment_shape) zero padded. A per-clip feature (`allocate(..., per_clip=...)`)
is one array of a fixed shape for the whole video whose rows are not segments, such as VALOR's
CLAP feature maps (64 HTSAT time steps x 768 channels of the whole 10-s clip): it is stored
under a segment axis of length 1, `write_video` takes the clip's array itself (its shape is the
feature's `clip_shape`, whatever the video's segment count), and `read` returns (N, *clip_shape)
without a segment axis. `lengths` and the video index keep the videos' segment counts, so the
per-segment features read beside a per-clip one are padded and masked as usual.

Reading: on a local disk the chunk files of the requested rows are read straight into one
array from a thread pool (the chunks are uncompressed little-endian bytes, a plain copy under
the Zarr v3 spec; see `_read_rows_from_local_files` for why), ~10x faster than zarr's per-chunk
path for 10,000 one-video chunks; elsewhere (fsspec URLs) it is one `get_orthogonal_selection`
per feature, with zarr fetching the chunks concurrently.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import uuid
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import fsspec
import fsspec.implementations.local
import numpy as np
import zarr
import zarr.storage
from zarr.codecs import BytesCodec
from zarr.codecs.bytes import Endian

from uwav.errors import UwavError

StoreDtype = Literal["float16", "float32"]

FORMAT_VERSION = 1
_TIME_CHUNK_MULTIPLE = 10
_READ_THREADS = 8  # file reads release the GIL; more threads than cores hide disk latency
# What to do when the configured encoders are not those a store's features came from (another
# model config, other weights, a uwav upgrade that renamed them): stores never mix the two.
ANOTHER_STORE = (
    "point `stores.features` at another store, or delete this one to encode every video again "
    "with the configured encoders"
)


class FeatureStoreError(UwavError, ValueError):
    """A store that cannot be used as asked; the message names the store, feature or video at fault."""


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _per_clip(array: zarr.Array) -> bool:
    """Whether a feature array holds one array per clip rather than one row per segment."""
    return "clip_shape" in array.attrs


def _plain_chunk_folder(array: zarr.Array) -> Path | None:
    """The folder of the array's chunk files when a chunk file is a plain little-endian byte copy of
    the chunk (Zarr v3 spec: a local store, no filters or compressors, the `bytes` codec in
    little-endian order on a little-endian machine, fill value 0); None otherwise."""
    store = array.store_path.store
    if not (
        isinstance(store, zarr.storage.LocalStore)
        and not array.filters
        and not array.compressors
        and isinstance(array.serializer, BytesCodec)
        and array.serializer.endian in (Endian.little, None)
        and sys.byteorder == "little"
        and array.metadata.fill_value == 0
    ):
        return None
    return Path(store.root) / array.path


def _read_rows_from_local_files(array: zarr.Array, slots: np.ndarray, n_time: int) -> np.ndarray | None:
    """`array[slots, :n_time]` read straight from the chunk files; None when the array is not eligible.

    Why: zarr's per-chunk asyncio machinery costs ~0.3-0.5 ms per chunk, so 10,000 one-video
    chunks take seconds per feature; plain file reads from a thread pool take ~0.4 s. Only for
    what the Zarr v3 spec makes a plain byte copy (`_plain_chunk_folder`). Chunk keys come from the
    array's own metadata (`encode_chunk_key`), and a chunk file that does not exist is the fill
    value (0), as in zarr.
    """
    folder = _plain_chunk_folder(array)
    if folder is None:
        return None
    time_chunk = array.chunks[1]
    n_time_chunks = -(-n_time // time_chunk)
    out = np.empty((slots.size, n_time_chunks * time_chunk, *array.shape[2:]), dtype=array.dtype)
    inner_zeros = (0,) * (array.ndim - 2)

    def read_chunks(jobs: Sequence[tuple[int, int]]) -> None:
        for row, time_index in jobs:
            target = out[row, time_index * time_chunk : (time_index + 1) * time_chunk]
            chunk_file = folder / array.metadata.encode_chunk_key((int(slots[row]), time_index, *inner_zeros))
            try:
                with open(chunk_file, "rb") as handle:
                    n_read = handle.readinto(memoryview(target).cast("B"))
            except FileNotFoundError:
                target[...] = 0
                continue
            if n_read != target.nbytes:
                raise FeatureStoreError(f"feature chunk {chunk_file}: {n_read} bytes, expected {target.nbytes}")

    jobs = list(itertools.product(range(slots.size), range(n_time_chunks)))
    with ThreadPoolExecutor(_READ_THREADS) as pool:
        # a few large batches: one task per chunk would cost more in scheduling than in reading
        list(pool.map(read_chunks, [jobs[start::_READ_THREADS] for start in range(_READ_THREADS)]))
    return out[:, :n_time]


def _write_row_to_local_files(array: zarr.Array, slot: int, row: np.ndarray) -> bool:
    """`array[slot] = row` written straight as chunk files; False (nothing written) when the array
    is not eligible (`_plain_chunk_folder`).

    Why: zarr's per-chunk asyncio round trip costs ~4 ms per chunk write, a third of a video's
    import; a temporary file and a rename, as zarr's local store does, take a fraction of that.
    A chunk of zeros is deleted instead, as zarr does (`write_empty_chunks` off): it reads as the fill value.
    """
    folder = _plain_chunk_folder(array)
    if folder is None:
        return False
    time_chunk = array.chunks[1]
    n_time_chunks = -(-row.shape[0] // time_chunk)
    padded = np.zeros((n_time_chunks * time_chunk, *row.shape[1:]), dtype=array.dtype.newbyteorder("<"))
    padded[: row.shape[0]] = row
    inner_zeros = (0,) * (array.ndim - 2)
    for time_index in range(n_time_chunks):
        chunk = padded[time_index * time_chunk : (time_index + 1) * time_chunk]
        chunk_file = folder / array.metadata.encode_chunk_key((slot, time_index, *inner_zeros))
        if not chunk.any():
            chunk_file.unlink(missing_ok=True)
            continue
        chunk_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = chunk_file.with_name(f"{chunk_file.name}.{uuid.uuid4().hex}.partial")
        temporary.write_bytes(chunk.tobytes())
        os.replace(temporary, chunk_file)
    return True


class FeatureStore:
    """Per-segment and per-clip features of many videos in one Zarr v3 group (see the module docstring).

    `dtype` is the storage precision of the feature arrays (reads always return float32); it is
    fixed when the store is created and opening an existing store with another dtype raises.
    `dtype=None` opens an existing store with whatever dtype it has (float16 for a new store).
    `allocate` must not run concurrently with `write_video` on the same store (one coordinator
    allocates, then any number of writers write). The object pickles to (url, dtype,
    storage_options), so it can be shipped to process-pool or Dask workers (not for `memory://`,
    whose contents live in one process).
    """

    def __init__(
        self,
        url: str,
        *,
        dtype: StoreDtype | None = "float16",
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if dtype not in ("float16", "float32", None):
            raise FeatureStoreError(f"feature store {url}: dtype must be 'float16' or 'float32', got {dtype!r}")
        self.url = url
        self._storage_options = dict(storage_options or {})
        zarr_store: zarr.storage.StoreLike
        if "://" in url:
            if fsspec.utils.get_protocol(url) in ("file", "local"):
                # zarr writes `a/b/zarr.json` before any folder exists
                self._storage_options.setdefault("auto_mkdir", True)
            self._fs, self._root = fsspec.core.url_to_fs(url, **self._storage_options)
            zarr_store = zarr.storage.FsspecStore.from_url(url, storage_options=self._storage_options)
        else:
            self._fs, self._root = fsspec.filesystem("file"), os.path.abspath(url)
            zarr_store = zarr.storage.LocalStore(self._root)
        self._root = self._root.rstrip("/")
        self._local = isinstance(self._fs, fsspec.implementations.local.LocalFileSystem)
        self._group = zarr.open_group(store=zarr_store, mode="a")
        attrs = dict(self._group.attrs)
        if not attrs:
            attrs = {"uwav_feature_store": FORMAT_VERSION, "dtype": dtype or "float16"}
            self._group.update_attributes(attrs)
        elif attrs.get("uwav_feature_store") != FORMAT_VERSION:
            raise FeatureStoreError(
                f"feature store {url}: not a uwav feature store of format {FORMAT_VERSION} (attributes {attrs})"
            )
        if dtype is not None and attrs["dtype"] != dtype:
            raise FeatureStoreError(
                f"feature store {url} holds {attrs['dtype']} features; it was opened with dtype={dtype!r}. "
                "Use the store's dtype (or dtype=None), or another store location."
            )
        self.dtype: StoreDtype = attrs["dtype"]
        self._features = self._group.require_group("features")
        self._text = self._group.require_group("text")
        self._arrays: dict[str, zarr.Array] = {}
        self._index: list[tuple[str, int]] = []
        self._slot_of: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"FeatureStore({self.url!r}, dtype={self.dtype!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "dtype": self.dtype, "storage_options": self._storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state_dtype, options = state["dtype"], state["storage_options"]
        self.__init__(state["url"], dtype=state_dtype, storage_options=options)  # type: ignore[misc]

    # ------------------------------------------------------------ paths and small objects

    def _path(self, *parts: str) -> str:
        return "/".join((self._root, *parts))

    def _write_atomic(self, key: str, data: bytes) -> None:
        """Write a small object so that readers see the old or the new content, never a torn one."""
        temporary = self._path(f"{key}.{uuid.uuid4().hex}.tmp")
        self._fs.pipe_file(temporary, data)
        self._fs.mv(temporary, self._path(key))

    def _listed_slots(self, kind: Literal["done", "missing"], name: str) -> set[int]:
        try:
            entries = self._fs.ls(self._path(kind, name), detail=False)
        except FileNotFoundError:
            return set()
        return {int(base) for base in (entry.rstrip("/").rsplit("/", 1)[-1] for entry in entries) if base.isdigit()}

    def _remove(self, path: str) -> None:
        try:
            if self._local:
                os.remove(path)
            else:
                self._fs.rm_file(path)
        except FileNotFoundError:
            pass

    def _touch(self, path: str) -> None:
        """An empty marker object (local files directly: fsspec's `pipe_file` costs ~0.6 ms a call)."""
        if self._local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb"):
                pass
        else:
            self._fs.pipe_file(path, b"")

    # ------------------------------------------------------------ the video index

    def _load_index(self) -> None:
        try:
            raw = self._fs.cat_file(self._path("index.json"))
        except FileNotFoundError:
            raw = b'{"videos": []}'
        try:
            videos = json.loads(raw)["videos"]
        except (ValueError, KeyError) as error:
            raise FeatureStoreError(f"feature store {self.url}: index.json is unreadable: {error}") from None
        self._index = [(str(video_id), int(n)) for video_id, n in videos]
        self._slot_of = {video_id: slot for slot, (video_id, _) in enumerate(self._index)}

    def registered(self) -> dict[str, int]:
        """Every allocated video (complete or not) with its number of segments."""
        self._load_index()
        return dict(self._index)

    def _slots(self, video_ids: Sequence[str]) -> np.ndarray:
        if any(video_id not in self._slot_of for video_id in video_ids):
            self._load_index()
        unknown = [video_id for video_id in video_ids if video_id not in self._slot_of]
        if unknown:
            raise KeyError(f"feature store {self.url}: videos never allocated: {unknown[:5]} ({len(unknown)} in all)")
        return np.fromiter((self._slot_of[video_id] for video_id in video_ids), dtype=np.int64, count=len(video_ids))

    # ------------------------------------------------------------ arrays

    def _array(self, name: str, *, refresh: bool = False) -> zarr.Array:
        if refresh or name not in self._arrays:
            found = self._features.get(name)  # reads the array's metadata anew
            if found is None:
                raise KeyError(f"feature store {self.url}: no feature {name!r} (have {self.feature_names()})")
            self._arrays[name] = found  # type: ignore[assignment]
        return self._arrays[name]

    def feature_names(self) -> list[str]:
        return sorted(self._features.array_keys())

    def feature_shape(self, name: str) -> tuple[int, ...]:
        """Per-segment shape of a feature, e.g. (768,) or (8, 2048); a per-clip feature's clip shape, e.g. (64, 768)."""
        return tuple(self._array(name).shape[2:])

    def is_per_clip(self, name: str) -> bool:
        """Whether a feature holds one array per clip (see the module docstring) rather than one row per segment."""
        return _per_clip(self._array(name))

    def encoder_identity(self, name: str) -> str | None:
        """The identity recorded for the encoder that produced a feature (None when none was given)."""
        return self._array(name).attrs.get("encoder_identity")  # type: ignore[return-value]

    def allocate(
        self,
        video_ids: Sequence[str],
        n_segments: Sequence[int],
        shapes: Mapping[str, tuple[int, ...]],
        *,
        encoder_identities: Mapping[str, str] | None = None,
        per_clip: Collection[str] = (),
    ) -> None:
        """Register videos and reserve their slot in every feature array (single coordinator, before writes).

        Idempotent: known videos keep their slot (their `n_segments` must match). `shapes[name]`
        is the per-segment shape of a feature, or for the features named in `per_clip` the shape of
        the one array a clip has (module docstring); an existing feature must keep its shape, its
        kind (per segment or per clip) and, when `encoder_identities` names it, its encoder
        identity (a changed encoder means the stored values are stale: use another feature name or
        another store).
        """
        if len(video_ids) != len(n_segments):
            raise ValueError(f"allocate: {len(video_ids)} video ids but {len(n_segments)} segment counts")
        identities = dict(encoder_identities or {})
        unknown_identities = sorted(set(identities) - set(shapes))
        if unknown_identities:
            raise ValueError(f"allocate: encoder identities for features not in `shapes`: {unknown_identities}")
        unknown_per_clip = sorted(set(per_clip) - set(shapes))
        if unknown_per_clip:
            raise ValueError(f"allocate: per-clip features not in `shapes`: {unknown_per_clip}")
        self._load_index()
        index = list(self._index)
        slot_of = dict(self._slot_of)
        for video_id, count in zip(video_ids, n_segments, strict=True):
            count = int(count)
            if not isinstance(video_id, str) or not video_id:
                raise ValueError(f"allocate: invalid video id {video_id!r}")
            if count < 1:
                raise ValueError(f"allocate: video {video_id!r} has {count} segments; a stored video needs at least 1")
            if video_id in slot_of:
                known = index[slot_of[video_id]][1]
                if known != count:
                    raise FeatureStoreError(
                        f"feature store {self.url}: video {video_id!r} is registered with {known} segments, "
                        f"allocate asked for {count}"
                    )
                continue
            slot_of[video_id] = len(index)
            index.append((video_id, count))
        n_slots = len(index)
        longest = max((count for _, count in index), default=1)

        for name, segment_shape in shapes.items():
            segment_shape = tuple(int(size) for size in segment_shape)
            clip = name in per_clip
            existing = self._features.get(name)
            if existing is None:
                time_chunk = 1 if clip else _round_up(longest, _TIME_CHUNK_MULTIPLE)
                attributes: dict[str, Any] = {"clip_shape" if clip else "segment_shape": list(segment_shape)}
                if name in identities:
                    attributes["encoder_identity"] = identities[name]
                self._features.create_array(
                    name,
                    shape=(n_slots, time_chunk, *segment_shape),
                    chunks=(1, time_chunk, *segment_shape),
                    dtype=self.dtype,
                    fill_value=0,
                    compressors=None,
                    attributes=attributes,
                )
                self._fs.makedirs(self._path("done", name), exist_ok=True)
                self._fs.makedirs(self._path("missing", name), exist_ok=True)
                continue
            if _per_clip(existing) != clip:
                kinds = ("per-segment", "per-clip") if clip else ("per-clip", "per-segment")
                raise FeatureStoreError(
                    f"feature store {self.url}: feature {name!r} is {kinds[0]}, allocate asked for a {kinds[1]} one; {ANOTHER_STORE}"
                )
            if tuple(existing.shape[2:]) != segment_shape:
                raise FeatureStoreError(
                    f"feature store {self.url}: feature {name!r} has {'clip' if clip else 'segment'} shape "
                    f"{tuple(existing.shape[2:])}, allocate asked for {segment_shape}; {ANOTHER_STORE}"
                )
            stored_identity = existing.attrs.get("encoder_identity")
            if name in identities and stored_identity != identities[name]:
                raise FeatureStoreError(
                    f"feature store {self.url}: feature {name!r} was computed by encoder {stored_identity!r}, "
                    f"allocate asked for {identities[name]!r}; its values would be stale: {ANOTHER_STORE}"
                )

        for name in self.feature_names():
            array = self._array(name, refresh=True)
            time_chunk = array.chunks[1]
            n_time = array.shape[1] if _per_clip(array) else max(array.shape[1], _round_up(longest, time_chunk))
            wanted = (max(n_slots, array.shape[0]), n_time)
            if wanted != tuple(array.shape[:2]):
                array.resize((*wanted, *array.shape[2:]))

        # The index goes last: a kill before this line leaves bigger arrays and the old index.
        if len(index) != len(self._index):
            self._write_atomic("index.json", json.dumps({"videos": index}, separators=(",", ":")).encode())
        self._index, self._slot_of = index, slot_of

    # ------------------------------------------------------------ writing

    def write_video(
        self,
        video_id: str,
        features: Mapping[str, np.ndarray],
        *,
        missing: Sequence[str] = (),
    ) -> None:
        """Write one video's features, each (n_segments, *segment_shape), or a per-clip feature's
        (*clip_shape) array; completion records go last.

        `missing` names features the video does not have (e.g. `clap` for a video without an
        audio stream): they read as zeros and `available` reports False for them. Safe to call
        from any thread or process once the video is allocated; rewriting a complete video hides
        it from readers until the new values are in.
        """
        overlap = sorted(set(features) & set(missing))
        if overlap:
            raise ValueError(f"write_video {video_id!r}: features both given and missing: {overlap}")
        if not features and not missing:
            raise ValueError(f"write_video {video_id!r}: no features given")
        slot = int(self._slots([video_id])[0])
        n_segments = self._index[slot][1]
        rows: dict[str, np.ndarray] = {}
        for name in [*features, *missing]:
            array = self._array(name)
            clip = _per_clip(array)
            if slot >= array.shape[0] or (not clip and n_segments > array.shape[1]):
                array = self._array(name, refresh=True)  # resized by a later allocate
            segment_shape = tuple(array.shape[2:])
            row = np.zeros((array.shape[1], *segment_shape), dtype=self.dtype)
            n_rows = 1 if clip else n_segments
            if name in features:
                values = np.asarray(features[name])
                expected = segment_shape if clip else (n_segments, *segment_shape)
                if values.shape != expected:
                    raise ValueError(
                        f"write_video {video_id!r}: feature {name!r} has shape {values.shape}, expected {expected}"
                    )
                with np.errstate(over="ignore", invalid="ignore"):  # reported just below, naming the video
                    row[:n_rows] = values.reshape(n_rows, *segment_shape)
                if not np.isfinite(row[:n_rows]).all():
                    raise ValueError(
                        f"write_video {video_id!r}: feature {name!r} has non-finite values as {self.dtype} "
                        "(NaN, or beyond float16 range)"
                    )
            rows[name] = row

        for name in rows:
            self._remove(self._path("done", name, str(slot)))
        for name, row in rows.items():
            if not _write_row_to_local_files(self._arrays[name], slot, row):
                self._arrays[name][slot] = row  # zeros only (a missing feature): zarr deletes the chunks
        for name in rows:
            if name in missing:
                self._touch(self._path("missing", name, str(slot)))
            else:
                self._remove(self._path("missing", name, str(slot)))
        for name in rows:
            self._touch(self._path("done", name, str(slot)))

    # ------------------------------------------------------------ reading

    def completed(self, names: Sequence[str] | None = None) -> set[str]:
        """Videos visible to readers for every feature in `names` (default: every feature of the store).

        A producer that writes only some features (the encoders, or the official import, into
        a store that holds both) must pass its own feature names.
        """
        names = self.feature_names() if names is None else list(names)
        if not names:
            return set()
        for name in names:
            self._array(name)  # KeyError naming an unknown feature
        self._load_index()
        slots = set.intersection(*(self._listed_slots("done", name) for name in names))
        return {self._index[slot][0] for slot in slots if slot < len(self._index)}

    def has(self, video_id: str, names: Sequence[str] | None = None) -> bool:
        """Whether a video is complete for every feature in `names` (default: every feature)."""
        names = self.feature_names() if names is None else list(names)
        if not names:
            return False
        try:
            slot = int(self._slots([video_id])[0])
        except KeyError:
            return False
        return all(self._fs.exists(self._path("done", name, str(slot))) for name in names)

    def _complete_slots(self, name: str, video_ids: Sequence[str]) -> np.ndarray:
        self._array(name)
        slots = self._slots(video_ids)
        done = self._listed_slots("done", name)
        incomplete = [video_id for video_id, slot in zip(video_ids, slots) if int(slot) not in done]
        if incomplete:
            raise KeyError(
                f"feature store {self.url}: feature {name!r} is not complete for videos {incomplete[:5]} "
                f"({len(incomplete)} in all)"
            )
        return slots

    def read(self, name: str, video_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Features of complete videos: float32 (N, Tmax, *segment_shape) zero padded, and the
        videos' segment counts (N,); a per-clip feature reads as (N, *clip_shape).

        Tmax is the longest of the requested videos. Raises KeyError naming videos that are not
        complete for `name`. A video without this feature (see `available`) reads as zeros.
        """
        slots = self._complete_slots(name, video_ids)
        lengths = np.array([self._index[slot][1] for slot in slots], dtype=np.int64)
        array = self._array(name)
        clip = _per_clip(array)
        if not slots.size:
            return np.zeros((0, *(() if clip else (0,)), *array.shape[2:]), np.float32), lengths
        unique_slots, inverse = np.unique(slots, return_inverse=True)
        n_time = 1 if clip else int(lengths.max())
        if int(unique_slots[-1]) >= array.shape[0] or n_time > array.shape[1]:
            array = self._array(name, refresh=True)  # resized by another process's allocate
        values = _read_rows_from_local_files(array, unique_slots, n_time)
        if values is None:
            # One selection over sorted unique slots lets zarr fetch every chunk concurrently.
            values = array.get_orthogonal_selection((unique_slots, slice(0, n_time)))
        values = values[inverse].astype(np.float32, copy=False)
        return (values[:, 0] if clip else values), lengths

    def available(self, name: str, video_ids: Sequence[str]) -> np.ndarray:
        """Per video, whether it has feature `name` (False: written as missing, e.g. no audio stream)."""
        slots = self._complete_slots(name, video_ids)
        missing = self._listed_slots("missing", name)
        return np.fromiter((int(slot) not in missing for slot in slots), dtype=bool, count=len(slots))

    # ------------------------------------------------------------ class text embeddings

    def write_text_embeddings(
        self, name: str, prompts: Sequence[str], embeddings: np.ndarray, encoder_identity: str
    ) -> None:
        """Store class text embeddings (C, D) with the prompts and the encoder that produced them.

        The prompts and identity are recorded after the values, so an interrupted write reads as absent.
        """
        values = np.asarray(embeddings, dtype=np.float32)
        if values.ndim != 2 or values.shape[0] != len(prompts):
            raise ValueError(
                f"text embeddings {name!r}: shape {values.shape} does not match {len(prompts)} prompts (C, D)"
            )
        if not np.isfinite(values).all():
            raise ValueError(f"text embeddings {name!r}: non-finite values")
        array = self._text.create_array(
            name, shape=values.shape, chunks=values.shape, dtype="float32", fill_value=0, overwrite=True
        )
        array[...] = values
        array.update_attributes({"prompts": list(prompts), "encoder_identity": encoder_identity})

    def text_embedding_info(self, name: str) -> tuple[list[str], str] | None:
        """(prompts, encoder identity) of stored text embeddings, or None when absent or incomplete."""
        array = self._text.get(name)
        if array is None or "prompts" not in array.attrs:
            return None
        return list(array.attrs["prompts"]), str(array.attrs["encoder_identity"])  # type: ignore[arg-type]

    def read_text_embeddings(
        self, name: str, prompts: Sequence[str] | None = None, encoder_identity: str | None = None
    ) -> np.ndarray | None:
        """The (C, D) float32 embeddings, or None when absent or stale (other prompts or encoder identity)."""
        info = self.text_embedding_info(name)
        if info is None:
            return None
        stored_prompts, stored_identity = info
        if prompts is not None and list(prompts) != stored_prompts:
            return None
        if encoder_identity is not None and encoder_identity != stored_identity:
            return None
        return np.asarray(self._text[name][...], dtype=np.float32)
