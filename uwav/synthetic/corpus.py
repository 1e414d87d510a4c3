"""The synthetic world's web: captioned images and sounds that the tiny encoders are trained on.

Real CLIP and CLAP learnt from web image-text and audio-text pairs that share no video with LLP or
UnAV-100. This corpus plays that part at toy scale: images and 1-s sound clips of every class of
both synthetic sets (the UnAV-like pre-training classes and the LLP-like target classes), drawn
from the class signatures the media are rendered from (`uwav.synthetic.signatures`), some showing
or sounding two classes at once, each with captions built from the class names with several
templates ("a photo of dog", "dog can be heard", ...), the pipeline's two prompts among them.

Every item is drawn from a stream keyed by (seed, CORPUS_NAMESPACE, part, modality, index): a
namespace no media or feature generator uses, so no item shares a draw with any pre-training,
train, validation or test video, whatever the seeds. `part` is "train" (the encoders' training
pairs) or "heldout" (single-class items kept apart to measure zero-shot accuracy).

Items are what a decoded video gives the encoders for one segment, before the encoders' own
preprocessing: the frame on screen at the segment's centre (uint8 RGB at the media's frame size)
and the segment's second of audio at the media's sample rate.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from uwav.features.extract import class_prompts
from uwav.synthetic.layouts import derived_rng
from uwav.synthetic.signatures import CATALOGUE, NoiseSettings, TimedEvent, render_audio, render_frames

CORPUS_NAMESPACE = "encoder-corpus"
CorpusModality = Literal["image", "audio"]
CorpusPart = Literal["train", "heldout"]
CORPUS_CLASSES: tuple[str, ...] = tuple(synth_class.name for synth_class in CATALOGUE)  # both sets' classes

# Caption templates, "{}" being one class name or two joined by "and". Web-like variety: bare
# names, photo/recording phrasings, scene phrases; the pipeline's prompts (`FeaturesSettings.
# prompts_visual` / `prompts_audio`) are two of them, as "a photo of a {}" is one of CLIP's.
IMAGE_TEMPLATES: tuple[str, ...] = (
    "A photo of {}", "a photo of the {}", "{}", "a picture of {}", "{} in the video", "a video frame showing {}",
    "a blurry photo of {}", "{} seen outdoors", "there is {} in the scene", "a close-up of {}",
)  # fmt: skip
AUDIO_TEMPLATES: tuple[str, ...] = (
    "This is the sound of {}", "the sound of {}", "{}", "{} can be heard", "a recording of {}",
    "{} heard outdoors", "someone recorded {}", "the noise of {}", "{} in the background", "listen to {}",
)  # fmt: skip
TEMPLATES: dict[str, tuple[str, ...]] = {"image": IMAGE_TEMPLATES, "audio": AUDIO_TEMPLATES}
AUDIO_CONTEXT_S = 2  # an item's second is cut from a longer sound, so its rhythm need not start with it


def caption(template: str, classes: tuple[str, ...]) -> str:
    """`template` over the classes' names as the pipeline's prompts write them, joined by "and"."""
    return template.format(" and ".join(class_prompts("{}", classes)))


@dataclass(frozen=True)
class CorpusSettings:
    """How many items of each kind, and the media format they imitate (`write_media_benchmark`'s
    defaults, which the demo uses)."""

    single_per_class: int = 64  # training items per class and modality showing that class alone
    pairs_per_class: int = 16  # training items per class and modality with a second class beside it
    heldout_per_class: int = 16  # held-out single-class items per class and modality
    captions_per_item: int = 3
    frame_size: int = 96
    fps: int = 8
    audio_rate: int = 16000
    noise: NoiseSettings = field(default_factory=NoiseSettings)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CorpusItems:
    """Items of one modality: `inputs` uint8 (N, S, S, 3) centre frames or float32 (N, audio_rate)
    seconds of audio; per item the classes it shows or sounds, and its captions."""

    modality: CorpusModality
    inputs: np.ndarray
    classes: list[tuple[str, ...]]
    captions: list[tuple[str, ...]]

    def __len__(self) -> int:
        return len(self.classes)


def _item_plan(part: CorpusPart, settings: CorpusSettings, classes: tuple[str, ...]) -> list[tuple[str, bool]]:
    """(class, with a second class?) per item: each class alone `single_per_class` times
    (`heldout_per_class` when held out), then, for training, `pairs_per_class` times beside another."""
    per_class = settings.single_per_class if part == "train" else settings.heldout_per_class
    plan = [(name, False) for name in classes for _ in range(per_class)]
    if part == "train":
        plan += [(name, True) for name in classes for _ in range(settings.pairs_per_class)]
    return plan


def _render(
    modality: CorpusModality, classes: tuple[str, ...], rng: np.random.Generator, settings: CorpusSettings
) -> np.ndarray:
    if modality == "image":
        # One frame: the objects' motions start at a random phase, so any frame of an event is like any other.
        frame_s = 1.0 / settings.fps
        events = [TimedEvent(name, "visual", 0.0, frame_s) for name in classes]
        return render_frames(events, frame_s, settings.fps, settings.frame_size, rng, settings.noise)[0]
    events = [TimedEvent(name, "audio", 0.0, float(AUDIO_CONTEXT_S)) for name in classes]
    track = render_audio(events, float(AUDIO_CONTEXT_S), settings.audio_rate, rng, settings.noise)
    second = int(rng.integers(0, AUDIO_CONTEXT_S))
    return track[second * settings.audio_rate : (second + 1) * settings.audio_rate]


def _draw_item(
    seed: int, part: CorpusPart, modality: CorpusModality, settings: CorpusSettings, index: int, name: str, paired: bool
) -> tuple[np.ndarray, tuple[str, ...], tuple[str, ...]]:
    rng = derived_rng(seed, CORPUS_NAMESPACE, part, modality, index)
    classes: tuple[str, ...] = (name,)
    if paired:  # the second class is any other class of the corpus
        others = [other for other in CORPUS_CLASSES if other != name]
        classes = (name, others[int(rng.integers(len(others)))])
    templates = TEMPLATES[modality]
    chosen = rng.choice(len(templates), size=min(settings.captions_per_item, len(templates)), replace=False)
    captions = tuple(caption(templates[int(t)], classes) for t in chosen)
    return _render(modality, classes, rng, settings), classes, captions


def draw_corpus(
    seed: int,
    part: CorpusPart,
    modality: CorpusModality,
    settings: CorpusSettings,
    classes: tuple[str, ...] = CORPUS_CLASSES,
    *,
    workers: int | None = None,
) -> CorpusItems:
    """The corpus items of one part and modality over `classes`: deterministic by seed, whatever
    `workers` is (each item has its own keyed stream)."""
    unknown = sorted(set(classes) - set(CORPUS_CLASSES))
    if unknown:
        raise ValueError(f"corpus: unknown classes {unknown} (known: {', '.join(CORPUS_CLASSES)})")
    plan = _item_plan(part, settings, classes)
    # Threads suffice: numpy releases the GIL for the heavy parts.
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        items = list(
            pool.map(lambda job: _draw_item(seed, part, modality, settings, job[0], *job[1]), enumerate(plan))
        )
    return CorpusItems(
        modality, np.stack([item[0] for item in items]), [item[1] for item in items], [item[2] for item in items]
    )
