"""Stage 1: pre-training the pseudo-label generator on UnAV-100-style data (METHOD.md "Stage 1").

Loss `BCE(p^v * p^a, y')` against segment labels, padded segments masked out of the attention and
the loss (the release weighs the classes present in a video by `present_class_weight`); AdamW,
linear warm-up to `lr` over `warmup_epochs`, cosine to `min_lr`, gradient-norm clip; a checkpoint
per epoch and resume (see `uwav.training.loops`). `select: best_val_av_f1` keeps the epoch with the
best validation segment-level audio-visual F1 (LLP protocol, prediction p^v p^a >= 0.5), as the
UWAV release does on UnAV-100's validation split.

Decision: each batch is cut to its longest video before the forward pass (padding beyond it
would be masked anyway; UnAV-100 videos run up to 60 segments, most far fewer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from uwav.catalog import Precision, PretrainSettings
from uwav.contracts import AudioVisual
from uwav.devices import autocast, resolve_device
from uwav.errors import InvalidInputError
from uwav.models.plg import AudioVisualPLG
from uwav.evaluation.protocol import avvp_scores
from uwav.training.checkpoints import BEST_NAME, load_checkpoint, load_weights_into
from uwav.training.data import InMemoryBatches, PretrainData, padding_mask_from_lengths, plg_inputs, real_segments
from uwav.training.loops import (
    DEFAULT_KEEP_EPOCH_CHECKPOINTS,
    EpochCallback,
    TrainingRun,
    epoch_bar,
    seeded,
    settings_for_meta,
)

STAGE = "pretrain"


@dataclass(frozen=True)
class PretrainResult:
    """The trained generator (eval mode, on the training device), per-epoch history, and the
    checkpoint folder it comes from (the last epoch's, or `best/` with `select: best_val_av_f1`)."""

    model: AudioVisualPLG
    history: list[dict[str, Any]]
    checkpoint: Path


def plg_loss(
    visual_logits: Tensor,
    audio_logits: Tensor,
    segment_labels: Tensor,
    padding_mask: Tensor | None = None,
    present_class_weight: float = 1.0,
) -> Tensor:
    """Stage-1 loss `BCE(p^v * p^a, y')`, mean over real (video, segment, class) elements; the
    elements of classes present anywhere in the video weigh `present_class_weight` (the others 1).

    Logits and labels are (B, T, C). Computed in log space for stability:
    `log p^av = logsig(z^v) + logsig(z^a)` and
    `log(1 - p^av) = log((1 - p^v) + p^v (1 - p^a)) = logaddexp(logsig(-z^v), logsig(z^v) + logsig(-z^a))`.
    """
    zv, za, y = visual_logits.float(), audio_logits.float(), segment_labels.float()
    log_pv = F.logsigmoid(zv)
    log_p = log_pv + F.logsigmoid(za)
    log_not_p = torch.logaddexp(F.logsigmoid(-zv), log_pv + F.logsigmoid(-za))
    bce = -(y * log_p + (1.0 - y) * log_not_p)
    real = real_segments(padding_mask, bce)
    if present_class_weight != 1.0:
        present = ((y > 0) & (real[..., None] > 0)).any(dim=1, keepdim=True)  # (B, 1, C)
        bce = bce * torch.where(present, present_class_weight, 1.0)
    return (bce * real[..., None]).sum() / (real.sum() * bce.shape[-1])


def trim_to_longest(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Cut a batch to its longest video; returns (visual, audio, labels, padding_mask)."""
    lengths = batch["lengths"]
    longest = int(lengths.max())
    mask = padding_mask_from_lengths(lengths, longest)
    return batch["visual"][:, :longest], batch["audio"][:, :longest], batch["segment_labels"][:, :longest], mask


def pretrain_plg(
    data: PretrainData,
    settings: PretrainSettings,
    run_dir: Path,
    *,
    val: PretrainData | None = None,
    progress: bool = True,
    callback: EpochCallback | None = None,
    resume: bool = True,
    keep_epoch_checkpoints: int | None = DEFAULT_KEEP_EPOCH_CHECKPOINTS,
) -> PretrainResult:
    """Train the audio-visual PLG; resumes from `run_dir`'s last checkpoint unless `resume=False`
    (which deletes `run_dir/checkpoints` first).

    `callback(record)` runs after each epoch's checkpoint is written; `record` holds `epoch`,
    `loss` (mean training loss of the epoch) and `lr` (rate of its last step), and `val_seg_av`
    when `val` is given (needed by `select: best_val_av_f1`).
    """
    if settings.select == "best_val_av_f1" and val is None:
        raise InvalidInputError("pretrain: select: best_val_av_f1 needs a validation split of the pre-training set")
    device = resolve_device(settings.device)
    visual_dim, audio_dim = data.visual.shape[2], data.audio.shape[2]
    batches = InMemoryBatches(
        {"visual": data.visual, "audio": data.audio, "segment_labels": data.segment_labels, "lengths": data.lengths},
        settings.batch_size,
        device,
    )
    visual_text, audio_text = data.visual_text.to(device), data.audio_text.to(device)
    with seeded(settings.seed, device):
        model = AudioVisualPLG.from_settings(settings, visual_dim, audio_dim).to(device)
        identity = {
            "stage": STAGE,
            "model": model.config,
            "settings": settings_for_meta(settings),
            "data": {"n_videos": data.n_videos, "n_segments": data.visual.shape[1], "n_classes": data.segment_labels.shape[2]},
        }
        shuffle = torch.Generator().manual_seed(settings.seed + 1)
        run = TrainingRun(
            model=model,
            identity=identity,
            settings=settings,
            steps_per_epoch=len(batches),
            run_dir=run_dir,
            generators={"shuffle": shuffle},
            resume=resume,
            keep_epoch_checkpoints=keep_epoch_checkpoints,
        )
        bar = epoch_bar(range(run.epoch, settings.epochs), settings.epochs, run.epoch, "pretrain PLG", progress)
        for _ in bar:
            model.train()
            total = torch.zeros((), device=device)
            for batch in batches.shuffled(shuffle):
                visual, audio, labels, mask = trim_to_longest(batch)
                with autocast(device, settings.precision):
                    visual_logits, audio_logits = model(visual, audio, visual_text, audio_text, mask)
                    loss = plg_loss(visual_logits, audio_logits, labels, mask, settings.present_class_weight)
                lr = run.train_step(loss)
                total += loss.detach()
            record: dict[str, Any] = {"loss": float(total) / len(batches), "lr": lr}
            if val is not None:
                record["val_seg_av"] = validation_av_f1(model, val, settings)
            run.end_epoch(record, score=record.get("val_seg_av") if settings.select == "best_val_av_f1" else None)
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            if callback is not None:
                callback(run.history[-1])
    model.eval()
    if run.last_checkpoint is None:
        raise RuntimeError(f"pretrain_plg: no checkpoint written under {run_dir}")
    if settings.select == "best_val_av_f1":
        best = run.checkpoint_dir / BEST_NAME
        load_weights_into(model, best)
        return PretrainResult(model=model, history=run.history, checkpoint=best)
    return PretrainResult(model=model, history=run.history, checkpoint=run.last_checkpoint)


def validation_av_f1(model: AudioVisualPLG, val: PretrainData, settings: PretrainSettings) -> float:
    """Segment-level audio-visual F1 (percent, LLP protocol) of the prediction p^v * p^a >= 0.5 on
    `val`'s real segments: the UWAV release's model selection on UnAV-100 validation."""
    logits = predict_plg(
        model, val.visual, val.audio, val.lengths, val.visual_text, val.audio_text, precision=settings.precision
    )
    # Padded segments are NaN and so predicted negative.
    with np.errstate(invalid="ignore", over="ignore"):
        predicted = _sigmoid(logits.visual) * _sigmoid(logits.audio) >= 0.5
    truth = val.segment_labels.numpy() > 0
    return avvp_scores(predicted, predicted, truth, truth)["seg_av"]


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def load_plg(checkpoint: Path, device: str = "cpu") -> AudioVisualPLG:
    """The generator of a stage-1 checkpoint folder (eval mode), rebuilt from its metadata."""
    meta = load_checkpoint(checkpoint, with_state=False).meta
    if meta.get("identity", {}).get("stage") != STAGE:
        raise InvalidInputError(f"{checkpoint}: not a stage-1 (PLG) checkpoint")
    # Checkpoints written before `architecture` existed hold the encoder-width generator.
    model = AudioVisualPLG(**{"architecture": "encoder_width", **meta["identity"]["model"]})
    return load_weights_into(model, checkpoint).to(resolve_device(device)).eval()


@torch.no_grad()
def predict_plg(
    model: AudioVisualPLG,
    visual: np.ndarray | torch.Tensor,
    audio: np.ndarray | torch.Tensor,
    lengths: np.ndarray | torch.Tensor,
    visual_text: np.ndarray | torch.Tensor,
    audio_text: np.ndarray | torch.Tensor,
    *,
    batch_size: int = 256,
    precision: Precision = "fp32",
) -> AudioVisual[np.ndarray]:
    """AudioVisual(audio=logits, visual=logits), each float32 (N, T, C), on the model's device in eval mode.

    Padded segments (index >= length) are NaN so that using them by mistake is visible.
    """
    visual_t, audio_t, lengths_t, visual_text_t, audio_text_t = plg_inputs(visual, audio, lengths, visual_text, audio_text)
    device = next(model.parameters()).device
    model.eval()
    batches = InMemoryBatches({"visual": visual_t, "audio": audio_t, "lengths": lengths_t}, batch_size, device)
    visual_text_d, audio_text_d = visual_text_t.to(device), audio_text_t.to(device)
    outputs: list[AudioVisual[np.ndarray]] = []
    t = visual_t.shape[1]
    for batch in batches.in_order():
        mask = padding_mask_from_lengths(batch["lengths"], t)
        with autocast(device, precision):
            visual_logits, audio_logits = model(batch["visual"], batch["audio"], visual_text_d, audio_text_d, mask)
        fill = mask[:, :, None]
        outputs.append(
            AudioVisual(
                audio=audio_logits.float().masked_fill(fill, float("nan")).cpu().numpy(),
                visual=visual_logits.float().masked_fill(fill, float("nan")).cpu().numpy(),
            )
        )
    return AudioVisual(
        audio=np.concatenate([out.audio for out in outputs]), visual=np.concatenate([out.visual for out in outputs])
    )
