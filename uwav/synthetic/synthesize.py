"""`uwav synth`: write either synthetic benchmark (`uwav.synthetic.media`, `uwav.synthetic.features`).

Kept apart from `uwav.synthetic.layouts`, which both generators import, so that no module imports one
that imports it back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from uwav.catalog import Task
from uwav.errors import InvalidInputError
from uwav.synthetic.layouts import TARGET_LAYOUTS


def synth_main(
    mode: Literal["media", "features"],
    out: Path,
    seed: int = 0,
    *,
    n_pretrain: int | None = None,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    workers: int | None = None,
    layouts_from: Path | None = None,
    target_layout: Task = "llp",
) -> Path:
    """`uwav synth`: write a synthetic benchmark to `out`; sizes left as None take the mode's defaults.

    target_layout: how the target set's events are laid out (`TARGET_LAYOUTS`). Returns the folder
    written. Each mode imports its generator here, so that the feature mode never loads PyAV.
    """
    if target_layout not in TARGET_LAYOUTS:
        raise InvalidInputError(f"unknown target layout {target_layout!r}: expected one of {sorted(TARGET_LAYOUTS)}")
    if layouts_from is not None and target_layout != "llp":
        raise InvalidInputError("--layouts-from draws LLP layouts from real labels; it cannot be combined with another target layout")
    sizes = {
        name: value
        for name, value in (("n_pretrain", n_pretrain), ("n_train", n_train), ("n_val", n_val), ("n_test", n_test))
        if value is not None
    }
    if mode == "media":
        if layouts_from is not None:
            raise InvalidInputError("--layouts-from is only used by --mode features")
        from uwav.synthetic.media import write_media_benchmark

        return write_media_benchmark(
            out, seed=seed, workers=workers, target_layout=TARGET_LAYOUTS[target_layout], **sizes
        ).root
    if mode == "features":
        from uwav.synthetic.features import make_feature_benchmark

        benchmark = make_feature_benchmark(
            seed=seed, layouts_from=layouts_from, workers=workers, target_layout=TARGET_LAYOUTS[target_layout], **sizes
        )
        benchmark.save(out)
        return out
    raise InvalidInputError(f"unknown synth mode {mode!r}: expected 'media' or 'features'")
