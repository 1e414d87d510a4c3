"""Released reference checkpoints as uwav models: the HAN of AVVP-ECCV20, VALOR, VALOR+, VALOR++ and UWAV, and
the UWAV release's pseudo-label generator, so that published weights can be evaluated or used to
label data here.

A released file is what the reference training code saves, `torch.save(model.state_dict())`
(a `module.` prefix on every key, as DataParallel leaves it, is accepted). Its layout per kind:

- `avvp-eccv20`: AVVP-ECCV20 `MMIL_Net` (`nets/net_audiovisual.py`): linear `fc_a`, `fc_v`,
  `fc_st`, `fc_fusion`, `fc_prob`, `fc_frame_att`, `fc_av_att` and `hat_encoder.layers.0.*`.
  Its forward never runs `audio_encoder`, `visual_encoder`, `cmt_encoder` nor the encoder's
  `norm1/norm2`: those keys are ignored. Its encoder feeds every layer the original inputs, so a
  file with more than one HAN layer is refused.
- `valor`: VALOR `MMIL_Net` (`main_network.py`) on one audio vector per segment: VALOR (VGGish,
  ResNet-152, R(2+1)D; 512 wide, 1 layer) and VALOR+ (the same features; 256 wide, 4 layers), any
  width and depth (the shapes say so); `hat_encoder.final_norm_a/_v` run only with pre-norm and are
  ignored. Its `checkpoint_best.pt` is a bare `model.state_dict()`.
- `valor++`: the same `MMIL_Net` layout, built to take CLAP's HTSAT maps (B, 64, 768) as audio,
  which `MMIL_Net.forward` resamples to the 10 segments (`uwav.models.han`, `audio_input`), with
  CLIP (B, 10, 768) and R(2+1)D (B, 10, 512) (`scripts/train_valor++.sh`: 256 wide, 4 layers,
  8 heads, FFN 1024). The file cannot say which audio it was trained on: the kind does.
- `uwav`: UWAV `HybridAttentionNet` (`model/HAN.py`): `fc_a.layers.0/1` (MLP), `fc_fusion.layers.0`
  over concat(2-D, 3-D) (split with `visual3d_dim`), `fc_frame_att.layers.0`, `fc_av_att.layers.0`
  (the script's one projection layer and one MMIL layer); `final_norm_a/_v` ignored.
- generator: UWAV `TemporalTransformer` (`model/TemporalTransformer.py`): `proj_a/_v`,
  `a_/v_transformer.encoder.layers.*`, `final_proj_a/_v`, `a_/v_logit_scale`. Its class text
  embeddings are not in the state dict; callers pass them to the forward as for any generator.

Dimensions and layer counts come from the tensor shapes; attention heads from the kind's preset
(`HAN_PRESETS`; the generator: `RELEASED_PLG_HEADS`), overridable. Pre-norm and post-norm blocks
have the same keys and shapes and cannot be told apart: only the post-norm setting, which every
released training and test script uses, is supported.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from uwav.errors import InvalidInputError, MissingInputError
from uwav.models.han import HAN, HAN_PRESETS
from uwav.models.plg import AudioVisualPLG

logger = logging.getLogger(__name__)

ReleasedHanKind = Literal["avvp-eccv20", "valor", "valor++", "uwav"]

# Which preset of `HAN_PRESETS` a kind's heads, update order, projection, dropout and audio input come from.
RELEASED_HAN_PRESETS: dict[str, str] = {
    "avvp-eccv20": "avvp-eccv20", "valor": "valor", "valor++": "valor++", "uwav": "uwav-released",
}
# The UWAV release's generator settings (`scripts/train_transformer.sh`: nhead 16, dropout 0.3).
RELEASED_PLG_HEADS = 16
RELEASED_PLG_DROPOUT = 0.3

# Keys of modules the released forward never runs (post-norm), per kind.
_IGNORED_PREFIXES: dict[str, tuple[str, ...]] = {
    "avvp-eccv20": ("audio_encoder.", "visual_encoder.", "cmt_encoder.", "hat_encoder.norm1.", "hat_encoder.norm2."),
    "valor": ("hat_encoder.final_norm_a.", "hat_encoder.final_norm_v."),
    "valor++": ("hat_encoder.final_norm_a.", "hat_encoder.final_norm_v."),
    "uwav": ("hat_encoder.final_norm_a.", "hat_encoder.final_norm_v."),
}
_ATTENTION_PARAMS = ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")
_SHOWN_KEYS = 5


def _linear(theirs: str, ours: str) -> dict[str, str]:
    return {f"{theirs}.{p}": f"{ours}.{p}" for p in ("weight", "bias")}


def _block(theirs: str, ours: str, attentions: Iterable[str]) -> dict[str, str]:
    """One transformer block's keys: its attentions, linear1/2 and norm1/2 (same names on both sides)."""
    names = [f"{attention}.{p}" for attention in attentions for p in _ATTENTION_PARAMS]
    names += [f"{module}.{p}" for module in ("linear1", "linear2", "norm1", "norm2") for p in ("weight", "bias")]
    return {f"{theirs}.{name}": f"{ours}.{name}" for name in names}


def _layer_count(state: Mapping[str, Tensor], prefixes: Iterable[str]) -> int:
    """1 + the largest block index under `prefixes` (1 when there is none: the missing keys then say so)."""
    pattern = re.compile("^(?:" + "|".join(re.escape(p) for p in prefixes) + r")(\d+)\.")
    return 1 + max((int(m.group(1)) for key in state if (m := pattern.match(key))), default=0)


def _key_list(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > _SHOWN_KEYS else f"{shown} ({len(keys)})"


def _checked_state(state: Mapping[str, object], source: str) -> dict[str, Tensor]:
    """The state dict with a `module.` prefix on every key removed; refuses anything but names -> tensors."""
    if not isinstance(state, Mapping) or not state:
        raise InvalidInputError(f"{source}: not a state dict (a non-empty mapping of parameter names to tensors)")
    not_tensors = [str(key) for key, value in state.items() if not isinstance(value, Tensor)]
    if not_tensors:
        raise InvalidInputError(f"{source}: not a state dict; entries that are not tensors: {_key_list(not_tensors)}")
    tensors = {str(key): value for key, value in state.items() if isinstance(value, Tensor)}
    if all(key.startswith("module.") for key in tensors):
        tensors = {key.removeprefix("module."): value for key, value in tensors.items()}
    return tensors


def _check_names(state: Mapping[str, Tensor], key_map: Mapping[str, str], ignored: list[str], source: str, what: str) -> None:
    missing = [key for key in key_map if key not in state]
    unexpected = sorted(set(state) - set(key_map) - set(ignored))
    problems = [
        f"{label}: {_key_list(keys)}" for label, keys in (("missing keys", missing), ("unexpected keys", unexpected)) if keys
    ]
    if problems:
        raise InvalidInputError(f"{source}: not a released {what} state dict; " + "; ".join(problems))


def _width(state: Mapping[str, Tensor], key: str, axis: int, source: str) -> int:
    """A dimension read off a 2-D weight (shape inference happens before the full shape check)."""
    tensor = state[key]
    if tensor.dim() != 2:
        raise InvalidInputError(f"{source}: shape-mismatched keys: {key} (file {tuple(tensor.shape)}, expected 2-D)")
    return int(tensor.shape[axis])


def _load_mapped(model: nn.Module, state: Mapping[str, Tensor], key_map: Mapping[str, str], source: str, what: str) -> None:
    expected = model.state_dict()
    mismatched = [
        f"{theirs} (file {tuple(state[theirs].shape)}, expected {tuple(expected[ours].shape)})"
        for theirs, ours in key_map.items()
        if state[theirs].shape != expected[ours].shape
    ]
    if mismatched:
        raise InvalidInputError(f"{source}: not a released {what} state dict; shape-mismatched keys: {_key_list(mismatched)}")
    model.load_state_dict({ours: state[theirs] for theirs, ours in key_map.items()}, strict=True)


def _resolve_heads(heads: int | None, default: int, width: int, source: str) -> int:
    chosen = default if heads is None else heads
    if chosen <= 0 or width % chosen != 0:
        raise InvalidInputError(f"{source}: {chosen} attention heads do not divide the model width {width}; pass heads=")
    return chosen


def _han_key_map(kind: str, layers: int) -> dict[str, str]:
    """Released key -> HAN state-dict key."""
    if kind == "uwav":
        key_map = {
            **_linear("fc_a.layers.0", "fc_a.0"),
            **_linear("fc_a.layers.1", "fc_a.2"),
            **_linear("fc_fusion.layers.0", "fc_fusion"),
            **_linear("fc_frame_att.layers.0", "fc_frame_att"),
            **_linear("fc_av_att.layers.0", "fc_av_att"),
        }
    else:
        key_map = {
            **{key: value for name in ("fc_a", "fc_v", "fc_st", "fc_fusion") for key, value in _linear(name, name).items()},
            **_linear("fc_frame_att", "fc_frame_att"),
            **_linear("fc_av_att", "fc_av_att"),
        }
    key_map.update(_linear("fc_prob", "fc_prob"))
    for i in range(layers):
        key_map.update(_block(f"hat_encoder.layers.{i}", f"han_layers.{i}", ("self_attn", "cm_attn")))
    return key_map


def han_from_released_state(
    state: Mapping[str, object],
    kind: ReleasedHanKind,
    *,
    heads: int | None = None,
    visual3d_dim: int = 512,
    source: str = "state dict",
) -> tuple[HAN, list[str]]:
    """A released HAN state dict as a `HAN` (eval, float32, CPU) and the ignored keys.

    `visual3d_dim` splits the `uwav` kind's fusion input (2-D + 3-D); the linear kinds read it from
    `fc_st`. `source` names the state dict in error messages.
    """
    if kind not in RELEASED_HAN_PRESETS:
        raise InvalidInputError(f"{source}: unknown released HAN kind {kind!r}; one of {sorted(RELEASED_HAN_PRESETS)}")
    preset = HAN_PRESETS[RELEASED_HAN_PRESETS[kind]]
    tensors = _checked_state(state, source)
    what = f"{kind} HAN"
    layers = _layer_count(tensors, ["hat_encoder.layers."])
    if kind == "avvp-eccv20" and layers > 1:
        raise InvalidInputError(
            f"{source}: {layers} HAN layers in an avvp-eccv20 state dict; its encoder feeds every layer the "
            "original inputs (only the last layer counts), which uwav's HAN does not reproduce: one layer only"
        )
    key_map = _han_key_map(kind, layers)
    ignored = sorted(key for key in tensors if key.startswith(_IGNORED_PREFIXES[kind]) and key not in key_map)
    _check_names(tensors, key_map, ignored, source, what)

    n_classes, d_model = (_width(tensors, "fc_prob.weight", axis, source) for axis in (0, 1))
    ffn = _width(tensors, "hat_encoder.layers.0.linear1.weight", 0, source)
    if kind == "uwav":
        audio_dim = _width(tensors, "fc_a.layers.0.weight", 1, source)
        visual2d_dim = _width(tensors, "fc_fusion.layers.0.weight", 1, source) - visual3d_dim
        if visual2d_dim <= 0:
            raise InvalidInputError(
                f"{source}: fc_fusion.layers.0 takes {visual2d_dim + visual3d_dim} inputs, not more than "
                f"visual3d_dim={visual3d_dim}; pass the 3-D feature width as visual3d_dim"
            )
    else:
        audio_dim = _width(tensors, "fc_a.weight", 1, source)
        visual2d_dim = _width(tensors, "fc_v.weight", 1, source)
        visual3d_dim = _width(tensors, "fc_st.weight", 1, source)
    model = HAN(
        n_classes=n_classes,
        audio_dim=audio_dim,
        visual2d_dim=visual2d_dim,
        visual3d_dim=visual3d_dim,
        d_model=d_model,
        ffn=ffn,
        heads=_resolve_heads(heads, preset["heads"], d_model, source),
        layers=layers,
        dropout=preset["dropout"],
        update=preset["update"],
        projection=preset["projection"],
        audio_input=preset.get("audio_input", "segments"),
    )
    _load_mapped(model, tensors, key_map, source, what)
    if ignored:
        logger.info("%s: ignored %d keys the released %s forward does not use: %s", source, len(ignored), kind, _key_list(ignored))
    return model.eval(), ignored


def _plg_key_map(layers: int) -> dict[str, str]:
    key_map: dict[str, str] = {}
    for short, modality in (("v", "visual"), ("a", "audio")):
        key_map.update(_linear(f"proj_{short}.layers.0", f"{modality}.input_proj.0"))
        key_map.update(_linear(f"proj_{short}.layers.1", f"{modality}.input_proj.2"))
        for i in range(layers):
            key_map.update(_block(f"{short}_transformer.encoder.layers.{i}", f"{modality}.encoder.layers.{i}", ("self_attn",)))
        key_map.update(_linear(f"final_proj_{short}.layers.0", f"{modality}.output_proj.0"))
        key_map.update(_linear(f"final_proj_{short}.layers.1", f"{modality}.output_proj.2"))
        key_map[f"{short}_logit_scale"] = f"{modality}.logit_scale"
    return key_map


def plg_from_released_state(
    state: Mapping[str, object], *, heads: int | None = None, source: str = "state dict"
) -> AudioVisualPLG:
    """A released `TemporalTransformer` state dict as an `AudioVisualPLG` ("released" architecture;
    eval, float32, CPU). Every key of that state dict is used."""
    tensors = _checked_state(state, source)
    what = "UWAV TemporalTransformer"
    layers = _layer_count(tensors, ["a_transformer.encoder.layers.", "v_transformer.encoder.layers."])
    key_map = _plg_key_map(layers)
    _check_names(tensors, key_map, [], source, what)

    hidden = _width(tensors, "proj_a.layers.1.weight", 0, source)
    ffn = _width(tensors, "a_transformer.encoder.layers.0.linear1.weight", 0, source)
    if ffn % hidden != 0:
        raise InvalidInputError(f"{source}: FFN width {ffn} is not a multiple of the width {hidden}; not supported")
    model = AudioVisualPLG(
        visual_dim=_width(tensors, "proj_v.layers.0.weight", 1, source),
        audio_dim=_width(tensors, "proj_a.layers.0.weight", 1, source),
        layers=layers,
        heads=_resolve_heads(heads, RELEASED_PLG_HEADS, hidden, source),
        ffn_multiplier=ffn // hidden,
        dropout=RELEASED_PLG_DROPOUT,
        architecture="released",
        hidden_dim=hidden,
    )
    _load_mapped(model, tensors, key_map, source, what)
    return model.eval()


def _read_state_dict(path: Path) -> Mapping[str, object]:
    if not path.is_file():
        raise MissingInputError(f"released checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any reader failure means the same to the user: an unusable file
        raise InvalidInputError(
            f"{path}: cannot be read as a weights-only torch state dict: {type(error).__name__}: {error}"
        ) from error


def load_released_han(
    path: str | Path, kind: ReleasedHanKind, *, heads: int | None = None, visual3d_dim: int = 512
) -> HAN:
    """The HAN of a released `torch.save(model.state_dict())` file; see `han_from_released_state`."""
    path = Path(path)
    return han_from_released_state(_read_state_dict(path), kind, heads=heads, visual3d_dim=visual3d_dim, source=str(path))[0]


def load_released_plg(path: str | Path, *, heads: int | None = None) -> AudioVisualPLG:
    """The generator of a released `TemporalTransformer` state-dict file; see `plg_from_released_state`."""
    path = Path(path)
    return plg_from_released_state(_read_state_dict(path), heads=heads, source=str(path))
