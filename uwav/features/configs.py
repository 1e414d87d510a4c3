"""The model configurations uwav ships (`model_configs/*.json`): tiny random-initialised
stand-ins, and the torchvision / VGGish architectures, which have no config registry of their own.

Kept apart from `uwav.features.encoders` so that the planner can fingerprint them without
importing torch or the encoder libraries.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"


def shipped_model_config(name: str) -> dict[str, Any] | None:
    """The content of `model_configs/<name>.json`, or None when uwav ships no config of that name
    (one of open_clip's or laion_clap's own)."""
    path = MODEL_CONFIG_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None
