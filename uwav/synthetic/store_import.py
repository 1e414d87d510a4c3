"""Synthetic benchmark features into the feature store: the features stage with `source: synthetic`.

The counterpart of `uwav.features.official` for `uwav.synthetic.features` benchmarks; it
lives here so that the dataset readers and generators never depend on the feature store.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from uwav.contracts import text_embedding_name
from uwav.features.official import RESNET_MEAN_NAME
from uwav.features.store import FeatureStore
from uwav.synthetic.features import SyntheticFeatureBenchmark, SyntheticFeatureSet
from uwav.synthetic.layouts import stable_hash


def _write_videos(
    store: FeatureStore, part: SyntheticFeatureSet, names: dict[str, str], rows: list[int], workers: int
) -> None:
    video_ids = part.manifest["video_id"]

    def write(row: int) -> None:
        length = int(part.lengths[row])
        features = {names[space]: np.asarray(array[row, :length]) for space, array in part.features.items()}
        store.write_video(video_ids[row], features)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(write, rows))


def import_into_store(root: Path, store: FeatureStore, *, workers: int = 4) -> dict[str, int]:
    """Copy a saved benchmark's features and text embeddings into a feature store; returns counts
    of imported and already complete videos.

    Features keep their space names, except ResNet-152, stored as the official import's
    segment-mean feature. Text embeddings go under `uwav.contracts.text_embedding_name(space, role)`
    with the class names as prompts. Videos complete in the store are skipped. Encoder identities
    carry a digest of the benchmark's settings: a store filled from another benchmark refuses the
    import (FeatureStoreError) rather than mixing the two. The sizes are left out of the digest:
    every video's values are keyed by the video alone, so a grown benchmark imports only its new
    videos into the store of the smaller one.
    """
    benchmark = SyntheticFeatureBenchmark.load(root)
    generation = {key: value for key, value in benchmark.settings.items() if key != "sizes"}
    digest = f"{stable_hash(json.dumps(generation, sort_keys=True)):016x}"
    store_names = {"resnet152": RESNET_MEAN_NAME}
    metrics: dict[str, int] = {}
    for role, part in (("target", benchmark.target), ("pretrain", benchmark.pretrain)):
        names = {space: store_names.get(space, space) for space in part.features}
        video_ids = part.manifest["video_id"].to_list()
        todo: list[int] = []
        if names:  # a set generated without features has only text embeddings to import
            known = set(names.values()) <= set(store.feature_names())
            complete = store.completed(list(names.values())) if known else set()
            todo = [row for row, video_id in enumerate(video_ids) if video_id not in complete]
            store.allocate(
                [video_ids[row] for row in todo],
                part.lengths[todo].tolist(),
                {names[space]: array.shape[2:] for space, array in part.features.items()},
                encoder_identities={names[space]: f"uwav-synth/{space}/{digest}" for space in part.features},
            )
            _write_videos(store, part, names, todo, workers)
        for space, embeddings in part.text_embeddings.items():
            store.write_text_embeddings(
                text_embedding_name(space, role), list(part.classes), embeddings, f"uwav-synth/{space}/{digest}"
            )
        metrics[f"{role}_imported"] = len(todo)
        metrics[f"{role}_already_complete"] = len(video_ids) - len(todo) if names else 0
    return metrics
