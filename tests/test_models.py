"""Models against direct transcriptions of METHOD.md's equations (explicit q/k/v matmuls)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from uwav.catalog import HanSettings, PretrainSettings
from uwav.models import HAN, AudioVisualPLG, HANLayer, TemporalPseudoLabelGenerator
from uwav.training.losses import ClassBalanceWeights, UWAVLoss

torch.manual_seed(0)


# ---------------------------------------------------------------- transcriptions


def linear(x: Tensor, layer: nn.Linear) -> Tensor:
    return x @ layer.weight.T + layer.bias


def layer_norm(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def attention(query: Tensor, key_value: Tensor, mha: nn.MultiheadAttention, padding: Tensor | None = None) -> Tensor:
    """softmax(Q K^T / sqrt(d_h)) V per head, then the output projection; (B, T, d) inputs."""
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
    heads = mha.num_heads
    b, tq, d = query.shape
    tk = key_value.shape[1]
    dh = d // heads
    q = (query @ w_q.T + b_q).reshape(b, tq, heads, dh).transpose(1, 2)
    k = (key_value @ w_k.T + b_k).reshape(b, tk, heads, dh).transpose(1, 2)
    v = (key_value @ w_v.T + b_v).reshape(b, tk, heads, dh).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
    if padding is not None:
        scores = scores.masked_fill(padding[:, None, None, :], float("-inf"))
    out = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(b, tq, d)
    return linear(out, mha.out_proj)


def han_layer_equations(x: Tensor, other: Tensor, layer: HANLayer) -> Tensor:
    # x = LN1(x + CrossAttn(x, other, other) + SelfAttn(x, x, x)); x = LN2(x + W2 ReLU(W1 x))  (eval: no dropout)
    x = layer_norm(x + attention(x, other, layer.cm_attn) + attention(x, x, layer.self_attn), layer.norm1)
    return layer_norm(x + linear(torch.relu(linear(x, layer.linear1)), layer.linear2), layer.norm2)


def han_equations(model: HAN, audio: Tensor, frames: Tensor, visual3d: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """METHOD.md's HAN (linear projections); `frames` (B, T, 8, Dv) go through fc_v one by one, then are
    averaged (reference order). Parallel: both updates read the layer's inputs; sequential: the visual
    update reads the updated audio."""
    a = linear(audio, model.fc_a)
    v2d = linear(frames, model.fc_v).mean(dim=2)
    v = linear(torch.cat([v2d, linear(visual3d, model.fc_st)], -1), model.fc_fusion)
    for layer in model.han_layers:
        a_next = han_layer_equations(a, v, layer)
        v = han_layer_equations(v, a_next if model.config["update"] == "sequential" else a, layer)
        a = a_next
    x = torch.stack([a, v], dim=2)
    p = torch.sigmoid(linear(x, model.fc_prob))
    w_time = torch.softmax(linear(x, model.fc_frame_att), dim=1)
    w_mod = torch.softmax(linear(x, model.fc_av_att), dim=2)
    video = (w_time * w_mod * p).sum(dim=(1, 2))
    modality = (w_time * p).sum(dim=1)  # the reference's a_prob, v_prob
    return video, p, x, modality


def plg_equations(x: Tensor, text: Tensor, plg: TemporalPseudoLabelGenerator, padding: Tensor | None) -> Tensor:
    g = x
    for block in plg.encoder.layers:
        g = layer_norm(g + attention(g, g, block.self_attn, padding), block.norm1)
        g = layer_norm(g + linear(torch.relu(linear(g, block.linear1)), block.linear2), block.norm2)
    return g @ text.T


# ---------------------------------------------------------------- HAN


def small_han(layers: int = 1, update: str = "parallel") -> HAN:
    dims = {"n_classes": 7, "audio_dim": 12, "visual2d_dim": 20, "visual3d_dim": 9}
    return HAN(**dims, d_model=32, ffn=48, heads=8, layers=layers, update=update).eval()


def han_inputs(batch: int = 3, segments: int = 10) -> tuple[Tensor, Tensor, Tensor]:
    return torch.randn(batch, segments, 12), torch.randn(batch, segments, 8, 20), torch.randn(batch, segments, 9)


@pytest.mark.parametrize("update", ["parallel", "sequential"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("grad_enabled", [True, False])  # no_grad takes MultiheadAttention's fast path
def test_han_forward_matches_method_equations(layers: int, grad_enabled: bool, update: str) -> None:
    model = small_han(layers, update)
    audio, frames, visual3d = han_inputs()
    with torch.set_grad_enabled(grad_enabled):
        out = model(audio, frames, visual3d)
        video, prob, features, modality = han_equations(model, audio, frames, visual3d)
    torch.testing.assert_close(out.video_prob, video, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.modality_prob, modality, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.segment_prob, prob, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.features, features, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.segment_logits, model.classify(out.features))
    assert out.video_prob.shape == (3, 7) and out.segment_prob.shape == (3, 10, 2, 7)


def test_sequential_visual_update_attends_to_updated_audio() -> None:
    # Attending to the pre-update audio (parallel, the ECCV20 code) gives a different function.
    model = small_han(update="sequential")
    audio, frames, visual3d = han_inputs()
    with torch.no_grad():
        a = model.fc_a(audio)
        v = model.fc_fusion(torch.cat([model.fc_v(frames.mean(2)), model.fc_st(visual3d)], -1))
        stale_visual = model.han_layers[0](v, a)
        features = model(audio, frames, visual3d).features
    assert not torch.allclose(features[:, :, 1], stale_visual, atol=1e-3)


def test_frame_average_before_fc_v_equals_reference_pooling_after() -> None:
    # The reference applies fc_v to the (B, 8T, Dv) frame sequence and avg-pools 8 consecutive frames.
    model = small_han(update="sequential")
    audio, _, visual3d = han_inputs()
    flat_frames = torch.randn(3, 80, 20)
    with torch.no_grad():
        ours = model.encode(audio, flat_frames.reshape(3, 10, 8, 20), visual3d)
        pooled = nn.functional.avg_pool2d(model.fc_v(flat_frames).permute(0, 2, 1).unsqueeze(-1), (8, 1))
        v2d = pooled.squeeze(-1).permute(0, 2, 1)
        a = model.fc_a(audio)
        v = model.fc_fusion(torch.cat([v2d, model.fc_st(visual3d)], -1))
        a = model.han_layers[0](a, v)
        v = model.han_layers[0](v, a)
        # One vector per segment (the CLIP input format) given the frame mean is the same function.
        per_segment = model.encode(audio, flat_frames.reshape(3, 10, 8, 20).mean(2), visual3d)
    torch.testing.assert_close(ours, torch.stack([a, v], 2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours, per_segment, atol=1e-5, rtol=1e-5)


def test_han_accepts_float16_features() -> None:
    model = small_han()
    inputs = han_inputs()
    with torch.no_grad():
        half = model(*(x.half() for x in inputs))
        full = model(*(x.half().float() for x in inputs))
    torch.testing.assert_close(half.video_prob, full.video_prob)


def test_han_padding_mask_keeps_real_segments_unchanged() -> None:
    model = small_han()
    audio, frames, visual3d = han_inputs(batch=2, segments=6)
    garbage = 1e3
    padded = [torch.cat([x, garbage * torch.randn_like(x[:, :4])], 1) for x in (audio, frames, visual3d)]
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[:, 6:] = True
    with torch.no_grad():
        short = model(audio, frames, visual3d)
        long = model(*padded, padding_mask=mask)
    torch.testing.assert_close(long.video_prob, short.video_prob, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(long.segment_prob[:, :6], short.segment_prob, atol=1e-5, rtol=1e-5)


def test_han_rejects_mismatched_inputs() -> None:
    model = small_han()
    audio, frames, visual3d = han_inputs()
    with pytest.raises(ValueError, match="disagree"):
        model(audio[:, :9], frames, visual3d)


def maps_han(input_norm: str = "none") -> HAN:
    dims = {"n_classes": 7, "audio_dim": 12, "visual2d_dim": 20, "visual3d_dim": 9}
    return HAN(**dims, d_model=32, ffn=48, heads=8, update="sequential", audio_input="htsat_maps", input_norm=input_norm).eval()


def test_htsat_maps_of_padded_videos_are_resampled_to_their_own_segments() -> None:
    """A video of 6 real segments in a batch padded to 10 gets what it gets alone as a 6-segment
    video: its map spread over its 6 segments, not over the batch's 10."""
    model = maps_han()
    maps = torch.randn(2, 64, 12)
    _, frames, visual3d = han_inputs(batch=2, segments=6)
    padded = [torch.cat([x, 1e3 * torch.randn_like(x[:, :4])], 1) for x in (frames, visual3d)]
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[:, 6:] = True
    with torch.no_grad():
        short = model(maps, frames, visual3d)
        long = model(maps, *padded, padding_mask=mask)
        unmasked = model(maps, *(x[:, :10] for x in padded))
    torch.testing.assert_close(long.video_prob, short.video_prob, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(long.segment_prob[:, :6], short.segment_prob, atol=1e-5, rtol=1e-5)
    # Without the mask the map is spread over 10 segments: the real segments' audio changes.
    assert not torch.allclose(unmasked.segment_prob[:, :6, 0], short.segment_prob[:, :, 0], atol=1e-3)


def test_htsat_maps_of_mixed_lengths_resample_without_reading_lengths_on_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each video's resampling is picked by its length on the maps' device: reading the lengths
    back (`tolist`, `item`: a host sync per training step on a GPU) is what the HAN once did."""
    model = maps_han()
    maps = torch.randn(3, 64, 12)
    _, frames, visual3d = han_inputs(batch=3, segments=10)
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[1, 7:], mask[2, 4:] = True, True
    with torch.no_grad():
        alone = [model(maps[i : i + 1], frames[i : i + 1, :n], visual3d[i : i + 1, :n]) for i, n in enumerate((10, 7, 4))]

        def no_host_read(*args: object, **kwargs: object) -> None:
            raise AssertionError("a tensor was read back to the host")

        monkeypatch.setattr(torch.Tensor, "tolist", no_host_read)
        monkeypatch.setattr(torch.Tensor, "item", no_host_read)
        batched = model(maps, frames, visual3d, padding_mask=mask)
    for i, n in enumerate((10, 7, 4)):
        torch.testing.assert_close(batched.segment_prob[i : i + 1, :n], alone[i].segment_prob, atol=1e-5, rtol=1e-5)


def test_htsat_map_statistics_count_every_token() -> None:
    """`standardize` on maps: the audio statistics are over every token of every map (a map has no
    padding), the visual ones over the real segments."""
    model = maps_han("standardize")
    maps = 5 + 2 * torch.randn(4, 64, 12)
    _, frames, visual3d = han_inputs(batch=4)
    mask = torch.zeros(4, 10, dtype=torch.bool)
    mask[0, 3:] = True
    model.set_input_statistics(maps, frames, visual3d, mask)
    tokens = maps.reshape(-1, 12)
    torch.testing.assert_close(model.audio_mean, tokens.mean(0))
    torch.testing.assert_close(model.audio_std, tokens.std(0))
    torch.testing.assert_close(model.visual3d_mean, visual3d[~mask].mean(0))


def test_han_from_settings_uses_the_paper_defaults() -> None:
    model = HAN.from_settings(HanSettings(), n_classes=25, audio_dim=128, visual2d_dim=2048, visual3d_dim=512)
    layer = model.han_layers[0]
    assert (layer.linear1.out_features, layer.self_attn.num_heads, layer.dropout.p) == (1024, 8, 0.1)
    assert len(model.han_layers) == 1
    assert model.fc_prob.out_features == 25 and model.fc_a.in_features == 128 and model.fc_v.in_features == 2048
    assert model.config["audio_input"] == "segments"
    maps = HAN.from_settings(HanSettings(), n_classes=25, audio_dim=768, visual2d_dim=768, visual3d_dim=512, audio_input="htsat_maps")
    assert maps.config["audio_input"] == "htsat_maps" and maps.fc_a.in_features == 768


def test_uwav_loss_reaches_every_han_parameter() -> None:
    model = small_han().train()
    audio, frames, visual3d = han_inputs()
    out = model(audio, frames, visual3d)
    labels = (torch.rand(3, 7) > 0.5).float()
    soft = torch.rand(3, 10, 2, 7) * labels[:, None, None]
    loss = UWAVLoss(audio_weights=ClassBalanceWeights(0.4, 0.2), visual_weights=ClassBalanceWeights(0.45, 0.1))
    loss(out, labels, soft_labels=soft, classify=model.classify).total.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


# ---------------------------------------------------------------- PLG


@pytest.mark.parametrize("grad_enabled", [True, False])
def test_plg_matches_post_norm_equations(grad_enabled: bool) -> None:
    plg = TemporalPseudoLabelGenerator(dim=16, layers=2, heads=4).eval()
    x, text = torch.randn(2, 5, 16), torch.randn(6, 16)
    with torch.set_grad_enabled(grad_enabled):
        torch.testing.assert_close(plg(x, text), plg_equations(x, text, plg, None), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grad_enabled", [True, False])
def test_plg_padding_mask_keeps_real_segments_unchanged(grad_enabled: bool) -> None:
    plg = AudioVisualPLG(visual_dim=16, audio_dim=8, layers=5, heads=4).eval()
    visual, audio = torch.randn(2, 7, 16), torch.randn(2, 7, 8)
    visual_text, audio_text = torch.randn(5, 16), torch.randn(5, 8)
    lengths = [7, 4]
    mask = torch.arange(7)[None] >= torch.tensor(lengths)[:, None]
    visual_padded = torch.where(mask[..., None], 1e3 * torch.randn(2, 7, 16), visual)
    audio_padded = torch.where(mask[..., None], 1e3 * torch.randn(2, 7, 8), audio)
    extra = torch.full((2, 3), True)
    visual_longer = torch.cat([visual_padded, torch.randn(2, 3, 16)], 1)
    audio_longer = torch.cat([audio_padded, torch.randn(2, 3, 8)], 1)
    with torch.set_grad_enabled(grad_enabled):
        v_longer, a_longer = plg(visual_longer, audio_longer, visual_text, audio_text, torch.cat([mask, extra], 1))
        for i, n in enumerate(lengths):
            v_alone, a_alone = plg(visual[i : i + 1, :n], audio[i : i + 1, :n], visual_text, audio_text)
            torch.testing.assert_close(v_longer[i, :n], v_alone[0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(a_longer[i, :n], a_alone[0], atol=1e-4, rtol=1e-4)
    assert v_longer.shape == (2, 10, 5) and a_longer.shape == (2, 10, 5)


def test_plg_refuses_heads_that_do_not_divide_the_width() -> None:
    with pytest.raises(ValueError, match=r"do not divide the embedding width 30.*nearest: 6"):
        TemporalPseudoLabelGenerator(dim=30, heads=8)


def test_plg_from_settings() -> None:
    plg = AudioVisualPLG.from_settings(PretrainSettings(), visual_dim=64, audio_dim=32)
    block = plg.visual.encoder.layers[0]
    assert len(plg.visual.encoder.layers) == 5 and block.linear1.out_features == 256 and block.self_attn.num_heads == 8
    assert not block.norm_first and plg.audio.dim == 32


@pytest.mark.parametrize("projection", ["linear", "mlp"])
def test_input_standardisation_is_a_reparametrisation_of_the_first_layers(projection: str) -> None:
    """`input_norm: standardize` computes exactly what a plain HAN computes once its first linear
    layers absorb the affine map: W (x - m) / s + b = (W / s) x + (b - W m / s)."""
    dims = {"n_classes": 7, "audio_dim": 12, "visual2d_dim": 20, "visual3d_dim": 9, "projection": projection}
    torch.manual_seed(3)
    standardized = HAN(**dims, d_model=32, ffn=48, heads=8, input_norm="standardize").eval()
    audio, frames, visual3d = han_inputs(batch=5)
    offsets = [torch.randn(width) * 10 for width in (12, 20, 9)]
    audio, frames, visual3d = audio + offsets[0], frames + offsets[1], visual3d * 0.01 + offsets[2]
    mask = torch.zeros(5, 10, dtype=torch.bool)
    mask[0, 7:] = True
    standardized.set_input_statistics(audio, frames, visual3d, mask)
    real_audio = audio[~mask]
    assert torch.allclose(standardized.audio_mean, real_audio.mean(0)) and torch.allclose(standardized.audio_std, real_audio.std(0))
    assert torch.allclose(standardized.visual2d_mean, frames.mean(2)[~mask].mean(0))

    plain = HAN(**dims, d_model=32, ffn=48, heads=8).eval()
    plain.load_state_dict({k: v for k, v in standardized.state_dict().items() if not k.endswith(("_mean", "_std"))})
    # In float64: in float32 the absorbed form loses digits to cancellation (the poor conditioning
    # that standardising avoids).
    standardized, plain = standardized.double(), plain.double()
    stats = {s: (getattr(standardized, f"{s}_mean").double(), getattr(standardized, f"{s}_std").double()) for s in ("audio", "visual2d", "visual3d")}

    def absorb(layer: nn.Linear, columns: slice, stream: str) -> None:
        mean, std = stats[stream]
        weight = layer.weight.detach().double()
        scaled = weight[:, columns] / std
        bias = layer.bias.detach().double() - scaled @ mean
        with torch.no_grad():
            layer.weight[:, columns] = scaled
            layer.bias.copy_(bias)

    first_audio = plain.fc_a if projection == "linear" else plain.fc_a[0]
    absorb(first_audio, slice(None), "audio")
    if projection == "linear":
        absorb(plain.fc_v, slice(None), "visual2d")
        absorb(plain.fc_st, slice(None), "visual3d")
    else:  # one fc_fusion over concat(2-D mean, 3-D): two column blocks, one bias
        mean2, std2 = stats["visual2d"]
        mean3, std3 = stats["visual3d"]
        weight = plain.fc_fusion.weight.detach().double()
        scale = torch.cat([1 / std2, 1 / std3])
        with torch.no_grad():
            plain.fc_fusion.bias.copy_(plain.fc_fusion.bias - (weight * scale) @ torch.cat([mean2, mean3]))
            plain.fc_fusion.weight.copy_(weight * scale)
    inputs = (audio.double(), frames.double(), visual3d.double())
    ours, theirs = standardized(*inputs, mask), plain(*inputs, mask)
    assert torch.allclose(ours.segment_logits[~mask], theirs.segment_logits[~mask], atol=1e-5)
    assert torch.allclose(ours.video_prob, theirs.video_prob, atol=1e-6)


def test_input_statistics_need_standardisation_and_real_segments() -> None:
    with pytest.raises(ValueError, match="input_norm is 'none'"):
        small_han().set_input_statistics(*han_inputs())
    model = HAN(n_classes=7, audio_dim=12, visual2d_dim=20, visual3d_dim=9, d_model=32, ffn=48, heads=8, input_norm="standardize")
    with pytest.raises(ValueError, match="audio has 1 real segments"):
        model.set_input_statistics(*han_inputs(batch=1, segments=1))
    assert HanSettings().input_norm == "none"  # the paper's HAN by default
