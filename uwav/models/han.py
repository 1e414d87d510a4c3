"""The inference model: HAN with attentive MMIL pooling (METHOD.md "Inference model").

One configurable class covers the three released forms (`HAN_PRESETS`); module names follow the
reference code (`fc_a`, `fc_v`, `fc_st`, `fc_fusion`, `cm_attn`, `self_attn`, `linear1/2`,
`norm1/2`, `fc_prob`, `fc_frame_att`, `fc_av_att`) so released weights map one to one
(`uwav.models.released`).

- `update`: `parallel` updates audio and visual from the layer's inputs (the paper's eq. 1-2 and
  AVVP-ECCV20 `nets/net_audiovisual.py`); `sequential` updates the audio first and lets the visual
  stream attend to the *updated* audio (VALOR `main_network.py`, the UWAV release `model/HAN.py`).
- `projection`: `linear` is `fc_fusion(concat(fc_v(visual2d), fc_st(visual3d)))` with a linear
  `fc_a` (AVVP-ECCV20, VALOR); `mlp` is the UWAV release's: `fc_a` a 2-layer MLP (audio ->
  2d -> d, ReLU) and one linear `fc_fusion` over concat(2-D frame mean, 3-D feature).
- `audio_input` (`uwav.contracts.HanAudioInput`): `segments` takes one audio vector per segment
  (B, T, Da); `htsat_maps` takes per video CLAP's HTSAT token map (B, 64, Da), 2 frequency bands x
  32 time steps (VALOR++). VALOR `main_network.py` views the map as (Da, 2, 32), upsamples it
  bicubically to (2, 1024) (`align_corners=False`), applies `fc_a` at every position, averages the
  two bands and adaptive-average-pools the 1024 steps to the 10 segments. Everything after the
  view is linear in the map, with weights that sum to 1 per output, so that path is
  `fc_a(R x)` for one fixed (T, 64) matrix R, which `htsat_map_resampling` obtains by running those
  torch operations on the identity: the same function, with `fc_a` on T segments instead of 2048
  positions. A padded video of L < T segments has its map resampled to its L segments (VALOR's
  clips are all 10). With `projection: mlp` (no release combines it with maps) the MLP takes the
  resampled segments.

- `input_norm` (uwav's, not in the paper or any release; default `none`): `standardize` keeps
  per-dimension means and standard deviations of the training inputs as buffers (saved with the
  weights) and feeds `(x - mean) / std` to the projections. Being affine, it is a
  re-parametrisation of the first linear layers: same model class, better-conditioned training
  when the features vary little around a large common vector, as random-initialised encoders'
  do (the demo's CLAP features vary by ~3 % of their norm, CLIP's by ~9 %).

Differences from the reference that do not change the function: `batch_first` attention (the
reference permutes to (T, B, D)); the 8 ResNet frames of a segment are averaged before `fc_v`
rather than after (a linear map commutes with the mean; 8x cheaper). Addition: an optional
key-padding mask for variable-length videos (LLP/AVE clips are all 10 segments and pass None).
Only the post-norm layer is built: every released training script uses it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uwav.catalog import HanSettings
from uwav.contracts import HTSAT_MAP_STEPS, HanAudioInput
from uwav.errors import InvalidInputError

AUDIO, VISUAL = 0, 1  # order of the modality axis of every (B, T, 2, ...) output

HanUpdate = Literal["parallel", "sequential"]
HanProjection = Literal["linear", "mlp"]
HanInputNorm = Literal["none", "standardize"]
INPUT_STREAMS: tuple[str, str, str] = ("audio", "visual2d", "visual3d")
# A dimension's standard deviation is floored at this fraction of the mean over dimensions, so
# that a (nearly) constant training dimension cannot blow up unseen inputs.
STD_FLOOR_FRACTION = 1e-3
STATISTICS_CHUNK_ROWS = 65536
HTSAT_BANDS, HTSAT_TIME_STEPS = 2, 32  # the layout of an HTSAT map's HTSAT_MAP_STEPS tokens, band-major
VALOR_UPSAMPLED_STEPS = 1024  # VALOR's bicubic upsampling of the 32 time steps, before pooling to segments
AUDIO_INPUTS: tuple[str, ...] = get_args(HanAudioInput)

# The released configurations, as HAN constructor arguments (d_model and the input dims come from
# the data, or from a released state dict's shapes). Sources: AVVP-ECCV20 `MMIL_Net`; VALOR
# `main_network.py` with its training scripts' 8 heads / FFN 1024 (VALOR+ and VALOR++ are 256
# wide with 4 layers; VALOR++ takes CLAP's HTSAT maps as audio, `scripts/train_valor++.sh`);
# UWAV `scripts/train_han.sh` (5 layers, 16 heads, FFN 2048).
HAN_PRESETS: dict[str, dict[str, Any]] = {
    "avvp-eccv20": {"layers": 1, "heads": 1, "ffn": 512, "update": "parallel", "projection": "linear", "dropout": 0.1},
    "valor": {"layers": 1, "heads": 8, "ffn": 1024, "update": "sequential", "projection": "linear", "dropout": 0.1},
    "valor++": {
        "layers": 4, "heads": 8, "ffn": 1024, "update": "sequential", "projection": "linear", "dropout": 0.1,
        "audio_input": "htsat_maps",
    },
    "uwav-released": {"layers": 5, "heads": 16, "ffn": 2048, "update": "sequential", "projection": "mlp", "dropout": 0.1},
}


def htsat_map_resampling(length: int, n_segments: int) -> Tensor:
    """(n_segments, HTSAT_MAP_STEPS) float64: row t < `length` is segment t of VALOR's map-to-segments
    path pooled to `length` segments, without `fc_a` (module docstring); rows from `length` on are 0.

    Obtained by running VALOR's operations on the identity: basis map s is one at token s and zero
    elsewhere, which VALOR's `view` puts at band s // 32, time step s % 32.
    """
    basis = torch.eye(HTSAT_MAP_STEPS, dtype=torch.float64).reshape(1, HTSAT_MAP_STEPS, HTSAT_BANDS, HTSAT_TIME_STEPS)
    upsampled = F.interpolate(basis, size=(HTSAT_BANDS, VALOR_UPSAMPLED_STEPS), mode="bicubic", align_corners=False)
    pooled = F.adaptive_avg_pool1d(upsampled.mean(dim=2), length)[0].T  # (length, steps)
    return F.pad(pooled, (0, 0, 0, n_segments - length))


def _resampling_table(n_segments: int) -> Tensor:
    """(n_segments + 1, n_segments, HTSAT_MAP_STEPS) float64: entry L is the resampling to L real segments."""
    return torch.stack([htsat_map_resampling(length, n_segments) for length in range(n_segments + 1)])


@functools.lru_cache(maxsize=64)
def _device_resampling_table(n_segments: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    return _resampling_table(n_segments).to(device=device, dtype=dtype)


def resample_htsat_maps(maps: Tensor, n_segments: int, padding_mask: Tensor | None = None) -> Tensor:
    """Per-segment audio (B, n_segments, D) from HTSAT maps (B, HTSAT_MAP_STEPS, D): each video's map
    resampled to its real segments (all `n_segments` without a mask; padding is trailing, as
    `uwav.training.data.padding_mask_from_lengths` makes it), zeros at padded segments.

    The matrices of every length sit on the maps' device, once per (n_segments, device, dtype), and
    are picked by the lengths there: no copy from the host and no host sync per call. Under
    torch.compile they are computed in the graph instead (dynamo does not honour the cache)."""
    if torch.compiler.is_compiling():
        table = _resampling_table(n_segments).to(maps)
    else:
        table = _device_resampling_table(n_segments, maps.device, maps.dtype)
    if padding_mask is None:
        return torch.matmul(table[n_segments], maps)
    return torch.bmm(table[(~padding_mask).sum(dim=1)], maps)


@dataclass(frozen=True)
class HANOutput:
    """HAN outputs; the modality axis is (audio, visual).

    video_prob: (B, C) attentive-MMIL video probability P.
    segment_logits / segment_prob: (B, T, 2, C) z and sigmoid(z).
    features: (B, T, 2, d) segment features after the HAN layers, before `fc_prob` (mixup input).
    modality_prob: (B, 2, C) each modality's temporal-attention pooled probability
        `sum_t W_time * p` (the reference's `a_prob`, `v_prob`; used by guided learning).
    """

    video_prob: Tensor
    segment_prob: Tensor
    segment_logits: Tensor
    features: Tensor
    modality_prob: Tensor


class HANLayer(nn.Module):
    """One hybrid-attention layer, post-norm:

    `x = LN1(x + Drop(CrossAttn(x, other, other)) + Drop(SelfAttn(x, x, x)))`,
    `x = LN2(x + Drop(W2 Drop(ReLU(W1 x))))`.
    """

    def __init__(self, d_model: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.cm_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, ffn)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout11 = nn.Dropout(dropout)
        self.dropout12 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: Tensor, other: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """x, other: (B, T, d); padding_mask: (B, T) bool, True = padded segment."""
        # need_weights=False lets MultiheadAttention use scaled_dot_product_attention.
        cross = self.cm_attn(x, other, other, key_padding_mask=padding_mask, need_weights=False)[0]
        own = self.self_attn(x, x, x, key_padding_mask=padding_mask, need_weights=False)[0]
        x = self.norm1(x + self.dropout11(cross) + self.dropout12(own))
        x = self.norm2(x + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(x))))))
        return x


class HAN(nn.Module):
    """HAN + attentive MMIL pooling.

    Inputs: audio (VGGish 128-d, CLAP, or CLAP's HTSAT maps), 2-D visual (ResNet-152 2048-d or
    CLIP), 3-D visual (R(2+1)D-18 512-d); the dims are constructor arguments. The layers are shared
    by both modalities. `update`, `projection` and `audio_input`: see the module docstring.
    """

    def __init__(
        self,
        n_classes: int = 25,
        audio_dim: int = 128,
        visual2d_dim: int = 2048,
        visual3d_dim: int = 512,
        d_model: int = 512,
        ffn: int = 1024,
        heads: int = 8,
        layers: int = 1,
        dropout: float = 0.1,
        update: HanUpdate = "parallel",
        projection: HanProjection = "linear",
        input_norm: HanInputNorm = "none",
        audio_input: HanAudioInput = "segments",
    ) -> None:
        super().__init__()
        if d_model % heads != 0:
            raise InvalidInputError(
                f"HAN: {heads} attention heads do not divide d_model={d_model}; "
                "set stages.train.han.heads to a divisor of d_model"
            )
        if (
            update not in ("parallel", "sequential") or projection not in ("linear", "mlp")
            or input_norm not in ("none", "standardize") or audio_input not in AUDIO_INPUTS
        ):
            raise InvalidInputError(
                f"HAN: update must be 'parallel' or 'sequential' (got {update!r}), "
                f"projection 'linear' or 'mlp' (got {projection!r}), input_norm 'none' or 'standardize' (got {input_norm!r}), "
                f"audio_input one of {', '.join(AUDIO_INPUTS)} (got {audio_input!r})"
            )
        self.n_classes = n_classes
        self.update = update
        self.projection = projection
        self.audio_input = audio_input
        # The constructor arguments: checkpoints store them, and `load_han` rebuilds the model from them.
        self.config = {
            "n_classes": n_classes, "audio_dim": audio_dim, "visual2d_dim": visual2d_dim, "visual3d_dim": visual3d_dim,
            "d_model": d_model, "ffn": ffn, "heads": heads, "layers": layers, "dropout": dropout,
            "update": update, "projection": projection, "input_norm": input_norm, "audio_input": audio_input,
        }
        self.input_norm = input_norm
        if input_norm == "standardize":  # identity until `set_input_statistics`
            for stream, dim in zip(INPUT_STREAMS, (audio_dim, visual2d_dim, visual3d_dim), strict=True):
                self.register_buffer(f"{stream}_mean", torch.zeros(dim))
                self.register_buffer(f"{stream}_std", torch.ones(dim))
        self.fc_a: nn.Module
        if projection == "mlp":
            self.fc_a = nn.Sequential(nn.Linear(audio_dim, 2 * d_model), nn.ReLU(), nn.Linear(2 * d_model, d_model))
            self.fc_fusion = nn.Linear(visual2d_dim + visual3d_dim, d_model)
        else:
            self.fc_a = nn.Linear(audio_dim, d_model)
            self.fc_v = nn.Linear(visual2d_dim, d_model)
            self.fc_st = nn.Linear(visual3d_dim, d_model)
            self.fc_fusion = nn.Linear(2 * d_model, d_model)
        self.han_layers = nn.ModuleList(HANLayer(d_model, heads, ffn, dropout) for _ in range(layers))
        self.fc_prob = nn.Linear(d_model, n_classes)
        self.fc_frame_att = nn.Linear(d_model, n_classes)
        self.fc_av_att = nn.Linear(d_model, n_classes)

    @classmethod
    def from_settings(
        cls,
        settings: HanSettings,
        n_classes: int,
        audio_dim: int,
        visual2d_dim: int,
        visual3d_dim: int,
        audio_input: HanAudioInput = "segments",
    ) -> HAN:
        """The HAN the catalog's `stages.train.han` describes, for inputs of these widths and audio
        form (the training data's): how training builds it."""
        return cls(
            n_classes=n_classes,
            audio_dim=audio_dim,
            visual2d_dim=visual2d_dim,
            visual3d_dim=visual3d_dim,
            d_model=settings.d_model,
            ffn=settings.ffn,
            heads=settings.heads,
            layers=settings.layers,
            dropout=settings.dropout,
            update=settings.update,
            projection=settings.projection,
            input_norm=settings.input_norm,
            audio_input=audio_input,
        )

    @torch.no_grad()
    def set_input_statistics(
        self, audio: Tensor, visual2d: Tensor, visual3d: Tensor, padding_mask: Tensor | None = None
    ) -> None:
        """Set the `standardize` buffers from training inputs (as `forward` takes them), over their
        real segments (every token of HTSAT maps); 2-D frames are averaged first, as `encode` does
        before standardising."""
        if self.input_norm != "standardize":
            raise ValueError(f"HAN.set_input_statistics: input_norm is {self.input_norm!r}, not 'standardize'")
        real = None if padding_mask is None else ~padding_mask.to(audio.device)
        for stream, values in zip(INPUT_STREAMS, (audio, visual2d, visual3d), strict=True):
            if values.dim() == 4:
                values = values.mean(dim=2)
            per_video = stream == "audio" and self.audio_input == "htsat_maps"  # a map has no padding
            rows = (values if real is None or per_video else values[real]).reshape(-1, values.shape[-1])
            if rows.shape[0] < 2:
                raise ValueError(f"HAN.set_input_statistics: {stream} has {rows.shape[0]} real segments; need at least 2")
            # float64 sums over chunks: exact enough, without a float64 copy of a whole training set.
            total = torch.zeros(rows.shape[1], dtype=torch.float64, device=rows.device)
            squares = torch.zeros_like(total)
            for chunk in rows.split(STATISTICS_CHUNK_ROWS):
                chunk = chunk.double()
                total += chunk.sum(dim=0)
                squares += (chunk * chunk).sum(dim=0)
            mean = total / rows.shape[0]
            std = ((squares - rows.shape[0] * mean * mean) / (rows.shape[0] - 1)).clamp_min(0).sqrt()
            std = std.clamp_min(STD_FLOOR_FRACTION * float(std.mean()) + 1e-12)
            getattr(self, f"{stream}_mean").copy_(mean)
            getattr(self, f"{stream}_std").copy_(std)

    def encode(
        self, audio: Tensor, visual2d: Tensor, visual3d: Tensor, padding_mask: Tensor | None = None
    ) -> Tensor:
        """Segment features f~ (B, T, 2, d) after the HAN layers (modality axis: audio, visual)."""
        # Feature stores may hold float16; compute in the weights' dtype (autocast still applies on top).
        dtype = self.fc_prob.weight.dtype
        audio, visual2d, visual3d = audio.to(dtype), visual2d.to(dtype), visual3d.to(dtype)
        batch, n_segments = visual2d.shape[:2]
        maps = self.audio_input == "htsat_maps"
        audio_rows = HTSAT_MAP_STEPS if maps else n_segments
        if visual3d.shape[:2] != (batch, n_segments) or audio.shape[:2] != (batch, audio_rows):
            raise ValueError(
                f"HAN: inputs disagree on (batch, segments): audio {tuple(audio.shape)} "
                f"(expected ({batch}, {audio_rows}, ...){', HTSAT maps' if maps else ''}), "
                f"visual2d {tuple(visual2d.shape)}, visual3d {tuple(visual3d.shape)}"
            )
        if self.input_norm == "standardize":
            if visual2d.dim() == 4:
                visual2d = visual2d.mean(dim=2)
            audio, visual2d, visual3d = (
                (values - getattr(self, f"{stream}_mean").to(dtype)) / getattr(self, f"{stream}_std").to(dtype)
                for stream, values in zip(INPUT_STREAMS, (audio, visual2d, visual3d), strict=True)
            )
        if maps:
            audio = resample_htsat_maps(audio, n_segments, padding_mask)
        a = self.fc_a(audio)
        v = self.project_visual(visual2d, visual3d)
        for layer in self.han_layers:
            if self.update == "parallel":
                a, v = layer(a, v, padding_mask), layer(v, a, padding_mask)
            else:
                a = layer(a, v, padding_mask)
                v = layer(v, a, padding_mask)  # the visual update attends to the updated audio
        return torch.stack((a, v), dim=2)

    def project_visual(self, visual2d: Tensor, visual3d: Tensor) -> Tensor:
        """The fused visual stream (B, T, d) from 2-D (B, T, D) or (B, T, frames, D) and 3-D (B, T, D3) features.

        Frames are averaged first: the release's `mlp` form averages before `fc_fusion`, and for
        `linear` the mean commutes with `fc_v`, so this is the reference's `fc_v` per frame
        followed by the mean, at 1/frames of the cost.
        """
        if visual2d.dim() == 4:
            visual2d = visual2d.mean(dim=2)
        if self.projection == "mlp":
            return self.fc_fusion(torch.cat((visual2d, visual3d), dim=-1))
        return self.fc_fusion(torch.cat((self.fc_v(visual2d), self.fc_st(visual3d)), dim=-1))

    def classify(self, features: Tensor) -> Tensor:
        """Segment logits from segment features (..., d) -> (..., C): the shared classifier `fc_prob`."""
        return self.fc_prob(features)

    def forward(
        self, audio: Tensor, visual2d: Tensor, visual3d: Tensor, padding_mask: Tensor | None = None
    ) -> HANOutput:
        """audio (B, T, Da), or HTSAT maps (B, 64, Da) with `audio_input: htsat_maps`; visual2d (B, T, Dv)
        or (B, T, frames, Dv); visual3d (B, T, D3); padding_mask (B, T) bool, True = padded segment, or None."""
        features = self.encode(audio, visual2d, visual3d, padding_mask)
        logits = self.classify(features)
        prob = torch.sigmoid(logits)
        time_scores = self.fc_frame_att(features)
        if padding_mask is not None:
            time_scores = time_scores.masked_fill(padding_mask[:, :, None, None], float("-inf"))
        time_weights = torch.softmax(time_scores, dim=1)
        modality_weights = torch.softmax(self.fc_av_att(features), dim=2)
        return HANOutput(
            video_prob=(time_weights * modality_weights * prob).sum(dim=(1, 2)),
            segment_prob=prob,
            segment_logits=logits,
            features=features,
            modality_prob=(time_weights * prob).sum(dim=1),
        )
