"""Stage 1: the temporally coherent pseudo-label generator (METHOD.md "Stage 1").

Per modality, a stack of post-norm transformer encoder blocks runs over the segment embeddings of a
video (CLIP image embeddings for the visual stream, CLAP audio embeddings for the audio stream):
`G~ = LN(G + Attn(G, G, G))`, `G_next = LN(G~ + FFN(G~))`. Segment logits are inner products of the
output with the class text embeddings of the same encoder: `z_t = E g_t`.

Width = the encoder's embedding dimension (no input projection, so the output stays in the joint
text space the class embeddings live in). No positional encoding: METHOD.md names none.
Videos have different lengths; batches are padded and a key-padding mask keeps padded segments
out of every attention.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from uwav.catalog import PretrainSettings
from uwav.errors import InvalidInputError


def _check_heads(dim: int, heads: int) -> None:
    # Decision: refuse instead of silently changing the head count, which would change the model.
    if dim % heads != 0:
        divisors = [h for h in range(1, dim + 1) if dim % h == 0]
        nearest = min(divisors, key=lambda h: (abs(h - heads), h))
        raise InvalidInputError(
            f"PLG: {heads} attention heads do not divide the embedding width {dim}; "
            f"set stages.pretrain.heads to a divisor of {dim} (nearest: {nearest})"
        )


class TemporalPseudoLabelGenerator(nn.Module):
    """One modality's temporal transformer over segment embeddings; logits against class text embeddings."""

    def __init__(
        self,
        dim: int,
        layers: int = 5,
        heads: int = 8,
        ffn_multiplier: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        _check_heads(dim, heads)
        self.dim = dim
        block = nn.TransformerEncoderLayer(
            d_model=dim,
            nhead=heads,
            dim_feedforward=ffn_multiplier * dim,
            dropout=dropout,
            activation="relu",
            batch_first=True,
            norm_first=False,  # post-norm, as METHOD.md writes the block
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
        Returns (B, T, C) logits `z_t,c = <g_t, E_c>`. Logits at padded positions are meaningless.
        """
        if features.shape[-1] != self.dim or text_embeddings.shape[-1] != self.dim:
            raise ValueError(
                f"PLG of width {self.dim}: got features {tuple(features.shape)} and "
                f"text embeddings {tuple(text_embeddings.shape)}"
            )
        # Feature stores may hold float16; compute in the weights' dtype (autocast still applies on top).
        features = features.to(self.encoder.layers[0].linear1.weight.dtype)
        hidden = self.encoder(features, src_key_padding_mask=padding_mask)
        return hidden @ text_embeddings.to(hidden.dtype).T


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
    ) -> None:
        super().__init__()
        # The constructor arguments: checkpoints store them, and `load_plg` rebuilds the model from them.
        self.config = {
            "visual_dim": visual_dim, "audio_dim": audio_dim, "layers": layers, "heads": heads,
            "ffn_multiplier": ffn_multiplier, "dropout": dropout,
        }
        self.visual = TemporalPseudoLabelGenerator(visual_dim, layers, heads, ffn_multiplier, dropout)
        self.audio = TemporalPseudoLabelGenerator(audio_dim, layers, heads, ffn_multiplier, dropout)

    @classmethod
    def from_settings(cls, settings: PretrainSettings, visual_dim: int, audio_dim: int) -> AudioVisualPLG:
        """The generator the catalog's `stages.pretrain` describes: how stage 1 builds it."""
        return cls(visual_dim, audio_dim, settings.layers, settings.heads, settings.ffn_multiplier, settings.dropout)

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
