"""The synthetic classes' signatures and their rendering: what a class looks and sounds like.

Every class has a visual signature (a coloured shape with a texture and a motion, at its own place
in the frame) and an audio signature (a tone, chirp, harmonic stack or noise band, continuous or in
a rhythm). `render_frames` and `render_audio` draw timed events over a background of visual noise,
grey distractor shapes, audio noise and distractor noise bursts.

Both the media benchmark (`uwav.synthetic.media`, MP4 files) and the caption corpus the tiny
encoders are trained on (`uwav.synthetic.corpus`) draw from this one module, so that the encoders
learn the very classes the videos show.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

# ---------------------------------------------------------------- class signatures


@dataclass(frozen=True)
class AudioSignature:
    """A class's sound: a carrier, optionally gated into a rhythm of pulses.

    kind: 'tone' (partials at freq_hz * partials), 'harmonic' (n_partials harmonics of freq_hz with
    1/k amplitudes), 'chirp' (a sweep freq_hz -> freq2_hz repeated every 1/sweep_hz s), 'noise'
    (band-limited noise between freq_hz and freq2_hz).
    pulse_hz: 0 for a continuous sound, else pulses at this rate, sounding for `duty` of each
    period, decaying exponentially within a pulse when `decay` (plucked, struck, barked sounds).
    vibrato_hz / vibrato_depth: frequency modulation of tone and harmonic carriers.
    """

    kind: Literal["tone", "harmonic", "chirp", "noise"]
    freq_hz: float
    freq2_hz: float = 0.0
    partials: tuple[float, ...] = (1.0,)
    n_partials: int = 1
    sweep_hz: float = 1.0
    pulse_hz: float = 0.0
    duty: float = 1.0
    decay: bool = False
    vibrato_hz: float = 0.0
    vibrato_depth: float = 0.0


@dataclass(frozen=True)
class VisualSignature:
    """A class's look: a shape of one colour and texture, at its own anchor, moving in its own way.

    anchor: centre as fractions of (width, height); motion 'static', 'sweep_x', 'sweep_y', 'orbit',
    'pulse' (size) or 'blink' (on/off), at motion_hz.
    """

    shape: Literal["disc", "square", "triangle", "ring", "cross", "diamond", "bar"]
    colour: tuple[int, int, int]
    texture: Literal["solid", "stripes", "checker"]
    motion: Literal["static", "sweep_x", "sweep_y", "orbit", "pulse", "blink"]
    motion_hz: float
    anchor: tuple[float, float]


@dataclass(frozen=True)
class SynthClass:
    name: str
    audio: AudioSignature
    visual: VisualSignature


def _grid(i: int) -> tuple[float, float]:
    """Anchor i of a 4 x 4 grid, so that simultaneous objects rarely cover each other."""
    return ((i % 4 + 0.5) / 4, (i // 4 + 0.5) / 4)


# Sixteen classes: colours far apart in RGB, fundamentals/bands at distinct frequencies (below
# 5 kHz, inside the AAC band at 16 kHz), and rhythms from continuous to 12 Hz.
CATALOGUE: tuple[SynthClass, ...] = (
    SynthClass("Speech",
               AudioSignature("harmonic", 140, n_partials=8, pulse_hz=4, duty=0.6, vibrato_hz=5, vibrato_depth=0.08),
               VisualSignature("disc", (250, 150, 190), "solid", "pulse", 2.0, _grid(0))),
    SynthClass("Dog", AudioSignature("harmonic", 280, n_partials=4, pulse_hz=2, duty=0.3, decay=True),
               VisualSignature("square", (140, 80, 30), "checker", "sweep_x", 0.5, _grid(1))),
    SynthClass("Car", AudioSignature("noise", 100, 300),
               VisualSignature("bar", (230, 40, 40), "solid", "sweep_x", 0.25, _grid(2))),
    SynthClass("Fire_alarm", AudioSignature("chirp", 800, 1600, sweep_hz=1.0),
               VisualSignature("diamond", (50, 80, 230), "solid", "blink", 2.0, _grid(3))),
    SynthClass("Acoustic_guitar", AudioSignature("harmonic", 390, n_partials=6, pulse_hz=2, duty=1.0, decay=True),
               VisualSignature("triangle", (250, 140, 30), "stripes", "static", 0.0, _grid(4))),
    SynthClass("Cat", AudioSignature("chirp", 2000, 2600, sweep_hz=1.5, pulse_hz=1.5, duty=0.5),
               VisualSignature("disc", (240, 220, 40), "stripes", "sweep_y", 0.5, _grid(5))),
    SynthClass("Helicopter", AudioSignature("noise", 400, 900, pulse_hz=12, duty=0.5),
               VisualSignature("cross", (40, 210, 220), "solid", "orbit", 1.0, _grid(6))),
    SynthClass("Telephone_bell_ringing",
               AudioSignature("tone", 1300, partials=(1.0, 2.76), pulse_hz=1, duty=1.0, decay=True),
               VisualSignature("ring", (120, 200, 160), "solid", "static", 0.0, _grid(7))),
    SynthClass("Basketball_bounce", AudioSignature("tone", 90, pulse_hz=3, duty=0.4, decay=True),
               VisualSignature("square", (130, 60, 200), "solid", "pulse", 3.0, _grid(8))),
    SynthClass("Baby_cry_infant_cry",
               AudioSignature("harmonic", 780, n_partials=3, pulse_hz=1, duty=0.7, vibrato_hz=8, vibrato_depth=0.05),
               VisualSignature("disc", (160, 240, 60), "checker", "static", 0.0, _grid(9))),
    SynthClass("Flute", AudioSignature("harmonic", 550, n_partials=5, vibrato_hz=6, vibrato_depth=0.02),
               VisualSignature("bar", (255, 90, 120), "stripes", "sweep_y", 1.0, _grid(10))),
    SynthClass("Bird_chirping", AudioSignature("chirp", 3000, 4200, sweep_hz=6, pulse_hz=6, duty=0.4),
               VisualSignature("triangle", (20, 130, 120), "solid", "orbit", 2.0, _grid(11))),
    SynthClass("Train_passing", AudioSignature("noise", 1000, 1800, pulse_hz=3, duty=0.3),
               VisualSignature("bar", (20, 30, 120), "checker", "sweep_x", 0.5, _grid(12))),
    SynthClass("Water_flowing", AudioSignature("noise", 3000, 4500),
               VisualSignature("diamond", (40, 200, 60), "stripes", "sweep_y", 0.3, _grid(13))),
    SynthClass("Piano", AudioSignature("harmonic", 200, n_partials=5, pulse_hz=1.5, duty=1.0, decay=True),
               VisualSignature("square", (245, 245, 245), "stripes", "static", 0.0, _grid(14))),
    SynthClass("Engine_idling", AudioSignature("harmonic", 55, n_partials=12),
               VisualSignature("ring", (220, 50, 200), "checker", "pulse", 1.0, _grid(15))),
)  # fmt: skip
CLASSES_BY_NAME: dict[str, SynthClass] = {c.name: c for c in CATALOGUE}
# Visual events are painted in catalogue order, so overlapping objects stack the same way everywhere.
CATALOGUE_ORDER: dict[str, int] = {c.name: i for i, c in enumerate(CATALOGUE)}
# Eight classes are shared, so that what stage 1 learns on the pre-training set transfers by name.
# Target classes carry LLP names (a subset of LLP's 25), so that the LLP reader takes the set as is.
TARGET_CLASSES: tuple[str, ...] = (
    "Speech", "Dog", "Car", "Fire_alarm", "Acoustic_guitar", "Cat", "Helicopter", "Telephone_bell_ringing",
    "Basketball_bounce", "Baby_cry_infant_cry",
)  # fmt: skip
PRETRAIN_CLASSES: tuple[str, ...] = (
    "Speech", "Dog", "Car", "Fire_alarm", "Acoustic_guitar", "Cat", "Helicopter", "Telephone_bell_ringing",
    "Flute", "Bird_chirping", "Train_passing", "Water_flowing", "Piano", "Engine_idling",
)  # fmt: skip


# ---------------------------------------------------------------- audio rendering


def _band_noise(rng: np.random.Generator, n: int, rate: int, low_hz: float, high_hz: float) -> np.ndarray:
    """Unit-RMS noise with energy only between low_hz and high_hz (FFT masking)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / rate)
    spectrum[(freqs < low_hz) | (freqs > high_hz)] = 0.0
    noise = np.fft.irfft(spectrum, n)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def render_audio_signature(sig: AudioSignature, n_samples: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """`n_samples` of the class's sound at unit peak-ish level (float64), starting at phase 0 of its rhythm."""
    t = np.arange(n_samples) / rate
    phase0 = rng.uniform(0, 2 * np.pi)
    if sig.kind in ("tone", "harmonic"):
        ratios = np.asarray(sig.partials if sig.kind == "tone" else np.arange(1, sig.n_partials + 1), dtype=float)
        amplitudes = 1.0 / np.arange(1, len(ratios) + 1)
        if sig.vibrato_hz > 0:
            # Instantaneous frequency f (1 + d sin(2 pi fv t)) integrated into a phase.
            base_phase = 2 * np.pi * sig.freq_hz * (
                t - sig.vibrato_depth * np.cos(2 * np.pi * sig.vibrato_hz * t) / (2 * np.pi * sig.vibrato_hz)
            )
        else:
            base_phase = 2 * np.pi * sig.freq_hz * t
        carrier = sum(a * np.sin(r * base_phase + phase0 * r) for a, r in zip(amplitudes, ratios, strict=True))
        carrier = carrier / amplitudes.sum()
    elif sig.kind == "chirp":
        # Triangular sweep low -> high -> low over each period, as a phase integral.
        period = 1.0 / sig.sweep_hz
        position = (t % period) / period
        sweep = 1.0 - np.abs(2.0 * position - 1.0)
        freq = sig.freq_hz + (sig.freq2_hz - sig.freq_hz) * sweep
        carrier = np.sin(2 * np.pi * np.cumsum(freq) / rate + phase0)
    else:
        carrier = 0.5 * _band_noise(rng, n_samples, rate, sig.freq_hz, sig.freq2_hz)
    if sig.pulse_hz <= 0:
        return carrier
    period = 1.0 / sig.pulse_hz
    in_period = t % period
    envelope = (in_period < sig.duty * period).astype(float)
    if sig.decay:
        envelope *= np.exp(-in_period / (0.25 * sig.duty * period))
    return carrier * envelope


def _fade(n: int, rate: int) -> np.ndarray:
    """10-ms raised-cosine ramps at both ends, so that event edges do not click."""
    ramp = min(n // 2, int(0.01 * rate))
    window = np.ones(n)
    if ramp > 0:
        edge = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, ramp))
        window[:ramp] = edge
        window[n - ramp :] = edge[::-1]
    return window


@dataclass(frozen=True)
class NoiseSettings:
    """Distractors. audio_noise: RMS of low-passed background noise; bursts_per_s: rate of band-noise
    bursts at random frequencies; visual_noise: per-pixel luminance noise std (0-255 scale);
    distractor_shapes: mean number of grey moving shapes per video."""

    audio_noise: float = 0.03
    bursts_per_s: float = 0.3
    visual_noise: float = 8.0
    distractor_shapes: float = 1.5


@dataclass(frozen=True)
class TimedEvent:
    label: str
    modality: Literal["audio", "visual"]
    start_s: float
    end_s: float


def render_audio(
    events: list[TimedEvent], duration_s: float, rate: int, rng: np.random.Generator, noise: NoiseSettings
) -> np.ndarray:
    """Mono float32 track: every audio event's signature over its span, plus background noise and bursts."""
    n = int(round(duration_s * rate))
    track = np.zeros(n)
    for event in events:
        if event.modality != "audio":
            continue
        start, end = int(round(event.start_s * rate)), int(round(event.end_s * rate))
        sig = CLASSES_BY_NAME[event.label].audio
        level = rng.uniform(0.25, 0.5)
        track[start:end] += level * render_audio_signature(sig, end - start, rate, rng) * _fade(end - start, rate)
    # Background: white noise smoothed by a 4-tap moving average (more energy at low frequencies).
    background = np.convolve(rng.standard_normal(n + 3), np.ones(4) / 2.0, mode="valid")
    track += noise.audio_noise * background
    for _ in range(rng.poisson(noise.bursts_per_s * duration_s)):
        length = int(rng.uniform(0.1, 0.3) * rate)
        start = int(rng.integers(0, max(1, n - length)))
        centre = rng.uniform(200, 4000)
        burst = _band_noise(rng, length, rate, centre / 1.3, centre * 1.3) * _fade(length, rate)
        track[start : start + length] += rng.uniform(0.05, 0.15) * burst[: n - start]
    peak = np.max(np.abs(track))
    if peak > 0.95:
        track *= 0.95 / peak
    return track.astype(np.float32)


# ---------------------------------------------------------------- visual rendering


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, radius: np.ndarray) -> np.ndarray:
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "disc":
        return dx**2 + dy**2 < radius**2
    if shape == "ring":
        r2 = dx**2 + dy**2
        return (r2 < radius**2) & (r2 > (0.55 * radius) ** 2)
    if shape == "square":
        return np.maximum(ax, ay) < 0.85 * radius
    if shape == "diamond":
        return ax + ay < radius
    if shape == "cross":
        return ((ax < radius / 3) & (ay < radius)) | ((ay < radius / 3) & (ax < radius))
    if shape == "bar":
        return (ax < radius) & (ay < 0.4 * radius)
    if shape == "triangle":
        return (dy > -radius) & (dy < radius) & (ax < (dy + radius) / 2)
    raise ValueError(f"unknown shape {shape!r}")


def _texture(texture: str, dx: np.ndarray, dy: np.ndarray) -> np.ndarray | float:
    """Brightness factor inside the shape."""
    if texture == "solid":
        return 1.0
    if texture == "stripes":
        return np.where((np.floor(dy / 3) % 2) == 0, 1.0, 0.55)
    if texture == "checker":
        return np.where(((np.floor(dx / 4) + np.floor(dy / 4)) % 2) == 0, 1.0, 0.55)
    raise ValueError(f"unknown texture {texture!r}")


def _paint(
    frames: np.ndarray,
    frame_idx: np.ndarray,
    sig: VisualSignature,
    colour: np.ndarray,
    rng: np.random.Generator,
    fps: int,
) -> None:
    """Draw the object of `sig` into frames[frame_idx] (in place), moving as its signature says."""
    if len(frame_idx) == 0:
        return
    size = frames.shape[1]
    t = frame_idx / fps
    phase = rng.uniform(0, 2 * np.pi)
    # Each event puts the object a little off its anchor, so the place alone is not the answer.
    cx = np.full(len(t), sig.anchor[0] * size + rng.uniform(-0.05, 0.05) * size)
    cy = np.full(len(t), sig.anchor[1] * size + rng.uniform(-0.05, 0.05) * size)
    radius = np.full(len(t), 0.11 * size)
    amplitude = 0.08 * size
    wave = np.sin(2 * np.pi * sig.motion_hz * t + phase)
    visible = np.ones(len(t), dtype=bool)
    if sig.motion == "sweep_x":
        cx += amplitude * wave
    elif sig.motion == "sweep_y":
        cy += amplitude * wave
    elif sig.motion == "orbit":
        cx += amplitude * wave
        cy += amplitude * np.cos(2 * np.pi * sig.motion_hz * t + phase)
    elif sig.motion == "pulse":
        radius *= 1.0 + 0.3 * wave
    elif sig.motion == "blink":
        visible = wave > -0.5  # on two thirds of the time
    grid = np.arange(size, dtype=np.float32)
    dx = grid[None, None, :] - cx[:, None, None]
    dy = grid[None, :, None] - cy[:, None, None]
    mask = _shape_mask(sig.shape, dx, dy, radius[:, None, None]) & visible[:, None, None]
    shade = np.broadcast_to(_texture(sig.texture, dx, dy), mask.shape)
    painted = frames[frame_idx]
    painted[mask] = (shade[mask][:, None] * colour[None, :]).astype(np.uint8)
    frames[frame_idx] = painted


def render_frames(
    events: list[TimedEvent], duration_s: float, fps: int, size: int, rng: np.random.Generator, noise: NoiseSettings
) -> np.ndarray:
    """(F, size, size, 3) uint8 RGB: textured noisy background, grey distractors, then every visual event."""
    n_frames = int(round(duration_s * fps))
    # Background: a per-video grey level with a coarse static texture, plus per-frame luminance noise.
    base = rng.uniform(40, 90) + rng.normal(0, 10, size=3)
    coarse = rng.normal(0, 12, size=(6, 6))
    texture = np.kron(coarse, np.ones((size // 6 + 1, size // 6 + 1)))[:size, :size]
    frames_f = np.empty((n_frames, size, size, 3), dtype=np.float32)
    frames_f[:] = (base[None, None, :] + texture[:, :, None]).astype(np.float32)
    frames_f += (noise.visual_noise * rng.standard_normal((n_frames, size, size, 1))).astype(np.float32)
    frames = np.clip(frames_f, 0, 255).astype(np.uint8)
    frame_times = (np.arange(n_frames) + 0.5) / fps  # a frame shows the event when its centre is inside
    for _ in range(rng.poisson(noise.distractor_shapes)):
        start, end = np.sort(rng.uniform(0, duration_s, size=2))
        grey = rng.uniform(100, 170)
        distractor = VisualSignature(
            shape=rng.choice(["disc", "square", "triangle", "diamond", "bar"]).item(),
            colour=(0, 0, 0),
            texture="solid",
            motion=rng.choice(["sweep_x", "sweep_y", "orbit"]).item(),
            motion_hz=rng.uniform(0.1, 0.5),
            anchor=(rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8)),
        )
        idx = np.flatnonzero((frame_times >= start) & (frame_times < end))
        _paint(frames, idx, distractor, np.full(3, grey), rng, fps)
    for event in sorted(events, key=lambda e: CATALOGUE_ORDER[e.label]):
        if event.modality != "visual":
            continue
        sig = CLASSES_BY_NAME[event.label].visual
        idx = np.flatnonzero((frame_times >= event.start_s) & (frame_times < event.end_s))
        _paint(frames, idx, sig, np.asarray(sig.colour, dtype=np.float32), rng, fps)
    return frames
