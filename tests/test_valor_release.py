"""VALOR's release imported as it is (issue #22, part 2): its (64, 768) CLAP feature maps as the
per-clip feature `clap_maps`, its segment pseudo-labels as the pseudo-label stage's output, a
catalog without a pre-training set, and `uwav evaluate` of VALOR / VALOR+ / VALOR++ from the
release alone. The release is generated (random arrays in VALOR's exact layout, shapes and
dtypes) for a few videos of the real LLP annotation files (`tests/test_released_features.py`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from typer.testing import CliRunner

from tests.test_released_features import N_LLP, make_release
from tests.test_released_models import RELEASED_HEADS, random_state, released_han_forward, released_han_shapes, save
from uwav.catalog import load_catalog
from uwav.cli import app
from uwav.contracts import HAN_INPUT_FEATURES, TrainOutputs
from uwav.datasets import LLP_CLASSES, read_llp
from uwav.errors import InvalidInputError, StageError
from uwav.evaluation import avvp_scores, dense_to_arrays
from uwav.features.released import find_release, import_released_segments
from uwav.features.store import FeatureStore
from uwav.labels import read_pseudo_labels
from uwav.labels.released import read_released_pseudo_labels
from uwav.stages import pipeline_stages, run_pipeline, stage_status, state_dir
from uwav.stages.evaluate import PSEUDO_LABELS_REFERENCE, RELEASED_PSEUDO_LABELS_REFERENCE
from uwav.training.checkpoints import load_checkpoint

LABEL_FOLDERS = {"audio": "CLAP/segment_pseudo_labels", "visual": "CLIP/segment_pseudo_labels"}
# A small VALOR+-shaped HAN (VALOR+: width 256, 4 layers): width 32, 4 layers, FFN 64, 8 heads.
WIDTH, LAYERS, FFN = 32, 4, 64


def llp_manifest(data: Path, video_ids: list[str]) -> pl.DataFrame:
    manifest, _ = read_llp(data / "llp")
    return manifest.filter(pl.col("video_id").is_in(video_ids))


def valor_catalog(folder: Path, data: Path, **stages: dict) -> Path:
    """VALOR's data folder in `folder/release` and LLP alone: no pre-training set, float32 features
    (so that outputs compare with the release's files at fp32)."""
    catalog = {
        "recipe": "valor",
        "datasets": {"llp": {"kind": "llp", "annotations": str(data / "llp")}},
        "target": "llp",
        "stages": {
            "features": {"source": "released", "released_root": "release", "dtype": "float32"},
            "train": {"han": {"d_model": WIDTH, "ffn": FFN}, "epochs": 2, "warmup_epochs": 1, "batch_size": 8, "device": "cpu"},
            **stages,
        },
    }
    path = folder / "data_catalog.yaml"
    path.write_text(yaml.safe_dump(catalog))
    return path


# ---------------------------------------------------------------- the CLAP maps


def test_valor_clap_maps_are_stored_as_a_per_clip_feature(tmp_path: Path, shared_data: Path) -> None:
    """The bug: VALOR's `CLAP/features` were read as (10, 512) segment embeddings and every video was
    skipped as mis-shaped. They are (64, 768) maps of the whole clip, stored as they are."""
    chosen = make_release(tmp_path / "release", shared_data, valor_llp=True)
    layout = find_release(tmp_path / "release", "llp")
    manifest = llp_manifest(shared_data, chosen["llp"])
    store = FeatureStore(str(tmp_path / "store.zarr"), dtype="float32")
    report = import_released_segments(store, layout, manifest, workers=2)
    broken = set(chosen["broken"][:2])  # a missing CLIP file, an unreadable CLAP file
    assert sorted(report.imported) == sorted(set(chosen["llp"]) - broken)
    assert set(report.problems["video_id"]) == broken
    assert store.is_per_clip("clap_maps") and store.feature_shape("clap_maps") == (64, 768)
    assert store.encoder_identity("clap_maps") == "released/clap_maps"
    ids = sorted(report.imported)
    maps, lengths = store.read("clap_maps", ids)
    expected = np.stack([np.load(layout.file_for("clap_maps", video_id)) for video_id in ids])
    np.testing.assert_array_equal(maps, expected)
    assert lengths.tolist() == [10] * len(ids)
    clip, _ = store.read("clip", ids)
    np.testing.assert_array_equal(clip, np.stack([np.load(layout.file_for("clip", video_id)) for video_id in ids]))


def test_both_releases_in_one_folder_import_both_clap_features(tmp_path: Path, shared_data: Path) -> None:
    chosen = make_release(tmp_path / "release", shared_data)  # UWAV layout: (10, 512) embeddings
    rng = np.random.default_rng(5)
    (tmp_path / "release" / "CLAP" / "features").mkdir(parents=True)
    for video_id in chosen["llp"]:
        np.save(tmp_path / "release" / "CLAP" / "features" / f"{video_id[:11]}.npy", rng.standard_normal((64, 768), dtype=np.float32))
    layout = find_release(tmp_path / "release", "llp")
    assert set(layout.segment_folders) == {"clip", "clap", "clap_maps"}
    assert layout.segment_folders["clap"].name == "segment_feats" and layout.segment_folders["clap_maps"].name == "features"
    store = FeatureStore(str(tmp_path / "store.zarr"), dtype="float32")
    report = import_released_segments(store, layout, llp_manifest(shared_data, chosen["llp"]), workers=2)
    assert len(report.imported) == len(chosen["llp"]) - 2
    assert store.read("clap", report.imported[:1])[0].shape == (1, 10, 512)
    assert store.read("clap_maps", report.imported[:1])[0].shape == (1, 64, 768)


def test_a_clap_folder_of_neither_shape_is_refused_naming_the_shapes(tmp_path: Path) -> None:
    (tmp_path / "CLIP" / "features").mkdir(parents=True)
    (tmp_path / "CLAP" / "features").mkdir(parents=True)
    np.save(tmp_path / "CLAP" / "features" / "BjCEufrlXm4.npy", np.zeros((10, 768), np.float32))
    with pytest.raises(InvalidInputError) as raised:
        find_release(tmp_path, "llp")
    message = str(raised.value)
    assert "CLAP/features" in message and "BjCEufrlXm4.npy" in message
    assert "(10, 768)" in message and "(10, 512)" in message and "(64, 768)" in message


# ---------------------------------------------------------------- released pseudo-labels


def test_released_pseudo_labels_are_read_as_they_are_and_bad_files_listed(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    files = {}
    for video_id in ("good_a_0_10", "good_b_0_10", "missing_0_10", "nonbinary0_0_10", "misshapen0_0_10"):
        for modality, folder in LABEL_FOLDERS.items():
            labels = (rng.random((10, 25)) < 0.3).astype(np.int64)
            if video_id.startswith("nonbinary") and modality == "audio":
                labels[2, 3] = 2
            if video_id.startswith("misshapen") and modality == "visual":
                labels = labels[:, :24]
            if video_id.startswith("missing") and modality == "visual":
                continue
            (tmp_path / folder).mkdir(parents=True, exist_ok=True)
            np.save(tmp_path / folder / f"{video_id[:11]}.npy", labels)
            files[video_id, modality] = labels
    ids = ["missing_0_10", "good_b_0_10", "nonbinary0_0_10", "good_a_0_10", "misshapen0_0_10"]
    read = read_released_pseudo_labels(tmp_path, "llp", ids, [10] * len(ids), 25)
    assert read.video_ids == ["good_b_0_10", "good_a_0_10"]
    for modality in ("audio", "visual"):
        values = getattr(read.labels, modality)
        assert values.dtype == np.int8 and values.shape == (2, 10, 25)
        np.testing.assert_array_equal(values, np.stack([files[video_id, modality] for video_id in read.video_ids]))
    problems = {(row["video_id"], row["kind"]): row["problem"] for row in read.problems.iter_rows(named=True)}
    assert problems == {
        ("missing_0_10", "CLIP/segment_pseudo_labels"): "missing",
        ("nonbinary0_0_10", "CLAP/segment_pseudo_labels"): "invalid values",
        ("misshapen0_0_10", "CLIP/segment_pseudo_labels"): "misshapen",
    }


# ---------------------------------------------------------------- VALOR's recipe from the release alone


def test_valor_recipe_trains_on_the_released_pseudo_labels_without_a_pretraining_set(tmp_path: Path, shared_data: Path) -> None:
    chosen = make_release(tmp_path / "release", shared_data, valor_llp=True)
    path = valor_catalog(tmp_path, shared_data, pseudo_labels={"source": "released", "released_root": "release"})
    catalog = load_catalog(path)
    assert catalog.pretrain is None
    assert pipeline_stages(catalog) == ("segment", "features", "pseudo_labels", "train", "evaluate")
    with pytest.raises(StageError, match="not part of this catalog's pipeline"):
        run_pipeline(catalog, ["calibrate"], progress=False)
    result = CliRunner().invoke(app, ["run", "--catalog", str(path), "--no-progress"])
    assert result.exit_code == 0, result.output
    state = state_dir(catalog)
    assert state.record("pretrain") is None and state.record("calibrate") is None
    statuses = {status.stage: status.state for status in stage_status(catalog)}
    assert statuses == {"segment": "fresh", "features": "fresh", "pretrain": "unused", "calibrate": "unused",
                        "pseudo_labels": "fresh", "train": "fresh", "evaluate": "fresh"}  # fmt: skip
    status = CliRunner().invoke(app, ["status", "--catalog", str(path)])
    assert status.exit_code == 0 and "unused" in status.output

    # The pseudo-labels are the release's files: soft = hard = the 0/1 arrays, no logits.
    pseudo = state.record("pseudo_labels")
    assert pseudo.metrics["source"] == "released" and pseudo.metrics["released_videos"] == len(chosen["llp"])
    assert pseudo.metrics["labels_outside_weak_label"] == 0
    labels = read_pseudo_labels(Path(pseudo.outputs["pseudo_labels"]), chosen["llp"])
    for modality, folder in LABEL_FOLDERS.items():
        files = np.stack([np.load(tmp_path / "release" / folder / f"{video_id[:11]}.npy") for video_id in chosen["llp"]])
        np.testing.assert_array_equal(labels.arrays[f"{modality}_hard"], files)
        np.testing.assert_array_equal(labels.arrays[f"{modality}_soft"], files.astype(np.float32))
        assert np.isnan(labels.arrays[f"{modality}_logit"]).all()
    assert set(pseudo.metrics["quality"]["test"]) == {"VALOR release"}

    # Trained with VALOR's recipe (the catalog overrides only the size and the schedule's length)
    # on every training video with VGGish / ResNet-152 / R(2+1)D features (one has a non-finite R(2+1)D file).
    train = state.record("train")
    assert train.metrics["train_videos"] == N_LLP["train"] - 1
    settings = load_checkpoint(TrainOutputs.of(train.outputs).best_checkpoint, with_state=False).meta["identity"]["settings"]
    expected = {
        "labels": "binary", "reweight": False, "mixup": False, "guided_learning": False, "betas": [0.5, 0.999],
        "weight_decay": 1e-3, "grad_clip": 1.0, "lr": 1e-4, "min_lr": 1e-6, "lr_schedule": "per_epoch", "decision": "at_least",
    }  # fmt: skip
    assert {key: settings[key] for key in expected} == expected
    assert {key: settings["han"][key] for key in ("inputs", "update", "projection", "layers", "heads")} == {
        "inputs": "official", "update": "sequential", "projection": "linear", "layers": 1, "heads": 8
    }  # fmt: skip
    evaluate = state.record("evaluate")
    assert set(evaluate.metrics["references"]) == {RELEASED_PSEUDO_LABELS_REFERENCE, "predict nothing"}
    assert PSEUDO_LABELS_REFERENCE not in evaluate.metrics["references"]
    report = Path(evaluate.outputs["report"]).read_text()
    assert "trained on pseudo-labels of the VALOR release" in report


def test_a_pretraining_stage_without_a_pretraining_set_says_what_to_do(tmp_path: Path, shared_data: Path) -> None:
    make_release(tmp_path / "release", shared_data)  # the UWAV layout: the generator could run
    path = valor_catalog(tmp_path, shared_data)
    result = CliRunner().invoke(app, ["run", "--catalog", str(path), "--stages", "pretrain", "--no-progress"])
    assert result.exit_code == 2
    assert "names no `pretrain` dataset" in result.output and "stages.pseudo_labels.source: released" in result.output
    assert "Traceback" not in result.output


# ---------------------------------------------------------------- uwav evaluate from the release alone


def test_uwav_evaluate_scores_a_valor_plus_state_dict_from_the_release_alone(tmp_path: Path, shared_data: Path) -> None:
    chosen = make_release(tmp_path / "release", shared_data, valor_llp=True)
    path = valor_catalog(tmp_path, shared_data)  # pseudo-labels and stage 1 are not needed to evaluate
    sd = random_state(released_han_shapes("valor", LAYERS, classes=25, audio=128, visual2d=2048, visual3d=512, width=WIDTH, ffn=FFN))
    model = save(sd, tmp_path / "checkpoint_best.pt")
    result = CliRunner().invoke(
        app, ["evaluate", "--model", str(model), "--kind", "valor", "--catalog", str(path), "--out", str(tmp_path / "eval"), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "eval" / "metrics.json").read_text())

    # The same scores from the release's files through a transcription of VALOR's forward and its
    # test-time rule (P >= 0.5 and p >= 0.5), on the test videos.
    manifest, dense = read_llp(shared_data / "llp")
    test_ids = manifest.filter(pl.col("split") == "test").filter(pl.col("video_id").is_in(chosen["llp"]))["video_id"].to_list()
    assert len(test_ids) == N_LLP["test"]

    def stacked(folder: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.load(tmp_path / "release" / "feats" / folder / f"{v[:11]}.npy") for v in test_ids]))

    with torch.no_grad():
        video, _, segment = released_han_forward(sd, "valor", stacked("vggish"), stacked("res152"), stacked("r2plus1d_18"), "sequential", LAYERS)
    assert RELEASED_HEADS["valor"] == 8
    on = (video >= 0.5)[:, None, None, :] & (segment >= 0.5)
    truth = dense_to_arrays(dense.filter(pl.col("video_id").is_in(test_ids)), test_ids, list(LLP_CLASSES), 10)
    expected = avvp_scores(on[:, :, 0].numpy(), on[:, :, 1].numpy(), truth.audio, truth.visual)
    assert scores == pytest.approx(expected, abs=1e-6)
    assert on.any() and not on.all()  # decisions both ways: the comparison can fail


@pytest.mark.skipif(
    "clap_maps" not in HAN_INPUT_FEATURES,
    reason="VALOR++'s HAN audio path (stages.train.han.inputs: clap_maps, load_released_han(..., 'valor++')) is branch valorpp's",
)
def test_uwav_evaluate_feeds_valor_plus_plus_the_stored_clap_maps(tmp_path: Path, shared_data: Path) -> None:
    from uwav.models import load_released_han

    chosen = make_release(tmp_path / "release", shared_data, valor_llp=True)
    path = valor_catalog(tmp_path, shared_data, train={"han": {"inputs": "clap_maps", "d_model": WIDTH, "ffn": FFN}})
    sd = random_state(released_han_shapes("valor", LAYERS, classes=25, audio=768, visual2d=768, visual3d=512, width=WIDTH, ffn=FFN))
    model_path = save(sd, tmp_path / "checkpoint_best.pt")
    result = CliRunner().invoke(
        app, ["evaluate", "--model", str(model_path), "--kind", "valor++", "--catalog", str(path), "--out", str(tmp_path / "eval"), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    predictions = np.load(tmp_path / "eval" / "predictions.npz")
    ids = [str(video_id) for video_id in predictions["video_ids"]]
    assert set(ids) <= set(chosen["llp"]) and len(ids) == N_LLP["test"]

    def stacked(folder: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.load(tmp_path / "release" / folder / f"{v[:11]}.npy") for v in ids]))

    model = load_released_han(model_path, "valor++")
    with torch.no_grad():
        output = model(stacked("CLAP/features"), stacked("CLIP/features"), stacked("feats/r2plus1d_18"))
    np.testing.assert_allclose(predictions["segment_prob"], output.segment_prob.numpy(), atol=1e-5)
    np.testing.assert_allclose(predictions["video_prob"], output.video_prob.numpy(), atol=1e-5)
