"""The synthetic world's foundation models: tiny CLIP and CLAP trained contrastively on the caption
corpus (`uwav.synthetic.corpus`), so that their images and sounds are aligned with text as real
CLIP's and CLAP's are, and stage 1's class-text scores start out as zero-shot scores.

Each tower is built and fed exactly as the feature extraction builds and feeds it: the encoder
comes from the same builders (`build_clip_encoder` / `build_clap_encoder`: open_clip's and
laion_clap's factories, deterministic random initialisation), images pass through
`ClipEncoder.preprocess` and captions through its tokenizer; sounds are resampled as decoding
does, then pass through `ClapEncoder.audio_batch`, captions through `ClapEncoder.text_tokens`.
The losses are the libraries' own (open_clip's `ClipLoss`, laion_clap's `ClipLoss`), the logit
scales clamped at 100 as both training scripts do, AdamW without decay on gains and biases as
open_clip's script has it.

CLIP trains whole. CLAP trains LiT-style (Zhai et al. 2022, open_clip's `--lock-image`): its
audio branch (the Cnn6 convolutional tower) stays locked at its random initialisation while its
audio projection, its text tower and the logit scales learn, from audio-branch embeddings computed
once per clip. On this project's 2-core CPU a training pass of the Cnn6 tower costs ~22 ms of CPU
per clip: four epochs of the whole model on the default corpus took 213 CPU-seconds and reached
69% zero-shot accuracy; the locked tower's thirty epochs reach 92-96% in ~45 s, corpus included.
laion_clap's SpecAugment and mixup (which the locked tower would not see) are off.

`aligned_encoders(seed)` trains both (or finds them in the cache: `UWAV_CACHE`, default
`~/.cache/uwav`, under `encoders/<key>`, the key digesting the recipe, the seed, the model
configs, the library versions and the training code), each tower in its own single-threaded
process, side by side, and records the alignment reached: zero-shot accuracy on held-out corpus
items of the target classes with the pipeline's prompts, beside that of the same towers at their
random initialisation (near chance). Weights are safetensors files that `encoders.clip.checkpoint`
/ `encoders.clap.checkpoint` load as they load real weights; their identity is their content hash.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from uwav.atomic import atomic_dir
from uwav.caching import code_fingerprint
from uwav.catalog import EncoderConfig, FeaturesSettings
from uwav.features.clap_encoder import ClapEncoder, build_clap_encoder
from uwav.features.encoders import ClipEncoder, build_clip_encoder
from uwav.features.extract import class_prompts
from uwav.labels.zero_shot import top1_accuracy, zero_shot_scores
from uwav.synthetic.corpus import CorpusItems, CorpusSettings, draw_corpus
from uwav.synthetic.signatures import TARGET_CLASSES

Tower = Literal["clip", "clap"]
CLIP_CONFIG = "uwav-tiny-clip-synthetic"  # uwav-tiny-clip with 24-token captions
CLAP_CONFIG = "uwav-tiny-clap-synthetic"  # Cnn6 at the media's 16 kHz (a 1-s clip is 26 frames), 24-token captions
CHECKPOINT_FILES: dict[str, str] = {"clip": "clip.safetensors", "clap": "clap.safetensors"}
ALIGNMENT_FILE = "alignment.json"
_MAX_LOGIT_SCALE = math.log(100)  # open_clip's and laion_clap's training clamp
_CPU = torch.device("cpu")
_ENCODE_BATCH = 256


@dataclass(frozen=True)
class TowerSchedule:
    """One tower's training: AdamW, linear warm-up then cosine decay, per optimizer step."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.1
    warmup_fraction: float = 0.1


@dataclass(frozen=True)
class EncoderRecipe:
    """What the aligned encoders are: model configs, corpus and schedules."""

    clip_config: str = CLIP_CONFIG
    clap_config: str = CLAP_CONFIG
    corpus: CorpusSettings = field(default_factory=CorpusSettings)
    clip: TowerSchedule = field(default_factory=lambda: TowerSchedule(epochs=10, batch_size=128, lr=2e-3))
    clap: TowerSchedule = field(default_factory=lambda: TowerSchedule(epochs=30, batch_size=128, lr=2e-3))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def config(self, tower: Tower) -> str:
        return self.clip_config if tower == "clip" else self.clap_config

    def schedule(self, tower: Tower) -> TowerSchedule:
        return self.clip if tower == "clip" else self.clap


@dataclass(frozen=True)
class AlignedEncoders:
    """Trained weights files and the alignment they reached (`alignment.json`)."""

    folder: Path
    clip_config: str
    clap_config: str
    alignment: dict[str, Any]

    def checkpoint(self, tower: Tower) -> Path:
        return self.folder / CHECKPOINT_FILES[tower]

    def catalog_encoders(self) -> dict[str, dict[str, str]]:
        """The `encoders.clip` / `encoders.clap` entries of a catalog that uses them."""
        return {
            "clip": {"name": self.clip_config, "checkpoint": str(self.checkpoint("clip"))},
            "clap": {"name": self.clap_config, "checkpoint": str(self.checkpoint("clap"))},
        }


def cache_root() -> Path:
    """uwav's cache folder: `UWAV_CACHE`, else `~/.cache/uwav`."""
    return Path(os.environ.get("UWAV_CACHE") or "~/.cache/uwav").expanduser()


# ---------------------------------------------------------------- building and feeding the towers


def random_tower(tower: Tower, config: str) -> ClipEncoder | ClapEncoder:
    """A tower at its random initialisation, built as the feature extraction builds it."""
    build = build_clip_encoder if tower == "clip" else build_clap_encoder
    return build(EncoderConfig(name=config, random_init=True), _CPU)


def encoder_inputs(encoder: ClipEncoder | ClapEncoder, items: CorpusItems, corpus: CorpusSettings) -> np.ndarray:
    """Corpus items as decoding hands them to the encoder: frames as they are, audio resampled
    from the media's rate to the encoder's as decoding does (soxr HQ)."""
    if isinstance(encoder, ClipEncoder) or corpus.audio_rate == encoder.sample_rate:
        return items.inputs
    import soxr

    return np.stack([soxr.resample(w, corpus.audio_rate, encoder.sample_rate, quality="HQ") for w in items.inputs]).astype(
        np.float32
    )


StepLoss = Callable[[np.ndarray, list[str]], torch.Tensor]  # (item indices, captions) -> loss


def _clip_training(encoder: ClipEncoder, inputs: np.ndarray) -> tuple[StepLoss, list[nn.Parameter]]:
    """The whole CLIP learns, through its own forward and open_clip's loss."""
    from open_clip import ClipLoss

    loss = ClipLoss()
    model = encoder.model.train().requires_grad_(True)

    def step(batch: np.ndarray, captions: list[str]) -> torch.Tensor:
        image, text, scale = model(encoder.preprocess(inputs[batch]), encoder.tokenizer(captions))[:3]
        return loss(image, text, scale)

    return step, list(model.parameters())


def _clap_training(encoder: ClapEncoder, inputs: np.ndarray) -> tuple[StepLoss, list[nn.Parameter]]:
    """CLAP with its audio branch locked (module docstring): the branch's embeddings of every clip
    are computed once, as `ClapEncoder.embed` computes them; the audio projection, the text tower
    and the logit scales learn through laion_clap's loss on what CLAP's forward compares (the
    normalised projections, scaled by `logit_scale_a`; `logit_scale_t` serves only its MLP loss)."""
    from clap_module import ClipLoss  # laion_clap's package, registered by building the encoder

    loss = ClipLoss()
    model = encoder.model
    with torch.no_grad():
        hidden = torch.cat(
            [
                model.encode_audio(encoder.audio_batch(inputs[i : i + _ENCODE_BATCH]), device=encoder.device)["embedding"]
                for i in range(0, len(inputs), _ENCODE_BATCH)
            ]
        )
    learning = [model.audio_projection, model.text_branch, model.token_embedding, model.ln_final, model.text_projection]
    for module in learning:
        module.train().requires_grad_(True)
    extra = [model.positional_embedding, model.logit_scale_a]
    for parameter in extra:
        parameter.requires_grad_(True)

    def step(batch: np.ndarray, captions: list[str]) -> torch.Tensor:
        audio = F.normalize(model.audio_projection(hidden[torch.from_numpy(batch)]), dim=-1)
        text = F.normalize(model.encode_text(encoder.text_tokens(captions), device=encoder.device), dim=-1)
        return loss(audio, text, model.logit_scale_a.exp())

    return step, [*(p for module in learning for p in module.parameters()), *extra]


def _logit_scale(encoder: ClipEncoder | ClapEncoder) -> nn.Parameter:
    """The (log) logit scale the tower's loss uses."""
    return encoder.model.logit_scale if isinstance(encoder, ClipEncoder) else encoder.model.logit_scale_a


def train_tower(
    encoder: ClipEncoder | ClapEncoder, items: CorpusItems, corpus: CorpusSettings, schedule: TowerSchedule, seed: int
) -> list[float]:
    """Train `encoder`'s model in place on `items`, each step drawing one of each item's captions;
    deterministic for a seed (and a thread count). Returns each epoch's mean loss; the model is
    left in eval mode without gradients, as the encoder keeps it."""
    inputs = encoder_inputs(encoder, items, corpus)
    if isinstance(encoder, ClipEncoder):
        step_loss, parameters = _clip_training(encoder, inputs)
    else:
        step_loss, parameters = _clap_training(encoder, inputs)
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in parameters if p.ndim >= 2], "weight_decay": schedule.weight_decay},
         {"params": [p for p in parameters if p.ndim < 2], "weight_decay": 0.0}],
        lr=schedule.lr, betas=(0.9, 0.98), eps=1e-6, fused=True,
    )  # fmt: skip
    steps_per_epoch = math.ceil(len(items) / schedule.batch_size)
    total = schedule.epochs * steps_per_epoch
    warmup = max(1, round(schedule.warmup_fraction * total))
    rng = np.random.default_rng(seed)
    losses = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for epoch in range(schedule.epochs):
            order = rng.permutation(len(items))
            picks = rng.integers(0, 1 << 30, size=len(items))
            epoch_losses = []
            for start in range(0, len(items), schedule.batch_size):
                step = epoch * steps_per_epoch + start // schedule.batch_size
                progress = (step - warmup) / max(1, total - warmup)
                factor = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * progress))
                for group in optimizer.param_groups:
                    group["lr"] = schedule.lr * factor
                batch = order[start : start + schedule.batch_size]
                loss = step_loss(batch, [items.captions[i][picks[i] % len(items.captions[i])] for i in batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    _logit_scale(encoder).clamp_(0, _MAX_LOGIT_SCALE)
                epoch_losses.append(loss.item())
            losses.append(float(np.mean(epoch_losses)))
    encoder.model.eval().requires_grad_(False)
    return losses


# ---------------------------------------------------------------- alignment


def zero_shot_accuracy(
    encoder: ClipEncoder | ClapEncoder, items: CorpusItems, corpus: CorpusSettings, classes: tuple[str, ...], template: str
) -> float:
    """Share of `items` showing one of `classes` alone whose best-scoring class prompt (cosine;
    `template` over `classes`, as the features stage writes them) names it."""
    if any(len(item) != 1 or item[0] not in classes for item in items.classes):
        raise ValueError("zero-shot accuracy: every item must show exactly one of the classes")
    text = encoder.encode_text(class_prompts(template, classes))
    inputs = encoder_inputs(encoder, items, corpus)
    embeddings = np.concatenate(
        [encoder.encode_segments(inputs[i : i + _ENCODE_BATCH]) for i in range(0, len(inputs), _ENCODE_BATCH)]
    )
    truth = np.zeros((len(items), 1, len(classes)), dtype=bool)
    truth[np.arange(len(items)), 0, [classes.index(item[0]) for item in items.classes]] = True
    return top1_accuracy(zero_shot_scores(embeddings[:, None], text), truth, np.ones((len(items), 1), dtype=bool))


def _prompt(tower: Tower) -> str:
    """The pipeline's class prompt template for the tower's modality."""
    settings = FeaturesSettings()
    return settings.prompts_visual if tower == "clip" else settings.prompts_audio


# ---------------------------------------------------------------- training both, cached


def encoder_cache_key(recipe: EncoderRecipe, seed: int) -> str:
    """The recipe, seed, model configs, library versions and the code this module runs (itself and
    every uwav module it imports, as a stage's code fingerprint counts them)."""
    from uwav.features.configs import shipped_model_config

    digest = hashlib.sha256()
    identity = {
        "recipe": recipe.to_json(),
        "seed": seed,
        "model_configs": [shipped_model_config(recipe.clip_config), shipped_model_config(recipe.clap_config)],
        "versions": {name: version(name) for name in ("torch", "open_clip_torch", "laion_clap", "numpy")},
        "code": code_fingerprint("synthetic/encoders.py"),
    }
    digest.update(json.dumps(identity, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _save_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    # Contiguous copies: safetensors refuses tensors that share storage or are views.
    save_file({key: value.detach().contiguous().clone() for key, value in model.state_dict().items()}, str(path))


def train_and_save_tower(tower: Tower, seed: int, recipe: EncoderRecipe, folder: Path) -> dict[str, Any]:
    """Draw the tower's corpus, train it, write its weights into `folder`; its alignment record.

    Single-threaded: the two towers train side by side, one process each, and torch's intra-op
    threads only wait on each other for tensors this small."""
    torch.set_num_threads(1)
    started = time.perf_counter()
    modality = "image" if tower == "clip" else "audio"
    train_items = draw_corpus(seed, "train", modality, recipe.corpus, workers=1)
    heldout = draw_corpus(seed, "heldout", modality, recipe.corpus, TARGET_CLASSES, workers=1)
    encoder = random_tower(tower, recipe.config(tower))
    before = zero_shot_accuracy(encoder, heldout, recipe.corpus, TARGET_CLASSES, _prompt(tower))
    losses = train_tower(encoder, train_items, recipe.corpus, recipe.schedule(tower), seed)
    after = zero_shot_accuracy(encoder, heldout, recipe.corpus, TARGET_CLASSES, _prompt(tower))
    _save_weights(encoder.model, folder / CHECKPOINT_FILES[tower])
    return {
        "config": recipe.config(tower), "train_items": len(train_items), "heldout_items": len(heldout),
        "prompt": _prompt(tower), "zero_shot_accuracy": after, "random_init_zero_shot_accuracy": before,
        "chance": 1 / len(TARGET_CLASSES), "epoch_losses": losses, "seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip


def train_aligned_encoders(seed: int, folder: Path, recipe: EncoderRecipe, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train both towers (side by side, a process each) into `folder`, with `alignment.json`;
    returns the alignment record."""
    started = time.perf_counter()
    record: dict[str, Any] = {"seed": seed, "recipe": recipe.to_json(), "classes": list(TARGET_CLASSES)}
    towers: tuple[Tower, Tower] = ("clip", "clap")
    # Fresh interpreters: no state (threads, RNG, registries) shared with the caller.
    with ProcessPoolExecutor(max_workers=len(towers), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {tower: pool.submit(train_and_save_tower, tower, seed, recipe, folder) for tower in towers}
        for tower, future in futures.items():
            record[tower] = future.result()
            log(f"{tower} ({record[tower]['config']}) trained in {record[tower]['seconds']:.0f} s")
    record["seconds"] = round(time.perf_counter() - started, 1)
    (folder / ALIGNMENT_FILE).write_text(json.dumps(record, indent=1))
    return record


def aligned_encoders(
    seed: int = 0, recipe: EncoderRecipe | None = None, *, cache: Path | None = None, log: Callable[[str], None] = print
) -> AlignedEncoders:
    """The aligned encoders of `seed`: from the cache when made before, else trained and cached
    (written whole, atomically: a crash or a concurrent run never leaves half a pair)."""
    recipe = recipe or EncoderRecipe()
    folder = (cache or cache_root()) / "encoders" / encoder_cache_key(recipe, seed)
    if not (folder / ALIGNMENT_FILE).is_file():
        log(f"training the aligned tiny CLIP and CLAP (seed {seed}) into {folder}")
        with atomic_dir(folder) as tmp:
            train_aligned_encoders(seed, tmp, recipe, log)
    alignment = json.loads((folder / ALIGNMENT_FILE).read_text())
    return AlignedEncoders(folder, recipe.clip_config, recipe.clap_config, alignment)


def alignment_lines(encoders: AlignedEncoders) -> list[str]:
    """The alignment the encoders reached, one line per tower, then where their weights are."""
    record = encoders.alignment
    kinds = {"clip": "images", "clap": "sounds"}
    lines = [
        f"aligned {tower.upper()} ({record[tower]['config']}, seed {record['seed']}): zero-shot accuracy "
        f"{100 * record[tower]['zero_shot_accuracy']:.1f}% on {record[tower]['heldout_items']} held-out corpus "
        f"{kinds[tower]} of the {len(record['classes'])} target classes (random init "
        f"{100 * record[tower]['random_init_zero_shot_accuracy']:.1f}%, chance {100 * record[tower]['chance']:.1f}%)"
        for tower in ("clip", "clap")
    ]
    return [*lines, f"aligned encoders' weights: {encoders.folder}"]
