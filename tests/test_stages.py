"""The seven stages end to end on a small feature-mode synthetic catalog, and their caching rules."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from uwav.catalog import Catalog, load_catalog
from uwav.cli import app
from uwav.evaluation import predict_nothing_scores
from uwav.labels import read_pseudo_labels
from uwav.stages import STAGES, StageError, compute_fingerprints, plan, run_pipeline, stage_status, state_dir
from uwav.stages.evaluate import NOTHING_REFERENCE, PSEUDO_LABELS_REFERENCE, ZERO_SHOT_REFERENCE
from uwav.stages.tables import dataset_tables
from uwav.training.checkpoints import load_checkpoint
from uwav.training.health import collapse_warning
from uwav.workspace import dense_truth

SIZES = {"mode": "features", "seed": 3, "n_pretrain": 40, "n_train": 60, "n_val": 20, "n_test": 20}


def small_catalog(**stage_overrides: dict) -> dict:
    stages = {
        "features": {"source": "synthetic"},
        "pretrain": {"layers": 1, "heads": 4, "epochs": 2, "warmup_epochs": 1, "batch_size": 16, "device": "cpu"},
        "train": {
            "han": {"d_model": 64, "ffn": 128, "heads": 4},
            "epochs": 2, "warmup_epochs": 1, "batch_size": 16, "device": "cpu",
        },
    }
    for stage, values in stage_overrides.items():
        stages[stage] = {**stages.get(stage, {}), **values}
    return {
        "datasets": {
            "target": {"kind": "synthetic", "annotations": "data", "role": "target", "synthetic": SIZES},
            "pre": {"kind": "synthetic", "annotations": "data", "role": "pretrain", "synthetic": SIZES},
        },
        "target": "target",
        "pretrain": "pre",
        "stages": stages,
    }


def write_catalog(folder: Path, data: dict) -> Path:
    path = folder / "data_catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One full pipeline run, shared by the tests below (each copies it before changing anything)."""
    folder = tmp_path_factory.mktemp("pipeline")
    catalog = load_catalog(write_catalog(folder, small_catalog()))
    records = run_pipeline(catalog, progress=False)
    assert [r.stage for r in records] == list(STAGES)
    return folder


def copy_run(source: Path, target: Path) -> Path:
    """A copy of a finished run; records hold absolute paths, so they are rewritten to the copy."""
    shutil.copytree(source, target)
    for record in (target / "runs" / "state").glob("*.json"):
        record.write_text(record.read_text().replace(str(source), str(target)))
    return target / "data_catalog.yaml"


def test_full_pipeline_outputs(finished_run: Path) -> None:
    catalog = load_catalog(finished_run / "data_catalog.yaml")
    state = state_dir(catalog)
    evaluate = state.record("evaluate")
    assert evaluate is not None
    scores = json.loads(Path(evaluate.outputs["metrics"]).read_text())
    assert set(scores) >= {"seg_a", "seg_v", "seg_av", "seg_type", "seg_event", "event_type", "event_event"}
    assert all(0.0 <= value <= 100.0 for value in scores.values())
    assert Path(evaluate.outputs["report"]).read_text().startswith("<!DOCTYPE html>")
    # Pseudo-labels cover every target video with features, as the contract's Parquet.
    segment = state.record("segment")
    manifest = pl.read_parquet(segment.outputs["target_manifest"])
    folder = Path(state.record("pseudo_labels").outputs["pseudo_labels"])
    labels = read_pseudo_labels(folder, manifest["video_id"].to_list())
    assert labels.arrays["audio_soft"].shape == (manifest.height, 10, 25)
    soft, hard = labels.arrays["visual_soft"], labels.arrays["visual_hard"]
    assert ((soft > 0.5) == (hard == 1)).all(), "eq. 10 and 12 agree: sigmoid(z - theta) > 0.5 iff z > theta"
    thresholds = json.loads(Path(state.record("calibrate").outputs["thresholds"]).read_text())
    assert thresholds["source"]["split"] == "val"
    quality = state.record("pseudo_labels").metrics["quality"]
    assert set(quality) == {"val", "test"}
    assert all(set(by_labels) == {"UWAV generator"} for by_labels in quality.values())  # where they came from
    assert state.record("train").metrics["precision"] == state.record("pretrain").metrics["precision"] == "fp32"
    warnings = state.record("train").metrics["health_warnings"]
    assert isinstance(warnings, list)
    report = Path(evaluate.outputs["report"]).read_text()
    assert all(warning.split(";")[0] in report for warning in warnings)
    # The references beside the model, on the same (test) videos: the pseudo-labels' scores are
    # the pseudo_labels stage's own test-split quality (every test video is evaluated here), and
    # predicting nothing scores as the protocol says on the test truth.
    references = evaluate.metrics["references"]
    assert references[PSEUDO_LABELS_REFERENCE] == pytest.approx(quality["test"]["UWAV generator"])
    test_ids = sorted(manifest.filter(pl.col("split") == "test")["video_id"].to_list())
    truth = dense_truth(dataset_tables(catalog, "target"), test_ids, 10)
    assert references[NOTHING_REFERENCE] == pytest.approx(predict_nothing_scores(truth["audio"], truth["visual"]))
    assert references[NOTHING_REFERENCE] != references[PSEUDO_LABELS_REFERENCE]
    assert NOTHING_REFERENCE in report and PSEUDO_LABELS_REFERENCE in report
    # The encoders' zero-shot per-segment labels too (the store holds the class text embeddings).
    assert set(references) == {PSEUDO_LABELS_REFERENCE, ZERO_SHOT_REFERENCE, NOTHING_REFERENCE}
    assert ZERO_SHOT_REFERENCE in report
    # The collapse check again on the test split, against that reference; named in the report if found.
    expected = collapse_warning(scores["seg_type"], references[NOTHING_REFERENCE]["seg_type"], "test")
    assert evaluate.metrics["health_warnings"] == ([expected] if expected else [])
    assert all(warning.split(";")[0] in report for warning in evaluate.metrics["health_warnings"])


def test_unchanged_catalog_is_a_no_op(finished_run: Path) -> None:
    catalog = load_catalog(finished_run / "data_catalog.yaml")
    assert plan(catalog) == []
    assert all(status.state == "fresh" for status in stage_status(catalog))
    assert run_pipeline(catalog, progress=False) == []


@pytest.mark.parametrize(
    ("change", "rerun"),
    [
        ({"train": {"mixup": False}}, ["train", "evaluate"]),
        ({"evaluate": {"threshold": 0.4}}, ["evaluate"]),
        ({"calibrate": {"method": "quantile"}}, ["calibrate", "pseudo_labels", "train", "evaluate"]),
        ({"pretrain": {"epochs": 3}}, ["pretrain", "calibrate", "pseudo_labels", "train", "evaluate"]),
    ],
)
def test_a_changed_setting_reruns_exactly_its_stage_and_downstream(
    finished_run: Path, tmp_path: Path, change: dict, rerun: list[str]
) -> None:
    path = copy_run(finished_run, tmp_path / "run")
    write_catalog(path.parent, small_catalog(**change))
    catalog = load_catalog(path)
    statuses = {status.stage: status for status in stage_status(catalog)}
    assert [stage for stage in STAGES if statuses[stage].state != "fresh"] == rerun
    assert "settings" in statuses[rerun[0]].why
    if len(rerun) > 1:
        assert f"{rerun[0]} changed" in statuses[rerun[1]].why
    records = run_pipeline(catalog, progress=False)
    assert [record.stage for record in records] == rerun


def test_forcing_a_stage_reruns_it_and_downstream_only(finished_run: Path, tmp_path: Path) -> None:
    catalog = load_catalog(copy_run(finished_run, tmp_path / "run"))
    assert plan(catalog, force=["train"]) == ["train", "evaluate"]
    assert plan(catalog, stages=["pseudo_labels"], force=["calibrate"]) == ["calibrate", "pseudo_labels"]
    with pytest.raises(StageError, match="unknown stage 'trian'"):
        plan(catalog, stages=["trian"])


def test_deleted_outputs_make_a_stage_stale(finished_run: Path, tmp_path: Path) -> None:
    catalog = load_catalog(copy_run(finished_run, tmp_path / "run"))
    thresholds = Path(state_dir(catalog).record("calibrate").outputs["thresholds"])
    thresholds.unlink()
    status = {s.stage: s for s in stage_status(catalog)}
    assert status["calibrate"].state == "stale" and "deleted" in status["calibrate"].why
    assert [r.stage for r in run_pipeline(catalog, stages=["calibrate"], progress=False)] == ["calibrate"]
    assert thresholds.exists()


def test_fingerprints_do_not_depend_on_devices_or_workers(tmp_path: Path) -> None:
    base = compute_fingerprints(load_catalog(write_catalog(tmp_path, small_catalog())))
    other = small_catalog(features={"workers": 7}, train={"device": "auto"}, pretrain={"device": "auto"})
    assert compute_fingerprints(load_catalog(write_catalog(tmp_path, other))) == base


def test_cli_status_and_run(finished_run: Path, tmp_path: Path) -> None:
    path = copy_run(finished_run, tmp_path / "run")
    runner = CliRunner()
    result = runner.invoke(app, ["status", "--catalog", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.count("fresh") == len(STAGES)
    result = runner.invoke(app, ["run", "--catalog", str(path)])
    assert result.exit_code == 0 and "nothing to do" in result.output
    write_catalog(path.parent, small_catalog(evaluate={"threshold": 0.3}))
    result = runner.invoke(app, ["status", "--catalog", str(path)])
    assert "evaluate  stale" in result.output and "settings" in result.output
    result = runner.invoke(app, ["run", "--catalog", str(path), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "evaluate: done" in result.output and "train: done" not in result.output


def test_ave_like_target_trains_and_scores_as_ave(tmp_path: Path) -> None:
    """An AVE-like synthetic target through every stage from the CLI: AVE's recipe (batch 16,
    ceil of the soft labels as mixup targets), the best checkpoint by validation accuracy, and
    AVE segment accuracy beside the LLP protocol."""
    data = small_catalog()
    for name in ("target", "pre"):
        data["datasets"][name]["synthetic"] = {**SIZES, "target_layout": "ave"}
    path = write_catalog(tmp_path, data)
    result = CliRunner().invoke(app, ["run", "--catalog", str(path), "--no-progress"])
    assert result.exit_code == 0, result.output
    state = state_dir(load_catalog(path))
    scores = json.loads(Path(state.record("evaluate").outputs["metrics"]).read_text())
    assert 0.0 <= scores["ave_accuracy"] <= 100.0 and "seg_type" in scores
    train = state.record("train")
    meta = load_checkpoint(Path(train.outputs["best_checkpoint"]), with_state=False).meta["identity"]
    assert meta["task"] == "ave"
    assert (meta["settings"]["batch_size"], meta["settings"]["mixup_targets"]) == (16, "ceil")
    history = json.loads(Path(train.outputs["history"]).read_text())
    assert train.metrics["best_val_score"] == max(record["val_ave_accuracy"] for record in history)
    # One audio-visual event per video: a single class in every weak label.
    manifest = pl.read_parquet(state.record("segment").outputs["target_manifest"])
    assert manifest["labels"].list.len().unique().to_list() == [1]


def test_new_target_videos_only_rerun_the_target_side(finished_run: Path, tmp_path: Path) -> None:
    """More target videos: features (incremental), calibration onwards rerun; stage 1 stays fresh."""
    path = copy_run(finished_run, tmp_path / "run")
    data = small_catalog()
    bigger = {**SIZES, "n_train": 70}
    data["datasets"]["target"]["synthetic"] = bigger
    data["datasets"]["pre"]["synthetic"] = bigger
    write_catalog(path.parent, data)
    catalog = load_catalog(path)
    states = {s.stage: s.state for s in stage_status(catalog)}
    assert states["pretrain"] == "fresh"
    assert states["features"] == "stale" and states["train"] == "stale"
    # The grown benchmark keeps every earlier video: the store takes only the 10 new ones.
    run_pipeline(catalog, ["features"], progress=False)
    metrics = state_dir(catalog).record("features").metrics
    assert (metrics["target_imported"], metrics["target_already_complete"]) == (10, 100), metrics
    assert (metrics["pretrain_imported"], metrics["pretrain_already_complete"]) == (0, 40), metrics


def test_synthetic_pretraining_set_does_not_depend_on_the_target_set() -> None:
    """What lets stage 1 stay fresh above: every video is drawn from its own key, so neither the
    target sizes nor the target layout change the pre-training part."""
    from uwav.synthetic.layouts import AVE_LIKE
    from uwav.synthetic.features import make_feature_benchmark

    sizes = {"n_pretrain": 12, "n_val": 4, "n_test": 4}
    small = make_feature_benchmark(seed=5, n_train=8, **sizes)
    for other in (
        make_feature_benchmark(seed=5, n_train=16, **sizes),
        make_feature_benchmark(seed=5, n_train=8, target_layout=AVE_LIKE, **sizes),
    ):
        assert small.pretrain.manifest.equals(other.pretrain.manifest)
        for space in small.pretrain.features:
            assert (small.pretrain.features[space] == other.pretrain.features[space]).all()


def test_stage_order_is_enforced(tmp_path: Path) -> None:
    from uwav.stages import run_stage

    catalog = load_catalog(write_catalog(tmp_path, small_catalog()))
    with pytest.raises(StageError, match="upstream stage segment is not fresh"):
        run_stage(catalog, "features", progress=False)


# ---------------------------------------------------------------- released models and the released recipe


def test_evaluate_cli_scores_a_released_han(finished_run: Path, tmp_path: Path) -> None:
    """`uwav evaluate --model PATH --kind uwav`: a UWAV-release HAN state dict scored by the one
    scoring path on the catalog's test split; a model made for other features is refused."""
    from tests.test_released_models import random_state, released_han_shapes, save
    from uwav.models.released import load_released_han
    from uwav.stages.inputs import labelled_split
    from uwav.stages.tables import open_store
    from uwav.training.han_train import score_han

    path = copy_run(finished_run, tmp_path / "run")
    # The store's HAN inputs (han.inputs: clip_clap): CLAP 512-d audio, CLIP 768-d, R(2+1)D 512-d; 25 classes.
    shapes = released_han_shapes("uwav", 2, classes=25, audio=512, visual2d=768, visual3d=512, width=32, ffn=64)
    model_path = save(random_state(shapes, seed=5), tmp_path / "HAN_uwav.pt")
    out = tmp_path / "evaluation"
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", "--model", str(model_path), "--kind", "uwav", "-c", str(path), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "Type@AV" in result.output or "seg" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    catalog = load_catalog(path)
    _, labelled = labelled_split(catalog, open_store(catalog), dataset_tables(catalog, "target"), "test")
    expected = score_han(load_released_han(model_path, "uwav"), labelled, "llp").scores
    assert metrics == pytest.approx(expected, abs=1e-9)
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")

    vggish = released_han_shapes("valor", 1, classes=25, audio=128, visual2d=2048, visual3d=512, width=32, ffn=64)
    wrong = save(random_state(vggish), tmp_path / "HAN_valor.pt")
    result = runner.invoke(app, ["evaluate", "--model", str(wrong), "--kind", "valor", "-c", str(path), "--out", str(out)])
    assert result.exit_code == 2
    assert "feature widths audio 512 (model: 128), visual2d 768 (model: 2048)" in result.output
    result = runner.invoke(app, ["evaluate", "--model", str(model_path), "--kind", "valor", "-c", str(path), "--out", str(out)])
    assert result.exit_code == 2 and "unexpected" in result.output  # a UWAV file read as VALOR's


def test_released_generator_replaces_stage_1(finished_run: Path, tmp_path: Path) -> None:
    """`stages.pretrain.checkpoint`: the pretrain stage registers a released TemporalTransformer
    (fingerprinted by content) and the pseudo-labels come from it."""
    import numpy as np
    import torch

    from tests.test_released_models import random_state, released_plg_shapes, save
    from uwav.contracts import PLG_FEATURES
    from uwav.models.released import load_released_plg
    from uwav.stages.inputs import load_split, text_embeddings
    from uwav.stages.tables import open_store
    from uwav.training.pretrain import predict_plg

    path = copy_run(finished_run, tmp_path / "run")
    state = random_state(released_plg_shapes(1, width=32, visual=768, audio=512, ffn=64), seed=2)
    state["a_logit_scale"], state["v_logit_scale"] = torch.tensor(3.2912), torch.tensor(4.6052)
    save(state, path.parent / "TemporalTransformer.pt")
    write_catalog(path.parent, small_catalog(pretrain={"checkpoint": "TemporalTransformer.pt"}))
    catalog = load_catalog(path)
    records = run_pipeline(catalog, ["pseudo_labels"], progress=False)
    assert [r.stage for r in records] == ["pretrain", "calibrate", "pseudo_labels"]
    assert records[0].metrics["released_checkpoint"].endswith("TemporalTransformer.pt")

    store = open_store(catalog)
    manifest = pl.read_parquet(state_dir(catalog).record("segment").outputs["target_manifest"]).sort("video_id")[:20]
    split = load_split(store, manifest, PLG_FEATURES)
    text = text_embeddings(store, "target")
    # The small catalog's explicit `pretrain.heads: 4` overrides the release's 16.
    expected = predict_plg(
        load_released_plg(path.parent / "TemporalTransformer.pt", heads=4), split.features["clip"],
        split.features["clap"], split.lengths, text.visual, text.audio,
    )
    labels = read_pseudo_labels(Path(state_dir(catalog).record("pseudo_labels").outputs["pseudo_labels"]), split.video_ids)
    np.testing.assert_allclose(labels.arrays["audio_logit"], expected.audio, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(labels.arrays["visual_logit"], expected.visual, rtol=1e-5, atol=1e-5)

    before = compute_fingerprints(catalog)["pretrain"]
    state["proj_a.layers.0.bias"] += 1.0
    save(state, path.parent / "TemporalTransformer.pt")
    assert compute_fingerprints(catalog)["pretrain"] != before  # same path, new content: stale

    small = random_state(released_plg_shapes(1, width=32, visual=64, audio=512, ffn=64))
    save(small, path.parent / "TemporalTransformer.pt")
    with pytest.raises(Exception, match="CLIP 64-d and CLAP 512-d embeddings; the feature store holds 768-d and 512-d"):
        run_pipeline(catalog, ["pretrain"], progress=False)


def test_released_recipe_runs_every_stage(finished_run: Path, tmp_path: Path) -> None:
    """`recipe: released` through every stage (sizes scaled down explicitly): the release's
    generator, best-validation selection, pooled-F1 thresholds, temperature-2 soft labels with the
    -inf replacement, the release's HAN, and its strict decision."""
    import numpy as np

    path = copy_run(finished_run, tmp_path / "run")
    data = small_catalog(
        pretrain={"hidden_dim": 32, "heads": 4},
        train={"han": {"d_model": 64, "ffn": 128, "heads": 4, "layers": 2}},
    )
    write_catalog(path.parent, {**data, "recipe": "released"})
    catalog = load_catalog(path)
    assert catalog.stages.train.han.projection == "mlp" and catalog.stages.pretrain.architecture == "released"
    records = {r.stage: r for r in run_pipeline(catalog, progress=False)}
    # Every stage: the UnAV segment rule is a segment setting (features only fill what the store lacks).
    assert set(records) == set(STAGES)

    pretrain = records["pretrain"]
    assert pretrain.metrics["val_videos"] > 0
    history = json.loads(Path(pretrain.outputs["history"]).read_text())
    best = max(history, key=lambda row: row["val_seg_av"])
    assert Path(pretrain.outputs["checkpoint"]).name == "best"
    assert load_checkpoint(Path(pretrain.outputs["checkpoint"]), with_state=False).meta["epoch"] == best["epoch"]

    thresholds = json.loads(Path(records["calibrate"].outputs["thresholds"]).read_text())
    assert {d["method"] for d in thresholds["details"]} == {"released_f1"}
    soft_thresholds = records["pseudo_labels"].metrics["soft_thresholds"]
    assert all(np.isfinite(soft_thresholds[m]).all() for m in ("audio", "visual"))

    # Soft labels: sigmoid((z - theta) / 2) * y with the finite thresholds.
    from uwav.workspace import weak_label_matrix

    manifest = pl.read_parquet(records_path(catalog, "segment", "target_manifest"))
    train = manifest.filter(pl.col("split") == "train")[:10]
    labels = read_pseudo_labels(Path(records["pseudo_labels"].outputs["pseudo_labels"]), train["video_id"].to_list())
    weak = weak_label_matrix(train, thresholds["classes"])
    for m in ("audio", "visual"):
        z = labels.arrays[f"{m}_logit"]
        expected = 1.0 / (1.0 + np.exp(-(z - np.asarray(soft_thresholds[m], dtype=np.float32)) / 2.0)) * weak[:, None, :]
        np.testing.assert_allclose(labels.arrays[f"{m}_soft"], expected, rtol=1e-5, atol=1e-6)

    model = load_checkpoint(Path(records["train"].outputs["best_checkpoint"]), with_state=False).meta["identity"]["model"]
    assert (model["update"], model["projection"], model["layers"]) == ("sequential", "mlp", 2)
    assert all(0.0 <= v <= 100.0 for v in records["evaluate"].metrics["scores"].values())


def records_path(catalog: Catalog, stage: str, output: str) -> Path:
    """An output location of a stage's record."""
    return Path(state_dir(catalog).record(stage).outputs[output])
