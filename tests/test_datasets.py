"""uwav.datasets: the readers on the real annotation files in ../shared/data (the `shared_data`
fixture of conftest.py skips with the reason without them), and every kind of bad row on small
files written here."""

from __future__ import annotations

import csv
import json
import logging
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import polars as pl
import pytest

from uwav.contracts import DENSE_SCHEMA, MANIFEST_SCHEMA, n_segments_for_duration
from uwav.datasets import (
    AVE_CLASSES,
    LLP_CLASSES,
    DatasetValidationError,
    Reason,
    ValidationReport,
    ave_segment_labels,
    dataset_classes,
    read_ave,
    read_custom,
    read_dataset,
    read_llp,
    read_unav100,
    unav100_classes,
)

def issue_rows(report: ValidationReport) -> set[tuple[str, int | None, str | None, str]]:
    """(file name, line, video, reason) of every issue."""
    return {(Path(i.file).name, i.line, i.video_id, i.reason) for i in report.issues}


def assert_contract(manifest: pl.DataFrame, dense: pl.DataFrame) -> None:
    assert manifest.schema == pl.Schema(MANIFEST_SCHEMA)
    assert dense.schema == pl.Schema(DENSE_SCHEMA)


# ================================================================== real files


def test_llp_real_counts_dense_rows_and_class_order(shared_data: Path) -> None:
    report = ValidationReport()
    manifest, dense = read_llp(shared_data / "llp", report=report)
    assert_contract(manifest, dense)
    assert manifest.group_by("split").len().sort("split").rows() == [("test", 1200), ("train", 10000), ("val", 649)]
    assert manifest["media_path"].null_count() == manifest.height  # no media_root: not looked up

    # Expected dense rows, independently: eval rows of val/test videos with a non-empty span.
    eval_ids: set[str] = set()
    for name in ("AVVP_val_pd.csv", "AVVP_test_pd.csv"):
        with (shared_data / "llp" / name).open() as f:
            eval_ids |= {row["filename"] for row in csv.DictReader(f, delimiter="\t")}
    expected = 0
    csv_rows = 0
    for name in ("AVVP_eval_audio.csv", "AVVP_eval_visual.csv"):
        with (shared_data / "llp" / name).open() as f:
            for row in csv.DictReader(f, delimiter="\t"):
                csv_rows += 1
                expected += row["filename"] in eval_ids and int(row["onset"]) < int(row["offset"])
    assert dense.height == expected == 6596
    dense_issues = [i for i in report.issues if "eval" in Path(i.file).name]
    assert csv_rows - len(dense_issues) == dense.height
    # The official eval CSVs' faults: 25 rows of 7 misspelt clips, 5 empty audio spans.
    assert report.counts() == {Reason.UNKNOWN_VIDEO.value: 25, Reason.EMPTY_SPAN.value: 5}
    assert ("AVVP_eval_audio.csv", 48, "CaC2xvdLC34_250_260", Reason.EMPTY_SPAN.value) in issue_rows(report)
    assert dense.group_by("modality").len().sort("modality").rows() == [("audio", 4112), ("visual", 2484)]

    clip = manifest.row(by_predicate=pl.col("video_id") == "BjCEufrlXm4_20_30", named=True)
    assert [clip[c] for c in ("split", "labels", "duration_s", "n_segments")] == ["train", ["Speech", "Dog"], 10.0, 10]
    fractional = manifest.row(by_predicate=pl.col("video_id") == "ApKgnUPayqU_8.5_18.5", named=True)
    assert (fractional["duration_s"], fractional["n_segments"]) == (10.0, 10)

    readme = (shared_data / "README.md").read_text()
    listed = readme.split("LLP class list (25, in the order every LLP tool uses):")[1].split(".\n")[0]
    assert LLP_CLASSES == tuple(name.strip() for name in listed.replace("\n", " ").split(","))


def test_llp_media_discovery(shared_data: Path) -> None:
    report = ValidationReport()
    manifest, _ = read_llp(shared_data / "llp", media_root=shared_data / "llp" / "videos", report=report)
    found = manifest.drop_nulls("media_path")
    assert found["video_id"].to_list() == ["BjCEufrlXm4_20_30"]
    assert found["media_path"][0] == str((shared_data / "llp" / "videos" / "BjCEufrlXm4.mp4").resolve())
    assert manifest.height == 11849  # the others are kept, media_path null
    assert report.counts()[Reason.MISSING_MEDIA.value] == 11848


def test_unav100_real_counts_and_segment_labels(shared_data: Path) -> None:
    path = shared_data / "unav100" / "unav100_annotations.json"
    report = ValidationReport()
    manifest, dense = read_unav100(path, media_root=shared_data / "unav100" / "videos", report=report)
    assert_contract(manifest, dense)
    assert manifest.group_by("split").len().sort("split").rows() == [("test", 2167), ("train", 6489), ("val", 2134)]
    assert report.counts() == {Reason.MISSING_MEDIA.value: 10789}

    video = manifest.row(by_predicate=pl.col("video_id") == "--HuBNHXu9I", named=True)
    assert video["n_segments"] == 60 == n_segments_for_duration(60.06)
    assert video["labels"] == ["man speaking"]
    assert video["media_path"] == str((shared_data / "unav100" / "videos" / "--HuBNHXu9I.mp4").resolve())
    rows = dense.filter(pl.col("video_id") == "--HuBNHXu9I").sort("modality", "onset")
    runs = [(0, 10), (13, 26), (29, 60)]
    assert rows.select("modality", "label", "onset", "offset").rows() == [
        (m, "man speaking", a, b) for m in ("audio", "visual") for a, b in runs
    ]
    # The rule worked by hand from the seconds in the JSON: segment t is positive when the
    # (disjoint) events cover >= 0.5 s of [t, t+1).
    database = json.loads(path.read_text())["database"]
    events = [a["segment"] for a in database["--HuBNHXu9I"]["annotations"]]
    coverage = [sum(max(0.0, min(e, t + 1) - max(s, t)) for s, e in events) for t in range(60)]
    assert [t for t in range(60) if coverage[t] >= 0.5] == [t for a, b in runs for t in range(a, b)]

    label_of_id = {a["label_id"]: a["label"] for video in database.values() for a in video["annotations"]}
    classes = unav100_classes(path)
    assert classes == [label_of_id[i] for i in range(100)] and classes[0] == "man speaking"
    assert set(dense["label"].unique()) <= set(classes)


def test_ave_real_counts_and_segment_truth(shared_data: Path) -> None:
    report = ValidationReport()
    manifest, dense = read_ave(shared_data / "ave", report=report)
    assert_contract(manifest, dense)
    assert manifest.group_by("split").len().sort("split").rows() == [("test", 402), ("train", 3339), ("val", 402)]
    # One official line has start == end (0&0): reported, the video stays with no event.
    assert issue_rows(report) == {("Annotations.txt", 27, "VWi2ENBuTbw", Reason.EMPTY_SPAN.value)}
    assert dense.height == 2 * (4143 - 1)
    # 45 YouTube ids are annotated on several lines: each line is its own sample.
    suffixed = manifest.filter(pl.col("video_id").str.contains("_line"))
    assert suffixed.height == 91 and suffixed["video_id"].str.slice(0, 11).n_unique() == 45
    assert "-9R4WPSKE3Q_line340" in suffixed["video_id"].to_list()

    lines = (shared_data / "ave" / "Annotations.txt").read_text().splitlines()
    assert list(AVE_CLASSES) == list(dict.fromkeys(line.split("&")[0] for line in lines))  # first appearance

    truth = ave_segment_labels(manifest, dense, AVE_CLASSES)
    assert truth.shape == (4143, 10)
    row = manifest["video_id"].to_list().index("MH3m4AwEcRY")  # Church bell&MH3m4AwEcRY&good&6&8
    assert truth[row].tolist() == [28] * 6 + [0, 0] + [28, 28]
    assert (truth[manifest["video_id"].to_list().index("VWi2ENBuTbw")] == 28).all()


# ================================================================== bad rows, small files


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def llp_dir(tmp_path: Path) -> Path:
    root = tmp_path / "llp"
    write(
        root / "AVVP_train.csv",
        "filename\tevent_labels\n"
        "aaaaaaaaaaa_0_10\tSpeech,Dog\n"  # 2: good, media present
        "bbbbbbbbbbb_0_10\tSpeech,Unicorn\n"  # 3: unknown class
        "aaaaaaaaaaa_0_10\tCat\n"  # 4: duplicate id
        "../../etc/x_0_10\tSpeech\n"  # 5: escapes the media root
        "not-an-llp-name\tSpeech\n"  # 6: malformed filename
        "ccccccccccc_5_15\tCar\n",  # 7: good, media missing
    )
    write(root / "AVVP_val_pd.csv", "filename\tevent_labels\nddddddddddd_0_10\tDog\n")
    write(root / "AVVP_test_pd.csv", "filename\tevent_labels\neeeeeeeeeee_0_10\tDog,Speech\n")
    write(
        root / "AVVP_eval_audio.csv",
        "filename\tonset\toffset\tevent_labels\n"
        "ddddddddddd_0_10\t0\t4\tDog\n"  # 2: good
        "ddddddddddd_0_10\t5\t5\tDog\n"  # 3: onset >= offset
        "eeeeeeeeeee_0_10\t3\t11\tDog\n"  # 4: beyond the 10 segments
        "eeeeeeeeeee_0_10\t0\t2\tUnicorn\n"  # 5: unknown class
        "zzzzzzzzzzz_0_10\t0\t2\tDog\n"  # 6: no such video
        "eeeeeeeeeee_0_10\tx\t2\tDog\n",  # 7: malformed
    )
    write(root / "AVVP_eval_visual.csv", "filename\tonset\toffset\tevent_labels\neeeeeeeeeee_0_10\t2\t10\tSpeech\n")
    write(tmp_path / "videos" / "aaaaaaaaaaa.mp4", "not decoded by the reader")
    write(tmp_path / "videos" / "aaaaaaaaaaa.webm", "the .mp4 wins")
    return root


def test_llp_bad_rows_are_reported_and_dropped(llp_dir: Path) -> None:
    report = ValidationReport()
    manifest, dense = read_llp(llp_dir, media_root=llp_dir.parent / "videos", report=report)
    assert manifest["video_id"].to_list() == [f"{c * 11}_{t}" for c, t in zip("acde", ("0_10", "5_15", "0_10", "0_10"))]
    found = str((llp_dir.parent / "videos" / "aaaaaaaaaaa.mp4").resolve())
    assert manifest["media_path"].to_list() == [found, None, None, None]
    assert dense.rows() == [
        ("ddddddddddd_0_10", "audio", "Dog", 0, 4),
        ("eeeeeeeeeee_0_10", "visual", "Speech", 2, 10),
    ]
    train, audio = "AVVP_train.csv", "AVVP_eval_audio.csv"
    assert issue_rows(report) == {
        (train, 3, "bbbbbbbbbbb_0_10", Reason.UNKNOWN_CLASS.value),
        (train, 4, "aaaaaaaaaaa_0_10", Reason.DUPLICATE_ID.value),
        (train, 5, "../../etc/x_0_10", Reason.ESCAPES_ROOT.value),
        (train, 6, "not-an-llp-name", Reason.MALFORMED.value),
        (train, 7, "ccccccccccc_5_15", Reason.MISSING_MEDIA.value),
        ("AVVP_val_pd.csv", 2, "ddddddddddd_0_10", Reason.MISSING_MEDIA.value),
        ("AVVP_test_pd.csv", 2, "eeeeeeeeeee_0_10", Reason.MISSING_MEDIA.value),
        (audio, 3, "ddddddddddd_0_10", Reason.EMPTY_SPAN.value),
        (audio, 4, "eeeeeeeeeee_0_10", Reason.BEYOND_VIDEO.value),
        (audio, 5, "eeeeeeeeeee_0_10", Reason.UNKNOWN_CLASS.value),
        (audio, 6, "zzzzzzzzzzz_0_10", Reason.UNKNOWN_VIDEO.value),
        (audio, 7, "eeeeeeeeeee_0_10", Reason.MALFORMED.value),
    }
    unknown = next(i for i in report.issues if i.reason == Reason.UNKNOWN_CLASS.value and i.line == 3)
    assert unknown.detail == "Unicorn"


def test_strict_raises_on_the_first_bad_row_with_file_and_line(llp_dir: Path) -> None:
    first = r"AVVP_train\.csv:3: video 'bbbbbbbbbbb_0_10': unknown class \(Unicorn\)"
    with pytest.raises(DatasetValidationError, match=first) as err:
        read_llp(llp_dir, strict=True)
    assert isinstance(err.value, ValueError) and err.value.issue.line == 3


def test_report_none_logs_one_warning_summary(llp_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="uwav.datasets"):
        manifest, _ = read_llp(llp_dir)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "9 dataset validation issue(s)" in warnings[0].getMessage()
    assert manifest.height == 4


def test_report_frame_write_and_summary(llp_dir: Path, tmp_path: Path) -> None:
    report = ValidationReport()
    read_llp(llp_dir, report=report)
    frame = report.to_frame()
    assert frame.columns == ["file", "line", "video_id", "reason", "detail"] and frame.height == len(report) == 9
    assert pl.read_parquet(report.write(tmp_path / "issues.parquet")).equals(frame)
    assert pl.DataFrame(json.loads(report.write(tmp_path / "issues.json").read_text())).equals(frame)
    with pytest.raises(ValueError, match="suffix"):
        report.write(tmp_path / "issues.txt")
    summary = report.summary(max_issues=2)
    assert summary.startswith("9 dataset validation issue(s) in 2 file(s)") and "... and 7 more" in summary


def test_missing_annotation_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="AVVP_train.csv"):
        read_llp(tmp_path)


UNAV_JSON = """{"version": "test", "database": {
 "vid_union": {"duration": 10, "subset": "train", "annotations": [
   {"segment": [0.2, 3.3], "label": "dog", "label_id": 1},
   {"segment": [3.6, 4.0], "label": "dog", "label_id": 1},
   {"segment": [5.6, 6.4], "label": "cat", "label_id": 0},
   {"segment": [7.0, 9.0], "label": "dog", "label_id": 1},
   {"segment": [8.0, 9.6], "label": "dog", "label_id": 1}]},
 "vid_bad": {"duration": 10.3, "subset": "validation", "annotations": [
   {"segment": [8.2, 10.8], "label": "cat", "label_id": 0},
   {"segment": [1.0, 12.0], "label": "cat", "label_id": 0},
   {"segment": [4.0, 4.0], "label": "cat", "label_id": 0},
   {"segment": [1.0, 3.0], "label": "cat", "label_id": 5},
   {"segment": [1.0], "label": "cat", "label_id": 0}]},
 "vid_split": {"duration": 10, "subset": "holdout", "annotations": []},
 "../evil": {"duration": 10, "subset": "train", "annotations": []},
 "vid_union": {"duration": 5, "subset": "test", "annotations": []}
}}"""


def test_unav100_segment_rule_and_bad_events(tmp_path: Path) -> None:
    path = write(tmp_path / "unav.json", UNAV_JSON)
    report = ValidationReport()
    manifest, dense = read_unav100(path, report=report)
    assert manifest.select("video_id", "split", "n_segments", "labels").rows() == [
        ("vid_union", "train", 10, ["cat", "dog"]),  # label_id order; the later duplicate key is ignored
        ("vid_bad", "val", 10, ["cat"]),
    ]
    # dog: segments 0-2 covered, segment 3 by 0.3 + 0.4 s of two events (union) -> [0, 4);
    # [7, 9] and [8, 9.6] overlap -> [7, 9.6] covers 7, 8 and 0.6 of 9 -> [7, 10).
    # cat [5.6, 6.4] covers 0.4 s of two segments -> no segment. [8.2, 10.8] in 10.3 s: clipped.
    assert dense.filter(pl.col("modality") == "audio").select("video_id", "label", "onset", "offset").rows() == [
        ("vid_union", "dog", 0, 4),
        ("vid_union", "dog", 7, 10),
        ("vid_bad", "cat", 8, 10),
    ]
    assert dense.filter(pl.col("modality") == "visual").drop("modality").equals(
        dense.filter(pl.col("modality") == "audio").drop("modality")
    )
    assert {(i.video_id, i.reason) for i in report.issues} == {
        ("vid_union", Reason.DUPLICATE_ID.value),
        ("vid_bad", Reason.BEYOND_VIDEO.value),
        ("vid_bad", Reason.EMPTY_SPAN.value),
        ("vid_bad", Reason.INCONSISTENT.value),
        ("vid_bad", Reason.MALFORMED.value),
        ("vid_split", Reason.UNKNOWN_SPLIT.value),
        ("../evil", Reason.ESCAPES_ROOT.value),
    }
    assert all(i.line is None for i in report.issues)
    assert unav100_classes(path) == ["cat", "dog"]

    with pytest.raises(DatasetValidationError, match=r"unav\.json\['vid_union'\]: video 'vid_union': duplicate id"):
        read_unav100(path, strict=True)


def test_class_lists_can_be_replaced(llp_dir: Path, tmp_path: Path) -> None:
    """LLP- and UnAV-format data with other classes (synthetic benchmarks, catalog `classes`)."""
    report = ValidationReport()
    manifest, dense = read_llp(llp_dir, classes=["Dog", "Speech", "Unicorn"], report=report)
    assert manifest["video_id"].to_list() == [f"{c * 11}_0_10" for c in "abde"]
    assert ("AVVP_train.csv", 7, "ccccccccccc_5_15", Reason.UNKNOWN_CLASS.value) in issue_rows(report)
    assert ("eeeeeeeeeee_0_10", "audio", "Unicorn", 0, 2) in dense.rows()

    report = ValidationReport()
    manifest, dense = read_unav100(write(tmp_path / "unav.json", UNAV_JSON), classes=["dog"], report=report)
    assert manifest["labels"].to_list() == [["dog"], []]
    assert set(dense["label"]) == {"dog"}
    # every structurally valid cat event but the one with an inconsistent label_id
    assert sum(i.reason == Reason.UNKNOWN_CLASS.value for i in report.issues) == 4


def write_ave(root: Path, lines: list[str], splits: list[tuple[int, str, str]]) -> Path:
    write(root / "Annotations.txt", "".join(f"{line}\n" for line in lines))
    write(root / "splits.csv", "line,video_id,split\n" + "".join(f"{i},{v},{s}\n" for i, v, s in splits))
    return root


def test_ave_bad_rows(tmp_path: Path) -> None:
    lines = [
        "Category&VideoID&Quality&StartTime&EndTime",  # official header: skipped, not a data line
        "Bark&aaaaaaaaaaa&good&2&5",  # index 0: good
        "Unicorn&bbbbbbbbbbb&good&0&10",  # 1: unknown class
        "Bark&ccccccccccc&good&6&6",  # 2: empty span -> video kept, all background
        "Bark&ddddddddddd&good&3&11",  # 3: beyond the 10 s clip
        "Bark&aaaaaaaaaaa&good&2&5",  # 4: exact repeat of line 0
        "Goat&aaaaaaaaaaa&good&0&10",  # 5: same video, another category: own sample
        "Bark&eeeeeeeeeee&good&0&10",  # 6: not in splits.csv
        "Bark&fffffffffff&good&0&10",  # 7: splits.csv names another video
        "Bark&ggggggggggg&good&x&10",  # 8: malformed
    ]
    splits = [(0, "aaaaaaaaaaa", "train"), (1, "bbbbbbbbbbb", "train"), (2, "ccccccccccc", "val"),
              (3, "ddddddddddd", "test"), (4, "aaaaaaaaaaa", "train"), (5, "aaaaaaaaaaa", "test"),
              (7, "zzzzzzzzzzz", "train"), (8, "ggggggggggg", "train")]  # fmt: skip
    root = write_ave(tmp_path / "ave", lines, splits)
    report = ValidationReport()
    manifest, dense = read_ave(root, report=report)
    assert manifest.select("video_id", "split", "labels").rows() == [
        ("aaaaaaaaaaa_line0", "train", ["Bark"]),
        ("ccccccccccc", "val", ["Bark"]),
        ("ddddddddddd", "test", ["Bark"]),
        ("aaaaaaaaaaa_line5", "test", ["Goat"]),
    ]
    assert dense.filter(pl.col("modality") == "visual").drop("modality").rows() == [
        ("aaaaaaaaaaa_line0", "Bark", 2, 5),
        ("aaaaaaaaaaa_line5", "Goat", 0, 10),
    ]
    annotations = "Annotations.txt"
    assert issue_rows(report) == {
        (annotations, 3, "bbbbbbbbbbb", Reason.UNKNOWN_CLASS.value),
        (annotations, 4, "ccccccccccc", Reason.EMPTY_SPAN.value),
        (annotations, 5, "ddddddddddd", Reason.BEYOND_VIDEO.value),
        (annotations, 6, "aaaaaaaaaaa", Reason.DUPLICATE_ID.value),
        (annotations, 8, "eeeeeeeeeee", Reason.UNKNOWN_SPLIT.value),
        (annotations, 9, "fffffffffff", Reason.INCONSISTENT.value),
        (annotations, 10, "ggggggggggg", Reason.MALFORMED.value),
        ("splits.csv", 9, "ggggggggggg", Reason.UNKNOWN_VIDEO.value),
    }
    truth = ave_segment_labels(manifest, dense, AVE_CLASSES)
    bark, goat, background = AVE_CLASSES.index("Bark"), AVE_CLASSES.index("Goat"), len(AVE_CLASSES)
    assert truth.tolist() == [
        [background] * 2 + [bark] * 3 + [background] * 5,
        [background] * 10,
        [background] * 10,
        [goat] * 10,
    ]


def test_ave_segment_labels_refuses_unknown_dense_classes(tmp_path: Path) -> None:
    root = write_ave(tmp_path / "ave", ["Bark&aaaaaaaaaaa&good&2&5"], [(0, "aaaaaaaaaaa", "train")])
    manifest, dense = read_ave(root)
    with pytest.raises(ValueError, match="Bark"):
        ave_segment_labels(manifest, dense, ["Goat"])


# ------------------------------------------------------------------ custom tables


def write_video(path: Path, seconds: float, fps: int = 8) -> Path:
    """A tiny real video (MPEG-4 part 2, 32x32) of `seconds`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.time_base = Fraction(1, fps)
        for i in range(round(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 10 % 255, np.uint8), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.fixture
def custom_dir(tmp_path: Path) -> Path:
    root = tmp_path / "custom"
    write_video(root / "media" / "probe.mp4", 2.25)
    write(root / "media" / "given.mp4", "a duration is given, so this file is not opened")
    write(root / "media" / "broken.mp4", "not a video")
    write(tmp_path / "outside.mp4", "outside the media root")
    write(
        root / "videos.csv",
        "video_id,media_path,labels,split,duration_s\n"
        "v_probe,media/probe.mp4,dog|cat,,\n"  # 2: duration probed, empty split -> train
        "v_given,media/given.mp4, dog ,validation,12.0\n"  # 3: good
        "v_missing,media/nothere.mp4,dog,test,10\n"  # 4: missing media, kept (duration known)
        "v_gone,media/nothere.mp4,dog,test,\n"  # 5: missing media and no duration: dropped
        "v_broken,media/broken.mp4,cat,train,\n"  # 6: unreadable media, no duration: dropped
        "v_escape,../outside.mp4,dog,train,10\n"  # 7: escapes the media root
        "v_unknown,media/given.mp4,dog|unicorn,train,10\n"  # 8: unknown class
        "v_given,media/given.mp4,cat,train,10\n"  # 9: duplicate id
        "v_short,media/given.mp4,cat,train,0.3\n"  # 10: shorter than a segment
        "v_split,media/given.mp4,cat,holdout,10\n"  # 11: unknown split
        "v_nan,media/given.mp4,cat,train,ten\n"  # 12: malformed duration
        "../v_id,media/given.mp4,cat,train,10\n",  # 13: an id that is a path
    )
    write(
        root / "dense.csv",
        "video_id,modality,label,onset,offset\n"
        "v_given,audio,dog,0,12\n"  # 2: good
        "v_given,visual,dog,3,3\n"  # 3: onset >= offset
        "v_given,visual,dog,3,13\n"  # 4: beyond the 12 segments
        "v_ghost,audio,dog,0,2\n"  # 5: no such video
        "v_given,smell,dog,0,2\n"  # 6: malformed modality
        "v_given,audio,unicorn,0,2\n",  # 7: unknown class
    )
    return root


def test_custom_csv_bad_rows(custom_dir: Path) -> None:
    report = ValidationReport()
    manifest, dense = read_custom(
        custom_dir / "videos.csv", dense_path=custom_dir / "dense.csv", classes=["dog", "cat"], report=report
    )
    assert_contract(manifest, dense)
    media = custom_dir / "media"
    assert manifest.select("video_id", "split", "media_path", "duration_s", "n_segments", "labels").rows() == [
        ("v_probe", "train", str(media / "probe.mp4"), pytest.approx(2.25, abs=0.15), 2, ["dog", "cat"]),
        ("v_given", "val", str(media / "given.mp4"), 12.0, 12, ["dog"]),
        ("v_missing", "test", None, 10.0, 10, ["dog"]),
    ]
    assert (manifest["dataset"] == "custom").all()
    assert dense.rows() == [("v_given", "audio", "dog", 0, 12)]
    table, dense_file = "videos.csv", "dense.csv"
    assert issue_rows(report) == {
        (table, 4, "v_missing", Reason.MISSING_MEDIA.value),
        (table, 5, "v_gone", Reason.MISSING_MEDIA.value),
        (table, 6, "v_broken", Reason.MISSING_MEDIA.value),
        (table, 7, "v_escape", Reason.ESCAPES_ROOT.value),
        (table, 8, "v_unknown", Reason.UNKNOWN_CLASS.value),
        (table, 9, "v_given", Reason.DUPLICATE_ID.value),
        (table, 10, "v_short", Reason.INVALID_DURATION.value),
        (table, 11, "v_split", Reason.UNKNOWN_SPLIT.value),
        (table, 12, "v_nan", Reason.MALFORMED.value),
        (table, 13, "../v_id", Reason.ESCAPES_ROOT.value),
        (dense_file, 3, "v_given", Reason.EMPTY_SPAN.value),
        (dense_file, 4, "v_given", Reason.BEYOND_VIDEO.value),
        (dense_file, 5, "v_ghost", Reason.UNKNOWN_VIDEO.value),
        (dense_file, 6, "v_given", Reason.MALFORMED.value),
        (dense_file, 7, "v_given", Reason.UNKNOWN_CLASS.value),
    }
    with pytest.raises(DatasetValidationError, match=r"videos\.csv:4: video 'v_missing': missing media file"):
        read_custom(custom_dir / "videos.csv", classes=["dog", "cat"], strict=True)


def test_custom_parquet_round_trip(custom_dir: Path, tmp_path: Path) -> None:
    classes = ["dog", "cat"]
    manifest, dense = read_custom(custom_dir / "videos.csv", dense_path=custom_dir / "dense.csv", classes=classes)
    # A uwav manifest is itself a custom table (list-typed labels, absolute media paths).
    manifest.write_parquet(tmp_path / "manifest.parquet")
    dense.write_parquet(tmp_path / "dense.parquet")
    again, dense_again = read_custom(
        tmp_path / "manifest.parquet", dense_path=tmp_path / "dense.parquet", classes=["dog", "cat"]
    )
    assert again.equals(manifest) and dense_again.equals(dense)
    via_catalog = read_dataset("custom", tmp_path / "manifest.parquet", dense_path=tmp_path / "dense.parquet")
    assert via_catalog[0].equals(manifest)


def test_custom_without_split_column_defaults_to_train(tmp_path: Path) -> None:
    write(tmp_path / "media" / "a.mp4", "x")
    path = write(tmp_path / "t.csv", "video_id,media_path,labels,duration_s\na,media/a.mp4,dog,10\n")
    manifest, dense = read_custom(path)
    assert manifest.select("split", "labels").rows() == [("train", ["dog"])] and dense.height == 0


def test_custom_missing_columns_are_named(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "video_id,labels\na,dog\n")
    with pytest.raises(ValueError, match=r"missing columns \['media_path'\]"):
        read_custom(path)


def test_read_dataset_dispatch(llp_dir: Path) -> None:
    manifest, dense = read_dataset("llp", llp_dir)
    assert manifest.height == 4 and dense.height == 2
    with pytest.raises(ValueError, match="'imagenet'"):
        read_dataset("imagenet", llp_dir)
    assert dataset_classes("llp", llp_dir) == list(LLP_CLASSES)
