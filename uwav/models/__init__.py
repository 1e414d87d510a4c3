"""Models: the stage-1 temporal pseudo-label generator, the HAN inference model, and loaders for
the reference code's released checkpoints of both."""

from uwav.models.han import AUDIO, HAN, HAN_PRESETS, VISUAL, HANLayer, HANOutput
from uwav.models.plg import AudioVisualPLG, TemporalPseudoLabelGenerator
from uwav.models.released import (
    han_from_released_state,
    load_released_han,
    load_released_plg,
    plg_from_released_state,
)

__all__ = [
    "AUDIO",
    "HAN",
    "HAN_PRESETS",
    "VISUAL",
    "AudioVisualPLG",
    "HANLayer",
    "HANOutput",
    "TemporalPseudoLabelGenerator",
    "han_from_released_state",
    "load_released_han",
    "load_released_plg",
    "plg_from_released_state",
]
