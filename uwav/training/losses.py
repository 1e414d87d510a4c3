"""Stage-2 losses: the UWAV losses of the HAN (METHOD.md "Stage 2"). Stage 1's loss is
`uwav.training.pretrain.plg_loss`; the pseudo-labels are `uwav.labels.rules`.

Shapes: B videos, T segments, C classes, d feature width. Every `padding_mask` is (B, T) bool with
True marking a padded segment; padded segments never enter a loss. Every stage-2 tensor with a
modality axis is (B, T, 2, ...) in the order (audio, visual) of `uwav.models.HANOutput`.

Reductions (decision, matching the reference's mean-reduced BCE): each BCE term is the mean over the
real (video, segment, class) elements of one modality; modality terms are summed. Losses are
computed in float32 whatever the input precision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uwav.catalog import TrainSettings
from uwav.labels.rules import per_segment
from uwav.models.han import HANOutput
from uwav.training.data import real_segments

# The reference clamps the video probability before its BCE (VALOR / AVVP-ECCV20 training loops).
VIDEO_PROB_EPS = 1e-7
# The reference HAN's label smoothing in guided learning, (audio, visual): target = s * y + (1 - s) / 2.
GUIDED_SMOOTHING = (1.0, 0.9)


# ---------------------------------------------------------------- class-balanced weights (eq. 17-19)


class ClassBalanceWeights(NamedTuple):
    """Per-modality weights of the positive (mask = 1) and negative (mask = 0) BCE elements."""

    positive: float
    negative: float


UNIT_WEIGHTS = ClassBalanceWeights(1.0, 1.0)


def class_balance_weights(
    binary_labels: Tensor | np.ndarray,
    w: float = 0.5,
    padding_mask: Tensor | np.ndarray | None = None,
    form: Literal["paper", "released"] = "paper",
) -> ClassBalanceWeights:
    """Eq. 18-19 for one modality over the whole training set.

    binary_labels: (N, T, C) binary pseudo-labels y^^ of every training video; padding_mask (N, T)
    True = padded (excluded from the means). With `r = mean(y^^)` over (videos, segments, classes):
    `w_pos = w * (1 - r)`, `w_neg = r`. `form="released"`: C times those, as the UWAV release
    weighs (`W * (C - sum_c f_c)` and `sum_c f_c`, f_c the fraction of segments labelled c).
    """
    if form not in ("paper", "released"):
        raise ValueError(f"class_balance_weights: form must be 'paper' or 'released', got {form!r}")
    labels = torch.as_tensor(binary_labels, dtype=torch.float64)
    if labels.dim() != 3:
        raise ValueError(f"class_balance_weights: expected (videos, segments, classes), got {tuple(labels.shape)}")
    real = torch.ones(labels.shape[:2], dtype=torch.float64)
    if padding_mask is not None:
        real = (~torch.as_tensor(padding_mask, dtype=torch.bool)).to(torch.float64)
    n_elements = real.sum() * labels.shape[-1]
    if n_elements == 0:
        raise ValueError("class_balance_weights: no real segments to average over")
    positive_rate = float((labels * real[..., None]).sum() / n_elements)
    scale = labels.shape[-1] if form == "released" else 1
    return ClassBalanceWeights(positive=scale * w * (1.0 - positive_rate), negative=scale * positive_rate)


# ---------------------------------------------------------------- mixup (eq. 14-16)


def sample_mixup_pairing(
    n: int, alpha: float, generator: torch.Generator | None = None, one_lambda: bool = False
) -> tuple[Tensor, Tensor]:
    """A random pairing of n segments and one `lambda ~ Beta(alpha, alpha)` per pair, or one for
    all pairs with `one_lambda` (CPU tensors).

    Returns (partner index (n,) int64, lambda (n,) float32): segment i is mixed with `partner[i]`.
    Deterministic given a CPU `generator` (the global torch RNG when None). torch has no seeded Beta
    sampler, so lambda is drawn by numpy from a seed taken from the generator.
    """
    partner = torch.randperm(n, generator=generator)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    lam = np.random.default_rng(seed).beta(alpha, alpha, size=1 if one_lambda else n)
    return partner, torch.from_numpy(np.broadcast_to(lam, (n,)).copy()).to(torch.float32)


def _to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """A CPU tensor on `device`. To CUDA through pinned memory without blocking: a plain copy from
    pageable memory synchronises the stream, so every step would wait for the GPU to drain."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def mix(values: Tensor, partner: Tensor, lam: Tensor) -> Tensor:
    """`lambda_i * values_i + (1 - lambda_i) * values_partner[i]` along the first axis."""
    lam = lam.to(values.device, values.dtype).reshape(-1, *([1] * (values.dim() - 1)))
    return lam * values + (1.0 - lam) * values[partner.to(values.device)]


# ---------------------------------------------------------------- stage 2


def video_loss(video_prob: Tensor, video_labels: Tensor) -> Tensor:
    """`L_video = BCE(P, y)`, mean over (B, C), with P clamped to [1e-7, 1 - 1e-7] as the reference does."""
    p = video_prob.float().clamp(VIDEO_PROB_EPS, 1.0 - VIDEO_PROB_EPS)
    y = video_labels.float()
    return -(y * torch.log(p) + (1.0 - y) * torch.log1p(-p)).mean()


def guided_video_loss(video_prob: Tensor, modality_prob: Tensor, video_labels: Tensor) -> Tensor:
    """The reference HAN's video-level loss, "individual guided learning" (AVVP-ECCV20's training
    loop; not in METHOD.md): `BCE(P, y) + BCE(P_a, y) + BCE(P_v, 0.9 y + 0.05)`, where P_m is
    modality m's temporal-attention pooled probability (`HANOutput.modality_prob`, (B, 2, C)).
    Each term as `video_loss` (mean over (B, C), probabilities clamped)."""
    y = video_labels.float()
    loss = video_loss(video_prob, y)
    for modality, smoothing in enumerate(GUIDED_SMOOTHING):
        loss = loss + video_loss(modality_prob[:, modality], smoothing * y + (1.0 - smoothing) * 0.5)
    return loss


@dataclass(frozen=True)
class LossTerms:
    """Scalar loss tensors; a disabled term is a zero tensor. `total` is what to backpropagate."""

    total: Tensor
    video: Tensor
    segment: Tensor
    mixup: Tensor

    def as_floats(self) -> dict[str, float]:
        """For logging (synchronises with the device)."""
        terms = {"loss": self.total, "video": self.video, "segment": self.segment, "mixup": self.mixup}
        return {name: float(value.detach()) for name, value in terms.items()}


class UWAVLoss(nn.Module):
    """`L = L_video + L_w-soft + L_mix` (METHOD.md "Stage 2"), every term switchable.

    - video_loss: `L_video = BCE(P, y)` (see `video_loss`); with `guided_learning` the reference
      HAN's guided learning instead (`guided_video_loss`), a project option outside METHOD.md.
    - segment_loss: `sum_m mean_{b,t,c} [ (w_pos^m * mask + w_neg^m * (1 - mask)) * BCE(p^m_t, target^m_t) ]`
      with target = soft (eq. 12) or binary (eq. 10) pseudo-labels (`labels`). With `reweight` off all
      weights are 1 (plain `L_soft`); on, `mask` is the video label y broadcast over segments
      (`reweight_mask='video_label'`, as printed) or the binary pseudo-label.
    - mixup: `sum_m mean_{i,c} BCE(sigmoid(fc_prob(f-^m_i)), p-^m_i)` over a random pairing of all real
      segments of the batch; `mixup_lambda='per_pair'`: one pairing and one lambda ~ Beta(alpha, alpha)
      per pair, shared by the two modalities; `'per_batch'` (the UWAV release): per modality its own
      pairing and one lambda for all of its pairs. The release writes the loss as
      `lambda BCE(z-, p_i) + (1 - lambda) BCE(z-, p_j)`, which equals BCE against the mixed target
      (BCE is linear in its target). Never re-weighted. Targets mix the segment-loss targets (`mixup_targets='soft'`) or their ceil
      (`'ceil'`, the AVE variant; note ceil(sigmoid(z - theta) * y) = y whenever the soft label is
      nonzero, i.e. the video label on every segment).
    The HAN baseline is `UWAVLoss(segment_loss=False, mixup=False)`. VALOR's loss (`main_avvp.py`:
    `L_video` + BCE-with-logits of each modality's segment logits against its binary pseudo-labels,
    each mean-reduced over (B, T, C)) is `UWAVLoss(labels="binary", reweight=False, mixup=False)`,
    what `recipe: valor` sets (tested against a transcription of VALOR's loop).
    """

    def __init__(
        self,
        labels: Literal["soft", "binary"] = "soft",
        reweight: bool = True,
        audio_weights: ClassBalanceWeights | None = None,
        visual_weights: ClassBalanceWeights | None = None,
        reweight_mask: Literal["video_label", "binary_pseudo_label"] = "video_label",
        mixup: bool = True,
        mixup_alpha: float = 1.7,
        mixup_targets: Literal["soft", "ceil"] = "soft",
        mixup_lambda: Literal["per_pair", "per_batch"] = "per_pair",
        video_loss: bool = True,
        segment_loss: bool = True,
        guided_learning: bool = False,
    ) -> None:
        super().__init__()
        if labels not in ("soft", "binary"):
            raise ValueError(f"UWAVLoss: labels must be 'soft' or 'binary', got {labels!r}")
        if reweight_mask not in ("video_label", "binary_pseudo_label"):
            raise ValueError(
                f"UWAVLoss: reweight_mask must be 'video_label' or 'binary_pseudo_label', got {reweight_mask!r}"
            )
        if mixup_targets not in ("soft", "ceil"):
            raise ValueError(f"UWAVLoss: mixup_targets must be 'soft' or 'ceil', got {mixup_targets!r}")
        if mixup_lambda not in ("per_pair", "per_batch"):
            raise ValueError(f"UWAVLoss: mixup_lambda must be 'per_pair' or 'per_batch', got {mixup_lambda!r}")
        if mixup and mixup_alpha <= 0:
            raise ValueError(f"UWAVLoss: mixup_alpha must be > 0, got {mixup_alpha}")
        if not (video_loss or segment_loss or mixup):
            raise ValueError("UWAVLoss: every term is switched off")
        reweight = reweight and segment_loss
        if reweight and (audio_weights is None or visual_weights is None):
            raise ValueError(
                "UWAVLoss: reweight needs audio_weights and visual_weights "
                "(class_balance_weights over the training set)"
            )
        self.labels = labels
        self.reweight = reweight
        self.reweight_mask = reweight_mask
        self.mixup = mixup
        self.mixup_alpha = mixup_alpha
        self.mixup_targets = mixup_targets
        self.mixup_lambda = mixup_lambda
        self.use_video_loss = video_loss
        self.use_segment_loss = segment_loss
        self.guided_learning = guided_learning
        weights = (audio_weights, visual_weights) if reweight else (UNIT_WEIGHTS, UNIT_WEIGHTS)
        # (2, 1) over the modality axis (audio, visual), broadcast against (B, T, 2, C).
        self.register_buffer("w_pos", torch.tensor([[w.positive] for w in weights]), persistent=False)
        self.register_buffer("w_neg", torch.tensor([[w.negative] for w in weights]), persistent=False)

    @classmethod
    def from_settings(
        cls,
        settings: TrainSettings,
        audio_weights: ClassBalanceWeights | None = None,
        visual_weights: ClassBalanceWeights | None = None,
        video_loss: bool = True,
        segment_loss: bool = True,
    ) -> UWAVLoss:
        return cls(
            labels=settings.labels,
            reweight=settings.reweight,
            audio_weights=audio_weights,
            visual_weights=visual_weights,
            reweight_mask=settings.reweight_mask,
            mixup=settings.mixup,
            mixup_alpha=settings.mixup_alpha,
            mixup_targets=settings.mixup_targets,
            mixup_lambda=settings.mixup_lambda,
            video_loss=video_loss,
            segment_loss=segment_loss,
            guided_learning=settings.guided_learning,
        )

    @property
    def needs_binary_labels(self) -> bool:
        return self.labels == "binary" or (self.reweight and self.reweight_mask == "binary_pseudo_label")

    @property
    def needs_soft_labels(self) -> bool:
        return self.labels == "soft" and (self.use_segment_loss or self.mixup)

    def forward(
        self,
        output: HANOutput,
        video_labels: Tensor,
        soft_labels: Tensor | None = None,
        binary_labels: Tensor | None = None,
        classify: Callable[[Tensor], Tensor] | None = None,
        padding_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> LossTerms:
        """output: the HAN's outputs; video_labels (B, C); soft_labels / binary_labels (B, T, 2, C)
        pseudo-labels (audio, visual), each needed only when a switched-on term uses it;
        classify: the model's shared classifier (`HAN.classify`), needed for mixup;
        generator: CPU generator for the mixup pairing (the global RNG when None)."""
        zero = output.video_prob.new_zeros((), dtype=torch.float32)
        video = zero
        if self.use_video_loss and self.guided_learning:
            video = guided_video_loss(output.video_prob, output.modality_prob, video_labels)
        elif self.use_video_loss:
            video = video_loss(output.video_prob, video_labels)
        if not (self.use_segment_loss or self.mixup):
            return LossTerms(total=video, video=video, segment=zero, mixup=zero)

        if self.needs_binary_labels and binary_labels is None:
            raise ValueError(
                f"UWAVLoss: binary_labels are needed (labels={self.labels!r}, reweight_mask={self.reweight_mask!r})"
            )
        if self.needs_soft_labels and soft_labels is None:
            raise ValueError("UWAVLoss: soft_labels are needed (labels='soft')")
        targets = (soft_labels if self.labels == "soft" else binary_labels).float()
        if targets.shape != output.segment_logits.shape:
            raise ValueError(
                f"UWAVLoss: pseudo-labels {tuple(targets.shape)} do not match segment logits "
                f"{tuple(output.segment_logits.shape)} (B, T, 2 modalities, C)"
            )
        real = real_segments(padding_mask, targets)  # (B, T)
        n_real_elements = real.sum() * targets.shape[-1]

        segment = zero
        if self.use_segment_loss:
            bce = F.binary_cross_entropy_with_logits(output.segment_logits.float(), targets, reduction="none")
            if self.reweight:
                if self.reweight_mask == "video_label":
                    mask = per_segment(video_labels.float(), targets)
                else:
                    mask = binary_labels.float()
                w_pos, w_neg = self.w_pos.to(bce.device), self.w_neg.to(bce.device)
                bce = bce * (w_pos * mask + w_neg * (1.0 - mask))
            segment = (bce * real[:, :, None, None]).sum() / n_real_elements

        mixed = zero
        if self.mixup:
            if classify is None:
                raise ValueError("UWAVLoss: mixup needs `classify` (the model's shared classifier)")
            mix_targets = torch.ceil(targets) if self.mixup_targets == "ceil" else targets
            if padding_mask is None:
                features, mix_targets = output.features.flatten(0, 1), mix_targets.flatten(0, 1)
            else:
                keep = ~padding_mask
                features, mix_targets = output.features[keep], mix_targets[keep]
            # Modalities mixed together (one pairing) or each on its own (audio, then visual).
            per_batch = self.mixup_lambda == "per_batch"
            groups = (slice(0, 1), slice(1, 2)) if per_batch else (slice(0, 2),)
            for group in groups:
                pairing = sample_mixup_pairing(features.shape[0], self.mixup_alpha, generator, one_lambda=per_batch)
                partner, lam = (_to_device(t, features.device) for t in pairing)
                logits = classify(mix(features[:, group], partner, lam))
                mixed = mixed + F.binary_cross_entropy_with_logits(
                    logits.float(), mix(mix_targets[:, group], partner, lam), reduction="sum"
                ) / n_real_elements

        return LossTerms(total=video + segment + mixed, video=video, segment=segment, mixup=mixed)
