"""The current model: which trained HAN `uwav parse` uses, and promoting a newly trained one."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from uwav.catalog import Catalog
from uwav.contracts import TrainOutputs
from uwav.stages.planner import stage_record


def current_model_path(catalog: Catalog) -> Path:
    return Path(catalog.store("runs")) / "current_model.json"


def current_model(catalog: Catalog) -> dict[str, Any] | None:
    """The train stage's record that was last promoted: fingerprint, checkpoint, val_score, promoted_at."""
    path = current_model_path(catalog)
    return json.loads(path.read_text()) if path.exists() else None


def current_checkpoint(catalog: Catalog) -> Path:
    """The promoted model's checkpoint, else the latest trained one."""
    promoted = current_model(catalog)
    if promoted is not None:
        return Path(promoted["checkpoint"])
    return TrainOutputs.of(stage_record(catalog, "train").outputs).best_checkpoint


def promote_model(catalog: Catalog, *, only_if_better: bool) -> tuple[bool, str]:
    """Make the latest trained model current. With `only_if_better` (scheduled retraining), keep
    the previous one when the new model's validation score is lower; the message says which."""
    from uwav.atomic import write_text_atomic

    record = stage_record(catalog, "train")
    new_score = float(record.metrics["best_val_score"])
    previous = current_model(catalog)
    if previous is not None and previous["fingerprint"] == record.fingerprint:
        return True, f"model {record.fingerprint} is already current (validation {new_score:.2f})"
    if only_if_better and previous is not None and new_score < float(previous["val_score"]):
        return False, (
            f"kept the previous model {previous['fingerprint']} (validation {float(previous['val_score']):.2f}); "
            f"the new model {record.fingerprint} scored {new_score:.2f}"
        )
    entry = {
        "fingerprint": record.fingerprint,
        "checkpoint": str(TrainOutputs.of(record.outputs).best_checkpoint),
        "val_score": new_score,
        "promoted_at": time.time(),
        "catalog": str(catalog.base_dir),
    }
    path = current_model_path(catalog)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(entry, indent=1))
    before = f" (previous {float(previous['val_score']):.2f})" if previous else ""
    return True, f"model {record.fingerprint} is now current: validation {new_score:.2f}{before}"
