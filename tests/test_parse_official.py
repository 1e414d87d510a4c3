"""`uwav parse` with `stages.train.han.inputs: official`: a HAN made for the AVVP release's features
(VGGish + ResNet-152 + R(2+1)D) parses new videos, their features computed by the catalog's encoders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from tests.test_extract import write_video
from tests.test_released_models import random_state, released_han_shapes, save
from uwav.catalog import load_catalog
from uwav.stages import run_pipeline
from uwav.stages.parse import parse_media

SIZES = {"mode": "features", "seed": 3, "n_pretrain": 4, "n_train": 4, "n_val": 2, "n_test": 2}
TINY_OFFICIAL_ENCODERS = {
    "r2plus1d": {"name": "uwav-tiny-r2plus1d", "random_init": True},
    "vggish": {"name": "uwav-tiny-vggish", "random_init": True},  # 16-d
    "resnet152": {"name": "uwav-tiny-resnet152", "random_init": True},  # 2048-d like the real one
    # CLIP and CLAP keep their defaults (weights that are not here): parse must not build them
}


def official_catalog(folder: Path) -> Path:
    data = {
        "datasets": {
            "target": {"kind": "synthetic", "annotations": "data", "role": "target", "synthetic": SIZES},
            "pre": {"kind": "synthetic", "annotations": "data", "role": "pretrain", "synthetic": SIZES},
        },
        "target": "target",
        "pretrain": "pre",
        "encoders": TINY_OFFICIAL_ENCODERS,
        "stages": {
            "features": {"source": "synthetic", "device": "cpu", "batch_size": 4, "workers": 1},
            "train": {"han": {"inputs": "official"}, "device": "cpu"},
        },
    }
    path = folder / "data_catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_parse_with_official_inputs_runs_vggish_resnet_and_r2plus1d(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from uwav.contracts import HAN_INPUT_FEATURES
    from uwav.features.encoders import build_encoders
    from uwav.media import decode_segments
    from uwav.training import han_train

    catalog = load_catalog(official_catalog(tmp_path))
    run_pipeline(catalog, ["segment"], progress=False)  # the target's class list
    # The AVVP-ECCV20 HAN over the tiny encoders' widths: VGGish 16, ResNet-152 2048, R(2+1)D 512.
    shapes = released_han_shapes("avvp-eccv20", 1, classes=25, audio=16, visual2d=2048, visual3d=512, width=32, ffn=64)
    model = save(random_state(shapes, seed=2), tmp_path / "HAN_avvp.pt")
    videos = [
        Path(write_video(tmp_path / "street.mp4", 3, audio=True, seed=11)),
        Path(write_video(tmp_path / "dog.mp4", 2, audio=True, seed=12)),
    ]
    seen = []

    def recording_predict(model: object, features: object, **kwargs: object) -> object:
        seen.append(features)
        return predict_han(model, features, **kwargs)

    predict_han = han_train.predict_han
    monkeypatch.setattr(han_train, "predict_han", recording_predict)
    out = parse_media(catalog, videos, tmp_path / "parsed", model_path=model, kind="avvp-eccv20", progress=False)

    segments = pl.read_parquet(out.segments_parquet)
    assert dict(segments.group_by("video_id").len().iter_rows()) == {"street": 3, "dog": 2}
    document = json.loads(out.events_json.read_text())
    assert [video["video_id"] for video in document["videos"]] == ["street", "dog"]
    assert [video["n_segments"] for video in document["videos"]] == [3, 2]
    assert all(path.read_bytes().startswith(b"\x89PNG") for path in out.timelines.values())

    # The model read exactly the official features of the videos, computed by the catalog's encoders.
    (features,) = seen
    assert features.widths == (16, 2048, 512)
    encoders = build_encoders(catalog.encoders, "cpu", features=HAN_INPUT_FEATURES["official"])
    decoded = decode_segments(videos[0], centre=False, audio=False, images=True, audio_16k=True)
    for name, encoder in (("audio", encoders.vggish), ("visual2d", encoders.resnet152), ("visual3d", encoders.r2plus1d)):
        expected = encoder.encode_segments(getattr(decoded, encoder.segment_input))
        np.testing.assert_allclose(getattr(features, name)[0, :3].numpy(), expected, rtol=1e-4, atol=1e-4, err_msg=name)



def test_parse_skips_bad_videos_and_fails_only_when_none_parses(tmp_path: Path) -> None:
    """Several paths, some bad: the good ones are parsed, each bad one is listed with its reason on
    stderr and in events.json; exit status 1 only when none could be parsed."""
    from typer.testing import CliRunner

    from uwav.cli import app

    path = official_catalog(tmp_path)
    run_pipeline(load_catalog(path), ["segment"], progress=False)
    shapes = released_han_shapes("avvp-eccv20", 1, classes=25, audio=16, visual2d=2048, visual3d=512, width=32, ffn=64)
    model = save(random_state(shapes, seed=2), tmp_path / "HAN_avvp.pt")
    good = Path(write_video(tmp_path / "good.mp4", 2, audio=True, seed=13))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    absent = tmp_path / "absent.mp4"
    args = ["--catalog", str(path), "--model", str(model), "--kind", "avvp-eccv20"]
    result = CliRunner().invoke(app, ["parse", str(good), str(broken), str(absent), "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 0, result.output
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped ")]
    assert [line.split(":")[0] for line in skipped] == [f"skipped {broken}", f"skipped {absent}"]
    document = json.loads((tmp_path / "out" / "events.json").read_text())
    assert [video["video_id"] for video in document["videos"]] == ["good"]
    assert [item["path"] for item in document["failed"]] == [str(broken), str(absent)]
    assert all(item["reason"] for item in document["failed"])

    result = CliRunner().invoke(app, ["parse", str(broken), str(absent), "--out", str(tmp_path / "none"), *args])
    assert result.exit_code == 1
    assert result.stderr.count("skipped ") == 2 and "none of the 2 videos could be parsed" in result.stderr
