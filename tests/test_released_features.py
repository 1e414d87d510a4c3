"""`stages.features.source: released`: the public feature releases (UWAV / VALOR layouts) imported
into the store and the whole pipeline run from them, with no media anywhere. The release is
generated here (random arrays in the exact layout and shapes) for a few dozen videos of the real
LLP and UnAV-100 annotation files, with one broken file of each kind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from typer.testing import CliRunner

from uwav.catalog import load_catalog
from uwav.cli import app
from uwav.contracts import text_embedding_name
from uwav.datasets import LLP_CLASSES, read_llp, read_unav100
from uwav.features.official import load_checked
from uwav.features.released import (
    adaptive_average_pool,
    find_release,
    import_released_segments,
    import_released_text,
    official_features_folder,
)
from uwav.features.store import FeatureStore
from uwav.errors import MissingInputError
from uwav.evaluation import pseudo_label_quality
from uwav.stages import STAGES, state_dir
from uwav.stages.evaluate import PSEUDO_LABELS_REFERENCE, RELEASED_PSEUDO_LABELS_REFERENCE
from uwav.stages.tables import dataset_tables
from uwav.workspace import dense_truth, weak_label_matrix

N_LLP = {"train": 16, "val": 8, "test": 8}
N_UNAV = {"train": 16, "validation": 6}


def _save(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, values.astype(np.float32))


def _unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    values = rng.standard_normal(shape)
    return values / np.linalg.norm(values, axis=-1, keepdims=True)


def make_release(root: Path, data: Path, *, valor_llp: bool = False, seed: int = 0) -> dict[str, list[str]]:
    """A release for a few videos of the real annotation files; returns the chosen video ids and
    the ones with a broken file (`broken`). `valor_llp`: LLP in VALOR's layout (`CLIP/features`,
    `CLAP/features` holding (64, 768) CLAP maps, `feats/`, no class text embeddings), else the
    UWAV release's. VALOR's segment pseudo-labels (`CLIP|CLAP/segment_pseudo_labels`, (10, 25)
    int64, only the weak label's classes) are written in both cases."""
    rng = np.random.default_rng(seed)
    llp, _ = read_llp(data / "llp")
    dense_ids = set(pl.read_csv(data / "llp" / "AVVP_eval_audio.csv", separator="\t")["filename"])
    chosen_llp = []
    for split, n in N_LLP.items():
        rows = llp.filter(pl.col("split") == split)
        if split != "train":
            rows = rows.filter(pl.col("video_id").is_in(list(dense_ids)))
        chosen_llp += rows["video_id"].head(n).to_list()
    unav, _ = read_unav100(data / "unav100" / "unav100_annotations.json")
    chosen_unav = []
    for split, n in (("train", N_UNAV["train"]), ("val", N_UNAV["validation"])):
        chosen_unav += unav.filter(pl.col("split") == split)["video_id"].head(n).to_list()

    clip_dir, clap_dir = ("CLIP/features", "CLAP/features") if valor_llp else ("LLP/feats_CLIP/segment_feats", "LLP/feats_CLAP/segment_feats")
    clap_shape = (64, 768) if valor_llp else (10, 512)
    official = root / ("feats" if valor_llp else "LLP/feats")
    weak = weak_label_matrix(llp.filter(pl.col("video_id").is_in(chosen_llp)), list(LLP_CLASSES))
    for video_id, video_labels in zip(llp.filter(pl.col("video_id").is_in(chosen_llp))["video_id"], weak, strict=True):
        stem = video_id[:11]
        _save(root / clip_dir / f"{stem}.npy", _unit(rng, 10, 768))
        _save(root / clap_dir / f"{stem}.npy", rng.standard_normal(clap_shape))
        _save(official / "vggish" / f"{stem}.npy", rng.standard_normal((10, 128)))
        _save(official / "res152" / f"{stem}.npy", rng.standard_normal((80, 2048)))
        _save(official / "r2plus1d_18" / f"{stem}.npy", rng.standard_normal((10, 512)))
        for folder in ("CLIP/segment_pseudo_labels", "CLAP/segment_pseudo_labels"):
            labels = (rng.random((10, 25)) < 0.5) & (video_labels[None, :] > 0)
            (root / folder).mkdir(parents=True, exist_ok=True)
            np.save(root / folder / f"{stem}.npy", labels.astype(np.int64))  # as VALOR saves torch longs
    for video_id in chosen_unav:
        rows = int(rng.integers(5, 90))  # any number of rows: pooled to the video's segments
        _save(root / "UnAV/feats_CLIP/segment_feats" / f"{video_id}.npy", _unit(rng, rows, 768))
        _save(root / "UnAV/feats_CLAP/segment_feats" / f"{video_id}.npy", _unit(rng, rows, 512))
    if not valor_llp:  # VALOR's release has no class text embeddings
        _save(root / "LLP/feats_CLIP/event_feats/all_event_feats.npy", _unit(rng, 25, 768))
        _save(root / "LLP/feats_CLAP/event_feats/all_event_feats.npy", _unit(rng, 25, 512))
    _save(root / "UnAV/feats_CLIP/event_feats/all_event_feats.npy", _unit(rng, 100, 768))
    _save(root / "UnAV/feats_CLAP/event_feats/all_event_feats.npy", _unit(rng, 100, 512))

    # One broken file of each kind, on training videos (evaluation keeps its videos).
    train_llp = [v for v in chosen_llp if v in set(llp.filter(pl.col("split") == "train")["video_id"])]
    broken = {
        "missing": train_llp[0],
        "unreadable": train_llp[1],
        "non-finite": train_llp[2],
        "misshapen": chosen_unav[0],
    }
    (root / clip_dir / f"{broken['missing'][:11]}.npy").unlink()
    (root / clap_dir / f"{broken['unreadable'][:11]}.npy").write_bytes(b"not an array")
    nan = _unit(rng, 10, 512)
    nan[3, 7] = np.nan
    _save(official / "r2plus1d_18" / f"{broken['non-finite'][:11]}.npy", nan)
    _save(root / "UnAV/feats_CLAP/segment_feats" / f"{broken['misshapen']}.npy", rng.standard_normal((12, 500)))
    return {"llp": chosen_llp, "unav": chosen_unav, "broken": list(broken.values()), "broken_kinds": list(broken)}


def release_catalog(folder: Path, data: Path, **stages: dict) -> Path:
    """The catalog of a release in `folder/release`; `stages` add or replace stage blocks."""
    catalog = {
        "datasets": {
            "llp": {"kind": "llp", "annotations": str(data / "llp")},
            "unav": {"kind": "unav100", "annotations": str(data / "unav100" / "unav100_annotations.json"), "role": "pretrain"},
        },
        "target": "llp",
        "pretrain": "unav",
        "stages": {
            "features": {"source": "released", "released_root": "release"},
            "pretrain": {"layers": 1, "heads": 4, "epochs": 2, "warmup_epochs": 1, "batch_size": 8, "device": "cpu"},
            "train": {
                "han": {"d_model": 32, "ffn": 64, "heads": 4},
                "epochs": 2, "warmup_epochs": 1, "batch_size": 8, "device": "cpu",
            },
        },
    }
    catalog["stages"].update(stages)
    path = folder / "data_catalog.yaml"
    path.write_text(yaml.safe_dump(catalog))
    return path


def test_adaptive_average_pool_is_torchs() -> None:
    rng = np.random.default_rng(1)
    for rows, segments in ((7, 3), (61, 60), (60, 61), (5, 5), (1, 4), (90, 47)):
        values = rng.standard_normal((rows, 6)).astype(np.float32)
        expected = torch.nn.functional.adaptive_avg_pool1d(torch.from_numpy(values).T[None], segments)[0].T.numpy()
        np.testing.assert_allclose(adaptive_average_pool(values, segments), expected, rtol=1e-5, atol=1e-6)


def test_load_checked_any_length_axis(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.ones((4, 3), np.float32))
    assert load_checked(path, (None, 3))[1] is None
    assert load_checked(path, (None, 2))[1] == ("misshapen", "shape (4, 3), expected ('any', 2)")
    np.save(path, np.ones((0, 3), np.float32))
    assert load_checked(path, (None, 3))[1][0] == "misshapen"


def test_layouts_and_what_is_missing(tmp_path: Path, shared_data: Path) -> None:
    make_release(tmp_path / "valor", shared_data, valor_llp=True)
    layout = find_release(tmp_path / "valor", "llp")
    assert layout.segment_folders == {"clip": tmp_path / "valor" / "CLIP" / "features", "clap_maps": tmp_path / "valor" / "CLAP" / "features"}
    assert layout.text_files == {}  # VALOR's release has none; only the generator needs them
    assert official_features_folder(tmp_path / "valor") == tmp_path / "valor" / "feats"
    assert layout.file_for("clap_maps", "BjCEufrlXm4_20_30").name == "BjCEufrlXm4.npy"
    assert find_release(tmp_path / "valor", "unav100").file_for("clip", "-abc").name == "-abc.npy"
    with pytest.raises(MissingInputError, match="no CLIP segment folder for llp"):
        find_release(tmp_path / "nothing", "llp")
    with pytest.raises(MissingInputError, match="no AVVP feature folder"):
        official_features_folder(tmp_path / "nothing")


def test_import_reports_broken_files_and_a_second_import_reads_nothing(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen = make_release(tmp_path / "release", shared_data)
    unav, _ = read_unav100(shared_data / "unav100" / "unav100_annotations.json")
    manifest = unav.filter(pl.col("video_id").is_in(chosen["unav"]))
    store = FeatureStore(str(tmp_path / "store.zarr"), dtype="float32")
    layout = find_release(tmp_path / "release", "unav100")
    report = import_released_segments(store, layout, manifest, workers=2)
    assert sorted(report.imported) == sorted(set(chosen["unav"]) - {chosen["broken"][3]})
    assert report.problems.select("video_id", "problem").rows() == [(chosen["broken"][3], "misshapen")]
    # Pooled to the manifest's segment count.
    video = report.imported[0]
    values, lengths = store.read("clip", [video])
    raw = np.load(layout.file_for("clip", video))
    assert lengths[0] == manifest.filter(pl.col("video_id") == video)["n_segments"].item()
    np.testing.assert_allclose(values[0, : lengths[0]], adaptive_average_pool(raw, int(lengths[0])), atol=1e-6)

    import_released_text(store, layout, [f"class {i}" for i in range(100)], "pretrain")
    stored = store.read_text_embeddings(text_embedding_name("clap", "pretrain"))
    np.testing.assert_allclose(stored, np.load(layout.text_files["clap"]), atol=1e-7)
    assert store.text_embedding_info(text_embedding_name("clip", "pretrain"))[1].startswith("released/UnAV/feats_CLIP")

    def no_reads(*args: object, **kwargs: object) -> None:
        raise AssertionError("an array file was read")

    monkeypatch.setattr(np, "load", no_reads)
    again = import_released_segments(store, layout, manifest.filter(pl.col("video_id") != chosen["broken"][3]), workers=2)
    assert again.imported == [] and sorted(again.already_complete) == sorted(report.imported)


def test_the_whole_pipeline_runs_from_a_release_without_media(tmp_path: Path, shared_data: Path) -> None:
    chosen = make_release(tmp_path / "release", shared_data)
    # VALOR's released pseudo-labels (written into the same folder) are scored beside the generated ones.
    path = release_catalog(tmp_path, shared_data, pseudo_labels={"released_root": "release"})
    result = CliRunner().invoke(app, ["run", "--catalog", str(path), "--no-progress"])
    assert result.exit_code == 0, result.output
    catalog = load_catalog(path)
    state = state_dir(catalog)
    records = {stage: state.record(stage) for stage in STAGES}
    assert all(records.values())
    assert records["segment"].metrics["target_with_media"] == 0 and records["segment"].metrics["pretrain_with_media"] == 0
    features = records["features"].metrics
    assert features["imported"]["target_released"] == len(chosen["llp"]) - 2  # missing + unreadable
    assert features["imported"]["pretrain_released"] == len(chosen["unav"]) - 1  # misshapen
    assert features["imported"]["target_official"] == len(chosen["llp"]) - 1  # non-finite R(2+1)D
    problems = pl.read_parquet(features["problems_report"])
    found = {row["video_id"]: row["problem"] for row in problems.filter(pl.col("video_id").is_in(chosen["broken"])).iter_rows(named=True)}
    assert found == dict(zip(chosen["broken"], ["missing", "unreadable", "invalid values", "misshapen"], strict=True))
    assert records["pretrain"].metrics["videos"] == N_UNAV["train"] - 1  # the misshapen one is a training video
    assert records["train"].metrics["train_videos"] == N_LLP["train"] - 3
    scores = json.loads(Path(records["evaluate"].outputs["metrics"]).read_text())
    assert records["evaluate"].metrics["videos"] == N_LLP["test"]
    assert all(0.0 <= value <= 100.0 for value in scores.values())

    # Pseudo-label quality side by side, on the same videos: the generated labels and VALOR's,
    # the latter as the LLP protocol scores the release's files directly.
    quality = records["pseudo_labels"].metrics["quality"]
    assert {split: set(by_labels) for split, by_labels in quality.items()} == {
        "val": {"UWAV generator", "VALOR release"}, "test": {"UWAV generator", "VALOR release"}
    }
    assert records["pseudo_labels"].metrics["quality_videos"] == {"val": N_LLP["val"], "test": N_LLP["test"]}
    tables = dataset_tables(catalog, "target")
    test_ids = [video_id for video_id in tables.split("test")["video_id"].to_list() if video_id in chosen["llp"]]
    truth = dense_truth(tables, test_ids, 10)
    files = [
        np.stack([np.load(tmp_path / "release" / folder / f"{video_id[:11]}.npy") for video_id in test_ids]).astype(bool)
        for folder in ("CLAP/segment_pseudo_labels", "CLIP/segment_pseudo_labels")
    ]
    expected = pseudo_label_quality(*files, truth["audio"], truth["visual"])
    assert quality["test"]["VALOR release"] == pytest.approx(expected)
    assert quality["test"]["VALOR release"] != quality["test"]["UWAV generator"]
    references = records["evaluate"].metrics["references"]
    assert references[RELEASED_PSEUDO_LABELS_REFERENCE] == pytest.approx(expected)
    assert references[PSEUDO_LABELS_REFERENCE] == pytest.approx(quality["test"]["UWAV generator"])
    report = Path(records["evaluate"].outputs["report"]).read_text()
    assert RELEASED_PSEUDO_LABELS_REFERENCE.replace("'", "&#x27;") in report and ">VALOR release<" in report
