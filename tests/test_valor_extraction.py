"""`stages.features.extraction: valor`: VALOR's CLIP pixels and L2-normalised features, its class
prompts, the CLAP maps of a whole clip (`clap_maps`), and a released VALOR++ parsing a new video
with them; each against a transcription of VALOR's scripts (`utils/clip_preprocess.py`,
`utils/clap_preprocess.py`, `utils/clap_utils.py`) on tiny weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from uwav.catalog import EncoderConfig, EncodersConfig, FeaturesSettings, load_catalog
from uwav.features.encoder_base import EncoderError
from uwav.features.encoders import ClipEncoder, Encoders, ValorClipEncoder, build_encoders

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
LLP_VIDEO = SHARED / "llp" / "videos" / "BjCEufrlXm4.mp4"
needs_llp_video = pytest.mark.skipif(not LLP_VIDEO.is_file(), reason=f"the real LLP clip is not at {LLP_VIDEO} (../shared/data)")
TINY_VALOR = EncodersConfig(
    clip=EncoderConfig(name="uwav-tiny-clip", random_init=True),
    clap=EncoderConfig(name="uwav-tiny-clap-fusion", random_init=True, fusion=True),  # HTSAT-tiny, random
    r2plus1d=EncoderConfig(name="uwav-tiny-r2plus1d", random_init=True),
)
LLP_CLASSES = [
    "Speech", "Car", "Cheering", "Dog", "Cat", "Frying_(food)", "Basketball_bounce", "Fire_alarm", "Chainsaw", "Cello",
    "Banjo", "Singing", "Chicken_rooster", "Violin_fiddle", "Vacuum_cleaner", "Baby_laughter", "Accordion", "Lawn_mower",
    "Motorcycle", "Helicopter", "Acoustic_guitar", "Telephone_bell_ringing", "Baby_cry_infant_cry", "Blender", "Clapping",
]
# HF CLIPProcessor's image_mean / image_std for openai/clip-vit-large-patch14 (OpenAI's).
HF_CLIP_MEAN, HF_CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


@pytest.fixture(scope="module")
def valor_encoders() -> Encoders:
    """The tiny CLIP as VALOR's, and the CLAP maps of the tiny fusion HTSAT (no CLAP segments)."""
    return build_encoders(TINY_VALOR, "cpu", features=["clip", "clap_maps"], extraction="valor")


# ---------------------------------------------------------------- CLIP


def test_valor_clip_pixels_are_clip_preprocess_transform(valor_encoders: Encoders) -> None:
    """clip_preprocess.py's `Compose([ToTensor(), Resize((224, 224)), Normalize(mean, std)])` on the
    PIL frame, with the torchvision 0.13.1 of VALOR's environment, whose tensor Resize does not
    antialias (today's default does: `antialias=False` states 0.13's); 32 = the tiny CLIP's size."""
    from PIL import Image
    from torchvision import transforms

    clip = valor_encoders.clip
    assert isinstance(clip, ValorClipEncoder) and clip.segment_input == "valor_frames"
    size = clip.image_size[0]
    valor_transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Resize((size, size), antialias=False), transforms.Normalize(HF_CLIP_MEAN, HF_CLIP_STD)]
    )
    frames = np.random.default_rng(3).integers(0, 256, (2, 240, 320, 3), dtype=np.uint8)
    expected = torch.stack([valor_transform(Image.fromarray(frame).convert("RGB")) for frame in frames])
    ours = clip.preprocess(frames)
    assert ours.shape == (2, 3, size, size)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    # aspect not kept, nothing cropped: the paper's transform (short side, centre crop) is far off
    assert (ClipEncoder.preprocess(clip, frames) - expected).abs().mean() > 0.1


def test_valor_clip_features_are_l2_normalised_image_features(valor_encoders: Encoders) -> None:
    """get_image_embedding: `image_features / image_features.norm(p=2, dim=-1, keepdim=True)` of
    the model's image features (open_clip's encode_image: HF's get_image_features for the same weights)."""
    clip = valor_encoders.clip
    frames = np.random.default_rng(4).integers(0, 256, (3, 48, 64, 3), dtype=np.uint8)
    with torch.no_grad():
        raw = clip.model.encode_image(clip.preprocess(frames))
    expected = raw / raw.norm(p=2, dim=-1, keepdim=True)
    ours = clip.encode_segments(frames)
    np.testing.assert_allclose(ours, expected.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)
    assert clip.identity.endswith("/valor")  # never stored as the paper's features


def test_valor_class_prompts_are_the_scripts_strings() -> None:
    """The literal caption list of clip_preprocess.py and the name list of clap_preprocess.py with its
    `"This is a sound of " + t.lower()`, in LLP's class order."""
    from uwav.features.extract import extraction_prompts

    visual = [
        'A photo of people talking.', 'A photo of a car.', 'A photo of people cheering.', 'A photo of a dog.', 'A photo of a cat.',
        'A photo of frying food.', 'A photo of people playing basketball.', 'A photo of a fire alarm.', 'A photo of a chainsaw.',
        'A photo of a cello.', 'A photo of a banjo.', 'A photo of people singing.', 'A photo of a chicken or a rooster.',
        'A photo of a violin.', 'A photo of a vaccum cleaner.', 'A photo of a laughing baby.', 'A photo of an accordion.',
        'A photo of a lawnmower.', 'A photo of a motorcycle.', 'A photo of a helicopter.', 'A photo of a acoustic guiter.',
        'A photo of a ringing telephone.', 'A photo of a crying baby.', 'A photo of a blender.', 'A photo of hands clapping.',
    ]
    names = [
        'Speech', 'Car', 'Cheering', 'Dog', 'Cat', 'Frying (food)', 'Basketball bounce', 'Fire alarm', 'Chainsaw', 'Cello',
        'Banjo', 'Singing', 'Chicken, rooster', 'Violin fiddle', 'Vacuum cleaner', 'Baby laughter', 'Accordion', 'Lawn mower',
        'Motorcycle', 'Helicopter', 'Acoustic guitar', 'Telephone bell ringing', 'Baby cry, infant cry', 'Blender', 'Clapping',
    ]
    audio = ["This is a sound of " + t.lower() for t in names]
    valor = FeaturesSettings(extraction="valor")
    assert extraction_prompts(valor, "clip", LLP_CLASSES) == visual
    assert extraction_prompts(valor, "clap", LLP_CLASSES) == audio
    # the paper's stay the default
    paper = FeaturesSettings()
    assert paper.extraction == "paper"
    assert extraction_prompts(paper, "clip", LLP_CLASSES)[5] == "A photo of Frying (food)"
    assert extraction_prompts(paper, "clap", LLP_CLASSES)[12] == "This is the sound of Chicken rooster"


def test_valor_prompts_refuse_classes_without_a_caption_and_paper_templates() -> None:
    from pydantic import ValidationError

    from uwav.errors import InvalidInputError
    from uwav.features.extract import extraction_prompts

    with pytest.raises(InvalidInputError, match=r"VALOR's CLIP captions of LLP's 25 classes only; none for 'man speaking'"):
        extraction_prompts(FeaturesSettings(extraction="valor"), "clip", ["Dog", "man speaking"])
    assert extraction_prompts(FeaturesSettings(extraction="valor"), "clap", ["man_speaking"]) == ["This is a sound of man speaking"]
    with pytest.raises(ValidationError, match="extraction: valor uses VALOR's class captions; remove prompts_visual"):
        FeaturesSettings(extraction="valor", prompts_visual="A frame of {}")


# ---------------------------------------------------------------- CLAP maps


def valor_feature_maps(model: torch.nn.Module, audio_cfg: dict, audio_waveform: np.ndarray) -> np.ndarray:
    """clap_preprocess.py's `get_audio_feature_maps` for one clip, restated: index resampling to
    480,000 samples, the int16 round trip, `get_audio_features(..., 'fusion', 'repeatpad')` (its
    `get_mel` through librosa with the arguments laion_clap's comment gives, torchaudio having no
    build for this torch), then My_CLAP's `htsat_forward` / `htsat_forward_features` up to `feat_maps`."""
    import librosa

    samples = np.round(np.linspace(0, len(audio_waveform) - 1, 480000)).astype(np.int32)
    audio_waveform = audio_waveform[samples]
    audio_waveform = (np.clip(audio_waveform, a_min=-1.0, a_max=1.0) * 32767.0).astype(np.int16)
    audio_waveform = torch.from_numpy((audio_waveform / 32767.0).astype(np.float32)).float()
    assert len(audio_waveform) == 480000  # neither longer (no chunks) nor padded
    mel = librosa.feature.melspectrogram(
        y=audio_waveform.numpy(), sr=audio_cfg["sample_rate"], n_fft=audio_cfg["window_size"],
        hop_length=audio_cfg["hop_size"], win_length=audio_cfg["window_size"], center=True, pad_mode="reflect",
        power=2.0, n_mels=64, norm=None, htk=True, fmin=audio_cfg["fmin"], fmax=audio_cfg["fmax"],
    )
    mel = torch.from_numpy(10.0 * np.log10(np.maximum(mel, 1e-10))).T  # AmplitudeToDB(top_db=None), (T, n_mels)
    sample = {"mel_fusion": torch.stack([mel, mel, mel, mel], dim=0), "longer": torch.tensor([False])}
    x_in = {key: value.unsqueeze(0) for key, value in sample.items()}  # get_audio_feature_maps' batch of one

    branch = model.audio_branch
    with torch.no_grad():
        assert branch.enable_fusion and x_in["longer"].sum() == 0
        x = x_in["mel_fusion"]
        x = x.transpose(1, 3)
        x = branch.bn0(x)
        x = x.transpose(1, 3)
        x = branch.reshape_wav2img(x)
        frames_num = x.shape[2]
        x = branch.patch_embed(x, longer_idx=[])
        if branch.ape:
            x = x + branch.absolute_pos_embed
        x = branch.pos_drop(x)
        for layer in branch.layers:
            x, attn = layer(x)
        x = branch.norm(x)
        B, N, C = x.shape
        SF = frames_num // (2 ** (len(branch.depths) - 1)) // branch.patch_stride[0]
        ST = frames_num // (2 ** (len(branch.depths) - 1)) // branch.patch_stride[1]
        x = x.permute(0, 2, 1).contiguous().reshape(B, C, SF, ST)
        B, C, F_, T = x.shape
        c_freq_bin = F_ // branch.freq_ratio
        x = x.reshape(B, C, F_ // c_freq_bin, c_freq_bin, T)
        x = x.permute(0, 1, 3, 2, 4).contiguous().reshape(B, C, c_freq_bin, -1)
        temp = torch.flatten(x, 2)
        return temp.permute(0, 2, 1).contiguous()[0].numpy()


@needs_llp_video
def test_clap_maps_equal_get_audio_feature_maps(valor_encoders: Encoders) -> None:
    """The real clip's track (10.03 s at 48 kHz: 480,375 samples, so the index resampling does work)
    through uwav's maps and through the transcription, on the tiny fusion HTSAT."""
    from uwav.features.clap_encoder import clap_model_config
    from uwav.media import decode_segments

    maps = valor_encoders.clap_maps
    assert maps.per_clip and maps.feature_shape == (64, 768) and maps.segment_input == "audio_track"
    assert valor_encoders.clap is None and valor_encoders.feature_shapes() == {"clip": (64,), "clap_maps": (64, 768)}
    track = decode_segments(LLP_VIDEO, centre=False, clip=False, audio=False, audio_track=True).audio_track
    assert track.size == 480375
    expected = valor_feature_maps(maps.clap.model, clap_model_config("uwav-tiny-clap-fusion")["audio_cfg"], track)
    ours = maps.encode_clip(track)
    assert ours.shape == expected.shape == (64, 768) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, atol=2e-3, rtol=0)  # the mel from torch vs librosa
    assert np.abs(ours).mean() > 0.1 and not np.allclose(ours[0], ours[1], atol=1e-2)
    # the map's mean over tokens is the clip embedding HTSAT pools (before the projection)
    batch = maps.clap.audio_batch(maps.window(track)[None])
    with torch.no_grad():
        pooled = maps.clap.model.encode_audio(batch, device=maps.clap.device)["embedding"][0].numpy()
    np.testing.assert_allclose(ours.mean(axis=0), pooled, atol=1e-5)
    assert maps.identity.startswith("clap_maps/uwav-tiny-clap-fusion/random_init=seed0/") and maps.identity.endswith("/fusion")


def test_clap_maps_need_the_fusion_htsat() -> None:
    config = EncodersConfig(clap=EncoderConfig(name="uwav-tiny-clap", random_init=True))
    with pytest.raises(EncoderError, match=r"CLAP maps .* come from the feature-fusion HTSAT.*`fusion: true`"):
        build_encoders(config, "cpu", features=["clap_maps"])


# ---------------------------------------------------------------- extraction and parsing


def write_clip(path: Path, seconds: int) -> Path:
    from tests.test_extract import write_video

    return Path(write_video(path, seconds, audio=True, seed=21))


def test_extract_features_stores_valor_clip_and_the_maps_per_clip(valor_encoders: Encoders, tmp_path: Path) -> None:
    """extract_features with VALOR's encoders decodes only their inputs and stores the CLIP rows per
    segment and the maps once per video, equal to the encoders run on `decode_segments`' outputs."""
    import polars as pl

    from uwav.features import extract
    from uwav.features.store import FeatureStore
    from uwav.media import QuarantineLog, decode_segments

    video = write_clip(tmp_path / "v.mp4", 3)
    manifest = pl.DataFrame({"video_id": ["v"], "media_path": [str(video)], "n_segments": [3]})
    store = FeatureStore(str(tmp_path / "features.zarr"), dtype="float32")
    summary = extract.extract_features(manifest, store, valor_encoders, FeaturesSettings(extraction="valor", workers=1), QuarantineLog(), progress=False)
    assert summary.computed == ("v",) and summary.features == ("clip", "clap_maps")
    assert store.is_per_clip("clap_maps") and not store.is_per_clip("clip")
    decoded = decode_segments(video, centre=False, clip=False, audio=False, valor_frames=True, audio_track=True)
    clip, lengths = store.read("clip", ["v"])
    maps, _ = store.read("clap_maps", ["v"])
    assert lengths.tolist() == [3] and maps.shape == (1, 64, 768)
    np.testing.assert_allclose(clip[0], valor_encoders.clip.encode_segments(decoded.valor_frames), atol=1e-5)
    np.testing.assert_allclose(maps[0], valor_encoders.clap_maps.encode_clip(decoded.audio_track), atol=1e-5)


def valor_plus_plus_catalog(folder: Path) -> Path:
    sizes = {"mode": "features", "seed": 3, "n_pretrain": 4, "n_train": 4, "n_val": 2, "n_test": 2}
    data = {
        "datasets": {"target": {"kind": "synthetic", "annotations": "data", "role": "target", "synthetic": sizes}},
        "target": "target",
        "encoders": TINY_VALOR.model_dump(exclude_defaults=True),
        "stages": {
            "features": {"source": "synthetic", "extraction": "valor", "device": "cpu", "workers": 1},
            "train": {"han": {"inputs": "clap_maps"}, "device": "cpu"},
        },
    }
    path = folder / "data_catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@needs_llp_video
def test_a_released_valor_plus_plus_parses_a_new_video_as_it_was_trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`uwav parse --model VALOR++ --kind valor++` with `extraction: valor` and `han.inputs: clap_maps`:
    the HAN reads the CLAP maps, VALOR's CLIP and R(2+1)D of the real LLP clip and of a 3-s video."""
    from tests.test_released_models import random_state, released_han_shapes, save
    from uwav.contracts import HAN_INPUT_FEATURES
    from uwav.media import decode_segments
    from uwav.models import load_released_han
    from uwav.stages import run_pipeline
    from uwav.stages.parse import parse_media
    from uwav.training import han_train

    catalog = load_catalog(valor_plus_plus_catalog(tmp_path))
    run_pipeline(catalog, ["segment"], progress=False)  # the target's 25 classes
    # VALOR++'s MMIL_Net over the tiny encoders' widths: maps 768, CLIP 64, R(2+1)D 512
    shapes = released_han_shapes("valor", 1, classes=25, audio=768, visual2d=64, visual3d=512, width=32, ffn=64)
    model_path = save(random_state(shapes, seed=4), tmp_path / "checkpoint_best.pt")
    videos = [LLP_VIDEO, write_clip(tmp_path / "short.mp4", 3)]
    seen = []
    predict_han = han_train.predict_han

    def recording_predict(model: object, features: object, **kwargs: object) -> object:
        seen.append((features, predict_han(model, features, **kwargs)))
        return seen[-1][1]

    monkeypatch.setattr(han_train, "predict_han", recording_predict)
    out = parse_media(catalog, videos, tmp_path / "parsed", model_path=model_path, kind="valor++", progress=False)
    document = json.loads(out.events_json.read_text())
    assert [video["n_segments"] for video in document["videos"]] == [10, 3] and document["failed"] == []

    ((features, (segment_prob, video_prob)),) = seen
    assert features.audio_input == "htsat_maps" and features.widths == (768, 64, 512)
    assert document["videos"][0]["video_id"] == "BjCEufrlXm4"
    encoders = build_encoders(TINY_VALOR, "cpu", features=HAN_INPUT_FEATURES["clap_maps"], extraction="valor")
    decoded = decode_segments(LLP_VIDEO, centre=False, audio=False, valor_frames=True, audio_track=True)
    maps = encoders.clap_maps.encode_clip(decoded.audio_track)
    clip = encoders.clip.encode_segments(decoded.valor_frames)
    r2plus1d = encoders.r2plus1d.encode_segments(decoded.clip_frames)
    np.testing.assert_allclose(features.audio[0].numpy(), maps, atol=1e-4)
    np.testing.assert_allclose(features.visual2d[0].numpy(), clip, atol=1e-5)
    np.testing.assert_allclose(features.visual3d[0].numpy(), r2plus1d, atol=1e-4)
    # what was parsed is the released model's output on those inputs (the 3-s video padded beside it)
    model = load_released_han(model_path, "valor++")
    with torch.no_grad():
        output = model(torch.from_numpy(maps)[None], torch.from_numpy(clip)[None], torch.from_numpy(r2plus1d)[None])
    np.testing.assert_allclose(np.asarray(segment_prob)[0], output.segment_prob[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(np.asarray(video_prob)[0], output.video_prob[0].numpy(), atol=1e-4)


def test_parse_with_valor_plus_plus_refuses_the_papers_extraction(tmp_path: Path) -> None:
    """The paper's CLIP features (centre frame, not normalised) are not what VALOR++ was trained on."""
    from uwav.errors import InvalidInputError
    from uwav.stages.parse import parse_media

    path = valor_plus_plus_catalog(tmp_path)
    data = yaml.safe_load(path.read_text())
    del data["stages"]["features"]["extraction"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(InvalidInputError, match="--kind valor\\+\\+: .*set stages.features.extraction: valor"):
        parse_media(load_catalog(path), [tmp_path / "any.mp4"], tmp_path / "out", model_path=path, kind="valor++", progress=False)
