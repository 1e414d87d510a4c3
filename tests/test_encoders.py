"""Encoders: tiny offline models through the libraries' factories, checkpoint loading, preprocessing."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from uwav.catalog import EncoderConfig, EncodersConfig
from uwav.features import configs as model_configs
from uwav.features.clap_encoder import build_clap_encoder
from uwav.features.encoder_base import EncoderError, load_checkpoint
from uwav.features.encoders import (
    Encoders,
    build_clip_encoder,
    build_encoders,
    create_clip_network,
)
from uwav.features.frame_encoders import (
    build_image_encoder,
    build_image_resnet,
    build_video_encoder,
    build_video_resnet,
    model_config,
)

CPU = torch.device("cpu")
TINY = EncodersConfig(
    clip=EncoderConfig(name="uwav-tiny-clip", random_init=True),
    clap=EncoderConfig(name="uwav-tiny-clap", random_init=True),
    r2plus1d=EncoderConfig(name="uwav-tiny-r2plus1d", random_init=True),
)


@pytest.fixture(scope="module")
def tiny() -> Encoders:
    return build_encoders(TINY, "cpu", features=["clip", "clap", "r2plus1d"])


@pytest.fixture(scope="module")
def inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "clip": rng.integers(0, 256, (3, 48, 64, 3), dtype=np.uint8),
        "clap": (0.3 * rng.standard_normal((3, 48000))).astype(np.float32),
        "r2plus1d": rng.integers(0, 256, (3, 8, 112, 112, 3), dtype=np.uint8),
    }


def _encode(encoders: Encoders, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {encoder.feature: encoder.encode_segments(inputs[encoder.feature]) for encoder in encoders.active()}


def _perturbed_state(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The model's weights moved away from the seed-0 initialisation, so loading them is observable."""
    generator = torch.Generator().manual_seed(seed)
    return {
        key: value + 0.05 * torch.randn(value.shape, generator=generator) if value.is_floating_point() else value.clone()
        for key, value in model.state_dict().items()
    }


def test_tiny_encoders_build_offline_with_the_feature_shapes(tiny: Encoders, inputs: dict[str, np.ndarray]) -> None:
    assert tiny.feature_shapes() == {"clip": (64,), "clap": (64,), "r2plus1d": (512,)}
    outputs = _encode(tiny, inputs)
    for name, value in outputs.items():
        assert value.shape == (3, *tiny.feature_shapes()[name]) and value.dtype == np.float32
        assert np.isfinite(value).all()
        assert not np.allclose(value[0], value[1]), f"{name}: different inputs must give different embeddings"
    assert tiny.clip.encode_text(["A photo of Dog", "A photo of Cat"]).shape == (2, 64)
    assert tiny.clap.encode_text(["This is the sound of Dog"]).shape == (1, 64)
    for encoder in tiny.active():
        name = f"{encoder.feature}/uwav-tiny-{encoder.feature}"
        assert re.fullmatch(rf"{name}/random_init=seed0/config=[0-9a-f]{{12}}", encoder.identity), encoder.identity


def test_an_edited_model_config_is_another_encoder_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Random-init weights under the same config name but another architecture are another
    encoder: a store must not serve the old network's features for it (found when a tiny config
    was edited and the features stage kept every stored video as complete)."""
    configs = tmp_path / "model_configs"
    shutil.copytree(model_configs.MODEL_CONFIG_DIR, configs)
    monkeypatch.setattr(model_configs, "MODEL_CONFIG_DIR", configs)
    config = EncoderConfig(name="uwav-tiny-r2plus1d", random_init=True)
    before = build_video_encoder(config, CPU).identity
    assert build_video_encoder(config, CPU).identity == before  # stable for the same content
    path = configs / "uwav-tiny-r2plus1d.json"
    edited = json.loads(path.read_text())
    edited["video_cfg"]["layers"] = [1, 1, 2, 1]
    path.write_text(json.dumps(edited))
    after = build_video_encoder(config, CPU).identity
    assert after != before and after.startswith("r2plus1d/uwav-tiny-r2plus1d/random_init=seed0/config=")


def test_bf16_precision_autocasts_the_encoders(tiny: Encoders, inputs: dict[str, np.ndarray], native_bf16: None) -> None:
    """`precision: bf16` changes the numerics (autocast is on, on CPU too) but not the embedding."""
    bf16 = EncodersConfig(**{name: getattr(TINY, name).model_copy(update={"precision": "bf16"}) for name in ("clip", "clap", "r2plus1d")})
    reduced_encoders = build_encoders(bf16, "cpu", features=["clip"])
    # A store refuses features of another encoder identity: bf16 ones never mix with float32 ones.
    assert reduced_encoders.clip.identity == tiny.clip.identity + "/bf16"
    reduced = _encode(reduced_encoders, inputs)["clip"]
    full = _encode(tiny, inputs)["clip"]
    assert reduced.dtype == np.float32 and not np.array_equal(reduced, full)
    cosine = (reduced * full).sum(-1) / (np.linalg.norm(reduced, axis=-1) * np.linalg.norm(full, axis=-1))
    assert cosine.min() > 0.99


def test_random_init_is_deterministic_and_batch_independent(tiny: Encoders, inputs: dict[str, np.ndarray]) -> None:
    again = build_encoders(TINY, "cpu", features=["clip", "r2plus1d"])
    first, second = _encode(tiny, inputs), _encode(again, inputs)
    for name in ("clip", "r2plus1d"):
        np.testing.assert_array_equal(first[name], second[name])
    single = tiny.r2plus1d.encode_clips(inputs["r2plus1d"][1:2])
    np.testing.assert_allclose(single[0], first["r2plus1d"][1], rtol=1e-4, atol=1e-5)


def test_clip_preprocessing_matches_open_clips_own_transform(tiny: Encoders) -> None:
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from PIL import Image

    frame = np.random.default_rng(1).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    frame = np.ascontiguousarray(np.repeat(np.repeat(frame[::6, ::6], 6, 0), 6, 1))  # smooth-ish blocks
    transform = image_transform_v2(PreprocessCfg(**open_clip.get_model_preprocess_cfg(tiny.clip.model)), is_train=False)
    reference = transform(Image.fromarray(frame))
    ours = tiny.clip.preprocess(frame[None])[0]
    assert ours.shape == reference.shape == (3, 32, 32)
    # torch's antialiased bicubic and PIL's differ slightly; a wrong crop, scale or norm is far off
    assert (ours - reference).abs().mean() < 0.05


def test_clap_preprocessing_quantises_and_repeat_pads_like_laion_clap(tiny: Encoders) -> None:
    wave = np.linspace(-1.5, 1.5, 20000, dtype=np.float32)
    out = tiny.clap.preprocess(wave[None])[0].numpy()
    quantised = (np.clip(wave, -1, 1) * 32767.0).astype(np.int16) / 32767.0  # laion_clap's round trip
    expected = np.concatenate([quantised, quantised, np.zeros(48000 - 40000)])
    np.testing.assert_allclose(out, expected, atol=1e-7)


def test_checkpoint_round_trip_through_the_real_loading_path(
    tiny: Encoders, inputs: dict[str, np.ndarray], tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    clip_state = _perturbed_state(tiny.clip.model, 1)
    save_file(clip_state, str(tmp_path / "clip.safetensors"))
    # laion_clap's release format: {'state_dict': {'module.<key>': ...}} plus a key newer transformers dropped
    clap_state = _perturbed_state(tiny.clap.model, 2)
    wrapped = {f"module.{key}": value for key, value in clap_state.items()}
    wrapped["module.text_branch.embeddings.position_ids"] = torch.arange(4)
    torch.save({"epoch": 3, "state_dict": wrapped}, tmp_path / "clap.pt")
    video_state = _perturbed_state(build_video_resnet(model_config("uwav-tiny-r2plus1d", "video_cfg", "video model")), 3)
    torch.save(video_state, tmp_path / "video.pt")

    loaded = Encoders(
        clip=build_clip_encoder(EncoderConfig(name="uwav-tiny-clip", checkpoint=str(tmp_path / "clip.safetensors")), CPU),
        clap=build_clap_encoder(EncoderConfig(name="uwav-tiny-clap", checkpoint="clap.pt"), CPU, base_dir=tmp_path),
        r2plus1d=build_video_encoder(EncoderConfig(name="uwav-tiny-r2plus1d", checkpoint=str(tmp_path / "video.pt")), CPU),
    )
    for encoder, state in ((loaded.clip, clip_state), (loaded.clap, clap_state)):
        loaded_state = encoder.model.state_dict()
        assert loaded_state.keys() == state.keys()
        for key, value in state.items():
            torch.testing.assert_close(loaded_state[key], value, msg=f"{encoder.feature}: {key}")
    random_outputs, loaded_outputs = _encode(tiny, inputs), _encode(loaded, inputs)
    for name in ("clip", "clap", "r2plus1d"):
        assert not np.allclose(loaded_outputs[name], random_outputs[name]), f"{name}: checkpoint had no effect"
    # the encoder computes the pooled feature of exactly the saved network
    direct = build_video_resnet(model_config("uwav-tiny-r2plus1d", "video_cfg", "video model"))
    direct.load_state_dict(video_state)
    direct.fc = torch.nn.Identity()
    with torch.inference_mode():
        expected = direct.eval()(loaded.r2plus1d.preprocess(inputs["r2plus1d"])).numpy()
    np.testing.assert_allclose(loaded_outputs["r2plus1d"], expected, rtol=1e-5, atol=1e-5)
    assert loaded.clip.identity.startswith("clip/uwav-tiny-clip/checkpoint=sha256:")
    assert loaded.clap.identity != tiny.clap.identity


def test_missing_checkpoint_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "clip.safetensors"
    with pytest.raises(EncoderError, match=f"checkpoint file {missing} does not exist"):
        build_clip_encoder(EncoderConfig(name="uwav-tiny-clip", checkpoint=str(missing)), CPU)


def test_mismatched_checkpoint_names_the_file_and_the_keys(tiny: Encoders, tmp_path: Path) -> None:
    state = dict(tiny.clip.model.state_dict())
    del state["ln_final.weight"]
    state["visual.extra_head.weight"] = torch.zeros(2)
    state["text_projection"] = torch.zeros(3, 3)
    path = tmp_path / "bad.pt"
    torch.save({"model": state}, path)
    with pytest.raises(EncoderError) as raised:
        load_checkpoint(build_clip_encoder(TINY.clip, CPU).model, path, what="CLIP model 'uwav-tiny-clip'")
    message = str(raised.value)
    assert str(path) in message and "CLIP model 'uwav-tiny-clip'" in message
    assert "missing keys: ln_final.weight" in message
    assert "unexpected keys: visual.extra_head.weight" in message
    assert "mis-shaped keys: text_projection (file (3, 3), model (64, 64))" in message


def test_unreadable_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(EncoderError, match=f"checkpoint file {path} cannot be read"):
        build_video_encoder(EncoderConfig(name="uwav-tiny-r2plus1d", checkpoint=str(path)), CPU)


def test_unknown_model_configs_are_named() -> None:
    with pytest.raises(EncoderError, match="CLIP model config 'ViT-Nope' not found"):
        build_clip_encoder(EncoderConfig(name="ViT-Nope", random_init=True), CPU)
    with pytest.raises(EncoderError, match="CLAP model config 'HTSAT-nope' not found"):
        build_clap_encoder(EncoderConfig(name="HTSAT-nope", random_init=True), CPU)
    with pytest.raises(EncoderError, match="video model config 'r3d_99' not found"):
        build_video_encoder(EncoderConfig(name="r3d_99", random_init=True), CPU)


def test_torchvision_pretrained_tag_is_read_from_the_torch_hub_cache_without_network(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("UWAV_OFFLINE", "1")
    config = EncoderConfig(name="r2plus1d_18", pretrained="KINETICS400_V1")
    expected = tmp_path / "hub" / "checkpoints" / "r2plus1d_18-91a641e6.pth"
    with pytest.raises(EncoderError, match=f"r2plus1d_18-91a641e6.pth is not in the cache {expected.parent} and UWAV_OFFLINE=1"):
        build_video_encoder(config, CPU)
    with pytest.raises(EncoderError, match="unknown pretrained tag 'KINETICS999'"):
        build_video_encoder(EncoderConfig(name="r2plus1d_18", pretrained="KINETICS999"), CPU)

    model = build_video_resnet(model_config("r2plus1d_18", "video_cfg", "video model"))
    state = _perturbed_state(model, 4)
    expected.parent.mkdir(parents=True)
    torch.save(state, expected)
    encoder = build_video_encoder(config, CPU)
    # the identity names the file, whose name carries its content hash
    assert encoder.dim == 512 and encoder.identity == "r2plus1d/r2plus1d_18/pretrained=KINETICS400_V1@r2plus1d_18-91a641e6.pth"
    torch.testing.assert_close(encoder.model.state_dict()["layer4.1.conv2.0.1.weight"], state["layer4.1.conv2.0.1.weight"])


def test_clap_offline_without_roberta_in_the_cache_names_the_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checkpoint = tmp_path / "630k-audioset-best.pt"
    checkpoint.write_bytes(b"")
    cache = tmp_path / "hf" / "hub" / "models--FacebookAI--roberta-base"
    with pytest.raises(EncoderError, match=f"hf://FacebookAI/roberta-base/config.json is not in the cache {cache} and HF_HUB_OFFLINE=1.*uwav weights fetch"):
        build_clap_encoder(EncoderConfig(name="HTSAT-tiny", checkpoint=str(checkpoint)), CPU)
    with pytest.raises(EncoderError, match="unknown pretrained checkpoint 'laion'.*630k-fusion-best.pt"):
        build_clap_encoder(EncoderConfig(name="HTSAT-tiny", pretrained="laion"), CPU)
    with pytest.raises(EncoderError, match="630k-fusion-best.pt is a feature-fusion checkpoint; set `fusion: true`"):
        build_clap_encoder(EncoderConfig(name="HTSAT-tiny", pretrained="630k-fusion-best.pt"), CPU)
    with pytest.raises(EncoderError, match="630k-best.pt is not a feature-fusion checkpoint; set `fusion: false`"):
        build_clap_encoder(EncoderConfig(name="HTSAT-tiny", pretrained="630k-best.pt", fusion=True), CPU)


def test_cuda_is_refused_without_a_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        build_encoders(TINY, "cuda", features=["clip"])


def test_open_clip_pretrained_tags_offline_name_the_hub_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = "hf://timm/vit_base_patch32_clip_224.openai/{open_clip_model.safetensors,open_clip_pytorch_model.bin}"
    with pytest.raises(EncoderError, match=re.escape(f"CLIP 'ViT-B-32': weights file {source} is not in the cache")):
        build_clip_encoder(EncoderConfig(name="ViT-B-32", pretrained="openai"), CPU)
    with pytest.raises(EncoderError, match="unknown pretrained tag 'nonesuch'.*openai"):
        build_clip_encoder(EncoderConfig(name="ViT-B-32", pretrained="nonesuch"), CPU)
    with pytest.raises(EncoderError, match="'ViT-B-16-SigLIP'.*Hugging Face model .*which uwav does not fetch"):
        build_clip_encoder(EncoderConfig(name="ViT-B-16-SigLIP", random_init=True), CPU)


def test_a_clip_built_for_a_pretrained_tag_has_the_tags_activation_and_preprocessing() -> None:
    """OpenAI trained with QuickGELU: open_clip's `create_model("RN50", pretrained="openai")` builds
    the config's GELU and only warns; uwav's network for the tag uses QuickGELU by construction.
    RN50 is the smallest open_clip model with an `openai` tag (102 M parameters), built random here."""
    import open_clip
    from open_clip.transformer import QuickGELU

    assert open_clip.get_pretrained_cfg("RN50", "openai")["quick_gelu"] is True
    assert "quick_gelu" not in open_clip.get_model_config("RN50")  # the config alone says GELU
    openai = create_clip_network("RN50", "openai")
    assert isinstance(openai.transformer.resblocks[0].mlp.gelu, QuickGELU)
    preprocess = openai.visual.preprocess_cfg
    tag = open_clip.get_pretrained_cfg("RN50", "openai")
    assert (tuple(preprocess["mean"]), tuple(preprocess["std"])) == (tag["mean"], tag["std"])
    assert (preprocess["interpolation"], preprocess["resize_mode"]) == ("bicubic", "shortest")
    # a tag trained with GELU gets GELU, and the registry config alone keeps its own
    laion = create_clip_network("ViT-B-32", "laion2b_s34b_b79k")
    assert type(laion.transformer.resblocks[0].mlp.gelu) is torch.nn.GELU
    assert type(create_clip_network("RN50").transformer.resblocks[0].mlp.gelu) is torch.nn.GELU


# ---------------------------------------------------------------- ResNet-152 (the AVVP release's 2-D features)


def test_resnet_encoder_is_the_frame_mean_of_torchvisions_pooled_features(tmp_path: Path) -> None:
    from torchvision.models.resnet import Bottleneck

    network = build_image_resnet(model_config("uwav-tiny-resnet152", "image_cfg", "image model"))
    assert isinstance(network.layer1[0], Bottleneck) and network.fc.in_features == 2048
    state = _perturbed_state(network, 5)
    torch.save(state, tmp_path / "resnet.pth")
    encoder = build_image_encoder(EncoderConfig(name="uwav-tiny-resnet152", checkpoint=str(tmp_path / "resnet.pth")), CPU)
    assert encoder.feature == "resnet152_mean" and encoder.segment_input == "image_frames" and encoder.dim == 2048
    frames = np.random.default_rng(3).integers(0, 256, (2, 8, 224, 224, 3), dtype=np.uint8)
    out = encoder.encode_frames(frames)
    assert out.shape == (2, 2048) and out.dtype == np.float32

    direct = build_image_resnet(model_config("uwav-tiny-resnet152", "image_cfg", "image model"))
    direct.load_state_dict(state)
    direct.fc = torch.nn.Identity()
    with torch.inference_mode():
        per_frame = direct.eval()(encoder.preprocess(frames)).reshape(2, 8, 2048)  # (B * 8) frames, in order
    np.testing.assert_allclose(out, per_frame.mean(1).numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(out[0], per_frame[0, 0].numpy(), atol=1e-3)  # the mean, not one frame
    random_init = build_image_encoder(EncoderConfig(name="uwav-tiny-resnet152", random_init=True), CPU)
    assert not np.allclose(random_init.encode_frames(frames), out), "the checkpoint had no effect"


def test_resnet_preprocessing_is_the_imagenet_normalisation() -> None:
    encoder = build_image_encoder(EncoderConfig(name="uwav-tiny-resnet152", random_init=True), CPU)
    colour = np.array([200, 100, 30], dtype=np.uint8)
    frames = np.broadcast_to(colour, (1, 8, 224, 224, 3)).copy()
    x = encoder.preprocess(frames)
    assert x.shape == (8, 3, 32, 32)  # the tiny config's input size; the real one takes the 224 crop as is
    expected = (colour / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(x[:, :, 5, 7].numpy(), np.broadcast_to(expected, (8, 3)), atol=1e-5)
    assert model_config("resnet152", "image_cfg", "image model")["input_size"] == 224
    with pytest.raises(ValueError, match="8 frames per segment, got 4"):
        encoder.preprocess(frames[:, :4])


def test_resnet152_pretrained_tag_offline_names_the_torch_hub_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("UWAV_OFFLINE", "1")
    cache = tmp_path / "hub" / "checkpoints"  # torchvision's IMAGENET1K_V1 is resnet152-394f9c45.pth there
    message = f"image model 'resnet152': weights file https://download.pytorch.org/models/resnet152-394f9c45.pth is not in the cache {cache}"
    with pytest.raises(EncoderError, match=re.escape(message)):
        build_image_encoder(EncoderConfig(name="resnet152", pretrained="IMAGENET1K_V1"), CPU)
    with pytest.raises(EncoderError, match="unknown pretrained tag 'IMAGENET9K'.*IMAGENET1K_V2"):
        build_image_encoder(EncoderConfig(name="resnet152", pretrained="IMAGENET9K"), CPU)
    with pytest.raises(EncoderError, match="'uwav-tiny-resnet152' has no torchvision pretrained weights"):
        build_image_encoder(EncoderConfig(name="uwav-tiny-resnet152", pretrained="IMAGENET1K_V1"), CPU)


def test_only_the_requested_encoders_are_built(tmp_path: Path) -> None:
    """The AVVP-feature encoders' weights are needed only where their features are computed."""
    config = TINY.model_copy(
        update={
            "vggish": EncoderConfig(name="vggish", checkpoint=str(tmp_path / "vggish.pth")),
            "resnet152": EncoderConfig(name="uwav-tiny-resnet152", random_init=True),
        }
    )
    encoders = build_encoders(config, "cpu", features=["r2plus1d", "resnet152_mean"])
    assert [encoder.feature for encoder in encoders.active()] == ["r2plus1d", "resnet152_mean"]
    assert encoders.feature_shapes() == {"r2plus1d": (512,), "resnet152_mean": (2048,)}
    assert encoders.resnet152 is not None and encoders.clip is None and encoders.vggish is None
    with pytest.raises(EncoderError, match=f"checkpoint file {tmp_path / 'vggish.pth'} does not exist"):
        build_encoders(config, "cpu", features=["vggish"])
    with pytest.raises(EncoderError, match=r"unknown features \['resnet152'\]"):
        build_encoders(config, "cpu", features=["resnet152"])


# ---------------------------------------------------------------- CLAP with feature fusion


def test_clap_fusion_model_reads_laion_clap_mel_fusion_input() -> None:
    """`fusion: true` builds laion_clap's fusion model (enable_fusion, aff_2d) and feeds it what
    `get_audio_features` gives 1-s audio: `mel_fusion` = `get_mel` of the repeat-padded window x 4."""
    import librosa

    from uwav.catalog import EncodersConfig

    config = EncoderConfig(name="uwav-tiny-clap-fusion", random_init=True, fusion=True)
    encoder = build_clap_encoder(config, CPU)
    assert encoder.fusion and re.fullmatch(r"clap/uwav-tiny-clap-fusion/random_init=seed0/config=[0-9a-f]{12}/fusion", encoder.identity)
    assert "audio_branch.patch_embed.mel_conv2d.weight" in encoder.model.state_dict()  # the fusion layers exist
    waves = (0.3 * np.random.default_rng(4).standard_normal((2, 48000))).astype(np.float32)  # 1-s segments
    padded = encoder.preprocess(waves)
    mel_fusion = encoder.fusion_inputs(padded)
    cfg = encoder.model.audio_cfg
    assert padded.shape == (2, 480000) and mel_fusion.shape == (2, 4, 480000 // cfg.hop_size + 1, 64)
    # get_mel: torchaudio MelSpectrogram (HTK, no norm, centred, reflect, power 2) then AmplitudeToDB,
    # which librosa reproduces with these arguments (laion_clap's own comment says so)
    reference = librosa.feature.melspectrogram(
        y=padded[0].numpy(), sr=cfg.sample_rate, n_fft=cfg.window_size, hop_length=cfg.hop_size,
        win_length=cfg.window_size, center=True, pad_mode="reflect", power=2.0, n_mels=64, norm=None, htk=True,
        fmin=cfg.fmin, fmax=cfg.fmax,
    )
    reference_db = 10 * np.log10(np.maximum(reference, 1e-10)).T
    for channel in range(4):
        np.testing.assert_allclose(mel_fusion[0, channel].numpy(), reference_db, atol=2e-3)
    # HTSAT's fusion branch in evaluation reads `mel_fusion` (a KeyError without it); one segment
    # keeps this test fast (HTSAT-tiny is the smallest HTSAT laion_clap builds)
    out = encoder.encode_audio(waves[:1])
    assert out.shape == (1, 64) and np.isfinite(out).all()

    with pytest.raises(EncoderError, match="`fusion` needs an HTSAT audio branch"):
        build_clap_encoder(EncoderConfig(name="uwav-tiny-clap", random_init=True, fusion=True), CPU)
    with pytest.raises(ValueError, match=r"`fusion` is a CLAP option; remove it from encoders.clip"):
        EncodersConfig(clip=EncoderConfig(name="uwav-tiny-clip", random_init=True, fusion=True))


def test_clap_segment_embeddings_equal_laion_clap_get_audio_embedding_from_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """1-s segments at 48 kHz through uwav's CLAP path (int16 round trip, repeat-padding to the
    window, the fusion mel) give what laion_clap's own `CLAP_Module.get_audio_embedding_from_data`
    gives (up to its L2 normalisation), on the tiny fusion model, whose window is the 480,000
    samples that function pads to; a whole segment, a clipping one and a last partial one.

    torchaudio, whose mel transforms laion_clap's `get_mel` calls, has no build for this torch:
    librosa computes them instead, with the arguments that reproduce them (laion_clap's own
    comment; `test_clap_fusion_model_reads_laion_clap_mel_fusion_input` checks uwav's mel against it)."""
    import sys
    from types import SimpleNamespace

    import librosa

    from uwav.features.clap_encoder import _clap_module, clap_model_config

    def mel_spectrogram(*, sample_rate, n_fft, win_length, hop_length, center, pad_mode, power, norm, onesided, n_mels, f_min, f_max):
        assert norm is None and onesided
        return lambda audio: torch.from_numpy(librosa.feature.melspectrogram(
            y=audio.numpy(), sr=sample_rate, n_fft=n_fft, hop_length=hop_length, win_length=win_length, center=center,
            pad_mode=pad_mode, power=power, n_mels=n_mels, norm=None, htk=True, fmin=f_min, fmax=f_max,
        ))

    def amplitude_to_db(*, top_db):  # power to dB, amin 1e-10, reference 1
        assert top_db is None
        return lambda power: 10.0 * torch.log10(power.clamp(min=1e-10))

    encoder = build_clap_encoder(EncoderConfig(name="uwav-tiny-clap-fusion", random_init=True, fusion=True), CPU)
    _clap_module()  # laion_clap's hook imports this same `clap_module`
    monkeypatch.setattr(sys, "argv", ["laion_clap"])  # its training code parses sys.argv on import
    monkeypatch.setattr(sys, "path", list(sys.path))  # its package init appends its folder
    import laion_clap

    transforms = SimpleNamespace(MelSpectrogram=mel_spectrogram, AmplitudeToDB=amplitude_to_db)
    monkeypatch.setattr(sys.modules["training.data"], "torchaudio", SimpleNamespace(transforms=transforms))
    module = laion_clap.CLAP_Module.__new__(laion_clap.CLAP_Module)  # its __init__ would download RoBERTa
    torch.nn.Module.__init__(module)
    module.model, module.model_cfg = encoder.model, clap_model_config("uwav-tiny-clap-fusion")
    rng = np.random.default_rng(5)
    whole = [(0.3 * rng.standard_normal(48000)).astype(np.float32), (1.5 * rng.standard_normal(48000)).astype(np.float32)]
    partial = (0.3 * rng.standard_normal(47000)).astype(np.float32)  # not a divisor of the window: zero tail
    theirs = module.get_audio_embedding_from_data([*whole, partial])
    ours = np.concatenate([encoder.encode_audio(np.stack(whole)), encoder.encode_audio(partial[None])])
    ours /= np.linalg.norm(ours, axis=-1, keepdims=True)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    assert not np.allclose(theirs[0], theirs[1], atol=1e-2)  # different segments, different embeddings
