"""Models: the stage-1 temporal pseudo-label generator and the HAN inference model."""

from uwav.models.han import AUDIO, HAN, VISUAL, HANLayer, HANOutput
from uwav.models.plg import AudioVisualPLG, TemporalPseudoLabelGenerator

__all__ = ["AUDIO", "HAN", "VISUAL", "AudioVisualPLG", "HANLayer", "HANOutput", "TemporalPseudoLabelGenerator"]
