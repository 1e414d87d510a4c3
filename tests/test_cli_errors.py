"""What a user sees when a command fails on a bad input: one `error:` line on stderr naming the
file, key or video at fault, exit status 2, no traceback (`uwav --debug` shows it).

Each command gets a bad input of its own; all fail before any training. Most tests use typer's
CliRunner with `catch_exceptions=False` (an exception the command line does not handle fails the
test); the subprocess tests run the real entry point.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from click.testing import Result
from typer.testing import CliRunner

from uwav.cli import app
from uwav.features.store import FeatureStore

TINY_ENCODERS = {name: {"name": f"uwav-tiny-{name}", "random_init": True} for name in ("clip", "clap", "r2plus1d")}
HEADER = "video_id,media_path,labels,split,duration_s\n"


def custom_catalog(folder: Path) -> dict:
    """Two small custom datasets; their rows carry durations, so no media file is needed to get
    past the segment stage."""
    (folder / "target.csv").write_text(HEADER + "v1,v1.mp4,dog,train,10\nv2,v2.mp4,cat,val,10\nv3,v3.mp4,dog,test,10\n")
    (folder / "pre.csv").write_text(HEADER + "p1,p1.mp4,dog,train,10\n")
    return {
        "datasets": {
            "mine": {"kind": "custom", "annotations": "target.csv", "classes": ["dog", "cat"]},
            "pre": {"kind": "custom", "annotations": "pre.csv", "classes": ["dog", "cat"], "role": "pretrain"},
        },
        "target": "mine",
        "pretrain": "pre",
        "encoders": TINY_ENCODERS,
        "stages": {"features": {"device": "cpu"}},
    }


def write(folder: Path, data: dict) -> Path:
    path = folder / "data_catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def assert_one_line_error(exit_code: int, stderr: str, *named: str) -> str:
    lines = stderr.splitlines()
    assert exit_code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0] != "error: ", stderr
    for name in named:
        assert name in lines[0], f"{name!r} not in {lines[0]!r}"
    assert "Traceback" not in stderr
    return lines[0]


def run_uwav(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed entry point, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "uwav", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_catalog_check_with_an_unknown_key(tmp_path: Path) -> None:
    data = custom_catalog(tmp_path)
    data["datasets"]["mine"]["annotation"] = "typo.csv"
    write(tmp_path, data)
    done = run_uwav(tmp_path, "catalog", "check")
    line = assert_one_line_error(done.returncode, done.stderr, "data_catalog.yaml", "datasets.mine.annotation: unknown key")
    assert "invalid catalog; datasets.mine.annotation" in line, "the per-key lines are joined into one"


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    data = custom_catalog(tmp_path)
    data["datasets"]["mine"]["annotation"] = "typo.csv"
    write(tmp_path, data)
    done = run_uwav(tmp_path, "--debug", "catalog", "check")
    assert done.returncode not in (0, 2)
    assert "Traceback" in done.stderr and "CatalogError" in done.stderr


def test_run_with_a_missing_annotation_file(tmp_path: Path) -> None:
    data = custom_catalog(tmp_path)
    data["datasets"]["mine"]["annotations"] = "gone.csv"
    result = invoke("run", "--no-progress", "--catalog", str(write(tmp_path, data)))
    assert_one_line_error(result.exit_code, result.stderr, str(tmp_path / "gone.csv"), "no such file")


def test_run_with_missing_encoder_weights(tmp_path: Path) -> None:
    """EncoderError: the weights file the catalog names does not exist (was a traceback)."""
    data = custom_catalog(tmp_path)
    data["encoders"] = {**TINY_ENCODERS, "clip": {"name": "uwav-tiny-clip", "checkpoint": "weights/clip.safetensors"}}
    write(tmp_path, data)
    done = run_uwav(tmp_path, "run", "--no-progress")
    assert_one_line_error(done.returncode, done.stderr, "uwav-tiny-clip", str(tmp_path / "weights" / "clip.safetensors"))


def test_run_with_a_feature_store_of_another_dtype(tmp_path: Path) -> None:
    """FeatureStoreError: the store holds float32 features, the catalog asks for float16 (was a traceback)."""
    FeatureStore(str(tmp_path / "store" / "features.zarr"), dtype="float32")
    result = invoke("run", "--no-progress", "--catalog", str(write(tmp_path, custom_catalog(tmp_path))))
    assert_one_line_error(result.exit_code, result.stderr, "features.zarr", "holds float32 features")


def test_status_with_a_malformed_stage_record(tmp_path: Path) -> None:
    path = write(tmp_path, custom_catalog(tmp_path))
    record = tmp_path / "runs" / "state" / "segment.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"stage": "segment", ')
    result = invoke("status", "--catalog", str(path))
    assert_one_line_error(result.exit_code, result.stderr, str(record), "unreadable stage record")


def test_synth_with_an_impossible_size(tmp_path: Path) -> None:
    result = invoke("synth", "--out", str(tmp_path / "synth"), "--n-train", "-3")
    assert_one_line_error(result.exit_code, result.stderr, "--n-train -3")
    assert not (tmp_path / "synth").exists()


def test_serve_with_a_catalog_naming_no_such_dataset(tmp_path: Path) -> None:
    data = custom_catalog(tmp_path)
    data["target"] = "nope"
    result = invoke("serve", "--catalog", str(write(tmp_path, data)))
    assert_one_line_error(result.exit_code, result.stderr, "data_catalog.yaml", "target: nope")


def test_demo_out_is_an_existing_file(tmp_path: Path) -> None:
    out = tmp_path / "results.txt"
    out.write_text("keep me")
    result = invoke("demo", "--no-prefect", "--out", str(out))
    assert_one_line_error(result.exit_code, result.stderr, str(out))
    assert out.read_text() == "keep me"


def test_parse_before_any_model_was_trained(tmp_path: Path) -> None:
    path = write(tmp_path, custom_catalog(tmp_path))
    result = invoke("parse", str(tmp_path / "clip.mp4"), "--out", str(tmp_path / "parsed"), "--catalog", str(path))
    assert_one_line_error(result.exit_code, result.stderr, "stage train has not run")


def test_parse_and_evaluate_with_a_model_file_that_is_not_there(tmp_path: Path) -> None:
    path = write(tmp_path, custom_catalog(tmp_path))
    missing = tmp_path / "HAN.pt"
    result = invoke("parse", str(tmp_path / "clip.mp4"), "--catalog", str(path), "--model", str(missing), "--kind", "uwav")
    assert_one_line_error(result.exit_code, result.stderr, f"--model {missing}: no such file")
    result = invoke("evaluate", "--catalog", str(path), "--model", str(missing), "--kind", "martian")
    assert_one_line_error(result.exit_code, result.stderr, "--kind 'martian'")


def test_ablation_with_an_llp_folder_lacking_its_files(tmp_path: Path) -> None:
    data = custom_catalog(tmp_path)
    (tmp_path / "llp").mkdir()
    data["datasets"]["mine"] = {"kind": "llp", "annotations": "llp"}
    result = invoke("ablation", "--no-progress", "--catalog", str(write(tmp_path, data)))
    assert_one_line_error(result.exit_code, result.stderr, f"LLP folder {tmp_path / 'llp'} lacks", "AVVP_train.csv")


def test_usage_errors_keep_exit_status_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", "--no-such-option"])
    assert result.exit_code == 2 and "No such option" in result.stderr
