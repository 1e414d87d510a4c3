"""Losses and pseudo-labels on tiny cases computed by hand (METHOD.md eq. 10, 12, 14-19)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from uwav.catalog import TrainSettings
from uwav.labels.rules import binary_pseudo_labels, soft_pseudo_labels
from uwav.models import HANOutput
from uwav.training.losses import (
    ClassBalanceWeights,
    UWAVLoss,
    class_balance_weights,
    guided_video_loss,
    mix,
    sample_mixup_pairing,
    video_loss,
)
from uwav.training.pretrain import plg_loss


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def bce(p: float, t: float) -> float:
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


# ---------------------------------------------------------------- eq. 10, 12


LOGITS = torch.tensor([[[2.0, -1.0], [0.0, 3.0]], [[2.0, -1.0], [1.0, 3.0]]])  # (B=2, T=2, C=2)
THRESHOLDS = torch.tensor([1.0, 0.5])
VIDEO_LABELS = torch.tensor([[1.0, 1.0], [1.0, 0.0]])


def test_binary_pseudo_labels_eq10() -> None:
    expected = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]]])  # z == theta is not above it
    torch.testing.assert_close(binary_pseudo_labels(LOGITS, THRESHOLDS, VIDEO_LABELS), expected)


def test_soft_pseudo_labels_eq12() -> None:
    expected = torch.tensor(
        [[[sig(1.0), sig(-1.5)], [sig(-1.0), sig(2.5)]], [[sig(1.0), 0.0], [0.5, 0.0]]]  # absent class -> 0
    )
    torch.testing.assert_close(soft_pseudo_labels(LOGITS, THRESHOLDS, VIDEO_LABELS), expected)


# ---------------------------------------------------------------- eq. 18-19


def test_class_balance_weights_eq18_19() -> None:
    labels = np.array([[[1, 0], [1, 1]], [[0, 0], [0, 0]]])  # 3 positives in 8 elements
    assert class_balance_weights(labels, w=0.5) == pytest.approx((0.5 * 5 / 8, 3 / 8))
    # Padding the second segment of video 0 removes 2 positives and 2 elements: 1 positive in 6.
    padding = np.array([[False, True], [False, False]])
    weights = class_balance_weights(torch.as_tensor(labels), w=0.5, padding_mask=padding)
    assert weights == pytest.approx((0.5 * 5 / 6, 1 / 6))
    assert isinstance(weights, ClassBalanceWeights) and weights.positive == pytest.approx(5 / 12)


def test_released_class_balance_weights_are_c_times_eq18_19() -> None:
    # The release: w_pos = W (C - sum_c f_c), w_neg = sum_c f_c, f_c = fraction of segments labelled c.
    labels = np.array([[[1, 0, 0], [1, 1, 0]], [[0, 0, 0], [0, 0, 1]]])  # f = (2/4, 1/4, 1/4)
    f_sum = 2 / 4 + 1 / 4 + 1 / 4
    assert class_balance_weights(labels, w=0.5, form="released") == pytest.approx((0.5 * (3 - f_sum), f_sum))
    with pytest.raises(ValueError, match="form"):
        class_balance_weights(labels, form="other")  # type: ignore[arg-type]


def test_class_balance_weights_refuses_bad_shape() -> None:
    with pytest.raises(ValueError, match="videos, segments, classes"):
        class_balance_weights(np.zeros((4, 3)))


# ---------------------------------------------------------------- mixup (eq. 14-16)


def test_mix_targets_by_hand() -> None:
    targets = torch.tensor([[1.0, 0.0], [0.2, 1.0], [0.0, 0.6]])
    partner, lam = torch.tensor([1, 2, 0]), torch.tensor([0.25, 0.6, 1.0])
    expected = torch.tensor([[0.25 * 1 + 0.75 * 0.2, 0.75 * 1.0], [0.6 * 0.2, 0.6 + 0.4 * 0.6], [0.0, 0.6]])
    torch.testing.assert_close(mix(targets, partner, lam), expected)


def test_mixup_pairing_is_a_seeded_permutation_with_beta_lambda() -> None:
    partner, lam = sample_mixup_pairing(200_000, 1.7, torch.Generator().manual_seed(3))
    assert torch.equal(partner.sort().values, torch.arange(200_000))
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)).
    assert lam.mean().item() == pytest.approx(0.5, abs=3e-3)
    assert lam.var().item() == pytest.approx(1 / (4 * 4.4), abs=2e-3)
    again = sample_mixup_pairing(200_000, 1.7, torch.Generator().manual_seed(3))
    assert torch.equal(again[0], partner) and torch.equal(again[1], lam)


# ---------------------------------------------------------------- the 1-video, 2-segment, 2-class example


def example_output(
    logits: Tensor, features: Tensor | None = None, video_prob: Tensor | None = None, modality_prob: Tensor | None = None
) -> HANOutput:
    batch, classes = logits.shape[0], logits.shape[-1]
    return HANOutput(
        video_prob=video_prob if video_prob is not None else torch.full((batch, classes), 0.5),
        segment_prob=torch.sigmoid(logits),
        segment_logits=logits,
        features=features if features is not None else torch.zeros(*logits.shape[:3], 4),
        modality_prob=modality_prob if modality_prob is not None else torch.full((batch, 2, classes), 0.5),
    )


# z = ln 3 -> p = 3/4; z = -ln 3 -> p = 1/4; z = 0 -> p = 1/2.
L3 = math.log(3.0)
EX_LOGITS = torch.tensor([[[[L3, 0.0], [-L3, L3]], [[0.0, -L3], [L3, 0.0]]]])  # (1, T=2, (audio, visual), C=2)
EX_P = [[[[0.75, 0.5], [0.25, 0.75]], [[0.5, 0.25], [0.75, 0.5]]]]
EX_SOFT = torch.tensor([[[[0.9, 0.0], [0.6, 0.0]], [[0.3, 0.0], [0.8, 0.0]]]])
EX_BINARY = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]], [[0.0, 0.0], [1.0, 0.0]]]])
EX_VIDEO = torch.tensor([[1.0, 0.0]])
AUDIO_W, VISUAL_W = ClassBalanceWeights(0.3, 0.2), ClassBalanceWeights(0.4, 0.1)


def example_bce(targets: Tensor) -> list[list[list[float]]]:
    """BCE per (segment, modality, class) of the example, written out element by element."""
    return [[[bce(EX_P[0][t][m][c], float(targets[0, t, m, c])) for c in range(2)] for m in range(2)] for t in range(2)]


def segment_only(**switches: object) -> UWAVLoss:
    return UWAVLoss(video_loss=False, mixup=False, audio_weights=AUDIO_W, visual_weights=VISUAL_W, **switches)


def test_reweighted_soft_loss_by_hand() -> None:
    e = example_bce(EX_SOFT)
    # mask = video label [1, 0] on both segments: class 0 gets w_pos, class 1 w_neg; mean over T*C = 4 per modality.
    audio = (0.3 * e[0][0][0] + 0.2 * e[0][0][1] + 0.3 * e[1][0][0] + 0.2 * e[1][0][1]) / 4
    visual = (0.4 * e[0][1][0] + 0.1 * e[0][1][1] + 0.4 * e[1][1][0] + 0.1 * e[1][1][1]) / 4
    terms = segment_only()(example_output(EX_LOGITS), EX_VIDEO, soft_labels=EX_SOFT)
    assert terms.segment.item() == pytest.approx(audio + visual, rel=1e-6)
    assert terms.total.item() == pytest.approx(audio + visual, rel=1e-6)
    assert terms.video.item() == 0 and terms.mixup.item() == 0


def test_reweight_off_means_unit_weights() -> None:
    e = example_bce(EX_SOFT)
    expected = sum(e[t][m][c] for t in range(2) for m in range(2) for c in range(2)) / 4
    terms = segment_only(reweight=False)(example_output(EX_LOGITS), EX_VIDEO, soft_labels=EX_SOFT)
    assert terms.segment.item() == pytest.approx(expected, rel=1e-6)
    # Weights are not needed when reweighting is off.
    UWAVLoss(reweight=False)


def test_reweight_mask_by_binary_pseudo_label() -> None:
    e = example_bce(EX_SOFT)
    b = EX_BINARY[0]
    weights = (AUDIO_W, VISUAL_W)
    expected = sum(
        (weights[m].positive if b[t, m, c] == 1 else weights[m].negative) * e[t][m][c]
        for t in range(2)
        for m in range(2)
        for c in range(2)
    ) / 4
    loss = segment_only(reweight_mask="binary_pseudo_label")
    terms = loss(example_output(EX_LOGITS), EX_VIDEO, soft_labels=EX_SOFT, binary_labels=EX_BINARY)
    assert terms.segment.item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="binary_labels are needed"):
        loss(example_output(EX_LOGITS), EX_VIDEO, soft_labels=EX_SOFT)


def test_binary_labels_switch() -> None:
    e = example_bce(EX_BINARY)
    expected = sum(e[t][m][c] for t in range(2) for m in range(2) for c in range(2)) / 4
    terms = segment_only(labels="binary", reweight=False)(example_output(EX_LOGITS), EX_VIDEO, binary_labels=EX_BINARY)
    assert terms.segment.item() == pytest.approx(expected, rel=1e-6)


def test_video_loss_by_hand_and_clamped() -> None:
    value = video_loss(torch.tensor([[0.8, 0.1]]), torch.tensor([[1.0, 0.0]]))
    assert value.item() == pytest.approx((-math.log(0.8) - math.log(0.9)) / 2, rel=1e-6)
    assert torch.isfinite(video_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])))


def test_han_baseline_is_the_video_loss_only() -> None:
    out = example_output(EX_LOGITS, video_prob=torch.tensor([[0.8, 0.1]]))
    terms = UWAVLoss(segment_loss=False, mixup=False)(out, EX_VIDEO)
    assert terms.total.item() == pytest.approx((-math.log(0.8) - math.log(0.9)) / 2, rel=1e-6)
    assert terms.segment.item() == 0 and terms.mixup.item() == 0


def test_guided_learning_by_hand() -> None:
    """The reference HAN's loss: BCE(P, y) + BCE(P_a, y) + BCE(P_v, 0.9 y + 0.05), each a mean over classes."""
    video, audio, visual = [0.8, 0.1], [0.6, 0.2], [0.7, 0.4]
    y = [1.0, 0.0]
    expected = sum(
        (bce(p[0], t[0]) + bce(p[1], t[1])) / 2
        for p, t in ((video, y), (audio, y), (visual, [0.95, 0.05]))
    )  # fmt: skip
    modality = torch.tensor([[audio, visual]])
    value = guided_video_loss(torch.tensor([video]), modality, EX_VIDEO)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    out = example_output(EX_LOGITS, video_prob=torch.tensor([video]), modality_prob=modality)
    terms = UWAVLoss(segment_loss=False, mixup=False, guided_learning=True)(out, EX_VIDEO)
    assert terms.video.item() == terms.total.item() == pytest.approx(expected, rel=1e-6)
    assert UWAVLoss(segment_loss=False, mixup=False)(out, EX_VIDEO).total.item() == pytest.approx(
        (bce(0.8, 1.0) + bce(0.1, 0.0)) / 2, rel=1e-6
    )


@pytest.mark.parametrize("targets", ["soft", "ceil"])
def test_mixup_term_by_hand(targets: str) -> None:
    features = torch.randn(1, 2, 2, 4)
    weight = torch.randn(2, 4)
    classify = lambda f: f @ weight.T  # noqa: E731 -- a linear shared classifier
    loss = UWAVLoss(video_loss=False, segment_loss=False, mixup=True, mixup_targets=targets)
    terms = loss(example_output(EX_LOGITS, features), EX_VIDEO, soft_labels=EX_SOFT, classify=classify,
                 generator=torch.Generator().manual_seed(7))
    partner, lam = sample_mixup_pairing(2, 1.7, torch.Generator().manual_seed(7))
    base = EX_SOFT[0] if targets == "soft" else torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [1.0, 0.0]]])
    expected = 0.0
    for i in range(2):
        j, lm = int(partner[i]), float(lam[i])
        for m in range(2):
            p = torch.sigmoid(classify(lm * features[0, i, m] + (1 - lm) * features[0, j, m]))
            for c in range(2):
                expected += bce(float(p[c]), lm * float(base[i, m, c]) + (1 - lm) * float(base[j, m, c]))
    assert terms.mixup.item() == pytest.approx(expected / 4, rel=1e-5)


def test_per_batch_mixup_by_hand() -> None:
    """The release's mixup: per modality its own permutation of the segments and one lambda, and
    `lam BCE(z, t_i) + (1 - lam) BCE(z, t_j)` (written here as in the release, not as one BCE)."""
    features = torch.randn(1, 2, 2, 4)
    weight = torch.randn(2, 4)
    classify = lambda f: f @ weight.T  # noqa: E731 -- a linear shared classifier
    loss = UWAVLoss(video_loss=False, segment_loss=False, mixup=True, mixup_lambda="per_batch")
    terms = loss(example_output(EX_LOGITS, features), EX_VIDEO, soft_labels=EX_SOFT, classify=classify,
                 generator=torch.Generator().manual_seed(7))
    generator = torch.Generator().manual_seed(7)
    expected = 0.0
    for m in range(2):  # audio first, then visual, each with its own draw
        partner, lam = sample_mixup_pairing(2, 1.7, generator, one_lambda=True)
        assert lam[0] == lam[1]
        lm = float(lam[0])
        for i in range(2):
            j = int(partner[i])
            p = torch.sigmoid(classify(lm * features[0, i, m] + (1 - lm) * features[0, j, m]))
            for c in range(2):
                expected += lm * bce(float(p[c]), float(EX_SOFT[0, i, m, c])) + (1 - lm) * bce(
                    float(p[c]), float(EX_SOFT[0, j, m, c])
                )
    assert terms.mixup.item() == pytest.approx(expected / 4, rel=1e-5)
    per_pair = UWAVLoss(video_loss=False, segment_loss=False, mixup=True)(
        example_output(EX_LOGITS, features), EX_VIDEO, soft_labels=EX_SOFT, classify=classify,
        generator=torch.Generator().manual_seed(7),
    )
    assert per_pair.mixup.item() != pytest.approx(terms.mixup.item(), rel=1e-6)


def test_ceil_targets_are_the_video_labels_on_soft_labels() -> None:
    soft = soft_pseudo_labels(LOGITS, THRESHOLDS, VIDEO_LABELS)
    torch.testing.assert_close(torch.ceil(soft), VIDEO_LABELS[:, None, :].expand_as(soft))


def test_mixup_gradient_reaches_the_features() -> None:
    features = torch.randn(2, 3, 2, 4, requires_grad=True)
    logits = torch.randn(2, 3, 2, 5)
    labels = torch.ones(2, 5)
    loss = UWAVLoss(video_loss=False, segment_loss=False)
    loss(example_output(logits, features), labels, soft_labels=torch.rand(2, 3, 2, 5),
         classify=torch.nn.Linear(4, 5), generator=torch.Generator().manual_seed(0)).total.backward()
    assert features.grad is not None and features.grad.abs().sum() > 0


def test_padded_segments_never_enter_the_stage2_loss() -> None:
    torch.manual_seed(1)
    logits, features = torch.randn(1, 3, 2, 5), torch.randn(1, 3, 2, 4)
    soft, binary = torch.rand(1, 3, 2, 5), (torch.rand(1, 3, 2, 5) > 0.5).float()
    labels = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0]])
    garbage = lambda x: torch.cat([x, 1e3 * torch.randn(1, 2, *x.shape[2:])], 1)  # noqa: E731
    padding = torch.tensor([[False, False, False, True, True]])
    classify = torch.nn.Linear(4, 5)
    loss = UWAVLoss(audio_weights=AUDIO_W, visual_weights=VISUAL_W, reweight_mask="binary_pseudo_label")
    video_prob = torch.full((1, 5), 0.3)
    short = loss(example_output(logits, features, video_prob), labels, soft, binary, classify,
                 generator=torch.Generator().manual_seed(5))
    long = loss(example_output(garbage(logits), garbage(features), video_prob), labels, garbage(soft),
                garbage(binary), classify, padding_mask=padding, generator=torch.Generator().manual_seed(5))
    for name in ("total", "video", "segment", "mixup"):
        assert getattr(long, name).item() == pytest.approx(getattr(short, name).item(), rel=1e-6), name


def test_switch_validation() -> None:
    with pytest.raises(ValueError, match="needs audio_weights"):
        UWAVLoss(reweight=True)
    with pytest.raises(ValueError, match="every term"):
        UWAVLoss(video_loss=False, segment_loss=False, mixup=False)
    with pytest.raises(ValueError, match="mixup needs `classify`"):
        UWAVLoss(reweight=False)(example_output(EX_LOGITS), EX_VIDEO, soft_labels=EX_SOFT)
    with pytest.raises(ValueError, match="do not match"):
        UWAVLoss(reweight=False, mixup=False)(example_output(EX_LOGITS), EX_VIDEO, soft_labels=EX_SOFT[:, :1])


def test_from_settings_follows_the_catalog_switches() -> None:
    loss = UWAVLoss.from_settings(TrainSettings(labels="binary", reweight=False, mixup_targets="ceil"))
    switches = (loss.labels, loss.reweight, loss.mixup, loss.mixup_alpha, loss.mixup_targets, loss.guided_learning)
    assert switches == ("binary", False, True, 1.7, "ceil", False)
    assert UWAVLoss.from_settings(TrainSettings(reweight=False, guided_learning=True)).guided_learning
    assert loss.needs_binary_labels and not loss.needs_soft_labels


# ---------------------------------------------------------------- stage 1


def test_plg_loss_by_hand_and_padding() -> None:
    zv = torch.tensor([[[L3, 0.0], [0.0, -L3], [9.0, 9.0]]])  # third segment is padding
    za = torch.tensor([[[0.0, L3], [L3, L3], [-9.0, 9.0]]])
    y = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])
    padding = torch.tensor([[False, False, True]])
    # p^av = p^v p^a: [0.375, 0.375], [0.375, 0.1875]
    expected = (bce(0.375, 1) + bce(0.375, 0) + bce(0.375, 0) + bce(0.1875, 1)) / 4
    assert plg_loss(zv, za, y, padding).item() == pytest.approx(expected, rel=1e-6)
    assert plg_loss(zv[:, :2], za[:, :2], y[:, :2]).item() == pytest.approx(expected, rel=1e-6)


def test_plg_loss_weighs_present_classes() -> None:
    """The release weighs classes present anywhere in the video by 5 (a padded segment's label does not count)."""
    zv = torch.tensor([[[L3, 0.0, 0.0], [0.0, -L3, 0.0], [9.0, 9.0, 9.0]]])
    za = torch.tensor([[[0.0, L3, 0.0], [L3, L3, 0.0], [-9.0, 9.0, 9.0]]])
    y = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]]])  # class 2 only on the padded segment
    padding = torch.tensor([[False, False, True]])
    # p^av: [0.375, 0.375, 0.25], [0.375, 0.1875, 0.25]; class 0 present (weight 5), classes 1, 2 absent.
    expected = (
        5 * bce(0.375, 1) + bce(0.375, 0) + bce(0.25, 0) + 5 * bce(0.375, 0) + bce(0.1875, 0) + bce(0.25, 0)
    ) / 6
    assert plg_loss(zv, za, y, padding, present_class_weight=5.0).item() == pytest.approx(expected, rel=1e-6)


def test_plg_loss_is_stable_at_saturation() -> None:
    zv = torch.full((1, 1, 1), 60.0, requires_grad=True)
    za = torch.full((1, 1, 1), 60.0, requires_grad=True)
    value = plg_loss(zv, za, torch.zeros(1, 1, 1))
    value.backward()
    # -log(1 - p^v p^a) ~= -log(2 e^-60) = 60 - ln 2; naive BCE on p = 1.0 would give 100 (clamped) or inf.
    assert value.item() == pytest.approx(60 - math.log(2), rel=1e-5)
    assert torch.isfinite(zv.grad).all() and torch.isfinite(za.grad).all()
