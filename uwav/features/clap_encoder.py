"""CLAP (laion_clap) on 1-s audio segments and class prompts, built through laion_clap's own
factory, with its mel front end reproduced in torch; and VALOR's CLAP feature maps of a whole clip
(`ClapMapsEncoder`, store feature `clap_maps`).

Never through `CLAP_Module`, and never letting laion_clap fetch RoBERTa: its model code builds the
text branch with `RobertaModel.from_pretrained('roberta-base')`, ~500 MB of weights that every CLAP
checkpoint overwrites. uwav fetches RoBERTa's config and tokenizer files (`ROBERTA_FILES`) and
builds the branch from the config alone (`_text_branch_from_config`). laion_clap's released
checkpoints download by name from its hub repository (`CLAP_CHECKPOINTS`, `pretrained:`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import warnings
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from uwav.catalog import EncoderConfig
from uwav.contracts import CLAP_MAPS, HTSAT_MAP_STEPS
from uwav.features import configs
from uwav.features.encoder_base import (
    EncoderError,
    TorchEncoder,
    checkpoint_path,
    encoder_identity,
    load_checkpoint,
    seeded_init,
    to_host,
)
from uwav.features.weights import HubFile, fetch_weights, weights_identity

# laion_clap's released checkpoints (its `load_ckpt` model ids 0-3), in its Hugging Face
# repository, by name: whether each is a feature-fusion model (VALOR and UWAV used 630k-fusion-best.pt).
CLAP_CHECKPOINT_REPO = "lukewys/laion_clap"
CLAP_CHECKPOINTS: dict[str, bool] = {
    "630k-best.pt": False,
    "630k-audioset-best.pt": False,
    "630k-fusion-best.pt": True,
    "630k-audioset-fusion-best.pt": True,
}
# The RoBERTa text branch (laion_clap's 'roberta', that of every released checkpoint): the config
# it is built from and the tokenizer's files; the weights come with the CLAP checkpoint.
ROBERTA_REPO = "FacebookAI/roberta-base"
ROBERTA_FILES = ("config.json", "vocab.json", "merges.txt")
_TEXT_MODEL_TYPES = ("roberta", "transformer")  # laion_clap's RoBERTa, or its own transformer (our tiny configs)
_CLAP_CONTEXT_LENGTH = 77
# Buffers that older transformers versions saved and newer ones no longer register (non-persistent):
# CLAP checkpoints trained with them still carry the key, which is harmless to drop.
_CLAP_OBSOLETE_KEYS = ("text_branch.embeddings.position_ids",)
# laion_clap's CLAP_Module(enable_fusion=True) builds this fusion; its `get_mel` makes 64 bands.
_CLAP_FUSION_TYPE = "aff_2d"
_CLAP_FUSION_MEL_BINS = 64


@cache
def _clap_module() -> ModuleType:
    """laion_clap's `clap_module` package, loaded without running `laion_clap/__init__.py`.

    That package init imports its training code, which parses `sys.argv` at import time (and
    exits on unknown arguments). laion_clap's own `hook.py` imports the same package as the
    top-level name `clap_module`; so do we, so that there is a single model-config registry.
    """
    if "clap_module" not in sys.modules:
        spec = importlib.util.find_spec("laion_clap")  # locates the package without executing it
        if spec is None or not spec.submodule_search_locations:
            raise EncoderError("CLAP needs the `laion_clap` package (pip install laion-clap)")
        package_dir = Path(spec.submodule_search_locations[0]) / "clap_module"
        module_spec = importlib.util.spec_from_file_location(
            "clap_module", package_dir / "__init__.py", submodule_search_locations=[str(package_dir)]
        )
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules["clap_module"] = module
        try:
            with warnings.catch_warnings():  # laion_clap imports timm's deprecated `timm.models.layers`
                warnings.simplefilter("ignore", FutureWarning)
                module_spec.loader.exec_module(module)
        except ImportError as exc:
            del sys.modules["clap_module"]
            raise EncoderError(
                f"laion_clap's model code could not be imported ({exc}); it imports BertModel, RobertaModel and "
                "BartModel from `transformers`, so a transformers version that provides them is required"
            ) from exc
    module = sys.modules["clap_module"]
    module.factory.add_model_config(configs.MODEL_CONFIG_DIR)
    return module


def clap_model_config(name: str) -> dict[str, Any]:
    """The model config `name` as laion_clap registers it (ours in `model_configs/`, then laion_clap's
    own), read from its JSON file without importing laion_clap."""
    shipped = configs.shipped_model_config(name)
    if shipped is not None:
        return shipped
    spec = importlib.util.find_spec("laion_clap")  # locates the package without executing it
    if spec is None or not spec.submodule_search_locations:
        raise EncoderError("CLAP needs the `laion_clap` package (pip install laion-clap)")
    library_configs = Path(spec.submodule_search_locations[0]) / "clap_module" / "model_configs"
    path = library_configs / f"{name}.json"
    if not path.is_file():
        known = sorted(
            file.stem
            for folder in (configs.MODEL_CONFIG_DIR, library_configs)
            for file in folder.glob("*.json")
            if "audio_cfg" in json.loads(file.read_text())
        )
        raise EncoderError(
            f"CLAP model config {name!r} not found in laion_clap's registry (nor in {configs.MODEL_CONFIG_DIR}); "
            f"known: {', '.join(known)}"
        )
    return json.loads(path.read_text())


def _text_model_type(name: str, model_cfg: dict[str, Any]) -> str:
    """laion_clap takes the text branch as an argument; our configs name it in text_cfg.model_type,
    laion_clap's own (those of the released checkpoints) use RoBERTa."""
    text_model_type = model_cfg["text_cfg"].get("model_type", "roberta")
    if text_model_type not in _TEXT_MODEL_TYPES:
        raise EncoderError(
            f"CLAP {name!r}: text branch {text_model_type!r} is not supported "
            f"(uwav builds {' and '.join(_TEXT_MODEL_TYPES)})"
        )
    return text_model_type


def _checkpoint_name(config: EncoderConfig) -> str:
    """A released checkpoint's name, refused unless known and matching the config's `fusion`."""
    name = str(config.pretrained)
    if name not in CLAP_CHECKPOINTS:
        raise EncoderError(
            f"CLAP {config.name!r}: unknown pretrained checkpoint {name!r} "
            f"(laion_clap's: {', '.join(CLAP_CHECKPOINTS)}); or give a local `checkpoint:` file"
        )
    if CLAP_CHECKPOINTS[name] != config.fusion:
        raise EncoderError(
            f"CLAP {config.name!r}: {name} is {'a' if CLAP_CHECKPOINTS[name] else 'not a'} feature-fusion checkpoint; "
            f"set `fusion: {str(CLAP_CHECKPOINTS[name]).lower()}`"
        )
    return name


def clap_weight_files(config: EncoderConfig) -> list[HubFile]:
    """The hub files a CLAP is built from: RoBERTa's config and tokenizer for that text branch,
    and a released checkpoint named by `pretrained`."""
    roberta = _text_model_type(config.name, clap_model_config(config.name)) == "roberta"
    files = [HubFile(ROBERTA_REPO, (name,)) for name in ROBERTA_FILES] if roberta else []
    if config.pretrained is not None:
        files.append(HubFile(CLAP_CHECKPOINT_REPO, (_checkpoint_name(config),)))
    return files


@contextlib.contextmanager
def _text_branch_from_config(clap_module: ModuleType, roberta_config: Path | None) -> Iterator[None]:
    """While laion_clap builds a model: its `RobertaModel.from_pretrained('roberta-base')` builds
    the (random) network from `roberta_config` instead of downloading the pretrained weights."""
    if roberta_config is None:
        yield
        return
    from transformers import RobertaConfig, RobertaModel

    model_module = clap_module.model
    original = model_module.RobertaModel
    model_module.RobertaModel = SimpleNamespace(
        from_pretrained=lambda *_, **__: RobertaModel(RobertaConfig.from_json_file(roberta_config))
    )
    try:
        yield
    finally:
        model_module.RobertaModel = original


def htk_mel_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int) -> torch.Tensor:
    """(n_freqs, n_mels) float32: torchaudio's `melscale_fbanks` with its defaults (HTK scale, no
    norm), triangles in Hz between mel-spaced points; laion_clap's `get_mel` uses it for fusion."""
    def to_mel(hertz: float) -> float:
        return 2595.0 * float(np.log10(1.0 + hertz / 700.0))

    freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    points = 700.0 * (10.0 ** (torch.linspace(to_mel(f_min), to_mel(f_max), n_mels + 2) / 2595.0) - 1.0)
    widths = points[1:] - points[:-1]
    slopes = points[None, :] - freqs[:, None]
    falling = -slopes[:, :-2] / widths[:-1]
    rising = slopes[:, 2:] / widths[1:]
    return torch.minimum(falling, rising).clamp(min=0.0)


class ClapEncoder(TorchEncoder):
    """CLAP audio branch on 1-s waveforms at the model's sample rate, text branch on class prompts.

    The fusion model (`EncoderConfig.fusion`) reads, for audio no longer than its window (always
    the case for 1-s segments), laion_clap's `mel_fusion` input instead of the waveform: the log-mel
    of the padded window four times (`fusion_inputs`).
    """

    feature = "clap"
    segment_input = "audio"

    def __init__(
        self,
        model: nn.Module,
        text_model_type: str,
        hf_tokenizer: Any,
        tokenize: Any,
        config: EncoderConfig,
        device: torch.device,
        identity: str,
    ):
        super().__init__(model, config, device, identity, int(model.joint_embed_shape))
        audio_cfg = model.audio_cfg
        self.sample_rate = int(audio_cfg.sample_rate)
        self.clip_samples = int(audio_cfg.clip_samples)
        # laion_clap's audio branches disagree on their input: HTSAT and Cnn14 read a dict
        # {'waveform', 'longer'}, Cnn6 / Cnn10 take the waveform tensor itself.
        self.dict_input = audio_cfg.model_type == "HTSAT" or audio_cfg.model_name == "Cnn14"
        self.fusion = bool(getattr(model.audio_branch, "enable_fusion", False))
        self.fusion_filterbank = (
            htk_mel_filterbank(
                int(audio_cfg.window_size) // 2 + 1, float(audio_cfg.fmin), float(audio_cfg.fmax),
                _CLAP_FUSION_MEL_BINS, self.sample_rate,
            ).to(device)
            if self.fusion
            else None
        )
        self.text_model_type = text_model_type
        self.hf_tokenizer = hf_tokenizer
        self.tokenize = tokenize

    def preprocess(self, waveforms: np.ndarray | torch.Tensor) -> torch.Tensor:
        """float32 (B, n) -> (B, clip_samples), as laion_clap's `get_audio_embedding_from_data`, batched.

        Its steps: int16 quantisation round trip, then 'repeatpad' to the model's window
        (repeat whole copies, zero-pad the rest). Inputs longer than the window (never the case
        for 1-s segments and the 10-s real models) are centre-cropped, where laion_clap crops at random.
        """
        x = torch.as_tensor(waveforms)
        if x.ndim != 2 or not x.is_floating_point():
            raise ValueError(f"CLAP audio: expected float (B, samples), got {x.dtype} {tuple(x.shape)}")
        x = x.to(self.device, torch.float32, non_blocking=True)
        x = (x.clamp(-1.0, 1.0) * 32767.0).to(torch.int16).float() / 32767.0
        length = x.shape[1]
        if length < self.clip_samples:
            x = x.repeat(1, self.clip_samples // length)
            x = F.pad(x, (0, self.clip_samples - x.shape[1]))
        elif length > self.clip_samples:
            start = (length - self.clip_samples) // 2
            x = x[:, start : start + self.clip_samples]
        return x

    def fusion_inputs(self, padded: torch.Tensor) -> torch.Tensor:
        """(B, clip_samples) from `preprocess` -> (B, 4, frames, 64) `mel_fusion`, as laion_clap's
        `get_audio_features` (data_truncating 'fusion') builds it for audio no longer than the window:
        `get_mel` (torchaudio MelSpectrogram: periodic Hann, centred with reflect padding, power 2;
        AmplitudeToDB: 10 log10(max(x, 1e-10))) stacked four times; `longer` stays False."""
        cfg = self.model.audio_cfg
        window = torch.hann_window(int(cfg.window_size), device=padded.device)
        spectrum = torch.stft(
            padded, n_fft=int(cfg.window_size), hop_length=int(cfg.hop_size), win_length=int(cfg.window_size),
            window=window, center=True, pad_mode="reflect", normalized=False, onesided=True, return_complex=True,
        )
        assert self.fusion_filterbank is not None, "fusion inputs of a CLAP model without fusion"
        mel = spectrum.abs().pow(2).transpose(1, 2) @ self.fusion_filterbank  # (B, frames, 64)
        return (10.0 * torch.log10(mel.clamp(min=1e-10)))[:, None].repeat(1, 4, 1, 1)

    def audio_batch(self, waveforms: np.ndarray | torch.Tensor) -> Any:
        """What the audio branch reads for float32 (B, n) waveforms: the preprocessed window, in
        laion_clap's dict (with `mel_fusion` for the fusion model) where the branch takes one."""
        x = self.preprocess(waveforms)
        batch: Any = {"waveform": x, "longer": torch.zeros(len(x), 1, dtype=torch.bool, device=self.device)} if self.dict_input else x
        if self.fusion:
            batch["mel_fusion"] = self.fusion_inputs(x)
        return batch

    def embed(self, waveforms: np.ndarray | torch.Tensor) -> torch.Tensor:
        batch = self.audio_batch(waveforms)
        with self._running():
            hidden = self.model.encode_audio(batch, device=self.device)["embedding"]
            return self.model.audio_projection(hidden)

    def encode_audio(self, waveforms: np.ndarray | torch.Tensor) -> np.ndarray:
        """float32 (B, samples at `sample_rate`) -> (B, dim)."""
        return self.encode_segments(waveforms)

    def text_tokens(self, texts: Sequence[str]) -> Any:
        """Texts -> what the text branch reads (its tokenizer's output)."""
        texts = list(texts)
        if self.hf_tokenizer is not None:
            return dict(
                self.hf_tokenizer(
                    texts, padding="max_length", truncation=True, max_length=_CLAP_CONTEXT_LENGTH, return_tensors="pt"
                )
            )
        return self.tokenize(texts, context_length=self.model.context_length)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Prompts -> (C, dim)."""
        tokens = self.text_tokens(texts)
        with self._running():
            return to_host(self.model.encode_text(tokens, device=self.device))


def build_clap_encoder(
    config: EncoderConfig, device: torch.device, *, base_dir: Path | None = None, mirror: str | None = None
) -> ClapEncoder:
    """A laion_clap model by config name (laion_clap's or ours) built by its factory, with the
    configured weights: a released checkpoint by name (downloaded on first use), a local file, or
    random. A RoBERTa text branch is built from RoBERTa's config, fetched with its tokenizer."""
    model_cfg = clap_model_config(config.name)
    text_model_type = _text_model_type(config.name, model_cfg)
    if config.fusion and model_cfg["audio_cfg"].get("model_type") != "HTSAT":
        raise EncoderError(
            f"CLAP {config.name!r}: `fusion` needs an HTSAT audio branch (laion_clap's PANN fusion models "
            "pick random chunks even in evaluation); the fusion checkpoints are HTSAT-tiny"
        )
    downloaded = fetch_weights(clap_weight_files(config), what=f"CLAP {config.name!r}", mirror=mirror)
    fetched = {weights.path.name: weights for weights in downloaded}
    hf_tokenizer = None
    if text_model_type == "roberta":
        from transformers import RobertaTokenizer

        vocab, merges = fetched["vocab.json"].path, fetched["merges.txt"].path
        # from the local folder: nothing is asked of the hub
        hf_tokenizer = RobertaTokenizer.from_pretrained(str(vocab.parent), vocab_file=str(vocab), merges_file=str(merges))
    released = fetched.get(str(config.pretrained))
    identity = encoder_identity("clap", config, base_dir, model_cfg, weights_identity([released] if released else []))
    clap_module = _clap_module()
    roberta_config = fetched["config.json"].path if text_model_type == "roberta" else None
    with seeded_init(), _text_branch_from_config(clap_module, roberta_config):
        model, _ = clap_module.factory.create_model(
            config.name, text_model_type, pretrained="", precision="fp32", device=torch.device("cpu"),
            enable_fusion=config.fusion, fusion_type=_CLAP_FUSION_TYPE if config.fusion else "None",
        )
    what = f"CLAP model {config.name!r} ({'fusion, ' if config.fusion else ''}text branch {text_model_type!r})"
    # laion_clap's own checkpoints may need a full unpickle (the weights-only reader fails on them):
    # allowed because uwav names their repository and file, and checked their download
    weights_file = released.path if released else checkpoint_path(config, base_dir) if config.checkpoint else None
    if weights_file is not None:
        load_checkpoint(
            model, weights_file, what=what, ignore_unexpected=_CLAP_OBSOLETE_KEYS, allow_pickle=released is not None
        )
    return ClapEncoder(model, text_model_type, hf_tokenizer, clap_module.tokenizer.tokenize, config, device, identity)


class ClapMapsEncoder:
    """VALOR's CLAP feature maps (`utils/clap_preprocess.py`, `get_audio_feature_maps`): per video, the
    (64, width) token map of the fusion HTSAT over the whole clip, the store's per-clip `clap_maps`.

    The clip is the video's whole audio track at the model's rate (`DecodedSegments.audio_track`,
    read as VALOR's `librosa.load` reads it) index-resampled to exactly the model's window,
    `track[round(linspace(0, len - 1, window))]` (480,000 samples: 10 s at 48 kHz), then prepared as
    the segment embeddings are: the int16 round trip and the fusion mel four times (a window-long
    clip is neither padded nor `longer`). The map is the tensor HTSAT's `forward_features` averages
    into the clip embedding: the last stage's normed tokens regrouped as 2 frequency bands x 32 time
    steps (token 32 f + t), flattened, transposed to (64, width); VALOR's `htsat_forward_features`
    returns that same tensor as `feat_maps`. It is captured from laion_clap's own forward (the
    first call of the branch's `avgpool`), so the computation is the library's.

    For a video far from 10 s long this is still VALOR's rule: the track is squeezed or stretched
    into the 10-s window by sample index (a 60-s video's audio plays 6 times faster, without
    anti-aliasing), and VALOR++ was trained on 10-s clips only.
    """

    feature = CLAP_MAPS
    segment_input = "audio_track"
    per_clip = True

    def __init__(self, clap: ClapEncoder) -> None:
        audio_cfg = clap.model.audio_cfg
        if audio_cfg.model_type != "HTSAT" or not clap.fusion:
            raise EncoderError(
                f"CLAP {clap.config.name!r}: the CLAP maps (stores feature clap_maps, VALOR++'s audio) come from the "
                "feature-fusion HTSAT, as VALOR's 630k-fusion-best.pt; set encoders.clap to an HTSAT with `fusion: true`"
            )
        self.clap = clap
        self.identity = f"{self.feature}/{clap.identity.split('/', 1)[1]}"  # the CLAP's weights, another feature
        self.feature_shape: tuple[int, int] = (HTSAT_MAP_STEPS, int(clap.model.audio_branch.num_features))

    def window(self, track: np.ndarray) -> np.ndarray:
        """The whole track index-resampled to the model's window, as VALOR's script does (numpy's
        rounding, half to even)."""
        track = np.asarray(track, dtype=np.float32)
        if track.ndim != 1 or track.size == 0:
            raise ValueError(f"CLAP maps: expected a non-empty mono track, got shape {track.shape}")
        return track[np.round(np.linspace(0, track.size - 1, self.clap.clip_samples)).astype(np.int64)]

    def encode_clip(self, track: np.ndarray) -> np.ndarray:
        """float32 (samples,) at the model's rate -> float32 (64, width)."""
        branch = self.clap.model.audio_branch
        captured: list[torch.Tensor] = []
        hook = branch.avgpool.register_forward_pre_hook(lambda _, inputs: captured.append(inputs[0]) if not captured else None)
        try:
            batch = self.clap.audio_batch(self.window(track)[None])
            with self.clap._running():
                self.clap.model.encode_audio(batch, device=self.clap.device)
        finally:
            hook.remove()
        maps = to_host(captured[0][0].transpose(0, 1))
        if maps.shape != self.feature_shape:
            raise EncoderError(
                f"CLAP {self.clap.config.name!r}: its HTSAT gives token maps of shape {maps.shape}, not the "
                f"{self.feature_shape} of VALOR's (a 256 x 256 spectrogram image through 4 stages)"
            )
        return maps
