"""Stage `pretrain` (stage 1): train the temporal pseudo-label generator on the pre-training
set's train split."""

from __future__ import annotations

import json
from pathlib import Path

from uwav.catalog import Catalog
from uwav.contracts import PretrainOutputs
from uwav.errors import StageError
from uwav.stages.inputs import PLG_FEATURES, dataset_tables, load_split, open_store, text_embeddings
from uwav.stages.planner import StageResult


def run(catalog: Catalog, out_dir: Path, progress: bool) -> StageResult:
    from uwav.training.data import PretrainData
    from uwav.training.pretrain import pretrain_plg
    from uwav.workspace import segment_label_matrix

    tables = dataset_tables(catalog, "pretrain")
    store = open_store(catalog)
    split = load_split(store, tables.split("train"), PLG_FEATURES)
    if not split.video_ids:
        raise StageError(f"pretrain: no training video of dataset {tables.name!r} has CLIP and CLAP features")
    visual, audio = split.features["clip"], split.features["clap"]
    labels = segment_label_matrix(tables, split.video_ids, visual.shape[1])
    text = text_embeddings(store, "pretrain")
    data = PretrainData.from_arrays(visual, audio, split.lengths, labels, text.visual, text.audio)
    result = pretrain_plg(data, catalog.stages.pretrain, out_dir, progress=progress)
    history = out_dir / "history.json"
    history.write_text(json.dumps(result.history, indent=1))
    return StageResult(
        PretrainOutputs(result.checkpoint, history),
        {
            "videos": len(split.video_ids),
            "excluded_videos": split.excluded,
            "epochs": len(result.history),
            "final_loss": result.history[-1]["loss"] if result.history else None,
        },
    )
