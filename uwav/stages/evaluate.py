"""Stage `evaluate`: the trained HAN on the evaluation split, scored by the same function as
validation (`uwav.training.han_train.score_han`: the LLP protocol, and AVE accuracy for AVE),
with the HTML report and per-video timelines. `evaluate_model` scores any HAN the same way: a
uwav checkpoint folder or a released state dict (`uwav evaluate --model PATH --kind KIND`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from uwav.catalog import Catalog
from uwav.contracts import HAN_AUDIO_INPUT, PLG_FEATURES, AudioVisual, EvaluateOutputs, PseudoLabelsOutputs, TrainOutputs
from uwav.errors import InvalidInputError, StageError, UwavError
from uwav.stages.inputs import labelled_split, load_split, released_pseudo_labels, target_task, text_embeddings
from uwav.stages.planner import StageResult, stage_record, state_dir
from uwav.stages.tables import dataset_tables, open_store

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

    from uwav.features.store import FeatureStore
    from uwav.models import HAN
    from uwav.training.data import HanFeatures, LabelledSplit
    from uwav.training.han_train import HanEvaluation
    from uwav.workspace import DatasetTables

log = logging.getLogger(__name__)

# "checkpoint": a uwav checkpoint folder (stage 2's `best/`, a promoted model); the others are
# released state dicts read by `uwav.models.released.load_released_han` ("valor": VALOR and
# VALOR+; "valor++": VALOR++, whose audio input is the per-clip CLAP maps, store feature `clap_maps`).
ModelKind = Literal["checkpoint", "avvp-eccv20", "valor", "valor++", "uwav"]
MODEL_KINDS: tuple[str, ...] = ("checkpoint", "avvp-eccv20", "valor", "valor++", "uwav")


def check_model_argument(path: Path, kind: str) -> None:
    """Refuse an unknown `--kind` or a `--model` that does not exist, before any work is done."""
    if kind not in MODEL_KINDS:
        raise InvalidInputError(f"--kind {kind!r}: expected one of {', '.join(MODEL_KINDS)}")
    if not Path(path).exists():
        raise InvalidInputError(f"--model {path}: no such file or folder")


def load_han_model(path: Path, kind: str, device: str = "cpu") -> HAN:
    """A HAN from a uwav checkpoint folder or a released state dict, in eval mode on `device`."""
    from uwav.devices import resolve_device

    check_model_argument(path, kind)
    if kind == "checkpoint":
        from uwav.training.han_train import load_han

        return load_han(Path(path), device)
    from uwav.models.released import load_released_han

    return load_released_han(Path(path), kind).to(resolve_device(device)).eval()


def check_model_inputs(model: HAN, features: HanFeatures, classes: Sequence[str], source: str) -> None:
    """Refuse a model whose input widths, audio form or class count differ from the catalog's features and target."""
    config = model.config
    if model.audio_input != features.audio_input:
        fitting = [inputs for inputs, form in HAN_AUDIO_INPUT.items() if form == model.audio_input]
        raise InvalidInputError(
            f"{source}: the model takes audio as {model.audio_input}, the catalog's HAN inputs give "
            f"{features.audio_input}; set stages.train.han.inputs to {' or '.join(fitting)}"
        )
    expected = {"audio": config["audio_dim"], "visual2d": config["visual2d_dim"], "visual3d": config["visual3d_dim"]}
    found = dict(zip(("audio", "visual2d", "visual3d"), features.widths))
    wrong = [f"{name} {found[name]} (model: {expected[name]})" for name in expected if found[name] != expected[name]]
    if wrong:
        raise InvalidInputError(
            f"{source}: the catalog's HAN inputs (stages.train.han.inputs) do not match the model: "
            f"feature widths {', '.join(wrong)}"
        )
    if config["n_classes"] != len(classes):
        raise InvalidInputError(f"{source}: the model has {config['n_classes']} classes, the target dataset {len(classes)}")


# Names of the reference rows shown beside a model's scores (report, printed tables, stage record).
# Per-segment labels kept only where each video's true classes (its weak label) allow, which the
# HAN has to find by itself: the names say so, lest they read as scores the HAN should simply reach.
PSEUDO_LABELS_REFERENCE = "pseudo-labels, given video labels"
RELEASED_PSEUDO_LABELS_REFERENCE = "VALOR's released pseudo-labels, given video labels"
ZERO_SHOT_REFERENCE = "zero-shot per-segment labels, given video labels"
NOTHING_REFERENCE = "predict nothing"
REFERENCES_NOTE = (
    "rows beside the model score references on the same videos: label sets 'given video labels' keep only each "
    "video's true classes, which the model has to find by itself (a ceiling rather than a target); the zero-shot "
    "per-segment labels are the encoders' own class-text scores, thresholded as the generator's logits are, so the "
    "pseudo-labels' row against theirs is what the temporal generator adds; predicting nothing is the floor"
)


@dataclass(frozen=True)
class ModelEvaluation:
    """`references`: scores on the same videos of predicting nothing and of the per-segment label
    sets of `REFERENCE_LABELS` that exist for them (`reference_scores`); `health_warnings`: the
    collapse warning when the model is at the predict-nothing level there."""

    scores: dict[str, float]
    references: dict[str, dict[str, float]]
    health_warnings: list[str]  # the model at the predict-nothing level on the evaluated split
    outputs: EvaluateOutputs
    videos: int
    excluded_videos: int


def _fit_segments(labels: np.ndarray, n_segments: int) -> np.ndarray:
    """(N, T', C) -> (N, n_segments, C): cut, or padded with False."""
    import numpy as np

    labels = labels[:, :n_segments]
    return np.pad(labels, ((0, 0), (0, n_segments - labels.shape[1]), (0, 0)))


def _stage_pseudo_labels(catalog: Catalog, video_ids: Sequence[str], n_segments: int) -> dict[str, np.ndarray] | None:
    """The binary pseudo-labels of the catalog's pseudo_labels stage (what training started from),
    when it has run and holds every one of `video_ids`."""
    from uwav.labels import read_pseudo_labels

    record = state_dir(catalog).record("pseudo_labels")
    if record is None:
        return None
    folder = PseudoLabelsOutputs.of(record.outputs).pseudo_labels
    try:
        labels = read_pseudo_labels(folder, list(video_ids))
    except (KeyError, UwavError) as error:  # labels from another catalog state: no reference
        log.info("evaluate: no pseudo-label reference: %s", error)
        return None
    return {m: _fit_segments(labels.arrays[f"{m}_hard"].astype(bool), n_segments) for m in ("audio", "visual")}



def pseudo_label_reference(
    catalog: Catalog, tables: DatasetTables, store: FeatureStore, video_ids: Sequence[str], n_segments: int
) -> dict[str, np.ndarray] | None:
    """The generator's binary pseudo-labels the model trained from (`stages.pseudo_labels.source: generate`)."""
    if catalog.stages.pseudo_labels.source != "generate":
        return None
    return _stage_pseudo_labels(catalog, video_ids, n_segments)


def released_pseudo_label_reference(
    catalog: Catalog, tables: DatasetTables, store: FeatureStore, video_ids: Sequence[str], n_segments: int
) -> dict[str, np.ndarray] | None:
    """VALOR's released binary pseudo-labels: those the model trained from (`source: released`), or,
    beside generated ones, the files under `stages.pseudo_labels.released_root` when they cover
    every one of `video_ids`."""
    settings = catalog.stages.pseudo_labels
    if settings.source == "released":
        return _stage_pseudo_labels(catalog, video_ids, n_segments)
    if settings.released_root is None:
        return None
    released = released_pseudo_labels(catalog, tables, list(video_ids))
    if released.video_ids != list(video_ids):
        log.info("evaluate: no released pseudo-label reference: %d videos lack good files", len(video_ids) - len(released.video_ids))
        return None
    return {m: _fit_segments(getattr(released.labels, m).astype(bool), n_segments) for m in ("audio", "visual")}

def _zero_shot_scores(
    store: FeatureStore, text: AudioVisual[np.ndarray], manifest: pl.DataFrame
) -> tuple[pl.DataFrame, np.ndarray, dict[str, np.ndarray]]:
    """The videos of `manifest` with CLIP and CLAP features (manifest order), their (N, T) valid
    segments and (N, T, C) zero-shot scores per modality."""
    import numpy as np
    import polars as pl

    from uwav.labels.zero_shot import zero_shot_scores

    split = load_split(store, manifest, PLG_FEATURES)
    kept = manifest.filter(pl.col("video_id").is_in(split.video_ids))  # manifest order, as load_split's
    scores = {"audio": zero_shot_scores(split.features["clap"], text.audio),
              "visual": zero_shot_scores(split.features["clip"], text.visual)}  # fmt: skip
    valid = np.arange(scores["audio"].shape[1])[None, :] < split.lengths[:, None]
    return kept, valid, scores


def zero_shot_reference(
    catalog: Catalog, tables: DatasetTables, store: FeatureStore, video_ids: Sequence[str], n_segments: int
) -> dict[str, np.ndarray] | None:
    """The encoders' zero-shot per-segment labels of `video_ids` (`uwav.labels.zero_shot`), their
    thresholds calibrated on the calibration split as the generator's are; None where the store
    lacks the class text embeddings, or CLIP / CLAP features of a video."""
    import polars as pl

    from uwav.labels.zero_shot import calibrate_zero_shot, zero_shot_labels
    from uwav.workspace import dense_truth, weak_label_matrix

    settings = catalog.stages.calibrate
    try:
        text = text_embeddings(store, "target")
        calibration, valid, scores = _zero_shot_scores(store, text, tables.split(settings.split))
    except (StageError, KeyError) as error:  # no text embeddings, or no CLIP / CLAP features in the store
        log.info("evaluate: no zero-shot reference: %s", error)
        return None
    if calibration.height == 0:
        log.info("evaluate: no zero-shot reference: no %s video has CLIP and CLAP features", settings.split)
        return None
    truth = dense_truth(tables, calibration["video_id"].to_list(), valid.shape[1]) if settings.method != "quantile" else None
    thresholds = calibrate_zero_shot(
        scores, weak_label_matrix(calibration, tables.classes), valid, tables.classes, dense_truth=truth,
        method=settings.method, quantile=settings.quantile,
    )
    evaluated = pl.DataFrame({"video_id": list(video_ids)}).join(tables.manifest, on="video_id", how="left", maintain_order="left")
    kept, valid, scores = _zero_shot_scores(store, text, evaluated)
    if kept["video_id"].to_list() != list(video_ids):
        log.info("evaluate: no zero-shot reference: some evaluated videos lack CLIP or CLAP features")
        return None
    labels = zero_shot_labels(scores, thresholds, weak_label_matrix(kept, tables.classes), valid)
    return {m: _fit_segments(labels[m], n_segments) for m in ("audio", "visual")}


def segment_zero_shot_accuracy(catalog: Catalog, split_name: str) -> dict[str, float]:
    """How well the catalog's CLIP ('clip') and CLAP ('clap') classify, zero-shot, the segments of
    a split's densely labelled target videos that show (CLIP) or sound (CLAP) exactly one class:
    the share whose best-scoring class prompt names it (`uwav.labels.zero_shot.top1_accuracy`)."""
    from uwav.labels.zero_shot import top1_accuracy
    from uwav.workspace import dense_truth

    store = open_store(catalog)
    tables = dataset_tables(catalog, "target")
    kept, valid, scores = _zero_shot_scores(store, text_embeddings(store, "target"), tables.split(split_name))
    truth = dense_truth(tables, kept["video_id"].to_list(), valid.shape[1])
    if truth is None:
        raise StageError(f"zero-shot accuracy: no {split_name} video of {tables.name!r} has dense labels and CLIP / CLAP features")
    return {feature: top1_accuracy(scores[m], truth[m], valid) for feature, m in (("clip", "visual"), ("clap", "audio"))}


# Per-segment label sets scored beside a model, by reference name: each gives (N, T, C) bool
# labels per modality for the evaluated videos (from the catalog, its target tables and its
# feature store, as the evaluation has them open), or None where it has none for them.
ReferenceLabels = Callable[
    ["Catalog", "DatasetTables", "FeatureStore", Sequence[str], int], "dict[str, np.ndarray] | None"
]
REFERENCE_LABELS: dict[str, ReferenceLabels] = {
    PSEUDO_LABELS_REFERENCE: pseudo_label_reference,
    RELEASED_PSEUDO_LABELS_REFERENCE: released_pseudo_label_reference,
    ZERO_SHOT_REFERENCE: zero_shot_reference,
}


def reference_scores(
    catalog: Catalog, tables: DatasetTables, store: FeatureStore, video_ids: Sequence[str], split: LabelledSplit
) -> dict[str, dict[str, float]]:
    """What a model's scores on `split` (the videos `video_ids`) should be read against, on those
    same videos: every label set of `REFERENCE_LABELS` that exists for them, and predicting
    nothing (the floor)."""
    from uwav.evaluation import predict_nothing_scores, pseudo_label_quality

    references = {}
    n_segments = split.gt_audio.shape[1]
    for name, labels_of in REFERENCE_LABELS.items():
        labels = labels_of(catalog, tables, store, video_ids, n_segments)
        if labels is not None:
            references[name] = pseudo_label_quality(labels["audio"], labels["visual"], split.gt_audio, split.gt_visual)
    references[NOTHING_REFERENCE] = predict_nothing_scores(split.gt_audio, split.gt_visual)
    return references


def evaluate_model(
    catalog: Catalog,
    model: HAN,
    out_dir: Path,
    *,
    source: str,
    history: Sequence[Mapping[str, Any]] | None = None,
    pseudo_label_quality: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
) -> ModelEvaluation:
    """Score `model` on the catalog's evaluation split and write metrics.json, predictions.npz,
    report.html and the timelines into `out_dir`; `source` names the model in errors and the report."""
    import numpy as np

    from uwav.training.han_train import score_han
    from uwav.training.health import collapse_warning

    settings = catalog.stages.evaluate
    tables = dataset_tables(catalog, "target")
    store = open_store(catalog)
    split, labelled = labelled_split(catalog, store, tables, settings.split)
    check_model_inputs(model, labelled.features, tables.classes, source)
    evaluation = score_han(
        model, labelled, target_task(catalog), threshold=settings.threshold, decision=catalog.stages.train.decision,
        precision=catalog.stages.train.precision,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / "metrics.json"
    metrics_path.write_text(json.dumps(evaluation.scores, indent=1))
    predictions_path = out_dir / "predictions.npz"
    np.savez_compressed(
        predictions_path, video_ids=np.asarray(split.video_ids), segment_prob=evaluation.segment_prob,
        video_prob=evaluation.video_prob,
    )
    references = reference_scores(catalog, tables, store, split.video_ids, labelled)
    collapse = collapse_warning(evaluation.scores["seg_type"], references[NOTHING_REFERENCE]["seg_type"], settings.split)
    if collapse:
        log.warning("evaluate: %s", collapse)
    timelines = out_dir / "timelines"
    report = _write_report(
        catalog, out_dir, timelines, tables, split.video_ids, labelled, evaluation, references, history,
        pseudo_label_quality,
        [f"catalog: {catalog.base_dir}", f"model: {source}", *notes,
         *([f"health warning: {collapse}"] if collapse else []), f"{len(split.video_ids)} evaluated videos",
         REFERENCES_NOTE],
    )
    return ModelEvaluation(
        evaluation.scores, references, [collapse] if collapse else [],
        EvaluateOutputs(metrics_path, predictions_path, report, timelines), len(split.video_ids), split.excluded,
    )


def evaluate_imported(catalog: Catalog, model_path: Path, kind: str, out_dir: Path) -> ModelEvaluation:
    """`uwav evaluate --model PATH --kind KIND`: an imported (or uwav) HAN on the evaluation split."""
    model = load_han_model(model_path, kind, catalog.stages.train.device)
    return evaluate_model(catalog, model, out_dir, source=f"{model_path} ({kind})")


def run(catalog: Catalog, out_dir: Path, progress: bool) -> StageResult:
    from uwav.labels.released import LABEL_SOURCE_NAMES
    from uwav.training.han_train import load_han

    labels = catalog.stages.pseudo_labels
    trained_on = LABEL_SOURCE_NAMES[labels.source] + (f" ({catalog.resolve(labels.released_root)})" if labels.source == "released" else "")
    train_record = stage_record(catalog, "train")
    train_outputs = TrainOutputs.of(train_record.outputs)
    model = load_han(train_outputs.best_checkpoint, catalog.stages.train.device)
    quality = json.loads(PseudoLabelsOutputs.of(stage_record(catalog, "pseudo_labels").outputs).quality.read_text())
    result = evaluate_model(
        catalog, model, out_dir, source=f"train stage {train_record.fingerprint}",
        history=json.loads(train_outputs.history.read_text()), pseudo_label_quality=quality or None,
        notes=[
            f"trained on pseudo-labels of the {trained_on}",
            f"best epoch {train_record.metrics.get('best_epoch')}",
            *(f"training health warning: {warning}" for warning in train_record.metrics.get("health_warnings", [])),
        ],
    )
    return StageResult(
        result.outputs,
        {"scores": result.scores, "references": result.references, "health_warnings": result.health_warnings,
         "videos": result.videos, "excluded_videos": result.excluded_videos},
    )


def _write_report(
    catalog: Catalog,
    out_dir: Path,
    timeline_dir: Path,
    tables: DatasetTables,
    video_ids: list[str],
    labelled: LabelledSplit,
    evaluation: HanEvaluation,
    references: Mapping[str, Mapping[str, float]],
    history: Sequence[Mapping[str, Any]] | None,
    quality: Mapping[str, Any] | None,
    notes: list[str],
) -> Path:
    """report.html: metrics, pseudo-label quality, training curves and per-video timelines."""
    from uwav.atomic import write_bytes_atomic
    from uwav.evaluation.report import report_timelines, write_html_report
    from uwav.parsing import timeline_file_name

    probs = evaluation.segment_prob  # (N, T, 2, C), modality axis in MODALITIES order (audio, visual)
    timelines = report_timelines(
        video_ids, tables.classes, evaluation.pred_audio, evaluation.pred_visual, labelled.gt_audio, labelled.gt_visual,
        probs[:, :, 0], probs[:, :, 1],
    )
    timeline_dir.mkdir(exist_ok=True)
    for video_id, png in timelines:
        write_bytes_atomic(timeline_dir / timeline_file_name(video_id), png)
    return write_html_report(
        out_dir / "report.html",
        title=f"uwav: {tables.name} ({catalog.stages.evaluate.split} split)",
        scores=evaluation.scores,
        references=references,
        classes=tables.classes,
        pseudo_label_quality=quality,
        history=history,
        timelines=timelines,
        notes=notes,
    )
