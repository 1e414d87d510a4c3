"""Media decoding: 1-s segments -> centre frame (CLIP), 8 frames (R(2+1)D), audio at the encoder's rate.

Bad media never stops a run: `decode_or_quarantine` records it in a `QuarantineLog` instead.
"""

from uwav.media.decode import (
    AUDIO_SHORTFALL_TOLERANCE_S,
    CLIP_CROP,
    CLIP_RESIZE_HW,
    FRAMES_PER_CLIP,
    MAX_FRAME_GAP_S,
    DecodedSegments,
    MediaError,
    decode_segments,
    probe_duration,
)
from uwav.media.quarantine import QuarantineLog, decode_or_quarantine

__all__ = [
    "AUDIO_SHORTFALL_TOLERANCE_S",
    "CLIP_CROP",
    "CLIP_RESIZE_HW",
    "FRAMES_PER_CLIP",
    "MAX_FRAME_GAP_S",
    "DecodedSegments",
    "MediaError",
    "QuarantineLog",
    "decode_or_quarantine",
    "decode_segments",
    "probe_duration",
]
