"""Training data held in (device) memory and batched by indexing, no per-sample loading.

The stage functions read features once from the store into arrays; the training loops move
them to the device once (`InMemoryBatches`) and cut each epoch into batches by slicing a seeded
permutation: one `index_select` per tensor and batch instead of a per-video Dataset and collate.

Array layouts (N videos, T segments, C classes; modality axis ordered (audio, visual) as the HAN's
outputs): see `PretrainData` and `HanTrainData`. Arrays may be numpy arrays or torch tensors.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from uwav.contracts import HTSAT_MAP_STEPS, HanAudioInput

ArrayLike = np.ndarray | Tensor


def as_float_tensor(name: str, array: ArrayLike, ndim: int | tuple[int, ...]) -> Tensor:
    """`array` as a float32 CPU tensor (no copy when it already is one), checking its rank."""
    tensor = torch.as_tensor(array)
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if tensor.dim() not in allowed:
        raise ValueError(f"{name}: expected {' or '.join(map(str, allowed))} dimensions, got shape {tuple(tensor.shape)}")
    return tensor.to(torch.float32)


def average_frames(visual2d: ArrayLike) -> Tensor:
    """Per-segment 2-D visual features (N, T, D) from (N, T, frames, D) by the frame mean; 3-D passes through.

    The HAN averages the frames of a segment before `fc_v` (the same function as after it,
    8x cheaper); doing it once at load keeps the ResNet-152 features at (N, T, 2048) in memory
    (820 MB for LLP's 10,000 videos instead of 6.5 GB). Read large stores in chunks and average
    each chunk, so the full (N, T, 8, D) array never exists.
    """
    tensor = as_float_tensor("visual2d", visual2d, (3, 4))
    return tensor.mean(dim=2) if tensor.dim() == 4 else tensor


def padding_mask_from_lengths(lengths: Tensor, n_segments: int) -> Tensor:
    """(N, T) bool, True where a segment is padding (index >= the video's length)."""
    return torch.arange(n_segments, device=lengths.device)[None, :] >= lengths[:, None]


def real_segments(padding_mask: Tensor | None, like: Tensor) -> Tensor:
    """(B, T) float32, 1 for real segments and 0 for padded ones (all 1 without a mask); `like` gives B, T and the device."""
    if padding_mask is None:
        return torch.ones(like.shape[:2], dtype=torch.float32, device=like.device)
    return (~padding_mask).to(torch.float32)


def _check_rows(name: str, tensor: Tensor, n: int) -> None:
    if tensor.shape[0] != n:
        raise ValueError(f"{name}: expected {n} videos on the first axis, got shape {tuple(tensor.shape)}")


def _check_lengths(name: str, lengths: Tensor, n: int, n_segments: int) -> Tensor:
    lengths = torch.as_tensor(lengths).to(torch.int64)
    if lengths.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},), got {tuple(lengths.shape)}")
    bad = torch.nonzero((lengths < 1) | (lengths > n_segments)).flatten()
    if bad.numel():
        raise ValueError(
            f"{name}: every video needs 1..{n_segments} segments; video index {int(bad[0])} has {int(lengths[bad[0]])}"
        )
    return lengths


def plg_inputs(
    visual: ArrayLike, audio: ArrayLike, lengths: ArrayLike, visual_text: ArrayLike, audio_text: ArrayLike
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The PLG's inputs as checked tensors: visual (N, T, Dv), audio (N, T, Da), lengths (N,) int64,
    visual_text (C, Dv), audio_text (C, Da)."""
    visual_t = as_float_tensor("visual", visual, 3)
    audio_t = as_float_tensor("audio", audio, 3)
    visual_text_t = as_float_tensor("visual_text", visual_text, 2)
    audio_text_t = as_float_tensor("audio_text", audio_text, 2)
    n, t = visual_t.shape[:2]
    if audio_t.shape[:2] != (n, t):
        raise ValueError(f"audio: expected (N={n}, T={t}, ...) like visual, got {tuple(audio_t.shape)}")
    n_classes = visual_text_t.shape[0]
    if visual_text_t.shape[1] != visual_t.shape[2]:
        raise ValueError(f"visual_text: expected width {visual_t.shape[2]} like visual, got {tuple(visual_text_t.shape)}")
    if audio_text_t.shape != (n_classes, audio_t.shape[2]):
        raise ValueError(f"audio_text: expected ({n_classes}, {audio_t.shape[2]}), got {tuple(audio_text_t.shape)}")
    return visual_t, audio_t, _check_lengths("lengths", torch.as_tensor(lengths), n, t), visual_text_t, audio_text_t


@dataclass(frozen=True)
class PretrainData:
    """Stage-1 training set: padded segment embeddings and segment-level audio-visual labels.

    visual (N, T, Dv) CLIP image embeddings; audio (N, T, Da) CLAP audio embeddings; lengths (N,)
    valid segments per video (the rest is padding); segment_labels (N, T, C) in {0, 1};
    visual_text (C, Dv) / audio_text (C, Da) class text embeddings.
    """

    visual: Tensor
    audio: Tensor
    lengths: Tensor
    segment_labels: Tensor
    visual_text: Tensor
    audio_text: Tensor

    @classmethod
    def from_arrays(
        cls,
        visual: ArrayLike,
        audio: ArrayLike,
        lengths: ArrayLike,
        segment_labels: ArrayLike,
        visual_text: ArrayLike,
        audio_text: ArrayLike,
    ) -> PretrainData:
        visual_t, audio_t, lengths_t, visual_text_t, audio_text_t = plg_inputs(visual, audio, lengths, visual_text, audio_text)
        labels_t = as_float_tensor("segment_labels", segment_labels, 3)
        expected = (*visual_t.shape[:2], visual_text_t.shape[0])
        if labels_t.shape != expected:
            raise ValueError(f"segment_labels: expected {expected} (videos, segments, classes), got {tuple(labels_t.shape)}")
        return cls(visual_t, audio_t, lengths_t, labels_t, visual_text_t, audio_text_t)

    @property
    def n_videos(self) -> int:
        return self.visual.shape[0]


@dataclass(frozen=True)
class HanFeatures:
    """HAN inputs of a split: audio (N, T, Da), or with `audio_input="htsat_maps"` one HTSAT map
    per video (N, 64, Da) (`uwav.contracts.HanAudioInput`); visual2d (N, T, Dv) (frames already
    averaged), visual3d (N, T, D3); lengths (N,), the visual streams' real segments, or None when
    every video has all T segments."""

    audio: Tensor
    visual2d: Tensor
    visual3d: Tensor
    lengths: Tensor | None = None
    audio_input: HanAudioInput = "segments"

    @classmethod
    def from_arrays(
        cls,
        audio: ArrayLike,
        visual2d: ArrayLike,
        visual3d: ArrayLike,
        lengths: ArrayLike | None = None,
        audio_input: HanAudioInput = "segments",
    ) -> HanFeatures:
        """Checks shapes; a 4-D `visual2d` (N, T, frames, Dv) is averaged over frames here."""
        audio_t = as_float_tensor("audio", audio, 3)
        visual2d_t = average_frames(visual2d)
        visual3d_t = as_float_tensor("visual3d", visual3d, 3)
        n, t = visual2d_t.shape[:2]
        if visual3d_t.shape[:2] != (n, t):
            raise ValueError(f"visual3d: expected (N={n}, T={t}, ...) like visual2d, got {tuple(visual3d_t.shape)}")
        if audio_input == "htsat_maps":
            expected, what = (n, HTSAT_MAP_STEPS), "one HTSAT map per video"
        elif audio_input == "segments":
            expected, what = (n, t), "like visual2d"
        else:
            raise ValueError(f"audio_input: expected 'segments' or 'htsat_maps', got {audio_input!r}")
        if audio_t.shape[:2] != expected:
            raise ValueError(f"audio: expected (N={expected[0]}, {expected[1]}, ...), {what}, got {tuple(audio_t.shape)}")
        lengths_t = None if lengths is None else _check_lengths("lengths", torch.as_tensor(lengths), n, t)
        if lengths_t is not None and bool((lengths_t == t).all()):
            lengths_t = None  # no padding: the models take the faster unmasked path
        return cls(audio_t, visual2d_t, visual3d_t, lengths_t, audio_input)

    @property
    def n_videos(self) -> int:
        return self.visual2d.shape[0]

    @property
    def n_segments(self) -> int:
        return self.visual2d.shape[1]

    @property
    def widths(self) -> tuple[int, int, int]:
        """(audio, visual2d, visual3d) feature widths."""
        return self.audio.shape[2], self.visual2d.shape[2], self.visual3d.shape[2]

    @property
    def padding_mask(self) -> Tensor | None:
        """(N, T) bool, True at padded segments; None when every video has all T segments."""
        return None if self.lengths is None else padding_mask_from_lengths(self.lengths, self.n_segments)

    def real_rows(self) -> tuple[Tensor, Tensor, Tensor]:
        """(audio, visual2d, visual3d) as (rows, width): the vectors of real segments (of HTSAT
        maps, every token: a map has no padding)."""
        mask = self.padding_mask

        def rows(values: Tensor, per_segment: bool) -> Tensor:
            return (values[~mask] if per_segment and mask is not None else values).reshape(-1, values.shape[-1])

        return rows(self.audio, self.audio_input == "segments"), rows(self.visual2d, True), rows(self.visual3d, True)

    def tensors(self) -> dict[str, Tensor]:
        found = {"audio": self.audio, "visual2d": self.visual2d, "visual3d": self.visual3d}
        if self.lengths is not None:
            found["lengths"] = self.lengths
        return found


@dataclass(frozen=True)
class LabelledSplit:
    """Features of a split with dense ground truth: gt_audio / gt_visual bool (N, T, C), as
    `uwav.evaluation.dense_to_arrays` returns them."""

    features: HanFeatures
    gt_audio: np.ndarray
    gt_visual: np.ndarray

    @classmethod
    def from_arrays(cls, features: HanFeatures, gt_audio: np.ndarray, gt_visual: np.ndarray) -> LabelledSplit:
        audio, visual = np.asarray(gt_audio, dtype=bool), np.asarray(gt_visual, dtype=bool)
        if audio.ndim != 3 or audio.shape != visual.shape:
            raise ValueError(f"gt_audio / gt_visual: expected two (videos, segments, classes) arrays, got {audio.shape} and {visual.shape}")
        if audio.shape[:2] != (features.n_videos, features.n_segments):
            raise ValueError(
                f"gt_audio: expected ({features.n_videos}, {features.n_segments}, C) to match the features, got {audio.shape}"
            )
        return cls(features, audio, visual)

    @property
    def n_classes(self) -> int:
        return self.gt_audio.shape[2]


@dataclass(frozen=True)
class HanTrainData:
    """Stage-2 data.

    train: features of the training videos; video_labels (N, C) weak labels in {0, 1};
    soft_labels / binary_labels (N, T, 2, C): the pseudo-labels, modality axis (audio, visual);
    val: the validation split with dense ground truth (model selection).
    """

    train: HanFeatures
    video_labels: Tensor
    soft_labels: Tensor
    binary_labels: Tensor
    val: LabelledSplit

    @classmethod
    def from_arrays(
        cls,
        train: HanFeatures,
        video_labels: ArrayLike,
        soft_labels: ArrayLike,
        binary_labels: ArrayLike,
        val: LabelledSplit,
    ) -> HanTrainData:
        n, t = train.n_videos, train.n_segments
        video_t = as_float_tensor("video_labels", video_labels, 2)
        _check_rows("video_labels", video_t, n)
        n_classes = video_t.shape[1]
        soft_t = as_float_tensor("soft_labels", soft_labels, 4)
        binary_t = as_float_tensor("binary_labels", binary_labels, 4)
        for name, tensor in (("soft_labels", soft_t), ("binary_labels", binary_t)):
            if tensor.shape != (n, t, 2, n_classes):
                raise ValueError(f"{name}: expected ({n}, {t}, 2, {n_classes}), got {tuple(tensor.shape)}")
        if val.n_classes != n_classes:
            raise ValueError(f"val: {val.n_classes} classes in the ground truth, {n_classes} in video_labels")
        if val.features.widths != train.widths:
            raise ValueError(f"val: feature widths {val.features.widths} differ from train {train.widths}")
        if val.features.audio_input != train.audio_input:
            raise ValueError(f"val: audio input {val.features.audio_input!r} differs from train {train.audio_input!r}")
        return cls(train, video_t, soft_t, binary_t, val)

    @property
    def n_classes(self) -> int:
        return self.video_labels.shape[1]


class InMemoryBatches:
    """Tensors of equal first dimension, moved to `device` once; batches by indexing.

    `storage_dtype` stores the floating tensors in that dtype on the device (e.g. float16 to halve
    memory); batches come out as float32 either way. Integer / bool tensors keep their dtype.
    The last batch of an epoch is smaller when N is not a multiple of the batch size (as a
    DataLoader with drop_last=False).
    """

    def __init__(
        self,
        tensors: Mapping[str, Tensor],
        batch_size: int,
        device: torch.device | str,
        storage_dtype: torch.dtype = torch.float32,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        sizes = {name: tensor.shape[0] for name, tensor in tensors.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"InMemoryBatches: tensors disagree on the number of videos: {sizes}")
        self.n = next(iter(sizes.values()))
        if self.n == 0:
            raise ValueError("InMemoryBatches: no videos")
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.tensors = {
            name: tensor.to(self.device, storage_dtype if tensor.is_floating_point() else tensor.dtype)
            for name, tensor in tensors.items()
        }

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    @staticmethod
    def _as_batch(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in tensors.items()}

    def shuffled(self, generator: torch.Generator) -> Iterator[dict[str, Tensor]]:
        """One epoch in the order of a permutation drawn from `generator` (a CPU generator)."""
        order = torch.randperm(self.n, generator=generator).to(self.device)
        for start in range(0, self.n, self.batch_size):
            index = order[start : start + self.batch_size]
            yield self._as_batch({name: tensor.index_select(0, index) for name, tensor in self.tensors.items()})

    def in_order(self) -> Iterator[dict[str, Tensor]]:
        """Consecutive slices (prediction); views, no copy unless the storage dtype is not float32."""
        for start in range(0, self.n, self.batch_size):
            yield self._as_batch({name: tensor[start : start + self.batch_size] for name, tensor in self.tensors.items()})
