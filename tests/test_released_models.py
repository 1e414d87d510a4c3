"""Released reference checkpoints (`uwav.models.released`) against transcriptions of the released
forwards (AVVP-ECCV20 / VALOR `MMIL_Net`, its VALOR++ audio path over HTSAT maps, UWAV
`HybridAttentionNet` and `TemporalTransformer`), which read the released tensors by their released
names with explicit matmuls; and the configurable HAN / generator forms and old-checkpoint
compatibility that the loaders rely on."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

from uwav.catalog import HanSettings, PretrainSettings
from uwav.errors import InvalidInputError, MissingInputError
from uwav.models import HAN, AudioVisualPLG, load_released_han, load_released_plg
from uwav.models.released import han_from_released_state, plg_from_released_state
from uwav.stages.evaluate import check_model_inputs
from uwav.training.checkpoints import save_checkpoint
from uwav.training.data import HanFeatures
from uwav.training.han_train import load_han
from uwav.training.pretrain import load_plg

# Small dims: classes, audio, 2-D visual, 3-D visual, model width, FFN.
C, DA, DV, D3, D, FFN = 5, 12, 20, 9, 32, 48
# Which update order each released encoder runs (read off its Encoder.forward).
RELEASED_UPDATE = {"avvp-eccv20": "parallel", "valor": "sequential", "valor++": "sequential", "uwav": "sequential"}
# Heads of each kind's preset (AVVP-ECCV20 MMIL_Net: 1; VALOR scripts: 8; UWAV train_han.sh: 16).
RELEASED_HEADS = {"avvp-eccv20": 1, "valor": 8, "valor++": 8, "uwav": 16}
LAYERS = {"avvp-eccv20": 1, "valor": 2, "valor++": 4, "uwav": 3}
KINDS = ["avvp-eccv20", "valor", "valor++", "uwav"]
MAP_TOKENS = 64  # a CLAP (HTSAT) map: 2 frequency bands x 32 time steps, token 32 f + t


# ---------------------------------------------------------------- released key layouts


def linear_shapes(name: str, out_dim: int, in_dim: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (out_dim, in_dim), f"{name}.bias": (out_dim,)}


def norm_shapes(name: str, dim: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (dim,), f"{name}.bias": (dim,)}


def block_shapes(prefix: str, dim: int, ffn: int, attentions: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """A released transformer block: nn.MultiheadAttention(s), linear1/2, norm1/2."""
    shapes: dict[str, tuple[int, ...]] = {}
    for attention in attentions:
        shapes |= {
            f"{prefix}.{attention}.in_proj_weight": (3 * dim, dim),
            f"{prefix}.{attention}.in_proj_bias": (3 * dim,),
            f"{prefix}.{attention}.out_proj.weight": (dim, dim),
            f"{prefix}.{attention}.out_proj.bias": (dim,),
        }
    shapes |= linear_shapes(f"{prefix}.linear1", ffn, dim) | linear_shapes(f"{prefix}.linear2", dim, ffn)
    return shapes | norm_shapes(f"{prefix}.norm1", dim) | norm_shapes(f"{prefix}.norm2", dim)


def unused_han_keys(kind: str, width: int = D, ffn: int = FFN) -> dict[str, tuple[int, ...]]:
    """Modules in the released state dict that the released (post-norm) forward never runs."""
    if kind == "avvp-eccv20":
        return (
            block_shapes("audio_encoder.layers.0", width, ffn, ("self_attn",))
            | block_shapes("visual_encoder.layers.0", width, ffn, ("self_attn",))
            | block_shapes("cmt_encoder.layers.0", width, ffn, ("self_attn",))
            | norm_shapes("cmt_encoder.norm1", width)
            | norm_shapes("cmt_encoder.norm2", width)
            | norm_shapes("hat_encoder.norm1", width)
            | norm_shapes("hat_encoder.norm2", width)
        )
    return norm_shapes("hat_encoder.final_norm_a", width) | norm_shapes("hat_encoder.final_norm_v", width)


def released_han_shapes(
    kind: str, layers: int, *, classes: int = C, audio: int = DA, visual2d: int = DV, visual3d: int = D3,
    width: int = D, ffn: int = FFN,
) -> dict[str, tuple[int, ...]]:
    if kind == "uwav":  # HybridAttentionNet: MLP fc_a, one-layer MLPs elsewhere
        shapes = (
            linear_shapes("fc_prob", classes, width)
            | linear_shapes("fc_frame_att.layers.0", classes, width)
            | linear_shapes("fc_av_att.layers.0", classes, width)
            | linear_shapes("fc_a.layers.0", 2 * width, audio)
            | linear_shapes("fc_a.layers.1", width, 2 * width)
            | linear_shapes("fc_fusion.layers.0", width, visual2d + visual3d)
        )
    else:  # MMIL_Net
        shapes = (
            linear_shapes("fc_prob", classes, width)
            | linear_shapes("fc_frame_att", classes, width)
            | linear_shapes("fc_av_att", classes, width)
            | linear_shapes("fc_a", width, audio)
            | linear_shapes("fc_v", width, visual2d)
            | linear_shapes("fc_st", width, visual3d)
            | linear_shapes("fc_fusion", width, 2 * width)
        )
    for i in range(layers):
        shapes |= block_shapes(f"hat_encoder.layers.{i}", width, ffn, ("self_attn", "cm_attn"))
    return shapes | unused_han_keys(kind, width, ffn)


# The generator: TemporalTransformer with width H, encoders of width EV (CLIP) and EA (CLAP).
H, EV, EA, PLG_FFN, PLG_LAYERS = 16, 12, 8, 32, 2


def released_plg_shapes(
    layers: int = PLG_LAYERS, *, width: int = H, visual: int = EV, audio: int = EA, ffn: int = PLG_FFN
) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"a_logit_scale": (), "v_logit_scale": ()}
    for short, enc in (("a", audio), ("v", visual)):
        shapes |= linear_shapes(f"proj_{short}.layers.0", 2 * width, enc) | linear_shapes(f"proj_{short}.layers.1", width, 2 * width)
        for i in range(layers):
            shapes |= block_shapes(f"{short}_transformer.encoder.layers.{i}", width, ffn, ("self_attn",))
        shapes |= linear_shapes(f"final_proj_{short}.layers.0", enc, width) | linear_shapes(f"final_proj_{short}.layers.1", enc, enc)
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {key: 0.4 * torch.randn(shape, generator=generator) for key, shape in shapes.items()}


def save(state: dict[str, Tensor], path: Path) -> Path:
    torch.save(state, path)
    return path


# ---------------------------------------------------------------- transcriptions of the released forwards


def lin(sd: dict[str, Tensor], name: str, x: Tensor) -> Tensor:
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def norm(sd: dict[str, Tensor], name: str, x: Tensor) -> Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def mha(sd: dict[str, Tensor], name: str, query: Tensor, key_value: Tensor, heads: int) -> Tensor:
    """softmax(Q K^T / sqrt(d_h)) V per head, then out_proj; (B, T, d)."""
    w_q, w_k, w_v = sd[f"{name}.in_proj_weight"].chunk(3)
    b_q, b_k, b_v = sd[f"{name}.in_proj_bias"].chunk(3)
    b, tq, d = query.shape
    tk, dh = key_value.shape[1], d // heads
    q = (query @ w_q.T + b_q).reshape(b, tq, heads, dh).transpose(1, 2)
    k = (key_value @ w_k.T + b_k).reshape(b, tk, heads, dh).transpose(1, 2)
    v = (key_value @ w_v.T + b_v).reshape(b, tk, heads, dh).transpose(1, 2)
    out = (torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), -1) @ v).transpose(1, 2).reshape(b, tq, d)
    return out @ sd[f"{name}.out_proj.weight"].T + sd[f"{name}.out_proj.bias"]


def released_han_layer(sd: dict[str, Tensor], prefix: str, q: Tensor, other: Tensor, heads: int) -> Tensor:
    # HANLayer post-norm branch: norm1(q + cm_attn(q, other, other) + self_attn(q, q, q)), then the FFN.
    x = norm(sd, f"{prefix}.norm1", q + mha(sd, f"{prefix}.cm_attn", q, other, heads) + mha(sd, f"{prefix}.self_attn", q, q, heads))
    return norm(sd, f"{prefix}.norm2", x + lin(sd, f"{prefix}.linear2", torch.relu(lin(sd, f"{prefix}.linear1", x))))


def keys_cubic(distance: float) -> float:
    """Keys' cubic convolution kernel with a = -0.75, the weights of bicubic interpolation."""
    a, d = -0.75, abs(distance)
    if d <= 1:
        return (a + 2) * d**3 - (a + 3) * d**2 + 1
    return a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a if d < 2 else 0.0


def bicubic_matrix(n_in: int, n_out: int) -> Tensor:
    """(n_out, n_in) bicubic resampling along one axis, `align_corners=False` (F.interpolate's
    default): output i samples the input at (i + 1/2) n_in / n_out - 1/2 from its 4 nearest
    samples, an index outside the input reading the border sample."""
    matrix = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        x = (i + 0.5) * n_in / n_out - 0.5
        for j in range(math.floor(x) - 1, math.floor(x) + 3):
            matrix[i, min(max(j, 0), n_in - 1)] += keys_cubic(x - j)
    return matrix


def adaptive_average_matrix(n_in: int, n_out: int) -> Tensor:
    """(n_out, n_in) adaptive average pooling: output i averages inputs floor(i n_in / n_out) to
    ceil((i + 1) n_in / n_out) - 1."""
    matrix = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        matrix[i, start:end] = 1 / (end - start)
    return matrix


def valor_map_audio(sd: dict[str, Tensor], maps: Tensor) -> Tensor:
    """VALOR `MMIL_Net.forward` on audio of 64 steps, (B, 64, Da) -> (B, 10, d), step by step: the
    (Da, 2, 32) view (token 32 f + t is band f, time t), bicubic upsampling to (2, 1024), `fc_a`
    at every one of the 2 x 1024 positions, the mean over the 2 bands, adaptive average pooling of
    the 1024 positions to 10 segments."""
    b, _, da = maps.shape
    grid = maps.transpose(1, 2).reshape(b, da, 2, 32)
    rows, columns = bicubic_matrix(2, 2).float(), bicubic_matrix(32, 1024).float()
    upsampled = torch.einsum("hf,wt,bdft->bdhw", rows, columns, grid)  # (B, Da, 2, 1024)
    projected = lin(sd, "fc_a", upsampled.permute(0, 2, 3, 1))  # (B, 2, 1024, d)
    return torch.einsum("sw,bwd->bsd", adaptive_average_matrix(1024, 10).float(), projected.mean(dim=1))


def released_han_forward(
    sd: dict[str, Tensor], kind: str, audio: Tensor, frames: Tensor, visual3d: Tensor, update: str, layers: int
) -> tuple[Tensor, Tensor, Tensor]:
    """(global_prob (B, C), a_prob / v_prob (B, 2, C), sigmoid(frame_logits) (B, T, 2, C)).

    `frames` (B, 8T, Dv): frames 8t..8t+7 are segment t, as the released models take ResNet
    features; or (B, T, Dv) (CLIP), one vector per segment, which `MMIL_Net` feeds to `fc_v` as it is.
    `audio` (B, T, Da), or for `valor++` HTSAT maps (B, 64, Da).
    """
    b, t = visual3d.shape[:2]
    if kind == "uwav":
        a = lin(sd, "fc_a.layers.1", torch.relu(lin(sd, "fc_a.layers.0", audio)))
        v2d = frames.reshape(b, t, 8, -1).mean(2)  # reduce 'b (t1 t2) c -> b t1 c', then fc_fusion
        v = lin(sd, "fc_fusion.layers.0", torch.cat([v2d, visual3d], -1))
        frame_att_name, av_att_name = "fc_frame_att.layers.0", "fc_av_att.layers.0"
    else:
        a = valor_map_audio(sd, audio) if kind == "valor++" else lin(sd, "fc_a", audio)
        v2d = lin(sd, "fc_v", frames)
        if frames.shape[1] == 8 * t:
            v2d = v2d.reshape(b, t, 8, -1).mean(2)  # fc_v per frame, avg_pool2d (8, 1)
        v = lin(sd, "fc_fusion", torch.cat([v2d, lin(sd, "fc_st", visual3d)], -1))
        frame_att_name, av_att_name = "fc_frame_att", "fc_av_att"
    heads = RELEASED_HEADS[kind]
    for i in range(layers):
        prefix = f"hat_encoder.layers.{i}"
        new_a = released_han_layer(sd, prefix, a, v, heads)
        v = released_han_layer(sd, prefix, v, new_a if update == "sequential" else a, heads)
        a = new_a
    x = torch.stack([a, v], dim=-2)
    frame_prob = torch.sigmoid(lin(sd, "fc_prob", x))
    frame_att = torch.softmax(lin(sd, frame_att_name, x), dim=1)
    av_att = torch.softmax(lin(sd, av_att_name, x), dim=2)
    temporal = frame_att * frame_prob
    return (temporal * av_att).sum(dim=2).sum(dim=1), temporal.sum(dim=1), frame_prob


def released_plg_forward(sd: dict[str, Tensor], short: str, x: Tensor, text: Tensor, heads: int) -> Tensor:
    """One modality of TemporalTransformer on one unpadded video (1, T, E): logits (1, T, C)."""
    h = lin(sd, f"proj_{short}.layers.1", torch.relu(lin(sd, f"proj_{short}.layers.0", x)))
    for i in range(PLG_LAYERS):
        p = f"{short}_transformer.encoder.layers.{i}"
        h = norm(sd, f"{p}.norm1", h + mha(sd, f"{p}.self_attn", h, h, heads))
        h = norm(sd, f"{p}.norm2", h + lin(sd, f"{p}.linear2", torch.relu(lin(sd, f"{p}.linear1", h))))
    out = lin(sd, f"final_proj_{short}.layers.1", torch.relu(lin(sd, f"final_proj_{short}.layers.0", h)))
    unit_text = text / text.norm(dim=-1, keepdim=True)  # the release loads L2-normalised event features
    return out @ unit_text.T * sd[f"{short}_logit_scale"]


def han_inputs(batch: int = 3, segments: int = 10) -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1)
    return (
        torch.randn(batch, segments, DA, generator=generator),
        torch.randn(batch, 8 * segments, DV, generator=generator),
        torch.randn(batch, segments, D3, generator=generator),
    )


def htsat_maps(batch: int = 3, width: int = DA) -> Tensor:
    return torch.randn(batch, MAP_TOKENS, width, generator=torch.Generator().manual_seed(7))


# ---------------------------------------------------------------- released HAN


@pytest.mark.parametrize("grad_enabled", [False, True])  # no_grad takes MultiheadAttention's fast path
@pytest.mark.parametrize("kind", KINDS)
def test_released_han_matches_the_released_forward(kind: str, grad_enabled: bool, tmp_path: Path) -> None:
    layers = LAYERS[kind]
    sd = random_state(released_han_shapes(kind, layers))
    model = load_released_han(save(sd, tmp_path / "model.pt"), kind, visual3d_dim=D3)
    audio, frames, visual3d = han_inputs()
    if kind == "valor++":
        audio = htsat_maps()
    with torch.set_grad_enabled(grad_enabled):
        out = model(audio, frames.reshape(3, 10, 8, DV), visual3d)
    with torch.no_grad():
        video, modality, segment = released_han_forward(sd, kind, audio, frames, visual3d, RELEASED_UPDATE[kind], layers)
        other_order = "parallel" if RELEASED_UPDATE[kind] == "sequential" else "sequential"
        wrong_video = released_han_forward(sd, kind, audio, frames, visual3d, other_order, layers)[0]
    torch.testing.assert_close(out.video_prob, video, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.segment_prob, segment, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.modality_prob, modality, atol=1e-5, rtol=1e-5)
    # The update order is visible in the outputs, so the comparison above pins it.
    assert not torch.allclose(out.video_prob, wrong_video, atol=1e-4)
    assert not model.training and all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())


def ours_for_released_han(kind: str, key: str) -> str:
    """Where a released HAN tensor belongs in uwav's HAN (spelled out per released module)."""
    renames = {
        "uwav": {
            "fc_a.layers.0.": "fc_a.0.",
            "fc_a.layers.1.": "fc_a.2.",
            "fc_fusion.layers.0.": "fc_fusion.",
            "fc_frame_att.layers.0.": "fc_frame_att.",
            "fc_av_att.layers.0.": "fc_av_att.",
        },
    }.get(kind, {})
    renames = renames | {"hat_encoder.layers.": "han_layers."}
    for theirs, ours in renames.items():
        if key.startswith(theirs):
            return ours + key.removeprefix(theirs)
    return key


@pytest.mark.parametrize("kind", KINDS)
def test_every_released_han_tensor_lands_in_its_parameter(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    sd = random_state(released_han_shapes(kind, LAYERS[kind]))
    unused = sorted(unused_han_keys(kind))
    with caplog.at_level(logging.INFO, logger="uwav.models.released"):
        model, ignored = han_from_released_state(sd, kind, visual3d_dim=D3)
    assert ignored == unused
    assert unused[0] in caplog.text and f"ignored {len(unused)} keys" in caplog.text
    ours = model.state_dict()
    used = [key for key in sd if key not in unused]
    assert sorted(ours_for_released_han(kind, key) for key in used) == sorted(ours)  # nothing left at init
    for key in used:
        torch.testing.assert_close(ours[ours_for_released_han(kind, key)], sd[key], rtol=0, atol=0, msg=key)
    preset = {
        "avvp-eccv20": ("parallel", "linear", "segments"),
        "valor": ("sequential", "linear", "segments"),
        "valor++": ("sequential", "linear", "htsat_maps"),
        "uwav": ("sequential", "mlp", "segments"),
    }[kind]
    config = model.config
    assert (config["update"], config["projection"], config["audio_input"]) == preset
    assert (config["n_classes"], config["d_model"], config["ffn"], config["layers"]) == (C, D, FFN, LAYERS[kind])
    assert (config["audio_dim"], config["visual2d_dim"], config["visual3d_dim"]) == (DA, DV, D3)
    assert config["heads"] == RELEASED_HEADS[kind] == model.han_layers[0].self_attn.num_heads


def test_valor_plus_plus_at_its_released_size(tmp_path: Path) -> None:
    """`scripts/test_valor++.sh`'s model (hidden 256, 8 heads, FFN 1024, 4 layers; CLAP maps 768,
    CLIP 768, R(2+1)D 512, 25 classes), read as a bare `checkpoint_best.pt` state dict, on
    (B, 64, 768) maps, (B, 10, 768) CLIP and (B, 10, 512) R(2+1)D: VALOR++'s global and frame
    probabilities within 1e-5 (fp32, eval)."""
    shapes = released_han_shapes("valor++", 4, classes=25, audio=768, visual2d=768, visual3d=512, width=256, ffn=1024)
    sd = {key: value / 4 for key, value in random_state(shapes, seed=3).items()}  # weights of a trained scale
    model = load_released_han(save(sd, tmp_path / "checkpoint_best.pt"), "valor++")
    config = model.config
    assert (config["d_model"], config["layers"], config["heads"], config["ffn"]) == (256, 4, 8, 1024)
    assert (config["audio_dim"], config["visual2d_dim"], config["visual3d_dim"], config["n_classes"]) == (768, 768, 512, 25)
    generator = torch.Generator().manual_seed(4)
    maps, clip, r2plus1d = (torch.randn(2, *shape, generator=generator) for shape in ((64, 768), (10, 768), (10, 512)))
    with torch.no_grad():
        out = model(maps, clip, r2plus1d)
        video, _, segment = released_han_forward(sd, "valor++", maps, clip, r2plus1d, "sequential", 4)
    torch.testing.assert_close(out.video_prob, video, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.segment_prob, segment, atol=1e-5, rtol=1e-5)
    assert out.segment_prob.shape == (2, 10, 2, 25)
    assert 0.05 < float(out.segment_prob.std())  # outputs that vary: the comparison is not between constants


def test_valor_kinds_differ_only_in_the_audio_they_take(tmp_path: Path) -> None:
    """One VALOR state dict: `valor` takes per-segment audio, `valor++` HTSAT maps; each refuses the
    other's audio naming the shape it expects, and the evaluate stage refuses a model whose audio
    the catalog's HAN inputs do not give, naming the setting."""
    path = save(random_state(released_han_shapes("valor", 1)), tmp_path / "checkpoint_best.pt")
    valor, valor_plus_plus = load_released_han(path, "valor"), load_released_han(path, "valor++")
    assert valor_plus_plus.state_dict().keys() == valor.state_dict().keys()
    segments, frames, visual3d = han_inputs()
    with pytest.raises(ValueError, match=r"audio \(3, 10, 12\) \(expected \(3, 64, \.\.\.\), HTSAT maps\)"):
        valor_plus_plus(segments, frames.reshape(3, 10, 8, DV), visual3d)
    with pytest.raises(ValueError, match=r"audio \(3, 64, 12\) \(expected \(3, 10, \.\.\.\)\)"):
        valor(htsat_maps(), frames.reshape(3, 10, 8, DV), visual3d)
    per_segment = HanFeatures.from_arrays(segments, frames.reshape(3, 10, 8, DV), visual3d)
    maps = HanFeatures.from_arrays(htsat_maps(), frames.reshape(3, 10, 8, DV), visual3d, audio_input="htsat_maps")
    classes = [f"class{i}" for i in range(C)]
    check_model_inputs(valor_plus_plus, maps, classes, "VALOR++")
    check_model_inputs(valor, per_segment, classes, "VALOR")
    with pytest.raises(InvalidInputError, match=r"VALOR\+\+: the model takes audio as htsat_maps, .* give segments; set stages.train.han.inputs to clap_maps"):
        check_model_inputs(valor_plus_plus, per_segment, classes, "VALOR++")
    with pytest.raises(InvalidInputError, match="takes audio as segments, .* give htsat_maps; set stages.train.han.inputs to clip_clap or official"):
        check_model_inputs(valor, maps, classes, "VALOR")


def test_heads_override_and_module_prefix(tmp_path: Path) -> None:
    sd = random_state(released_han_shapes("valor", 1))
    prefixed = save({f"module.{key}": value for key, value in sd.items()}, tmp_path / "ddp.pt")
    model = load_released_han(prefixed, "valor", heads=4)
    assert model.han_layers[0].cm_attn.num_heads == 4
    torch.testing.assert_close(model.state_dict()["fc_prob.weight"], sd["fc_prob.weight"], rtol=0, atol=0)
    with pytest.raises(InvalidInputError, match=r"ddp\.pt: 5 attention heads do not divide the model width 32"):
        load_released_han(prefixed, "valor", heads=5)


# ---------------------------------------------------------------- released generator


def test_released_plg_matches_the_released_forward_on_a_padded_batch(tmp_path: Path) -> None:
    sd = random_state(released_plg_shapes())
    sd["a_logit_scale"], sd["v_logit_scale"] = torch.tensor(1.7), torch.tensor(2.5)  # not the defaults: must load
    plg = load_released_plg(save(sd, tmp_path / "transformer.pt"))
    generator = torch.Generator().manual_seed(2)
    lengths = [7, 4, 2]
    visual, audio = torch.randn(3, 7, EV, generator=generator), torch.randn(3, 7, EA, generator=generator)
    visual_text, audio_text = torch.randn(6, EV, generator=generator), torch.randn(6, EA, generator=generator)
    mask = torch.arange(7)[None] >= torch.tensor(lengths)[:, None]
    visual = torch.where(mask[..., None], 1e3 * torch.randn(3, 7, EV, generator=generator), visual)
    audio = torch.where(mask[..., None], 1e3 * torch.randn(3, 7, EA, generator=generator), audio)
    for grad_enabled in (False, True):
        with torch.set_grad_enabled(grad_enabled):
            visual_logits, audio_logits = plg(visual, audio, visual_text, audio_text, mask)
        with torch.no_grad():
            for i, n in enumerate(lengths):
                expected_v = released_plg_forward(sd, "v", visual[i : i + 1, :n], visual_text, heads=16)[0]
                expected_a = released_plg_forward(sd, "a", audio[i : i + 1, :n], audio_text, heads=16)[0]
                torch.testing.assert_close(visual_logits[i, :n], expected_v, atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(audio_logits[i, :n], expected_a, atol=1e-5, rtol=1e-5)
    assert visual_logits.shape == (3, 7, 6) and audio_logits.shape == (3, 7, 6)


def test_every_released_plg_tensor_lands_in_its_parameter() -> None:
    sd = random_state(released_plg_shapes())
    plg = plg_from_released_state(sd)
    renames = {
        "proj_v.layers.0.": "visual.input_proj.0.",
        "proj_v.layers.1.": "visual.input_proj.2.",
        "v_transformer.encoder.layers.": "visual.encoder.layers.",
        "final_proj_v.layers.0.": "visual.output_proj.0.",
        "final_proj_v.layers.1.": "visual.output_proj.2.",
        "v_logit_scale": "visual.logit_scale",
        "proj_a.layers.0.": "audio.input_proj.0.",
        "proj_a.layers.1.": "audio.input_proj.2.",
        "a_transformer.encoder.layers.": "audio.encoder.layers.",
        "final_proj_a.layers.0.": "audio.output_proj.0.",
        "final_proj_a.layers.1.": "audio.output_proj.2.",
        "a_logit_scale": "audio.logit_scale",
    }

    def ours_for(key: str) -> str:
        theirs = next(prefix for prefix in renames if key.startswith(prefix))
        return renames[theirs] + key.removeprefix(theirs)

    ours = plg.state_dict()
    assert sorted(ours_for(key) for key in sd) == sorted(ours)
    for key in sd:
        torch.testing.assert_close(ours[ours_for(key)], sd[key], rtol=0, atol=0, msg=key)
    assert "visual.logit_scale" not in dict(plg.named_parameters())  # a buffer: never trained
    assert plg.config == {
        "visual_dim": EV, "audio_dim": EA, "layers": PLG_LAYERS, "heads": 16, "ffn_multiplier": PLG_FFN // H,
        "dropout": 0.3, "architecture": "released", "hidden_dim": H,
    }
    assert not plg.training


def test_released_plg_refuses_an_ffn_that_is_no_multiple_of_the_width() -> None:
    shapes = released_plg_shapes()
    for short in "av":
        for i in range(PLG_LAYERS):
            prefix = f"{short}_transformer.encoder.layers.{i}"
            shapes |= linear_shapes(f"{prefix}.linear1", 24, H) | linear_shapes(f"{prefix}.linear2", H, 24)
    with pytest.raises(InvalidInputError, match="FFN width 24 is not a multiple of the width 16"):
        plg_from_released_state(random_state(shapes))


# ---------------------------------------------------------------- wrong files


def test_truncated_state_dict_names_the_missing_keys(tmp_path: Path) -> None:
    sd = random_state(released_han_shapes("valor", 2))
    del sd["fc_prob.bias"], sd["hat_encoder.layers.1.norm2.weight"]
    path = save(sd, tmp_path / "cut.pt")
    with pytest.raises(InvalidInputError, match="cut.pt") as error:
        load_released_han(path, "valor")
    assert "missing keys: fc_prob.bias, hat_encoder.layers.1.norm2.weight (2)" in str(error.value)
    plg_sd = random_state(released_plg_shapes())
    del plg_sd["v_logit_scale"]
    with pytest.raises(InvalidInputError, match=r"missing keys: v_logit_scale \(1\)"):
        load_released_plg(save(plg_sd, tmp_path / "plg.pt"))


@pytest.mark.parametrize(
    ("written", "read_as", "missing", "unexpected"),
    [
        ("valor", "uwav", "fc_a.layers.0.weight", "fc_a.bias"),
        ("uwav", "valor", "fc_a.weight", "fc_a.layers.0.bias"),
        ("avvp-eccv20", "valor", None, "audio_encoder.layers.0.linear1.bias"),
    ],
)
def test_wrong_kind_names_missing_and_unexpected_keys(
    written: str, read_as: str, missing: str | None, unexpected: str, tmp_path: Path
) -> None:
    path = save(random_state(released_han_shapes(written, 1)), tmp_path / f"{written}.pt")
    with pytest.raises(InvalidInputError, match=f"{written}.pt: not a released {read_as} HAN state dict") as error:
        load_released_han(path, read_as, visual3d_dim=D3)  # type: ignore[arg-type]
    message = str(error.value)
    assert f"unexpected keys: {unexpected}" in message and "in all)" in message  # first few + count
    assert (missing is None and "missing keys" not in message) or f"missing keys: {missing}" in message


def test_shape_mismatch_names_the_key_and_both_shapes(tmp_path: Path) -> None:
    sd = random_state(released_han_shapes("uwav", 1))
    sd["fc_frame_att.layers.0.weight"] = torch.zeros(C + 1, D)
    with pytest.raises(InvalidInputError, match=r"shape-mismatched keys: fc_frame_att\.layers\.0\.weight \(file \(6, 32\), expected \(5, 32\)\)"):
        load_released_han(save(sd, tmp_path / "m.pt"), "uwav", visual3d_dim=D3)
    sd = random_state(released_plg_shapes())
    sd["a_transformer.encoder.layers.1.norm1.bias"] = torch.zeros(H + 1)
    with pytest.raises(InvalidInputError, match=r"a_transformer\.encoder\.layers\.1\.norm1\.bias \(file \(17,\), expected \(16,\)\)"):
        plg_from_released_state(sd)


def test_uwav_fusion_split_needs_a_plausible_visual3d_dim() -> None:
    sd = random_state(released_han_shapes("uwav", 1))
    with pytest.raises(InvalidInputError, match="visual3d_dim=512"):
        han_from_released_state(sd, "uwav")  # fusion input DV + D3 = 29 < 512


def test_avvp_eccv20_with_more_than_one_layer_is_refused() -> None:
    sd = random_state(released_han_shapes("avvp-eccv20", 2))
    with pytest.raises(InvalidInputError, match="2 HAN layers in an avvp-eccv20 state dict"):
        han_from_released_state(sd, "avvp-eccv20")


def test_missing_unreadable_and_non_state_dict_files(tmp_path: Path) -> None:
    with pytest.raises(MissingInputError, match="nowhere.pt does not exist"):
        load_released_han(tmp_path / "nowhere.pt", "valor")
    good = save(random_state(released_han_shapes("valor", 1)), tmp_path / "good.pt")
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:500])
    with pytest.raises(InvalidInputError, match="cut.pt: cannot be read"):
        load_released_han(tmp_path / "cut.pt", "valor")
    with pytest.raises(InvalidInputError, match=r"meta.pt: not a state dict; entries that are not tensors: epoch"):
        load_released_plg(save({"epoch": 3, "w": torch.zeros(1)}, tmp_path / "meta.pt"))  # type: ignore[dict-item]
    with pytest.raises(InvalidInputError, match="unknown released HAN kind 'vALOR'"):
        load_released_han(good, "vALOR")  # type: ignore[arg-type]


# ---------------------------------------------------------------- configuration and older checkpoints


def test_from_settings_passes_the_update_projection_and_architecture() -> None:
    han = HAN.from_settings(
        HanSettings(update="sequential", projection="mlp", d_model=32, heads=4, ffn=48),
        n_classes=C, audio_dim=DA, visual2d_dim=DV, visual3d_dim=D3,
    )
    assert (han.config["update"], han.config["projection"]) == ("sequential", "mlp")
    assert han.fc_fusion.in_features == DV + D3 and not hasattr(han, "fc_v")
    plg = AudioVisualPLG.from_settings(
        PretrainSettings(architecture="released", hidden_dim=H, heads=4, layers=1, ffn_multiplier=2), visual_dim=EV, audio_dim=EA
    )
    assert plg.config["architecture"] == "released" and plg.config["hidden_dim"] == H
    assert plg.visual.encoder.layers[0].linear1.out_features == 2 * H and plg.audio.output_proj[2].out_features == EA


def test_han_checkpoint_without_update_or_projection_loads_as_sequential_linear(tmp_path: Path) -> None:
    """Checkpoints older than `update`, `projection` and `audio_input` rebuild the HAN they were
    trained as: sequential, linear, per-segment audio."""
    torch.manual_seed(3)
    trained = HAN(n_classes=C, audio_dim=DA, visual2d_dim=DV, visual3d_dim=D3, d_model=D, ffn=FFN, heads=4, layers=2, update="sequential").eval()
    old_config = {key: value for key, value in trained.config.items() if key not in ("update", "projection", "audio_input")}
    save_checkpoint(tmp_path / "old", trained, {"identity": {"stage": "han", "model": old_config}})
    loaded = load_han(tmp_path / "old")
    audio, frames, visual3d = han_inputs()
    frames = frames.reshape(3, 10, 8, DV)
    with torch.no_grad():
        expected = trained(audio, frames, visual3d).video_prob
        got = loaded(audio, frames, visual3d).video_prob
        parallel = HAN(**old_config).eval()
        parallel.load_state_dict(trained.state_dict())
        parallel_prob = parallel(audio, frames, visual3d).video_prob
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not torch.allclose(parallel_prob, expected, atol=1e-4)  # the default order would not reproduce it
    assert (loaded.config["update"], loaded.config["projection"], loaded.config["audio_input"]) == ("sequential", "linear", "segments")


def test_plg_checkpoints_old_and_released_load_through_load_plg(tmp_path: Path) -> None:
    torch.manual_seed(4)
    old = AudioVisualPLG(visual_dim=EV, audio_dim=EA, layers=1, heads=4).eval()
    old_config = {key: value for key, value in old.config.items() if key not in ("architecture", "hidden_dim")}
    save_checkpoint(tmp_path / "old", old, {"identity": {"stage": "pretrain", "model": old_config}})
    released = plg_from_released_state(random_state(released_plg_shapes()))
    save_checkpoint(tmp_path / "released", released, {"identity": {"stage": "pretrain", "model": released.config}})
    visual, audio = torch.randn(2, 5, EV), torch.randn(2, 5, EA)
    visual_text, audio_text = torch.randn(4, EV), torch.randn(4, EA)
    with torch.no_grad():
        for written, folder, architecture in ((old, "old", "encoder_width"), (released, "released", "released")):
            loaded = load_plg(tmp_path / folder)
            assert loaded.config["architecture"] == architecture
            for got, expected in zip(
                loaded(visual, audio, visual_text, audio_text), written(visual, audio, visual_text, audio_text), strict=True
            ):
                torch.testing.assert_close(got, expected, rtol=0, atol=0)
