"""`uwav demo --retrain`: after a demo, more training videos arrive; only they are encoded, the
model is retrained on all of them, and the output says how the new model compares and which is current."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from uwav.catalog import load_catalog
from uwav.cli import USER_ERROR_EXIT, app
from uwav.demo import RANDOM_INIT_ENCODERS, write_demo_catalog
from uwav.stages import run_pipeline, state_dir
from uwav.stages.promotion import current_model, promote_model

N_TRAIN, N_EVALUATION, N_PRETRAIN, N_ADDED = 4, 4, 3, 3


def small_demo(out: Path) -> Path:
    """The demo catalog at the smallest sizes and schedules, run to the end as `uwav demo` does."""
    path = write_demo_catalog(out, seed=2, encoders=RANDOM_INIT_ENCODERS)  # retraining needs no alignment
    data = yaml.safe_load(path.read_text())
    for dataset in data["datasets"].values():
        dataset["synthetic"].update(n_pretrain=N_PRETRAIN, n_train=N_TRAIN, n_val=N_EVALUATION // 2, n_test=N_EVALUATION // 2)
    for stage in ("pretrain", "train"):
        data["stages"][stage].update(epochs=2, warmup_epochs=1)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    catalog = load_catalog(path)
    run_pipeline(catalog, progress=False)
    promote_model(catalog, only_if_better=False)
    return path


def test_demo_retrain_encodes_only_the_new_videos_and_says_which_model_is_current(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    catalog_path = small_demo(out)
    catalog = load_catalog(catalog_path)
    before = current_model(catalog)
    assert before is not None
    videos = sorted((out / "data" / "llp_like" / "videos").glob("*.mp4"))
    stamps = {video.name: video.stat().st_mtime_ns for video in videos}

    result = CliRunner().invoke(app, ["demo", "--retrain", "--add", str(N_ADDED), "--no-prefect", "--out", str(out)])
    assert result.exit_code == 0, result.output

    catalog = load_catalog(catalog_path)
    state = state_dir(catalog)
    assert catalog.dataset(catalog.target).synthetic.n_train == N_TRAIN + N_ADDED
    extraction = state.record("features").metrics
    assert extraction["target_extraction"]["computed"] == N_ADDED, extraction
    assert extraction["target_extraction"]["already_complete"] == N_TRAIN + N_EVALUATION, extraction
    assert extraction["pretrain_extraction"]["computed"] == 0, extraction
    # The earlier videos were neither rewritten nor re-encoded.
    assert {video.name: video.stat().st_mtime_ns for video in videos} == stamps
    train = state.record("train")
    assert train.metrics["train_videos"] == N_TRAIN + N_ADDED
    after = current_model(catalog)
    assert after is not None
    new_score, old_score = train.metrics["best_val_score"], before["val_score"]
    lines = result.output.splitlines()
    assert f"added {N_ADDED} training videos (n_train {N_TRAIN} -> {N_TRAIN + N_ADDED})" in lines
    assert f"encoded {N_ADDED} target videos ({N_TRAIN + N_EVALUATION} already in the store) and 0 pre-training videos" in lines
    assert (
        f"validation seg Type@AV: new model {new_score:.2f} ({train.fingerprint}), "
        f"previous model {old_score:.2f} ({before['fingerprint']})"
    ) in lines
    if new_score < old_score:  # scheduled retraining keeps the better model
        assert after["fingerprint"] == before["fingerprint"]
        assert f"current model: the previous model (the new one scored lower on validation), {before['fingerprint']}" in lines
    else:
        assert after["fingerprint"] == train.fingerprint
        assert f"current model: the new model, {train.fingerprint}" in lines
    # The table shows the HAN beside its references, and metrics.json is the new evaluation's.
    assert any(line.split()[:2] == ["Segment-level", "HAN"] for line in lines)
    assert any("predict nothing" in line for line in lines)
    assert json.loads((out / "metrics.json").read_text()) == state.record("evaluate").metrics["scores"]


def test_demo_retrain_needs_a_finished_demo(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--retrain", "--no-prefect", "--out", str(tmp_path / "nothing")])
    assert result.exit_code == USER_ERROR_EXIT
    assert result.output.strip().splitlines() == [
        f"error: {tmp_path / 'nothing' / 'data_catalog.yaml'}: no demo catalog; run `uwav demo --out {tmp_path / 'nothing'}` first"
    ]
