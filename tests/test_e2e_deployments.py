"""End to end through a real Prefect server: `prefect server start` (SQLite) on a loopback port, the
serving process (`uwav serve`), `prefect deployment run uwav/full-pipeline` on the synthetic media
dataset, then new videos and `prefect deployment run uwav/retrain`, which must process only them.

The videos are generated once (`write_media_benchmark`) and laid out as an LLP-format target
(CSV tables + a media folder) and a UnAV-100-format pre-training set; "adding videos" appends rows
to `AVVP_train.csv` and copies their files into the media folder, as new data arrives in practice.
(The `synthetic` kind grows in place too, which `uwav demo --retrain` uses; this test lays out
the LLP format because that is how a user's own collection arrives.)

Everything runs in subprocesses with a fresh PREFECT_HOME; the suite's network guard covers only
this process, so the environment also switches off the server's analytics, the UI and the SDK's
telemetry.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from tests.prefect_processes import (
    BIN,
    REGISTER_TIMEOUT_S,
    REPO_ROOT,
    LoopbackServer,
    Process,
    api,
    wait_until,
)
from uwav.cli import app
from uwav.synthetic.media import SynthMediaPaths, write_media_benchmark
from uwav.demo import RANDOM_INIT_ENCODERS, demo_catalog
from uwav.stages import STAGES

N_INITIAL_TRAIN, N_ADDED, N_VAL, N_TEST = 8, 4, 4, 4
N_EVALUATION = N_VAL + N_TEST
# Never due while the test runs (29 February, 04:17 UTC), but registered like the real schedule.
RETRAIN_CRON = "17 4 29 2 *"
DEPLOYMENT_NAMES = {"full-pipeline", "retrain", *(stage.replace("_", "-") for stage in STAGES)}
FLOW_RUN_TIMEOUT_S = 420


# ---------------------------------------------------------------- data and catalog


def make_media(folder: Path) -> SynthMediaPaths:
    """The synthetic media benchmark at the size of the whole test (initial + added clips)."""
    return write_media_benchmark(
        folder, seed=0, n_pretrain=6, n_train=N_INITIAL_TRAIN + N_ADDED, n_val=N_VAL, n_test=N_TEST,
        pretrain_seconds=(10, 12), workers=2,
    )  # fmt: skip


def train_rows(media: SynthMediaPaths) -> tuple[str, list[str]]:
    """(header, rows) of the generated AVVP_train.csv."""
    header, *rows = (media.llp_dir / "AVVP_train.csv").read_text().splitlines()
    return header, rows


def clip_id(row: str) -> str:
    """The LLP video id (`<youtube id>_<start>_<end>`) of an AVVP table row."""
    return row.split("\t")[0]


def publish_target(media: SynthMediaPaths, project: Path, n_train: int) -> list[str]:
    """Lay out the target dataset with the first `n_train` training clips (plus every val/test
    clip): tables under `project/target`, media under `project/target_media`. Returns the ids of
    the training clips published."""
    tables, videos = project / "target", project / "target_media"
    tables.mkdir(parents=True, exist_ok=True)
    videos.mkdir(parents=True, exist_ok=True)
    for name in ("AVVP_val_pd.csv", "AVVP_test_pd.csv", "AVVP_eval_audio.csv", "AVVP_eval_visual.csv"):
        shutil.copyfile(media.llp_dir / name, tables / name)
    header, rows = train_rows(media)
    published = rows[:n_train]
    evaluation_rows = [
        row
        for name in ("AVVP_val_pd.csv", "AVVP_test_pd.csv")
        for row in (media.llp_dir / name).read_text().splitlines()[1:]
    ]
    for row in published + evaluation_rows:
        youtube_id = clip_id(row)[:11]
        if not (videos / f"{youtube_id}.mp4").exists():
            shutil.copyfile(media.llp_media / f"{youtube_id}.mp4", videos / f"{youtube_id}.mp4")
    # The table last: a reader never sees a row whose video is not there yet.
    (tables / "AVVP_train.csv").write_text("\n".join([header, *published]) + "\n")
    return [clip_id(row) for row in published]


def write_project_catalog(media: SynthMediaPaths, project: Path) -> Path:
    """The demo catalog (tiny random-initialised encoders, CPU) over the published target and the pre-training set,
    with the shortest training schedules."""
    catalog = demo_catalog(0, RANDOM_INIT_ENCODERS)
    catalog["datasets"] = {
        "media_target": {
            "kind": "llp", "annotations": "target", "media_root": "target_media", "role": "target",
            "classes": json.loads(media.llp_classes.read_text()),
        },
        "media_pretrain": {
            "kind": "unav100", "annotations": str(media.unav_json), "media_root": str(media.unav_media),
            "role": "pretrain", "classes": json.loads(media.unav_classes.read_text()),
        },
    }  # fmt: skip
    catalog["target"], catalog["pretrain"] = "media_target", "media_pretrain"
    catalog["stages"]["pretrain"].update(epochs=3, warmup_epochs=1)
    catalog["stages"]["train"].update(epochs=3, warmup_epochs=1)
    catalog["orchestration"] = {"retrain_cron": RETRAIN_CRON}
    path = project / "data_catalog.yaml"
    path.write_text(yaml.safe_dump(catalog, sort_keys=False))
    return path


def stage_record(project: Path, stage: str) -> dict[str, Any]:
    path = project / "runs" / "state" / f"{stage}.json"
    assert path.is_file(), f"no record of the {stage} stage at {path}"
    return json.loads(path.read_text())


# ---------------------------------------------------------------- processes


def all_deployments_registered(port: int, catalog: Path) -> dict[str, dict[str, Any]] | None:
    """name -> deployment once every uwav/* deployment is registered for `catalog`, else None.
    The session's server may hold deployments an earlier test's `uwav serve` registered for its
    own catalog: running one of those before this serve re-registers it would run that catalog."""
    found = {
        d["name"]: d
        for d in api(port, "deployments/filter", {})
        if d["name"] in DEPLOYMENT_NAMES and d["parameters"].get("catalog") == str(catalog.resolve())
    }
    return found if set(found) == DEPLOYMENT_NAMES else None


def run_deployment(name: str, env: dict[str, str]) -> None:
    """`prefect deployment run uwav/<name> --watch`, which exits non-zero unless the run completes."""
    result = subprocess.run(
        [str(BIN / "prefect"), "deployment", "run", f"uwav/{name}",
         "--watch", "--watch-timeout", str(FLOW_RUN_TIMEOUT_S)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=FLOW_RUN_TIMEOUT_S + 60,
    )  # fmt: skip
    output = f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert result.returncode == 0, f"uwav/{name} exited with {result.returncode}:\n{output}"


def completed_run_of(port: int, deployment: dict[str, Any]) -> dict[str, Any]:
    """The one completed flow run of a deployment."""
    runs = api(port, "flow_runs/filter", {
        "deployments": {"id": {"any_": [deployment["id"]]}},
        "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
    })  # fmt: skip
    assert len(runs) == 1, f"expected one completed run of uwav/{deployment['name']}, found {len(runs)}"
    return runs[0]


def artifact_text(port: int, flow_run_id: str, key: str) -> str:
    query = {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}, "key": {"any_": [key]}}}
    found = api(port, "artifacts/filter", query)
    assert len(found) == 1, f"flow run {flow_run_id}: expected one artifact {key!r}, found {len(found)}"
    return str(found[0]["data"])


@pytest.fixture()
def started_processes() -> Iterator[list[Process]]:
    """Processes the test starts; always stopped, the serving process (and its flow runs) first."""
    processes: list[Process] = []
    yield processes
    for process in reversed(processes):
        process.stop()


# ---------------------------------------------------------------- the test


def test_served_deployments_run_the_pipeline_then_retrain_on_new_videos_only(
    tmp_path: Path, started_processes: list[Process], loopback_server: LoopbackServer
) -> None:
    media = make_media(tmp_path / "generated")
    project = tmp_path / "project"
    publish_target(media, project, N_INITIAL_TRAIN)
    catalog = write_project_catalog(media, project)

    server = loopback_server.running()
    port, env = server.port, server.env
    try:
        serving = Process("uwav-serve", [str(BIN / "uwav"), "serve", "--catalog", str(catalog)], env, tmp_path)
        started_processes.append(serving)
        deployments = wait_until(
            "the uwav/* deployments",
            lambda: all_deployments_registered(port, catalog),
            REGISTER_TIMEOUT_S,
            started_processes,
        )
        assert [s["schedule"]["cron"] for s in deployments["retrain"]["schedules"]] == [RETRAIN_CRON]
        assert deployments["train"]["parameters"] == {"catalog": str(catalog.resolve()), "stages": ["train"]}

        # ------------------------------------------------ uwav/full-pipeline
        run_deployment("full-pipeline", env)
        first = {stage: stage_record(project, stage) for stage in STAGES}
        assert first["segment"]["metrics"]["target_videos"] == {"train": N_INITIAL_TRAIN, "val": N_VAL, "test": N_TEST}
        assert first["features"]["metrics"]["target_extraction"]["computed"] == N_INITIAL_TRAIN + N_EVALUATION
        scores = json.loads(Path(first["evaluate"]["outputs"]["metrics"]).read_text())
        assert {"seg_a", "seg_v", "seg_av", "event_a", "event_v", "event_av"} <= set(scores)
        assert Path(first["evaluate"]["outputs"]["report"]).is_file()
        current = json.loads((project / "runs" / "current_model.json").read_text())
        assert current["fingerprint"] == first["train"]["fingerprint"]
        full_run = completed_run_of(port, deployments["full-pipeline"])
        assert "is now current" in artifact_text(port, full_run["id"], "uwav-model")

        # ------------------------------------------------ uwav parse with the current model
        videos = sorted(media.llp_media.glob("*.mp4"))[:2]
        broken = tmp_path / "broken.mp4"
        broken.write_bytes(b"not a video")
        parsed_dir = tmp_path / "parsed"
        # In this process (CLI and library as a user runs them; a subprocess would only add the
        # ~10 s of importing torch and the encoders again).
        parse = CliRunner().invoke(app, ["parse", *map(str, videos), str(broken), "--catalog", str(catalog), "--out", str(parsed_dir)])
        assert parse.exit_code == 0, parse.output
        assert f"skipped {broken}" in parse.stderr
        events = json.loads((parsed_dir / "events.json").read_text())
        assert sorted(video["video_id"] for video in events["videos"]) == sorted(v.stem for v in videos)
        segments = pl.read_parquet(parsed_dir / "segments.parquet")
        assert segments.height == 10 * len(videos) and set(segments.columns) >= {"audio", "visual", "audio_visual"}
        assert all((parsed_dir / f"{v.stem}.png").read_bytes().startswith(b"\x89PNG") for v in videos)
        # --model: the same checkpoint named explicitly parses the same events.
        explicit_dir = tmp_path / "parsed_explicit"
        parse = CliRunner().invoke(app, ["parse", *map(str, videos), "--catalog", str(catalog), "--out", str(explicit_dir),
                                         "--model", current["checkpoint"], "--kind", "checkpoint"])  # fmt: skip
        assert parse.exit_code == 0, parse.output
        assert json.loads((explicit_dir / "events.json").read_text())["videos"] == events["videos"]
        assert [item["path"] for item in events["failed"]] == [str(broken)]  # skipped and listed, exit 0

        # ------------------------------------------------ new videos, then uwav/retrain
        added = publish_target(media, project, N_INITIAL_TRAIN + N_ADDED)[N_INITIAL_TRAIN:]
        run_deployment("retrain", env)
        second = {stage: stage_record(project, stage) for stage in STAGES}

        segment = second["segment"]["metrics"]
        assert segment["target_new_videos"] == N_ADDED and sorted(segment["target_new_video_ids"]) == sorted(added)
        assert segment["pretrain_new_videos"] == 0
        before, after = (
            pl.read_parquet(run["segment"]["outputs"]["target_manifest"]).sort("video_id") for run in (first, second)
        )
        assert after.join(before, on="video_id", how="semi").equals(before), "the earlier videos' manifest rows changed"
        extraction = second["features"]["metrics"]
        assert extraction["target_extraction"]["computed"] == N_ADDED, extraction  # only the new videos encoded
        assert extraction["target_extraction"]["already_complete"] == N_INITIAL_TRAIN + N_EVALUATION, extraction
        assert extraction["pretrain_extraction"]["computed"] == 0, extraction
        assert second["pretrain"] == first["pretrain"], "stage 1 must not rerun for new target videos"
        for stage in ("pseudo_labels", "train", "evaluate"):
            assert second[stage]["fingerprint"] != first[stage]["fingerprint"], f"{stage} did not rerun"
            assert second[stage]["finished_at"] > first[stage]["finished_at"]
        assert second["train"]["metrics"]["train_videos"] == N_INITIAL_TRAIN + N_ADDED

        # The run says how many videos arrived and which model is current, and it is so on disk.
        retrain_run = completed_run_of(port, deployments["retrain"])
        assert f"{N_ADDED} new target videos" in artifact_text(port, retrain_run["id"], "uwav-retrain")
        decision = artifact_text(port, retrain_run["id"], "uwav-model")
        current = json.loads((project / "runs" / "current_model.json").read_text())
        new_score, old_score = second["train"]["metrics"]["best_val_score"], first["train"]["metrics"]["best_val_score"]
        if new_score < old_score:
            assert "kept the previous model" in decision, decision
            assert current["fingerprint"] == first["train"]["fingerprint"]
        else:
            assert "is now current" in decision, decision
            assert current["fingerprint"] == second["train"]["fingerprint"]
    except BaseException:
        for process in [*started_processes, *([server.process] if server.process else [])]:
            print(f"--- {process.name} log ({process.log}):\n{process.tail()}")
        raise
