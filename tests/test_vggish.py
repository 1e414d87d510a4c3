"""VGGish: the log-mel front end against an independent transcription of the AudioSet reference's
formulas, the post-processor on hand-made values, the network's layout and flattening order, and
loading torchvggish-layout weights files (with and without the PCA parameters)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from uwav.catalog import EncoderConfig
from uwav.features.encoder_base import EncoderError
from uwav.features.encoders import build_vggish_encoder
from uwav.features.frame_encoders import model_config
from uwav.features.vggish import EXAMPLE_SAMPLES, VggishNet, VggishPostprocessor, log_mel_examples

CPU = torch.device("cpu")
TINY = EncoderConfig(name="uwav-tiny-vggish", random_init=True)


def reference_log_mel(wave: np.ndarray) -> np.ndarray:
    """The reference's `waveform_to_examples` steps for 16-kHz mono input, written out in float64 with
    loops: 400-sample frames every 160, periodic Hann, |rfft| at 512 points, HTK-mel triangles over
    the bins (125-7500 Hz, 64 bands, mel-domain slopes, DC bin left at zero), log(x + 0.01), first
    96 frames."""
    wave = wave.astype(np.float64)
    n_frames = 1 + (wave.size - 400) // 160
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    frames = np.stack([wave[i * 160 : i * 160 + 400] * window for i in range(n_frames)])
    magnitude = np.abs(np.fft.rfft(frames, 512))

    def mel(hertz: float) -> float:
        return 1127.0 * np.log(1.0 + hertz / 700.0)

    bin_hertz = np.linspace(0.0, 8000.0, 257)
    edges = np.linspace(mel(125.0), mel(7500.0), 66)
    weights = np.zeros((257, 64))
    for band in range(64):
        lower, centre, upper = edges[band : band + 3]
        for k in range(1, 257):
            m = mel(bin_hertz[k])
            weights[k, band] = max(0.0, min((m - lower) / (centre - lower), (upper - m) / (upper - centre)))
    return np.log(magnitude @ weights + 0.01)[:96]


def test_front_end_matches_the_reference_formulas() -> None:
    t = np.arange(16000) / 16000
    noise = 0.05 * np.random.default_rng(0).standard_normal(16000)
    wave = (0.4 * np.sin(2 * np.pi * (300 * t + 1500 * t**2)) + noise).astype(np.float32)  # a chirp
    ours = log_mel_examples(torch.from_numpy(wave)[None])[0].numpy()
    assert ours.shape == (96, 64) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference_log_mel(wave), atol=5e-5, rtol=0)
    # One example reads the first 0.975 s (15600 samples) of its segment and nothing after.
    changed = wave.copy()
    changed[EXAMPLE_SAMPLES:] = 1.0
    np.testing.assert_array_equal(log_mel_examples(torch.from_numpy(changed)[None])[0].numpy(), ours)
    with pytest.raises(ValueError, match="expected float"):
        log_mel_examples(torch.zeros(1, EXAMPLE_SAMPLES - 1))


def test_a_1khz_tone_lands_in_the_band_centred_nearest_1khz() -> None:
    """HTK mel: 1 kHz is ~1000 mel; the band centres are 185.2 + 39.82 k mel, so band 19 (centre
    981.5 mel) holds it, its neighbour 20 (1021.3 mel) next, and bands further off almost nothing."""
    tone = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000).astype(np.float32)
    energy = np.exp(log_mel_examples(torch.from_numpy(tone)[None])[0].numpy()) - 0.01
    per_band = energy.mean(0)
    assert list(np.argsort(per_band)[::-1][:2]) == [19, 20]
    far = np.r_[0:17, 23:64]
    assert per_band[far].max() < 0.01 * per_band[19]


def test_postprocessor_pca_clip_and_8bit_quantisation_on_hand_made_values() -> None:
    post = VggishPostprocessor(4)
    means = torch.tensor([0.5, -1.0, 2.0, 0.0])
    matrix = torch.tensor([[0.0, 2.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, -1.0], [0, 0, 0.5, 0]])
    post.pca_means.copy_(means[:, None])
    post.pca_eigen_vectors.copy_(matrix)
    embeddings = torch.tensor([[1.5, -0.5, 2.0, 1.0], [0.5, -1.0, 2.0, 0.0], [-3.5, -2.5, 6.0, -1.99]])
    # PCA: matrix @ (e - means): rows give [2(e1+1), e0-0.5, -e3, 0.5(e2-2)]
    #   [1.0, 1.0, -1.0, 0.0], [0, 0, 0, 0], [-3.0, -4.0, 1.99, 2.0]
    # clip to [-2, 2], then floor((x + 2) * 255 / 4): 1 -> 191, -1 -> 63, 0 -> 127, -3 -> 0, 1.99 -> 254 (254.4), 2 -> 255
    expected = torch.tensor([[191.0, 191.0, 63.0, 127.0], [127.0, 127.0, 127.0, 127.0], [0.0, 0.0, 254.0, 255.0]])
    out = post(embeddings)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_network_layout_is_torchvggishs_and_flattens_height_width_channel() -> None:
    real = VggishNet(model_config("vggish", "vggish_cfg", "VGGish model"), postprocess=True)
    state = real.state_dict()
    assert [key for key in state if key.endswith("weight")] == [
        "features.0.weight", "features.3.weight", "features.6.weight", "features.8.weight", "features.11.weight",
        "features.13.weight", "embeddings.0.weight", "embeddings.2.weight", "embeddings.4.weight",
    ]
    assert state["embeddings.0.weight"].shape == (4096, 512 * 4 * 6) and state["embeddings.4.weight"].shape == (128, 4096)
    assert state["pproc.pca_eigen_vectors"].shape == (128, 128) and state["pproc.pca_means"].shape == (128, 1)
    assert sum(p.numel() for p in real.parameters()) == 72_141_184  # VGGish's parameter count

    tiny = build_vggish_encoder(TINY, CPU).model
    examples = torch.randn(2, 96, 64)
    with torch.no_grad():
        pooled = tiny.features(examples[:, None])  # (B, C, 6, 4)
        # torchvggish: transpose(1, 3) then transpose(1, 2) before flattening (the TF layout)
        flat = torch.transpose(torch.transpose(pooled, 1, 3), 1, 2).contiguous().view(2, -1)
        expected = tiny.embeddings(flat)
        torch.testing.assert_close(tiny(examples), expected)
        assert isinstance(tiny.embeddings[-1], torch.nn.ReLU)  # `embedding_relu`: the 2020 reference's final ReLU
        assert not torch.allclose(tiny.embeddings(pooled.flatten(1)), expected)  # channel-first order differs


def test_weights_with_pca_post_process_and_without_do_not(tmp_path: Path) -> None:
    network = build_vggish_encoder(TINY, CPU).model
    generator = torch.Generator().manual_seed(1)
    weights = {key: value + 0.05 * torch.randn(value.shape, generator=generator) for key, value in network.state_dict().items()}
    torch.save(weights, tmp_path / "raw.pth")
    # torchvggish's separate PCA file names: 'pca_eigen_vectors' and 'pca_means' as a vector
    pca = {"pca_eigen_vectors": torch.randn(16, 16, generator=generator), "pca_means": torch.randn(16, generator=generator)}
    torch.save({**weights, **pca}, tmp_path / "with_pca.pth")

    raw = build_vggish_encoder(EncoderConfig(name="uwav-tiny-vggish", checkpoint="raw.pth"), CPU, base_dir=tmp_path)
    post = build_vggish_encoder(EncoderConfig(name="uwav-tiny-vggish", checkpoint="with_pca.pth"), CPU, base_dir=tmp_path)
    assert not raw.postprocessed and post.postprocessed
    waves = (0.3 * np.random.default_rng(2).standard_normal((3, 16000))).astype(np.float32)
    raw_out, post_out = raw.encode_audio(waves), post.encode_audio(waves)
    assert raw_out.shape == post_out.shape == (3, 16) and not np.allclose(raw_out, post_out)
    assert np.array_equal(post_out, np.floor(post_out)) and post_out.min() >= 0 and post_out.max() <= 255
    # the post-processed values are exactly the reference post-processing of the raw embeddings
    projected = np.clip((raw_out - pca["pca_means"].numpy()) @ pca["pca_eigen_vectors"].numpy().T, -2, 2)
    np.testing.assert_allclose(post_out, np.floor((projected + 2) * 255 / 4), atol=1.0)
    assert np.mean(post_out == np.floor((projected + 2) * 255 / 4)) > 0.95  # float rounding at integer edges only
    random_out = build_vggish_encoder(TINY, CPU).encode_audio(waves)
    assert not np.allclose(raw_out, random_out), "the checkpoint had no effect"
    assert raw.identity.startswith("vggish/uwav-tiny-vggish/checkpoint=sha256:") and raw.identity != post.identity


def test_bad_vggish_weights_and_sources_are_named(tmp_path: Path) -> None:
    network = build_vggish_encoder(TINY, CPU).model
    state = dict(network.state_dict())
    del state["embeddings.4.bias"]
    state["pproc.pca_eigen_vectors"] = torch.zeros(16, 16)  # the matrix without the means
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(EncoderError) as raised:
        build_vggish_encoder(EncoderConfig(name="uwav-tiny-vggish", checkpoint=str(tmp_path / "bad.pth")), CPU)
    message = str(raised.value)
    assert str(tmp_path / "bad.pth") in message and "without the PCA post-processor" in message
    assert "missing keys: embeddings.4.bias" in message and "unexpected keys: pproc.pca_eigen_vectors" in message
    with pytest.raises(EncoderError, match="checkpoint file .*nowhere.pth does not exist"):
        build_vggish_encoder(EncoderConfig(name="vggish", checkpoint=str(tmp_path / "nowhere.pth")), CPU)
    with pytest.raises(EncoderError, match="pretrained tag 'audioset' is not supported"):
        build_vggish_encoder(EncoderConfig(name="vggish", pretrained="audioset"), CPU)
    with pytest.raises(EncoderError, match="VGGish model config 'vggish-xl' not found"):
        build_vggish_encoder(EncoderConfig(name="vggish-xl", random_init=True), CPU)
