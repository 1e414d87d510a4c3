"""Stage `pretrain` (stage 1): train the temporal pseudo-label generator on the pre-training
set's train split, or register a released one (`stages.pretrain.checkpoint`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from uwav.catalog import Catalog
from uwav.contracts import PLG_FEATURES, PretrainOutputs
from uwav.errors import InvalidInputError, StageError
from uwav.stages.inputs import load_split, text_embeddings
from uwav.stages.planner import StageResult
from uwav.stages.tables import dataset_tables, open_store

if TYPE_CHECKING:
    from uwav.features.store import FeatureStore
    from uwav.training.data import PretrainData
    from uwav.workspace import DatasetTables

RELEASED_CHECKPOINT_NAME = "released"


def pretrain_split(store: FeatureStore, tables: DatasetTables, split_name: str) -> tuple[PretrainData | None, int]:
    """Features, segment labels and class text embeddings of a split of the pre-training set (None:
    no usable video), and the number of the split's videos left out for want of features."""
    from uwav.training.data import PretrainData
    from uwav.workspace import segment_label_matrix

    split = load_split(store, tables.split(split_name), PLG_FEATURES)
    if not split.video_ids:
        return None, split.excluded
    visual, audio = split.features["clip"], split.features["clap"]
    labels = segment_label_matrix(tables, split.video_ids, visual.shape[1])
    text = text_embeddings(store, "pretrain")
    return PretrainData.from_arrays(visual, audio, split.lengths, labels, text.visual, text.audio), split.excluded


def register_released(catalog: Catalog, out_dir: Path) -> StageResult:
    """Read the released generator named by `stages.pretrain.checkpoint`, check it against the
    store's encoder widths, and write it as this stage's checkpoint, so that calibrate,
    pseudo_labels and train run from it."""
    from uwav.models.released import load_released_plg
    from uwav.training.checkpoints import save_checkpoint
    from uwav.training.pretrain import STAGE

    source = Path(catalog.resolve(catalog.stages.pretrain.checkpoint))  # type: ignore[arg-type]
    model = load_released_plg(source, heads=catalog.stages.pretrain.heads if "pretrain.heads" in catalog.explicit_settings else None)
    text = text_embeddings(open_store(catalog), "target")
    widths = {"visual": text.visual.shape[-1], "audio": text.audio.shape[-1]}
    expected = {"visual": model.config["visual_dim"], "audio": model.config["audio_dim"]}
    if widths != expected:
        raise InvalidInputError(
            f"stages.pretrain.checkpoint {source}: the generator takes CLIP {expected['visual']}-d and CLAP "
            f"{expected['audio']}-d embeddings; the feature store holds {widths['visual']}-d and {widths['audio']}-d "
            "(encoders.clip / encoders.clap must be the encoders the generator was trained on)"
        )
    checkpoint = save_checkpoint(
        out_dir / "checkpoints" / RELEASED_CHECKPOINT_NAME,
        model,
        {"identity": {"stage": STAGE, "model": model.config, "source": str(source)}},
    )
    history = out_dir / "history.json"
    history.write_text("[]")
    return StageResult(PretrainOutputs(checkpoint, history), {"released_checkpoint": str(source), "epochs": 0})


def run(catalog: Catalog, out_dir: Path, progress: bool) -> StageResult:
    from uwav.devices import effective_precision, resolve_device
    from uwav.training.pretrain import pretrain_plg

    settings = catalog.stages.pretrain
    if settings.checkpoint is not None:
        return register_released(catalog, out_dir)
    if catalog.pretrain is None:
        raise StageError(
            "pretrain: the catalog names no `pretrain` dataset to train the pseudo-label generator on: add one "
            "(e.g. UnAV-100 with `role: pretrain`), set stages.pretrain.checkpoint to a released generator, or "
            "train from released pseudo-labels (stages.pseudo_labels.source: released)"
        )
    tables = dataset_tables(catalog, "pretrain")
    store = open_store(catalog)
    data, excluded = pretrain_split(store, tables, "train")
    if data is None:
        raise StageError(f"pretrain: no training video of dataset {tables.name!r} has CLIP and CLAP features")
    val = None
    if settings.select == "best_val_av_f1":
        val, _ = pretrain_split(store, tables, "val")
        if val is None:
            raise StageError(
                f"pretrain: select: best_val_av_f1 needs validation videos of {tables.name!r} with CLIP and CLAP features"
            )
    result = pretrain_plg(data, settings, out_dir, val=val, progress=progress)
    history = out_dir / "history.json"
    history.write_text(json.dumps(result.history, indent=1))
    return StageResult(
        PretrainOutputs(result.checkpoint, history),
        {
            "videos": data.n_videos,
            "excluded_videos": excluded,
            "val_videos": None if val is None else val.n_videos,
            "epochs": len(result.history),
            "final_loss": result.history[-1]["loss"] if result.history else None,
            "precision": effective_precision(resolve_device(settings.device), settings.precision),
        },
    )
