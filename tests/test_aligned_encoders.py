"""The synthetic world's aligned encoders (uwav.synthetic.corpus, uwav.synthetic.encoders): the
caption corpus, contrastive training, the cache, and the alignment measured end to end through the
media path a user runs (MP4 -> decoding -> the features stage's encoders -> zero-shot scores)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from uwav.caching import code_files
from uwav.catalog import EncoderConfig, load_catalog
from uwav.features.clap_encoder import build_clap_encoder
from uwav.features.encoder_base import file_digest
from uwav.features.encoders import build_clip_encoder
from uwav.stages import run_pipeline
from uwav.stages.evaluate import segment_zero_shot_accuracy
from uwav.synthetic.corpus import CORPUS_CLASSES, CorpusSettings, caption, draw_corpus
from uwav.synthetic.encoders import (
    CLAP_CONFIG,
    CLIP_CONFIG,
    AlignedEncoders,
    EncoderRecipe,
    TowerSchedule,
    aligned_encoders,
    alignment_lines,
    encoder_cache_key,
    random_tower,
    train_tower,
)
from uwav.synthetic.signatures import TARGET_CLASSES

CPU = torch.device("cpu")
# A recipe small enough for the suite (seconds per tower) that still learns: the test of the
# alignment below is that it does, through the media path.
TEST_RECIPE = EncoderRecipe(
    corpus=CorpusSettings(single_per_class=16, pairs_per_class=2, heldout_per_class=8),
    clip=TowerSchedule(epochs=16, batch_size=32, lr=1e-3, warmup_fraction=0.05),
    clap=TowerSchedule(epochs=20, batch_size=32, lr=2e-3),
)
TINY_CORPUS = CorpusSettings(single_per_class=2, pairs_per_class=1, heldout_per_class=1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("uwav-cache")


@pytest.fixture(scope="module")
def trained(cache: Path) -> AlignedEncoders:
    return aligned_encoders(3, TEST_RECIPE, cache=cache, log=lambda line: None)


# ---------------------------------------------------------------- the corpus


def test_corpus_items_are_captioned_segments_of_every_class() -> None:
    images = draw_corpus(0, "train", "image", TINY_CORPUS)
    sounds = draw_corpus(0, "train", "audio", TINY_CORPUS)
    assert images.inputs.shape == (len(CORPUS_CLASSES) * 3, 96, 96, 3) and images.inputs.dtype == np.uint8
    assert sounds.inputs.shape == (len(CORPUS_CLASSES) * 3, 16000) and sounds.inputs.dtype == np.float32
    for items in (images, sounds):
        assert {name for classes in items.classes for name in classes} == set(CORPUS_CLASSES)
        assert sum(len(classes) == 2 for classes in items.classes) == len(CORPUS_CLASSES)  # one pair per class
        for classes, captions in zip(items.classes, items.captions, strict=True):
            assert len(captions) == TINY_CORPUS.captions_per_item == len(set(captions))
            assert all(all(name.replace("_", " ") in text for name in classes) for text in captions)
    assert caption("A photo of {}", ("Baby_cry_infant_cry", "Dog")) == "A photo of Baby cry infant cry and Dog"
    # The held-out part: single classes, the ones asked for.
    heldout = draw_corpus(0, "heldout", "audio", TINY_CORPUS, TARGET_CLASSES)
    assert heldout.classes == [(name,) for name in TARGET_CLASSES]
    with pytest.raises(ValueError, match="unknown classes"):
        draw_corpus(0, "heldout", "image", TINY_CORPUS, ("Unicorn",))


def test_corpus_is_deterministic_by_seed_whatever_the_workers() -> None:
    one = draw_corpus(4, "train", "audio", TINY_CORPUS, workers=1)
    two = draw_corpus(4, "train", "audio", TINY_CORPUS, workers=3)
    assert np.array_equal(one.inputs, two.inputs) and one.captions == two.captions and one.classes == two.classes
    other = draw_corpus(5, "train", "audio", TINY_CORPUS, workers=1)
    assert not np.array_equal(one.inputs, other.inputs)
    # Training and held-out items come from different streams.
    heldout = draw_corpus(4, "heldout", "audio", TINY_CORPUS, workers=1)
    assert not any(np.array_equal(a, b) for a in heldout.inputs for b in one.inputs)


# ---------------------------------------------------------------- training


@pytest.mark.parametrize(("tower", "config"), [("clip", CLIP_CONFIG), ("clap", CLAP_CONFIG)])
def test_training_is_deterministic_for_a_seed(tower: str, config: str) -> None:
    items = draw_corpus(0, "train", "image" if tower == "clip" else "audio", TINY_CORPUS)
    schedule = TowerSchedule(epochs=2, batch_size=16, lr=1e-3)
    states, losses = [], []
    for _ in range(2):
        encoder = random_tower(tower, config)  # type: ignore[arg-type]
        losses.append(train_tower(encoder, items, TINY_CORPUS, schedule, seed=1))
        assert not encoder.model.training and not any(p.requires_grad for p in encoder.model.parameters())
        states.append(encoder.model.state_dict())
    assert losses[0] == losses[1]
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])
    initial = random_tower(tower, config).model.state_dict()  # type: ignore[arg-type]
    assert not all(torch.equal(initial[key], states[0][key]) for key in initial), "training changed nothing"


def test_clap_trains_with_its_audio_branch_locked() -> None:
    items = draw_corpus(0, "train", "audio", TINY_CORPUS)
    encoder = random_tower("clap", CLAP_CONFIG)
    before = {key: value.clone() for key, value in encoder.model.state_dict().items()}
    train_tower(encoder, items, TINY_CORPUS, TowerSchedule(epochs=1, batch_size=16, lr=1e-3), seed=0)
    after = encoder.model.state_dict()
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert not any(key.startswith("audio_branch.") for key in changed)  # BatchNorm statistics included
    assert any(key.startswith("audio_projection.") for key in changed)
    assert any(key.startswith("text_branch.") for key in changed)


# ---------------------------------------------------------------- cache and weights


def test_encoders_are_cached_by_recipe_and_seed(trained: AlignedEncoders, cache: Path) -> None:
    logged: list[str] = []
    again = aligned_encoders(3, TEST_RECIPE, cache=cache, log=logged.append)
    assert logged == [] and again.folder == trained.folder and again.alignment == trained.alignment
    assert trained.folder == cache / "encoders" / encoder_cache_key(TEST_RECIPE, 3)
    keys = {
        encoder_cache_key(TEST_RECIPE, 3),
        encoder_cache_key(TEST_RECIPE, 4),
        encoder_cache_key(replace(TEST_RECIPE, clap=replace(TEST_RECIPE.clap, epochs=21)), 3),
        encoder_cache_key(replace(TEST_RECIPE, corpus=replace(TEST_RECIPE.corpus, pairs_per_class=3)), 3),
    }
    assert len(keys) == 4
    assert not [path.name for path in trained.folder.parent.iterdir() if path.name.startswith(".")]  # no temporaries
    lines = alignment_lines(trained)
    assert lines[0].startswith(f"aligned CLIP ({CLIP_CONFIG}, seed 3): zero-shot accuracy ")
    assert lines[1].startswith(f"aligned CLAP ({CLAP_CONFIG}, seed 3): zero-shot accuracy ")


def test_the_cache_key_covers_every_module_the_training_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hand-kept list of files once keyed the weights and missed the corpus's seeding
    (synthetic/layouts.py) and the caption prompts (features/extract.py): editing them reused stale
    weights. The key now takes the code fingerprint of everything this module imports."""
    trained_code = set(code_files("synthetic/encoders.py"))
    assert {"synthetic/layouts.py", "features/extract.py", "synthetic/corpus.py", "features/clap_encoder.py"} <= trained_code
    import uwav.synthetic.encoders as encoders

    keys = set()
    for code in ("one", "another"):
        monkeypatch.setattr(encoders, "code_fingerprint", lambda module, code=code: f"{module}:{code}")
        keys.add(encoder_cache_key(TEST_RECIPE, 3))
    assert len(keys) == 2


def test_weights_load_as_checkpoints_identified_by_content(trained: AlignedEncoders) -> None:
    entries = trained.catalog_encoders()
    clip = build_clip_encoder(EncoderConfig(**entries["clip"]), CPU)
    clap = build_clap_encoder(EncoderConfig(**entries["clap"]), CPU)
    assert clip.identity == f"clip/{CLIP_CONFIG}/checkpoint=sha256:{file_digest(trained.checkpoint('clip'))}"
    assert clap.identity == f"clap/{CLAP_CONFIG}/checkpoint=sha256:{file_digest(trained.checkpoint('clap'))}"
    record = trained.alignment
    for tower in ("clip", "clap"):
        # The record's figures: aligned well above chance on held-out items, random init near it.
        assert record[tower]["zero_shot_accuracy"] >= 0.5, record[tower]
        assert record[tower]["random_init_zero_shot_accuracy"] <= 0.3, record[tower]


# ---------------------------------------------------------------- alignment through the media path


def _media_catalog(folder: Path, name: str, encoders: dict) -> Path:
    """A media-mode synthetic catalog (one generated folder shared by every catalog in `folder`)
    with its own stores and these CLIP / CLAP entries."""
    sizes = {"mode": "media", "seed": 11, "n_pretrain": 1, "n_train": 1, "n_val": 1, "n_test": 6}
    data = {
        "datasets": {
            "target": {"kind": "synthetic", "annotations": "data", "role": "target", "synthetic": sizes},
            "pre": {"kind": "synthetic", "annotations": "data", "role": "pretrain", "synthetic": sizes},
        },
        "target": "target",
        "pretrain": "pre",
        "stores": {"features": f"store/{name}.zarr", "pseudo_labels": f"store/{name}_labels", "runs": f"runs_{name}"},
        "encoders": {**encoders, "r2plus1d": {"name": "uwav-tiny-r2plus1d", "random_init": True}},
        "stages": {"features": {"batch_size": 64, "device": "cpu", "max_side": 96}},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_aligned_encoders_classify_decoded_media_zero_shot(trained: AlignedEncoders, tmp_path: Path) -> None:
    """A preprocessing or tokenizer mismatch between training and encoding fails here: the media
    are rendered, encoded to MP4, decoded and encoded by the features stage, as a user's are."""
    random_entries = {"clip": {"name": CLIP_CONFIG, "random_init": True}, "clap": {"name": CLAP_CONFIG, "random_init": True}}
    accuracy = {}
    for name, entries in (("aligned", trained.catalog_encoders()), ("random", random_entries)):
        catalog = load_catalog(_media_catalog(tmp_path, name, entries))
        run_pipeline(catalog, ["segment", "features"], progress=False)
        accuracy[name] = segment_zero_shot_accuracy(catalog, "test")
    for tower in ("clip", "clap"):
        assert accuracy["aligned"][tower] >= 0.5, accuracy
        assert accuracy["aligned"][tower] >= accuracy["random"][tower] + 0.3, accuracy
