"""Stage 1: the temporally coherent pseudo-label generator (METHOD.md "Stage 1").

Per modality, a stack of post-norm transformer encoder blocks runs over the segment embeddings of a
video (CLIP image embeddings for the visual stream, CLAP audio embeddings for the audio stream):
`G~ = LN(G + Attn(G, G, G))`, `G_next = LN(G~ + FFN(G~))`. Two architectures:

- `encoder_width` (METHOD.md): the blocks run at the encoder's embedding width (no projection, so
  the output stays in the joint text space the class embeddings live in); logits `z_t = E g_t`.
- `released` (the UWAV release's `model/TemporalTransformer.py`): a 2-layer MLP (enc -> 2h -> h,
  ReLU) into blocks of width `hidden_dim`, a 2-layer MLP back (h -> enc -> enc, ReLU between);
  logits = output . L2-normalised class text embedding * a fixed per-modality scale
  (`RELEASED_LOGIT_SCALES`, buffers so that a released state dict's values load).

No positional encoding: METHOD.md names none, and the release has none. Videos have different
lengths; batches are padded and a key-padding mask keeps padded segments out of every attention.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uwav.catalog import PretrainSettings
from uwav.errors import InvalidInputError

PlgArchitecture = Literal["encoder_width", "released"]

# The release's fixed logit scales (`a_logit_scale`, `v_logit_scale`: about log 27 and log 100).
RELEASED_LOGIT_SCALES = {"visual": 4.6052, "audio": 3.2912}


def _check_heads(dim: int, heads: int, what: str) -> None:
    # Decision: refuse instead of silently changing the head count, which would change the model.
    if dim % heads != 0:
        divisors = [h for h in range(1, dim + 1) if dim % h == 0]
        nearest = min(divisors, key=lambda h: (abs(h - heads), h))
        raise InvalidInputError(
            f"PLG: {heads} attention heads do not divide the {what} {dim}; "
            f"set stages.pretrain.heads to a divisor of {dim} (nearest: {nearest})"
        )


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


class TemporalPseudoLabelGenerator(nn.Module):
    """One modality's temporal transformer over segment embeddings; logits against class text embeddings.

    `dim` is the encoder's embedding width (input and text embeddings); `hidden_dim` and
    `logit_scale` are used by the `released` architecture only.
    """

    def __init__(
        self,
        dim: int,
        layers: int = 5,
        heads: int = 8,
        ffn_multiplier: int = 4,
        dropout: float = 0.1,
        architecture: PlgArchitecture = "encoder_width",
        hidden_dim: int = 1024,
        logit_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if architecture not in ("encoder_width", "released"):
            raise InvalidInputError(f"PLG: architecture must be 'encoder_width' or 'released', got {architecture!r}")
        released = architecture == "released"
        width = hidden_dim if released else dim
        _check_heads(width, heads, "transformer width" if released else "embedding width")
        self.dim = dim
        self.architecture = architecture
        if released:
            self.input_proj = _mlp(dim, 2 * hidden_dim, hidden_dim)
            self.output_proj = _mlp(hidden_dim, dim, dim)
            self.register_buffer("logit_scale", torch.tensor(logit_scale, dtype=torch.float32))
        block = nn.TransformerEncoderLayer(
            d_model=width,
            nhead=heads,
            dim_feedforward=ffn_multiplier * width,
            dropout=dropout,
            activation="relu",
            batch_first=True,
            norm_first=False,  # post-norm, as METHOD.md writes the block (and the release runs it)
        )
        # Nested tensors would drop padded positions from the output in eval mode; keep dense outputs.
        self.encoder = nn.TransformerEncoder(block, num_layers=layers, enable_nested_tensor=False)

    def forward(
        self,
        features: Tensor,
        text_embeddings: Tensor,
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Segment logits.

        features: (B, T, D) segment embeddings; text_embeddings: (C, D) class embeddings;
        padding_mask: (B, T) bool, True marks padded segments (None: no padding).
        Returns (B, T, C) logits; logits at padded positions are meaningless.
        """
        if features.shape[-1] != self.dim or text_embeddings.shape[-1] != self.dim:
            raise ValueError(
                f"PLG of width {self.dim}: got features {tuple(features.shape)} and "
                f"text embeddings {tuple(text_embeddings.shape)}"
            )
        # Feature stores may hold float16; compute in the weights' dtype (autocast still applies on top).
        features = features.to(self.encoder.layers[0].linear1.weight.dtype)
        if self.architecture == "encoder_width":
            hidden = self.encoder(features, src_key_padding_mask=padding_mask)
            return hidden @ text_embeddings.to(hidden.dtype).T
        hidden = self.encoder(self.input_proj(features), src_key_padding_mask=padding_mask)
        output = self.output_proj(hidden)
        text = F.normalize(text_embeddings.to(output.dtype), dim=-1)
        return output @ text.T * self.logit_scale


class AudioVisualPLG(nn.Module):
    """The visual (CLIP) and audio (CLAP) generators; trained together on `p^v * p^a`."""

    def __init__(
        self,
        visual_dim: int,
        audio_dim: int,
        layers: int = 5,
        heads: int = 8,
        ffn_multiplier: int = 4,
        dropout: float = 0.1,
        architecture: PlgArchitecture = "encoder_width",
        hidden_dim: int = 1024,
    ) -> None:
        super().__init__()
        # The constructor arguments: checkpoints store them, and `load_plg` rebuilds the model from them.
        self.config = {
            "visual_dim": visual_dim, "audio_dim": audio_dim, "layers": layers, "heads": heads,
            "ffn_multiplier": ffn_multiplier, "dropout": dropout, "architecture": architecture, "hidden_dim": hidden_dim,
        }
        self.visual, self.audio = (
            TemporalPseudoLabelGenerator(
                dim, layers, heads, ffn_multiplier, dropout, architecture, hidden_dim, RELEASED_LOGIT_SCALES[modality]
            )
            for dim, modality in ((visual_dim, "visual"), (audio_dim, "audio"))
        )

    @classmethod
    def from_settings(cls, settings: PretrainSettings, visual_dim: int, audio_dim: int) -> AudioVisualPLG:
        """The generator the catalog's `stages.pretrain` describes: how stage 1 builds it."""
        return cls(
            visual_dim,
            audio_dim,
            layers=settings.layers,
            heads=settings.heads,
            ffn_multiplier=settings.ffn_multiplier,
            dropout=settings.dropout,
            architecture=settings.architecture,
            hidden_dim=settings.hidden_dim,
        )

    def forward(
        self,
        visual: Tensor,
        audio: Tensor,
        visual_text: Tensor,
        audio_text: Tensor,
        padding_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(visual_logits, audio_logits), each (B, T, C); see `TemporalPseudoLabelGenerator.forward`."""
        return (
            self.visual(visual, visual_text, padding_mask),
            self.audio(audio, audio_text, padding_mask),
        )
