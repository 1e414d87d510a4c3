"""Stage 2: training the HAN on the pseudo-labels (METHOD.md "Stage 2"), AVE training, the ablation grid.

Loss `L_video + L_w-soft + L_mix` (`uwav.training.losses.UWAVLoss`), with the class-balanced
weights computed once over the whole training set's binary pseudo-labels. Each epoch: one pass
over the training set batched in memory, validation under the LLP protocol (test-time rule
p_seg >= 0.5 and P_video >= 0.5), a checkpoint, and `best/` when the validation score improves:
segment-level Type@AV for LLP, segment accuracy for AVE.

AVE decision rule (decision; METHOD.md names none): per segment, the candidate class is the one
with the largest audio-visual probability p^a * p^v; the segment is predicted as that class when
both its segment probabilities and its video probability are >= 0.5 (the LLP rule applied to
the audio-visual event), and as background otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from uwav.catalog import Precision, Task, TrainSettings
from uwav.contracts import AudioVisual, Decision
from uwav.devices import autocast, resolve_device
from uwav.errors import InvalidInputError
from uwav.evaluation.protocol import ave_accuracy, avvp_scores, decide, passes
from uwav.models.han import AUDIO, HAN, VISUAL
from uwav.training.checkpoints import BEST_NAME, load_checkpoint, load_weights_into
from uwav.training.data import HanFeatures, HanTrainData, InMemoryBatches, LabelledSplit, padding_mask_from_lengths
from uwav.training.loops import (
    DEFAULT_KEEP_EPOCH_CHECKPOINTS,
    EpochCallback,
    TrainingRun,
    epoch_bar,
    seeded,
    settings_for_meta,
)
from uwav.training.losses import ClassBalanceWeights, UWAVLoss, class_balance_weights

STAGE = "han"
# What AVE training changes with respect to LLP (METHOD.md): batch 16, ceil of the soft labels as mixup targets.
AVE_OVERRIDES: dict[str, Any] = {"batch_size": 16, "mixup_targets": "ceil"}
PREDICT_BATCH_SIZE = 256


def ave_settings(settings: TrainSettings) -> TrainSettings:
    """`settings` with the AVE recipe's overrides (`AVE_OVERRIDES`)."""
    return settings.model_copy(update=AVE_OVERRIDES)


@dataclass(frozen=True)
class TrainResult:
    """model: the HAN with the best checkpoint's weights (eval mode, on the training device);
    best_checkpoint: its folder; history: one dict per epoch (loss terms, `lr`, `train_s`, `val_s`,
    `val_<score>` for every LLP score, plus `val_ave_accuracy` for AVE); best_epoch / best_score:
    the selected epoch and its validation score (seg-level Type@AV, or AVE accuracy)."""

    model: HAN
    best_checkpoint: Path
    last_checkpoint: Path
    history: list[dict[str, Any]]
    best_epoch: int
    best_score: float


def class_balance_for(data: HanTrainData, settings: TrainSettings) -> tuple[ClassBalanceWeights | None, ClassBalanceWeights | None]:
    """Eq. 18-19 per modality over the whole training set (None when re-weighting is off)."""
    if not settings.reweight:
        return None, None
    mask = data.train.padding_mask
    return tuple(  # type: ignore[return-value]
        class_balance_weights(data.binary_labels[:, :, modality], settings.reweight_w, mask, settings.reweight_form)
        for modality in (AUDIO, VISUAL)
    )


@torch.no_grad()
def predict_han(
    model: HAN, features: HanFeatures, *, batch_size: int = PREDICT_BATCH_SIZE, precision: Precision = "fp32"
) -> tuple[np.ndarray, np.ndarray]:
    """(segment_prob float32 (N, T, 2, C) [audio, visual], video_prob float32 (N, C)), eval mode,
    on the model's device. Padded segments' probabilities are meaningless."""
    device = next(model.parameters()).device
    model.eval()
    segment, video = [], []
    for batch in InMemoryBatches(features.tensors(), batch_size, device).in_order():
        mask = None if "lengths" not in batch else padding_mask_from_lengths(batch["lengths"], features.n_segments)
        with autocast(device, precision):
            output = model(batch["audio"], batch["visual2d"], batch["visual3d"], mask)
        segment.append(output.segment_prob.float().cpu().numpy())
        video.append(output.video_prob.float().cpu().numpy())
    return np.concatenate(segment), np.concatenate(video)


def llp_decisions(
    segment_prob: np.ndarray, video_prob: np.ndarray, threshold: float = 0.5, decision: Decision = "at_least"
) -> AudioVisual[np.ndarray]:
    """The test-time rule on HAN outputs: predictions bool (N, T, C)."""
    return decide(segment_prob[:, :, AUDIO], segment_prob[:, :, VISUAL], video_prob, threshold, decision)


def ave_predictions(
    segment_prob: np.ndarray, video_prob: np.ndarray, threshold: float = 0.5, decision: Decision = "at_least"
) -> np.ndarray:
    """AVE segment classes (N, T) int64, index C = background (the rule in the module docstring)."""
    audio, visual = segment_prob[:, :, AUDIO], segment_prob[:, :, VISUAL]  # (N, T, C)
    candidate = np.argmax(audio * visual, axis=-1)  # (N, T)
    pick = candidate[..., None]
    above = passes(decision)
    on = (
        above(np.take_along_axis(audio, pick, -1)[..., 0], threshold)
        & above(np.take_along_axis(visual, pick, -1)[..., 0], threshold)
        & above(np.take_along_axis(video_prob, candidate, -1), threshold)
    )
    return np.where(on, candidate, audio.shape[-1]).astype(np.int64)


def ave_targets(gt_audio: np.ndarray, gt_visual: np.ndarray) -> np.ndarray:
    """AVE ground-truth classes (N, T) int64 from dense labels (N, T, C): the audio-visual class, C = background.

    Raises ValueError naming the video index when a segment has two audio-visual classes (AVE has one event per video).
    """
    both = np.asarray(gt_audio, bool) & np.asarray(gt_visual, bool)
    count = both.sum(axis=-1)
    if (count > 1).any():
        video = int(np.argwhere(count > 1)[0, 0])
        raise ValueError(f"AVE ground truth: video index {video} has a segment with several audio-visual classes")
    return np.where(count == 1, both.argmax(axis=-1), both.shape[-1]).astype(np.int64)


@dataclass(frozen=True)
class HanEvaluation:
    """A HAN scored on a labelled split: `scores` (percent, `uwav.evaluation.SCORE_KEYS`, plus
    `ave_accuracy` for AVE), the model's outputs (`predict_han`) and its decisions (N, T, C),
    padded segments negative."""

    scores: dict[str, float]
    segment_prob: np.ndarray
    video_prob: np.ndarray
    pred_audio: np.ndarray
    pred_visual: np.ndarray


def score_han(
    model: HAN,
    split: LabelledSplit,
    task: Task = "llp",
    *,
    threshold: float = 0.5,
    decision: Decision = "at_least",
    batch_size: int = PREDICT_BATCH_SIZE,
    precision: Precision = "fp32",
) -> HanEvaluation:
    """The one scoring path of a HAN, for validation during training and the evaluate stage alike.

    Padded segments are predicted negative (a padded segment predicted positive would otherwise
    count as a false positive); AVE accuracy counts every segment and so refuses padded videos.
    """
    features = split.features
    if task == "ave" and features.lengths is not None:
        raise ValueError("score_han: AVE accuracy needs videos of equal length (the split has padded videos)")
    segment_prob, video_prob = predict_han(model, features, batch_size=batch_size, precision=precision)
    pred_audio, pred_visual = llp_decisions(segment_prob, video_prob, threshold, decision)
    padding = features.padding_mask
    if padding is not None:
        real = ~padding.numpy()[:, :, None]
        pred_audio, pred_visual = pred_audio & real, pred_visual & real
    scores = avvp_scores(pred_audio, pred_visual, split.gt_audio, split.gt_visual)
    if task == "ave":
        predicted = ave_predictions(segment_prob, video_prob, threshold, decision)
        scores["ave_accuracy"] = ave_accuracy(predicted, ave_targets(split.gt_audio, split.gt_visual))
    return HanEvaluation(scores, segment_prob, video_prob, pred_audio, pred_visual)


def evaluate_han(
    model: HAN,
    split: LabelledSplit,
    task: Task = "llp",
    *,
    decision: Decision = "at_least",
    batch_size: int = PREDICT_BATCH_SIZE,
    precision: Precision = "fp32",
) -> dict[str, float]:
    """The scores of `score_han` at the 0.5 threshold (validation and the ablation grid)."""
    return score_han(model, split, task, decision=decision, batch_size=batch_size, precision=precision).scores


def train_han(
    data: HanTrainData,
    settings: TrainSettings,
    run_dir: Path,
    *,
    task: Task = "llp",
    segment_loss: bool = True,
    progress: bool = True,
    callback: EpochCallback | None = None,
    resume: bool = True,
    keep_epoch_checkpoints: int | None = DEFAULT_KEEP_EPOCH_CHECKPOINTS,
    feature_dtype: torch.dtype = torch.float32,
) -> TrainResult:
    """Train the HAN; resumes from `run_dir`'s last checkpoint unless `resume=False`.

    `segment_loss=False` (with `settings.mixup` off) trains the HAN baseline on `L_video` alone.
    AVE: pass `task='ave'` and `ave_settings(settings)`. `feature_dtype` is the storage dtype of
    the training features on the device (float16 halves their memory; batches are float32).
    `callback(record)` runs after each epoch's checkpoint is written.
    """
    if task not in ("llp", "ave"):
        raise ValueError(f"train_han: task must be 'llp' or 'ave', got {task!r}")
    device = resolve_device(settings.device)
    audio_weights, visual_weights = class_balance_for(data, settings)
    criterion = UWAVLoss.from_settings(settings, audio_weights, visual_weights, segment_loss=segment_loss).to(device)
    tensors = {**data.train.tensors(), "video_labels": data.video_labels}
    if criterion.needs_soft_labels:
        tensors["soft_labels"] = data.soft_labels
    if criterion.needs_binary_labels:
        tensors["binary_labels"] = data.binary_labels
    batches = InMemoryBatches(tensors, settings.batch_size, device, storage_dtype=feature_dtype)
    score_key = "val_ave_accuracy" if task == "ave" else "val_seg_type"

    with seeded(settings.seed, device):
        model = HAN.from_settings(settings.han, data.n_classes, *data.train.widths, audio_input=data.train.audio_input)
        if settings.han.input_norm == "standardize":
            train = data.train
            model.set_input_statistics(train.audio, train.visual2d, train.visual3d, train.padding_mask)
        model = model.to(device)
        identity = {
            "stage": STAGE,
            "task": task,
            "model": model.config,
            "settings": settings_for_meta(settings),
            "segment_loss": segment_loss,
            "feature_dtype": str(feature_dtype),
            "data": {"n_train": data.train.n_videos, "n_val": data.val.features.n_videos, "n_segments": data.train.n_segments},
        }
        # Checkpoints and validation use `model` itself; only the training forward runs compiled.
        forward = torch.compile(model) if settings.compile else model
        shuffle = torch.Generator().manual_seed(settings.seed + 1)
        mixup = torch.Generator().manual_seed(settings.seed + 2)
        run = TrainingRun(
            model=model,
            identity=identity,
            settings=settings,
            steps_per_epoch=len(batches),
            run_dir=run_dir,
            generators={"shuffle": shuffle, "mixup": mixup},
            resume=resume,
            keep_epoch_checkpoints=keep_epoch_checkpoints,
        )
        bar = epoch_bar(range(run.epoch, settings.epochs), settings.epochs, run.epoch, f"train HAN ({task})", progress)
        for _ in bar:
            started = time.perf_counter()
            model.train()
            sums = torch.zeros(4, device=device)
            for batch in batches.shuffled(shuffle):
                mask = padding_mask_from_lengths(batch["lengths"], data.train.n_segments) if "lengths" in batch else None
                with autocast(device, settings.precision):
                    output = forward(batch["audio"], batch["visual2d"], batch["visual3d"], mask)
                    terms = criterion(
                        output,
                        batch["video_labels"],
                        batch.get("soft_labels"),
                        batch.get("binary_labels"),
                        classify=model.classify,
                        padding_mask=mask,
                        generator=mixup,
                    )
                lr = run.train_step(terms.total)
                # Summed on the device: no host synchronisation per step.
                sums += torch.stack([terms.total, terms.video, terms.segment, terms.mixup]).detach()
            means = (sums / len(batches)).tolist()
            train_s = time.perf_counter() - started
            started = time.perf_counter()
            scores = evaluate_han(model, data.val, task, decision=settings.decision, precision=settings.precision)
            record = {
                **dict(zip(("loss", "loss_video", "loss_segment", "loss_mixup"), means)),
                "lr": lr,
                "train_s": train_s,
                "val_s": time.perf_counter() - started,
                **{f"val_{key}": value for key, value in scores.items()},
            }
            run.end_epoch(record, score=record[score_key])
            bar.set_postfix(loss=f"{record['loss']:.4f}", **{score_key: f"{record[score_key]:.2f}"})
            if callback is not None:
                callback(run.history[-1])

    if run.best is None or run.last_checkpoint is None:
        raise RuntimeError(f"train_han: no checkpoint written under {run_dir}")
    best_checkpoint = run.checkpoint_dir / BEST_NAME
    load_weights_into(model, best_checkpoint).eval()
    return TrainResult(
        model=model,
        best_checkpoint=best_checkpoint,
        last_checkpoint=run.last_checkpoint,
        history=run.history,
        best_epoch=int(run.best["epoch"]),
        best_score=float(run.best["score"]),
    )


def load_han(checkpoint: Path, device: str = "cpu") -> HAN:
    """The HAN of a stage-2 checkpoint folder (eval mode), rebuilt from its metadata."""
    meta = load_checkpoint(checkpoint, with_state=False).meta
    if meta.get("identity", {}).get("stage") != STAGE:
        raise InvalidInputError(f"{checkpoint}: not a stage-2 (HAN) checkpoint")
    # Checkpoints written before `update` / `projection` existed were trained with the sequential
    # update and the linear projections: fill those in so that they reproduce their outputs (those
    # before `audio_input` took per-segment audio, the constructor's default).
    model = HAN(**{"update": "sequential", "projection": "linear", **meta["identity"]["model"]})
    return load_weights_into(model, checkpoint).to(resolve_device(device)).eval()


# ---------------------------------------------------------------- ablation grid (paper Table 4)


@dataclass(frozen=True)
class AblationVariant:
    """One row of the grid: a name, the settings it changes, and whether the segment loss is on."""

    name: str
    overrides: Mapping[str, Any]
    segment_loss: bool = True


ABLATION_VARIANTS: tuple[AblationVariant, ...] = (
    AblationVariant(
        "HAN (video loss only)", {"reweight": False, "mixup": False, "guided_learning": False}, segment_loss=False
    ),
    # The reference HAN's own training (the paper's HAN row), for comparison; not a METHOD variant.
    AblationVariant(
        "HAN (guided learning)", {"reweight": False, "mixup": False, "guided_learning": True}, segment_loss=False
    ),
    AblationVariant("binary", {"labels": "binary", "reweight": False, "mixup": False}),
    AblationVariant("soft", {"labels": "soft", "reweight": False, "mixup": False}),
    AblationVariant("soft + reweight", {"labels": "soft", "reweight": True, "mixup": False}),
    AblationVariant("soft + mixup", {"labels": "soft", "reweight": False, "mixup": True}),
    AblationVariant("soft + reweight + mixup (UWAV)", {"labels": "soft", "reweight": True, "mixup": True}),
)
ABLATION_COLUMNS = ("seg_a", "seg_v", "seg_av", "seg_type", "seg_event")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def run_ablation(
    data: HanTrainData,
    settings: TrainSettings,
    run_dir: Path,
    *,
    variants: Iterable[AblationVariant] = ABLATION_VARIANTS,
    test: LabelledSplit | None = None,
    task: Task = "llp",
    progress: bool = True,
    resume: bool = True,
) -> pl.DataFrame:
    """Train every variant (in `run_dir/ablation/<variant>`, resumable) and tabulate the scores of
    each one's best checkpoint: on `test` when given (as the paper's Table 4), else on validation.

    Columns: variant, best_epoch, split, then every LLP score (`uwav.evaluation.SCORE_KEYS`).
    """
    rows = []
    for variant in variants:
        result = train_han(
            data,
            settings.model_copy(update=dict(variant.overrides)),
            Path(run_dir) / "ablation" / _slug(variant.name),
            task=task,
            segment_loss=variant.segment_loss,
            progress=progress,
            resume=resume,
        )
        split, name = (test, "test") if test is not None else (data.val, "val")
        scores = evaluate_han(result.model, split, task, decision=settings.decision, precision=settings.precision)
        rows.append({"variant": variant.name, "best_epoch": result.best_epoch, "split": name, **scores})
    return pl.DataFrame(rows)


def format_ablation(table: pl.DataFrame, columns: Iterable[str] = ABLATION_COLUMNS) -> str:
    """A Table-4-style text table: one row per variant, segment-level A / V / AV / Type / Event."""
    columns = list(columns)
    headers = {"seg_a": "A", "seg_v": "V", "seg_av": "AV", "seg_type": "Type@AV", "seg_event": "Event@AV"}
    titles = [headers.get(c, c) for c in columns]
    name_width = max(len("variant"), *(len(v) for v in table["variant"]))
    lines = [
        f"segment level, {table['split'][0]} split",
        "  ".join(["variant".ljust(name_width), *(t.rjust(8) for t in titles)]),
    ]
    for row in table.iter_rows(named=True):
        lines.append("  ".join([row["variant"].ljust(name_width), *(f"{row[c]:8.1f}" for c in columns)]))
    return "\n".join(lines)

