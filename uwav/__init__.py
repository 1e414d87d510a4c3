"""uwav: uncertainty-weighted weakly-supervised audio-visual video parsing (UWAV, CVPR 2025)."""

__version__ = "0.1.0"
