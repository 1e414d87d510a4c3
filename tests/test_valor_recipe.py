"""`recipe: valor` against transcriptions of VALOR's training code (`Franklin905/VALOR`,
`main_avvp.py`): its loss (`train`: the video probability clamped, then `nn.BCELoss`, plus
`F.binary_cross_entropy_with_logits` of each modality's frame logits against its pseudo-labels,
mean-reduced) and its learning-rate schedule (`lr_warm_up_cos_anneal`, set at the start of each
epoch 1..E). The transcriptions restate that code in plain arithmetic here, not a copy of it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from uwav.catalog import parse_catalog
from uwav.models.han import HANOutput
from uwav.training.losses import UWAVLoss
from uwav.training.schedule import WarmupCosine

CATALOG = {"datasets": {"llp": {"kind": "llp", "annotations": "llp"}}, "target": "llp"}


def valor_loss(video_prob: torch.Tensor, frame_logits: torch.Tensor, labels: torch.Tensor, audio_pl: torch.Tensor, visual_pl: torch.Tensor) -> torch.Tensor:
    """VALOR's loss: `output.clamp_(1e-7, 1 - 1e-7)`, `nn.BCELoss()(output, labels)` (mean over
    (B, C), logs clamped at -100), and per modality `binary_cross_entropy_with_logits(
    frame_logits[:, :, m], PL^m)` (mean over (B, T, C)), all summed."""
    p = video_prob.clamp(1e-7, 1 - 1e-7)
    video = -(labels * torch.log(p).clamp(min=-100) + (1 - labels) * torch.log(1 - p).clamp(min=-100)).mean()

    def bce_with_logits(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (z.clamp(min=0) - z * y + torch.log1p(torch.exp(-z.abs()))).mean()

    return bce_with_logits(frame_logits[:, :, 0], audio_pl) + bce_with_logits(frame_logits[:, :, 1], visual_pl) + video


def test_the_valor_recipes_loss_is_valors() -> None:
    settings = parse_catalog({**CATALOG, "recipe": "valor"}, Path(".")).stages.train
    criterion = UWAVLoss.from_settings(settings)
    generator = torch.Generator().manual_seed(0)
    b, t, c, d = 6, 10, 25, 8
    logits = (3 * torch.randn(b, t, 2, c, generator=generator)).requires_grad_()
    video_logit = (4 * torch.randn(b, c, generator=generator)).requires_grad_()
    labels = (torch.rand(b, c, generator=generator) < 0.2).float()
    pseudo = (torch.rand(b, t, 2, c, generator=generator) < 0.3).float() * labels[:, None, None, :]
    saturated = torch.rand(b, c, generator=generator) < 0.1  # P = 1 there: the clamp matters

    def video_prob() -> torch.Tensor:
        return torch.where(saturated, 1.0, torch.sigmoid(video_logit))

    output = HANOutput(video_prob(), torch.sigmoid(logits), logits, torch.zeros(b, t, 2, d), torch.zeros(b, 2, c))
    ours = criterion(output, labels, soft_labels=pseudo, binary_labels=pseudo).total
    theirs = valor_loss(video_prob(), logits, labels, pseudo[:, :, 0], pseudo[:, :, 1])
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    ours_grad = torch.autograd.grad(ours, (logits, video_logit))
    theirs_grad = torch.autograd.grad(theirs, (logits, video_logit))
    for mine, valors in zip(ours_grad, theirs_grad, strict=True):
        torch.testing.assert_close(mine, valors, rtol=1e-5, atol=1e-7)
    # The paper's recipe (soft labels, re-weighting, mixup) is another loss on the same outputs.
    paper = parse_catalog(CATALOG, Path(".")).stages.train
    assert (paper.labels, paper.reweight, paper.mixup) != (settings.labels, settings.reweight, settings.mixup)


def valor_epoch_lr(epoch: int, warm_up_epoch: int, max_epoch: int, lr_min: float, lr_max: float) -> float:
    """`lr_warm_up_cos_anneal(optimizer, epoch, ...)`, called before epoch 1..max_epoch trains."""
    if epoch < warm_up_epoch:
        return epoch / warm_up_epoch * lr_max
    return lr_min + 0.5 * (lr_max - lr_min) * (1.0 + math.cos((epoch - warm_up_epoch) / (max_epoch - warm_up_epoch) * math.pi))


@pytest.mark.parametrize(("lr", "min_lr"), [(1e-4, 1e-6), (3e-4, 3e-6)])  # VALOR; VALOR+ and VALOR++
def test_the_valor_recipes_schedule_is_valors_per_epoch(lr: float, min_lr: float) -> None:
    settings = parse_catalog({**CATALOG, "recipe": "valor", "stages": {"train": {"lr": lr, "min_lr": min_lr}}}, Path(".")).stages.train
    steps_per_epoch = 157  # 10,000 LLP training videos in batches of 64
    schedule = WarmupCosine.for_epochs(
        peak_lr=settings.lr, min_lr=settings.min_lr, warmup_epochs=settings.warmup_epochs, epochs=settings.epochs,
        steps_per_epoch=steps_per_epoch, granularity=settings.lr_schedule,
    )
    for epoch in range(1, settings.epochs + 1):
        expected = valor_epoch_lr(epoch, 10, 60, min_lr, lr)
        for step in ((epoch - 1) * steps_per_epoch, epoch * steps_per_epoch - 1):
            assert schedule.lr_at(step) == pytest.approx(expected, rel=1e-12)
    assert schedule.lr_at(0) == pytest.approx(lr / 10) and schedule.lr_at(60 * steps_per_epoch - 1) == pytest.approx(min_lr)
