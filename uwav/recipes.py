"""Recipes: named sets of stage defaults (`recipe:` at the top of the catalog). `paper` is the
settings classes' own defaults (the paper's text, docs/METHOD.md); `released` the UWAV release's
scripts; `valor` VALOR's HAN training. An explicit catalog setting always wins; `uwav catalog
check` says where each setting in effect comes from. Kept apart from `uwav.catalog`, which
validates the file; like it, it enters stage fingerprints through the setting values only.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

# Which source the stage defaults follow: the paper's text, the UWAV release's scripts, or VALOR's
# (its HAN training, `scripts/train_valor.sh`; see RECIPE_SETTINGS and README "Paper vs released
# code"). An explicit catalog setting always wins.
Recipe = Literal["paper", "released", "valor"]

# The stage settings `recipe: released` changes: the UWAV release's scripts (scripts/*.sh) plus
# the code defaults they rely on (main.py, main_pretrain.py, model/*.py). `recipe: paper` is the
# settings classes' own defaults. README "Paper vs released code" lists each with its source.
RECIPE_SETTINGS: dict[str, dict[str, Any]] = {
    "paper": {},
    "released": {
        "segment.unav_segment_rule": "any_overlap",
        "pretrain.architecture": "released",
        "pretrain.hidden_dim": 1024,
        "pretrain.layers": 5,
        "pretrain.heads": 16,
        "pretrain.ffn_multiplier": 2,
        "pretrain.dropout": 0.3,
        "pretrain.epochs": 80,
        "pretrain.batch_size": 64,
        "pretrain.lr": 1e-4,
        "pretrain.min_lr": 1e-5,
        "pretrain.warmup_epochs": 10,
        "pretrain.lr_schedule": "per_epoch",
        "pretrain.betas": (0.5, 0.999),
        "pretrain.weight_decay": 1e-3,
        "pretrain.grad_clip": 2.0,
        "pretrain.present_class_weight": 5.0,
        "pretrain.select": "best_val_av_f1",
        "calibrate.method": "released_f1",
        "calibrate.split": "val",
        "pseudo_labels.soft_temperature": 2.0,
        "train.han.update": "sequential",
        "train.han.projection": "mlp",
        "train.han.layers": 5,
        "train.han.heads": 16,
        "train.han.ffn": 2048,
        "train.han.dropout": 0.1,
        "train.epochs": 80,
        "train.batch_size": 64,
        "train.lr": 1e-4,
        "train.min_lr": 5e-6,
        "train.warmup_epochs": 10,
        "train.lr_schedule": "per_epoch",
        "train.betas": (0.9, 0.999),
        "train.weight_decay": 1e-4,
        "train.grad_clip": 1.0,
        "train.labels": "soft",
        "train.reweight": True,
        "train.reweight_w": 0.5,
        "train.reweight_form": "released",
        "train.mixup": True,
        "train.mixup_alpha": 1.7,
        "train.mixup_targets": "soft",
        "train.mixup_lambda": "per_batch",
        "train.decision": "above",
    },
    # VALOR's HAN training, `scripts/train_valor.sh` (VGGish + ResNet-152 + R(2+1)D, width 512, 1
    # layer, lr 1e-4 -> 1e-6) with `main_avvp.py`'s loop: AdamW betas (0.5, 0.999), the hand-made
    # warm-up + cosine set once per epoch, L_video on P clamped + BCE-with-logits of the segment
    # logits against the binary pseudo-labels per modality (`UWAVLoss` with binary labels and
    # neither re-weighting nor mixup), best validation Type@AV, P >= 0.5 and p >= 0.5. VALOR+ and
    # VALOR++ change the width, depth and learning rates (README "Released models").
    "valor": {
        "train.han.inputs": "official",
        "train.han.update": "sequential",
        "train.han.projection": "linear",
        "train.han.d_model": 512,
        "train.han.layers": 1,
        "train.han.heads": 8,
        "train.han.ffn": 1024,
        "train.han.dropout": 0.1,
        "train.epochs": 60,
        "train.batch_size": 64,
        "train.lr": 1e-4,
        "train.min_lr": 1e-6,
        "train.warmup_epochs": 10,
        "train.lr_schedule": "per_epoch",
        "train.betas": (0.5, 0.999),
        "train.weight_decay": 1e-3,
        "train.grad_clip": 1.0,
        "train.labels": "binary",
        "train.reweight": False,
        "train.mixup": False,
        "train.guided_learning": False,
        "train.decision": "at_least",
    },
}


def recipe_settings(recipe: Recipe, stage: str) -> dict[str, Any]:
    """The settings `recipe` gives one stage (`pretrain`, `train`, ...), nested as the settings
    classes take them (`{"han": {...}, ...}`)."""
    nested: dict[str, Any] = {}
    for key, value in RECIPE_SETTINGS[recipe].items():
        head, *rest = key.split(".")
        if head != stage:
            continue
        node = nested
        for part in rest[:-1]:
            node = node.setdefault(part, {})
        node[rest[-1]] = value
    return nested


def leaf_keys(data: Any, prefix: str = "") -> set[str]:
    """Dotted keys of the leaves of nested mappings (a list or tuple is a leaf)."""
    if not isinstance(data, dict):
        return {prefix} if prefix else set()
    keys: set[str] = set()
    for key, value in data.items():
        keys |= leaf_keys(value, f"{prefix}.{key}" if prefix else str(key))
    return keys


def apply_recipe(stages: Any, recipe: str) -> Any:
    """`stages` (as read from YAML) with the recipe's settings filled in where the catalog gives none."""
    if not isinstance(stages, dict) or recipe not in RECIPE_SETTINGS:
        return stages  # validation reports the malformed value
    merged = copy.deepcopy(stages)
    explicit = leaf_keys(stages)
    for key, value in RECIPE_SETTINGS[recipe].items():
        if key in explicit:
            continue
        *parents, leaf = key.split(".")
        node = merged
        for part in parents:
            if not isinstance(node.get(part, {}), dict):
                break  # a malformed block: validation names it
            node = node.setdefault(part, {})
        else:
            node[leaf] = value
    return merged
