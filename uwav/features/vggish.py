"""VGGish (Hershey et al., ICASSP 2017): the audio encoder of the AVVP release's `vggish` features.

Everything follows the AudioSet reference (tensorflow/models `research/audioset/vggish`:
`vggish_params.py`, `mel_features.py`, `vggish_input.py`, `vggish_slim.py`, `vggish_postprocess.py`);
the state-dict layout is that of the PyTorch port `harritaylor/torchvggish`, whose weights are a
conversion of the reference checkpoint.

Front end (`log_mel_examples`), from 16-kHz mono float samples: frames of 25 ms (400 samples)
every 10 ms (160), no padding, a periodic Hann window, the magnitude of a 512-point real FFT;
64 mel bands from 125 to 7500 Hz, triangles in the HTK mel domain (1127 ln(1 + f / 700)) over the
FFT bins, the DC bin excluded; then log(mel + 0.01). The reference cuts a whole clip into
consecutive 96-frame (0.96-s) examples; here every 1-s segment gives one example, its own first 96
frames (0 to 0.975 s of the segment), because the HAN takes one vector a second (the AVVP features
are 10 x 128 for 10 s) and a segment's feature then describes that segment only.

Network (`VggishNet`): 3x3 convolutions (stride 1, same padding) with ReLU in four blocks, each
followed by a 2x2 max-pool (64 | 128 | 256 256 | 512 512 channels), flattened in the reference's
(height, width, channel) order, then fully connected 4096, 4096 and the 128-d embedding. The
widths come from a JSON model config (`model_configs/vggish.json`; tiny ones for tests).
`embedding_relu`: whether the embedding layer has a ReLU. The reference had one until late 2020
(and torchvggish keeps it); the AVVP features (2020) were extracted before it was removed, so the
real config keeps it.

Post-processor (`VggishPostprocessor`): the AudioSet release's PCA (with whitening) and 8-bit
quantisation: (embedding - means) times the PCA matrix, clipped to [-2, 2], mapped to [0, 255] by
(x + 2) * 255 / 4 and truncated to an integer as the reference's cast to uint8 does (torchvggish
rounds instead), returned as float. The AVVP features are post-processed embeddings, so it is
applied whenever the weights file holds the PCA parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import numpy as np
import torch
from torch import nn

SAMPLE_RATE = 16000
WINDOW_SAMPLES = 400  # 0.025 s
HOP_SAMPLES = 160  # 0.010 s
FFT_LENGTH = 512  # the next power of two of the window
MEL_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s
EXAMPLE_SAMPLES = WINDOW_SAMPLES + (EXAMPLE_FRAMES - 1) * HOP_SAMPLES  # 15600: what one example reads
QUANTIZE_MIN, QUANTIZE_MAX = -2.0, 2.0
_POOLED_GRID = (EXAMPLE_FRAMES // 16, MEL_BANDS // 16)  # (6, 4) after four 2x2 pools

# Names of the PCA parameters in the files that carry them, by the canonical key they load into:
# torchvggish's model (`pproc.pca_eigen_vectors`; older releases `pproc.pca_matrix`), its separate
# PCA file and the reference's npz (`pca_eigen_vectors`, `pca_means`), the reference's attributes.
PCA_KEYS: dict[str, tuple[str, ...]] = {
    "pproc.pca_eigen_vectors": ("pproc.pca_eigen_vectors", "pproc.pca_matrix", "pproc._pca_matrix", "pca_eigen_vectors"),
    "pproc.pca_means": ("pproc.pca_means", "pproc._pca_means", "pca_means"),
}


def hertz_to_mel(hertz: np.ndarray | float) -> np.ndarray:
    """The HTK mel scale the reference uses."""
    return 1127.0 * np.log1p(np.asarray(hertz, dtype=np.float64) / 700.0)


@cache
def mel_weights() -> np.ndarray:
    """(257, 64) float64: FFT-bin magnitudes -> mel bands (triangles in the mel domain, DC excluded)."""
    bins_mel = hertz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2, FFT_LENGTH // 2 + 1))
    edges = np.linspace(hertz_to_mel(MEL_MIN_HZ), hertz_to_mel(MEL_MAX_HZ), MEL_BANDS + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (centre - lower)
    falling = (upper - bins_mel[:, None]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0] = 0.0
    return weights


def log_mel_examples(waveforms: torch.Tensor) -> torch.Tensor:
    """float (B, >= 15600) 16-kHz mono -> (B, 96, 64) float32: one log-mel example per row, from its first 0.975 s."""
    if waveforms.ndim != 2 or waveforms.shape[1] < EXAMPLE_SAMPLES or not waveforms.is_floating_point():
        raise ValueError(
            f"VGGish audio: expected float (B, >= {EXAMPLE_SAMPLES}) at {SAMPLE_RATE} Hz, "
            f"got {waveforms.dtype} {tuple(waveforms.shape)}"
        )
    x = waveforms[:, :EXAMPLE_SAMPLES].float()
    frames = x.unfold(1, WINDOW_SAMPLES, HOP_SAMPLES)  # (B, 96, 400)
    window = torch.hann_window(WINDOW_SAMPLES, periodic=True, device=x.device)
    magnitudes = torch.fft.rfft(frames * window, n=FFT_LENGTH).abs()  # (B, 96, 257)
    weights = torch.as_tensor(mel_weights(), dtype=torch.float32, device=x.device)
    return torch.log(magnitudes @ weights + LOG_OFFSET)


class VggishPostprocessor(nn.Module):
    """The AudioSet PCA + 8-bit quantisation of VGGish embeddings (module docstring)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("pca_eigen_vectors", torch.zeros(dim, dim))
        self.register_buffer("pca_means", torch.zeros(dim, 1))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, dim) float -> (B, dim) float32 of integers in [0, 255]."""
        pca = (embeddings.float() - self.pca_means.T) @ self.pca_eigen_vectors.T
        clipped = pca.clamp(QUANTIZE_MIN, QUANTIZE_MAX)
        return torch.floor((clipped - QUANTIZE_MIN) * (255.0 / (QUANTIZE_MAX - QUANTIZE_MIN)))


class VggishNet(nn.Module):
    """VGGish's network on (B, 96, 64) log-mel examples; keys match torchvggish's state dict.

    `cfg` (a model config's `vggish_cfg`): `blocks` (conv widths of the four pooled blocks),
    `fc` (hidden widths), `embedding` (output width), `embedding_relu`. `postprocess`: whether
    it carries the PCA post-processor (`pproc.*`), applied by `VggishEncoder`.
    """

    def __init__(self, cfg: Mapping[str, Any], *, postprocess: bool) -> None:
        super().__init__()
        blocks: Sequence[Sequence[int]] = cfg["blocks"]
        if len(blocks) != 4:
            raise ValueError(f"VGGish config: expected 4 conv blocks (four 2x2 pools to 6 x 4), got {len(blocks)}")
        layers: list[nn.Module] = []
        channels = 1
        for block in blocks:
            for width in block:
                layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = width
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.features = nn.Sequential(*layers)
        dense: list[nn.Module] = []
        width = channels * _POOLED_GRID[0] * _POOLED_GRID[1]
        for hidden in cfg["fc"]:
            dense += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            width = hidden
        dense.append(nn.Linear(width, int(cfg["embedding"])))
        if cfg["embedding_relu"]:
            dense.append(nn.ReLU(inplace=True))
        self.embeddings = nn.Sequential(*dense)
        self.dim = int(cfg["embedding"])
        self.pproc = VggishPostprocessor(self.dim) if postprocess else None

    def forward(self, examples: torch.Tensor) -> torch.Tensor:
        """(B, 96, 64) -> (B, embedding) raw embeddings (before the post-processor)."""
        x = self.features(examples[:, None])  # (B, C, 6, 4)
        x = x.permute(0, 2, 3, 1).flatten(1)  # the reference flattens (height, width, channel)
        return self.embeddings(x)


def canonical_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A VGGish state dict with the PCA parameters under the names `VggishNet` uses, means as a column."""
    out = dict(state)
    for canonical, aliases in PCA_KEYS.items():
        found = [alias for alias in aliases if alias in out]
        if found:
            value = out.pop(found[0])
            out[canonical] = value.reshape(-1, 1) if canonical == "pproc.pca_means" else value
    return out


def has_pca(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a canonical state dict carries the post-processor's parameters."""
    return all(key in state for key in PCA_KEYS)
