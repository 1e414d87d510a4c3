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
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from uwav.datasets.synth_media import SynthMediaPaths, write_media_benchmark
from uwav.demo import demo_catalog
from uwav.stages import STAGES

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
N_INITIAL_TRAIN, N_ADDED, N_VAL, N_TEST = 12, 6, 6, 6
N_EVALUATION = N_VAL + N_TEST
# Never due while the test runs (29 February, 04:17 UTC), but registered like the real schedule.
RETRAIN_CRON = "17 4 29 2 *"
DEPLOYMENT_NAMES = {"full-pipeline", "retrain", *(stage.replace("_", "-") for stage in STAGES)}
SERVER_START_TIMEOUT_S = 120
REGISTER_TIMEOUT_S = 120
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
    """The demo catalog (tiny encoders, CPU) over the published target and the pre-training set,
    with the shortest training schedules."""
    catalog = demo_catalog(seed=0)
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


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def subprocess_env(tmp_path: Path, port: int) -> dict[str, str]:
    """This environment without any PREFECT_* setting, plus an isolated, offline Prefect."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    home = tmp_path / "prefect-home"
    home.mkdir()
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",  # the server's usage reports
        PREFECT_SERVER_UI_ENABLED="false",  # no UI build
        DO_NOT_TRACK="1",  # the SDK's telemetry (prefect._internal.analytics)
        PREFECT_RUNNER_POLL_FREQUENCY="1",  # the serving process picks up a new flow run within a second
        PREFECT_LOGGING_LEVEL="INFO",
        UWAV_NO_PROGRESS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


class Process:
    """A long-running subprocess in its own process group, its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        with self.log.open("wb") as sink:
            # Own session: the flow runs `uwav serve` spawns are stopped together with it.
            self.popen = subprocess.Popen(
                args, cwd=REPO_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )

    def check_alive(self) -> None:
        code = self.popen.poll()
        assert code is None, f"{self.name} exited with status {code}:\n{self.tail()}"

    def tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.popen.poll() is not None:
            return
        os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=timeout_s)


def api(port: int, path: str, body: object | None = None) -> Any:
    """GET (or POST `body` as JSON) on the loopback Prefect API."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_until(what: str, ready: Callable[[], Any], timeout_s: float, watched: list[Process]) -> Any:
    """Poll `ready()` until it returns something truthy; fail early when a watched process dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for process in watched:
            process.check_alive()
        try:
            result = ready()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            result = None
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def all_deployments_registered(port: int) -> dict[str, dict[str, Any]] | None:
    """name -> deployment once every uwav/* deployment is registered, else None."""
    found = {d["name"]: d for d in api(port, "deployments/filter", {}) if d["name"] in DEPLOYMENT_NAMES}
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
    tmp_path: Path, started_processes: list[Process]
) -> None:
    media = make_media(tmp_path / "generated")
    project = tmp_path / "project"
    publish_target(media, project, N_INITIAL_TRAIN)
    catalog = write_project_catalog(media, project)

    port = free_loopback_port()
    env = subprocess_env(tmp_path, port)
    server = Process(
        "prefect-server",
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port),
         "--no-ui", "--analytics-off"],
        env, tmp_path,
    )  # fmt: skip
    started_processes.append(server)
    try:
        wait_until("the Prefect server's /api/health", lambda: api(port, "health") is True,
                   SERVER_START_TIMEOUT_S, [server])
        serving = Process("uwav-serve", [str(BIN / "uwav"), "serve", "--catalog", str(catalog)], env, tmp_path)
        started_processes.append(serving)
        deployments = wait_until(
            "the uwav/* deployments",
            lambda: all_deployments_registered(port),
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
        parse = subprocess.run(
            [str(Path(sys.executable).parent / "uwav"), "parse", *map(str, videos), str(broken),
             "--catalog", str(catalog), "--out", str(parsed_dir)],
            env=env, capture_output=True, text=True, timeout=300, check=False,
        )
        assert parse.returncode == 0, parse.stdout + parse.stderr
        assert f"skipped {broken}" in parse.stderr
        events = json.loads((parsed_dir / "events.json").read_text())
        assert sorted(video["video_id"] for video in events["videos"]) == sorted(v.stem for v in videos)
        segments = pl.read_parquet(parsed_dir / "segments.parquet")
        assert segments.height == 10 * len(videos) and set(segments.columns) >= {"audio", "visual", "audio_visual"}
        assert all((parsed_dir / f"{v.stem}.png").read_bytes().startswith(b"\x89PNG") for v in videos)
        # --model: the same checkpoint named explicitly parses the same events.
        explicit_dir = tmp_path / "parsed_explicit"
        parse = subprocess.run(
            [str(Path(sys.executable).parent / "uwav"), "parse", *map(str, videos), "--catalog", str(catalog),
             "--out", str(explicit_dir), "--model", current["checkpoint"], "--kind", "checkpoint"],
            env=env, capture_output=True, text=True, timeout=300, check=False,
        )
        assert parse.returncode == 0, parse.stdout + parse.stderr
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
        for process in started_processes:
            print(f"--- {process.name} log ({process.log}):\n{process.tail()}")
        raise
