"""Reporting layer: event extraction for `uwav parse`, LLP tables, the self-contained HTML report, PNG figures."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from uwav.evaluation import SCORE_KEYS
from uwav.evaluation.plots import (
    PNG_MAGIC,
    figure_png,
    positive_runs,
    save_png,
    timeline_figure,
    training_curves_figure,
)
from uwav.evaluation.report import (
    ablation_markdown,
    format_scores_table,
    pseudo_label_quality_table,
    report_timelines,
    scores_markdown,
    write_html_report,
)
from uwav.parsing import (
    EVENTS_SCHEMA,
    SEGMENTS_SCHEMA,
    parse_results_table,
    segments_to_events,
    timeline_file_name,
    write_parse_outputs,
)

# Distinct values, so that a swapped row or column shows up as a wrong number.
SCORES = dict(zip(SCORE_KEYS, (64.21, 70.04, 63.38, 65.87, 63.92, 58.63, 66.71, 57.49, 60.94, 57.36), strict=True))
SEG_ROW = ["64.2", "70.0", "63.4", "65.9", "63.9"]
EVENT_ROW = ["58.6", "66.7", "57.5", "60.9", "57.4"]
EVIL = "<script>alert(1)</script>"


def _row(*on: int, n_seg: int = 10) -> list[bool]:
    """One class's (segments,) row; stacked rows are transposed to the (segments, classes) layout."""
    return [t in on for t in range(n_seg)]


# ------------------------------------------------------------------ event extraction


def test_positive_runs_at_the_boundaries() -> None:
    x = np.array([_row(0, 1, 2, 8, 9), _row(), _row(*range(10)), _row(5)]).T
    row, start, end = positive_runs(x)
    assert list(zip(row.tolist(), start.tolist(), end.tolist(), strict=True)) == [(0, 0, 3), (0, 8, 10), (2, 0, 10), (3, 5, 6)]


def test_segments_to_events_hand_worked() -> None:
    classes = ["Speech", "Dog"]
    audio = np.array([_row(0, 1, 2, 8, 9), _row(5)]).T
    visual = np.array([_row(1, 2, 3, 4, 5, 6, 7, 8), _row()]).T
    events = segments_to_events(audio, visual, classes)
    assert [(e["modality"], e["label"], e["onset"], e["offset"]) for e in events] == [
        ("audio", "Speech", 0.0, 3.0),
        ("audio", "Speech", 8.0, 10.0),
        ("audio", "Dog", 5.0, 6.0),
        ("visual", "Speech", 1.0, 9.0),
        # audio-visual = AND: Speech on [1, 3) and [8, 9); Dog is never visible.
        ("audio-visual", "Speech", 1.0, 3.0),
        ("audio-visual", "Speech", 8.0, 9.0),
    ]
    assert all(e["confidence"] is None for e in events)


def test_event_confidence_is_the_mean_probability_and_av_takes_the_weaker_side() -> None:
    audio, visual = np.array([_row(0, 1, n_seg=3)]).T, np.array([_row(1, 2, n_seg=3)]).T
    probs_audio, probs_visual = np.array([[0.9, 0.7, 0.1]]).T, np.array([[0.2, 0.6, 0.8]]).T
    events = segments_to_events(audio, visual, ["Cat"], probs_audio, probs_visual)
    confidence = {e["modality"]: e["confidence"] for e in events}
    assert confidence == pytest.approx({"audio": 0.8, "visual": 0.7, "audio-visual": 0.6})


def test_events_end_at_the_video_duration() -> None:
    on = np.ones((11, 1), dtype=bool)
    (audio_event, _, _) = segments_to_events(on, on, ["Car"], duration_s=10.6)
    assert (audio_event["onset"], audio_event["offset"]) == (0.0, 10.6)
    with pytest.raises(ValueError, match="10.4 s video has 10 segments"):
        segments_to_events(on, on, ["Car"], duration_s=10.4)


def _han_outputs() -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """Two videos, 3 segments, classes (Speech, Dog, Cat), HAN layout (N, T, modality, C)."""
    segment_prob = np.full((2, 3, 2, 3), 0.1)
    video_prob = np.array([[0.9, 0.9, 0.2], [0.8, 0.1, 0.1]])
    segment_prob[0, 0:2, 0, 0] = 0.9  # video a: Speech audible in segments 0-1
    segment_prob[0, 1:3, 1, 0] = 0.7  # ... and visible in 1-2
    segment_prob[0, 2, 1, 1] = 0.6  # Dog visible in segment 2
    segment_prob[0, :, :, 2] = 0.95  # Cat everywhere, but its video probability is 0.2: gated off
    segment_prob[1, :, 0, 0] = 0.8  # video b: Speech audible throughout, incl. segment 2 (padding below)
    return ["a", "b"], ["Speech", "Dog", "Cat"], segment_prob, video_prob


def test_parse_results_table_applies_the_decision_rule_and_drops_padding() -> None:
    video_ids, classes, segment_prob, video_prob = _han_outputs()
    events, segments = parse_results_table(video_ids, classes, segment_prob, video_prob, durations_s=[3.0, 1.7])
    assert events.schema == pl.Schema(EVENTS_SCHEMA) and segments.schema == pl.Schema(SEGMENTS_SCHEMA)
    assert events.drop("confidence").rows() == [
        ("a", "audio", "Speech", 0.0, 2.0),
        ("a", "visual", "Speech", 1.0, 3.0),
        ("a", "visual", "Dog", 2.0, 3.0),
        ("a", "audio-visual", "Speech", 1.0, 2.0),
        ("b", "audio", "Speech", 0.0, 1.7),  # 1.7 s = 2 segments; the third is padding
    ]
    assert events["confidence"].to_list() == pytest.approx([0.9, 0.7, 0.6, 0.7, 0.8])
    assert segments.rows() == [
        ("a", 0, ["Speech"], [], []),
        ("a", 1, ["Speech"], ["Speech"], ["Speech"]),
        ("a", 2, [], ["Speech", "Dog"], []),
        ("b", 0, ["Speech"], [], []),
        ("b", 1, ["Speech"], [], []),
    ]


def test_parse_outputs_round_trip(tmp_path: Path) -> None:
    video_ids, classes, segment_prob, video_prob = _han_outputs()
    video_ids = ["a", "../b c"]  # an id that must not escape the folder
    out = write_parse_outputs(tmp_path / "parsed", video_ids, classes, segment_prob, video_prob)
    events, segments = parse_results_table(video_ids, classes, segment_prob, video_prob)
    assert pl.read_parquet(out.events_parquet).equals(events)
    assert pl.read_parquet(out.segments_parquet).equals(segments)
    document = json.loads(out.events_json.read_text())
    assert [video["video_id"] for video in document["videos"]] == video_ids
    assert document["classes"] == classes and document["threshold"] == 0.5
    from_json = [{"video_id": v["video_id"], **e} for v in document["videos"] for e in v["events"]]
    assert from_json == events.to_dicts()
    assert [s["audio_visual"] for s in document["videos"][0]["segments"]] == [[], ["Speech"], []]
    assert out.timelines["../b c"] == tmp_path / "parsed" / "_._b_c.png"
    for png in out.timelines.values():
        assert png.read_bytes().startswith(PNG_MAGIC)
    # Atomic writes leave no temporary file behind.
    assert sorted(p.name for p in (tmp_path / "parsed").iterdir()) == sorted(
        ["events.json", "events.parquet", "segments.parquet", "a.png", "_._b_c.png"]
    )


def test_parse_refuses_ids_that_collide_on_disk(tmp_path: Path) -> None:
    _, classes, segment_prob, video_prob = _han_outputs()
    assert timeline_file_name("x/y") == timeline_file_name("x?y") == "x_y.png"
    with pytest.raises(ValueError, match="'x/y' and 'x\\?y' map to one timeline file"):
        write_parse_outputs(tmp_path, ["x/y", "x?y"], classes, segment_prob, video_prob)


# ------------------------------------------------------------------ tables


def _cells(line: str) -> list[str]:
    return line.split()


def test_scores_table_has_the_papers_layout_and_numbers() -> None:
    lines = format_scores_table(SCORES).splitlines()
    assert _cells(lines[0]) == ["A", "V", "AV", "Type@AV", "Event@AV"]
    assert _cells(lines[1]) == ["Segment-level", *SEG_ROW]
    assert _cells(lines[2]) == ["Event-level", *EVENT_ROW]
    assert len(lines) == 3
    with_extra = format_scores_table({**SCORES, "ave_accuracy": 80.64}).splitlines()
    assert with_extra[3] == "ave_accuracy: 80.6"
    with pytest.raises(KeyError, match="seg_av"):
        format_scores_table({k: v for k, v in SCORES.items() if k != "seg_av"})


def test_scores_table_puts_references_beside_the_model() -> None:
    nothing = {key: 10.0 for key in SCORES}
    labels = {**SCORES, "seg_type": 61.25, "event_type": 55.55}
    lines = format_scores_table(SCORES, references={"pseudo-labels": labels, "predict nothing": nothing}).splitlines()
    assert _cells(lines[0]) == ["model", "A", "V", "AV", "Type@AV", "Event@AV"]
    assert _cells(lines[1]) == ["Segment-level", "HAN", *SEG_ROW]
    assert _cells(lines[2])[:1] == ["pseudo-labels"] and _cells(lines[2])[4] == "61.2"
    assert _cells(lines[3]) == ["predict", "nothing", *["10.0"] * 5]
    assert _cells(lines[4]) == ["Event-level", "HAN", *EVENT_ROW]
    assert _cells(lines[5])[4] == "55.5" and len(lines) == 7
    with pytest.raises(KeyError, match="reference 'predict nothing'"):
        format_scores_table(SCORES, references={"predict nothing": {k: v for k, v in nothing.items() if k != "seg_av"}})
    markdown = scores_markdown(SCORES, references={"predict nothing": nothing}).splitlines()
    assert [cell.strip() for cell in markdown[3].strip("|").split("|")] == ["", "predict nothing", *["10.0"] * 5]


def test_scores_markdown_is_a_markdown_table() -> None:
    lines = scores_markdown(SCORES).splitlines()
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    assert rows[0] == ["", "A", "V", "AV", "Type@AV", "Event@AV"]
    assert rows[1] == ["---", "---:", "---:", "---:", "---:", "---:"]
    assert rows[2] == ["Segment-level", *SEG_ROW] and rows[3] == ["Event-level", *EVENT_ROW]


def test_pseudo_label_quality_and_ablation_tables() -> None:
    val = {**SCORES, "seg_type": 72.84}
    lines = pseudo_label_quality_table({"val": val, "test": SCORES}).splitlines()
    assert _cells(lines[0]) == ["split", "level", "A", "V", "AV", "Type@AV", "Event@AV"]
    assert [_cells(line)[:2] for line in lines[1:]] == [
        ["val", "Segment-level"], ["val", "Event-level"], ["test", "Segment-level"], ["test", "Event-level"]
    ]  # fmt: skip
    assert _cells(lines[1])[5] == "72.8" and _cells(lines[3])[5] == "65.9"
    with pytest.raises(KeyError, match="split 'val'"):
        pseudo_label_quality_table({"val": {"seg_a": 1.0}})
    table = ablation_markdown(pl.DataFrame([{"variant": "soft | x", "best_epoch": 7, "seg_type": 65.43}]))
    assert table.splitlines()[0] == "| variant | best_epoch | Seg Type@AV |"
    assert table.splitlines()[2] == "| soft \\| x | 7 | 65.4 |"


# ------------------------------------------------------------------ figures and the HTML report


def _video() -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    classes = ["Speech", "Car", EVIL, "Dog"]
    pred_audio, pred_visual = np.zeros((10, 4), bool), np.zeros((10, 4), bool)
    gt_audio, gt_visual = np.zeros((10, 4), bool), np.zeros((10, 4), bool)
    pred_audio[:6, 0] = gt_audio[:, 0] = True
    gt_visual[3:5, 2] = True
    pred_visual[8:, 3] = True
    return classes, pred_audio, pred_visual, gt_audio, gt_visual


def test_timeline_shows_the_classes_in_prediction_or_truth_and_renders_png(tmp_path: Path) -> None:
    classes, pred_audio, pred_visual, gt_audio, gt_visual = _video()
    probs = np.linspace(0, 1, 40).reshape(4, 10).T
    fig = timeline_figure("vid", classes, pred_audio, pred_visual, gt_audio, gt_visual, probs, probs)
    for ax in fig.axes:
        assert [label.get_text() for label in ax.get_yticklabels()] == ["Speech", EVIL, "Dog"]
        assert ax.get_xlim() == (0.0, 10.0)
    path = save_png(fig, tmp_path / "figs" / "vid.png")
    assert path.read_bytes().startswith(PNG_MAGIC) and path.stat().st_size > 5_000
    with pytest.raises(ValueError, match="'vid': gt_visual must be \\(10, 4\\)"):
        timeline_figure("vid", classes, pred_audio, pred_visual, gt_audio, gt_visual[:5])


def test_training_curves_figure() -> None:
    history = [
        {"epoch": e, "loss": 1 / e, "loss_video": 0.5 / e, "lr": 1e-4, "val_s": 2.0, "val_seg_type": 40.0 + e, "val_seg_event": 38.0 + e}
        for e in range(1, 6)
    ]
    fig = training_curves_figure(history)
    loss_ax, val_ax = fig.axes
    assert [line.get_label() for line in loss_ax.get_lines()] == ["loss", "loss_video"]
    assert [line.get_label() for line in val_ax.get_lines()] == ["seg_type", "seg_event"]
    assert list(val_ax.get_lines()[0].get_ydata()) == [41.0, 42.0, 43.0, 44.0, 45.0]
    assert figure_png(fig).startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="empty"):
        training_curves_figure([])


def _embedded_pngs(document: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', document)]


def test_html_report_is_self_contained_escaped_and_complete(tmp_path: Path) -> None:
    classes, pred_audio, pred_visual, gt_audio, gt_visual = _video()
    timelines = report_timelines(
        ["v1", "v2", "v3"], classes, *(np.stack([x, x, x]) for x in (pred_audio, pred_visual, gt_audio, gt_visual)), limit=2
    )
    timelines.append(("v3 <b>", timeline_figure("v3", classes, pred_audio, pred_visual)))
    history = [{"epoch": e, "loss": 1.0 / e, "val_seg_type": 50.0 + e} for e in (1, 2, 3)]
    path = write_html_report(
        tmp_path / "run" / "report.html",
        title=f"demo {EVIL}",
        scores={**SCORES, "ave_accuracy": 80.64},
        references={"predict nothing": {key: 12.34 for key in SCORES}},
        classes=classes,
        pseudo_label_quality={"val": {**SCORES, "seg_type": 72.84}},
        history=history,
        timelines=timelines,
        ablation=[{"variant": EVIL, "seg_type": 65.43}],
        notes=["run <1> & co"],
    )
    document = path.read_text(encoding="utf-8")
    assert document.startswith("<!DOCTYPE html>")
    # Self-contained: no external source, link, script or stylesheet.
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", document, flags=re.IGNORECASE)
    assert not re.search(r"<(script|link|iframe)\b", document, flags=re.IGNORECASE)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in document and "run &lt;1&gt; &amp; co" in document
    assert "<figcaption>v3 &lt;b&gt;</figcaption>" in document
    assert ">predict nothing<" in document
    for value in (*SEG_ROW, *EVENT_ROW, "72.8", "65.4", "80.6", "12.3"):
        assert f">{value}<" in document
    pngs = _embedded_pngs(document)
    assert len(pngs) == 1 + 3  # training curves + three timelines
    assert all(png.startswith(PNG_MAGIC) for png in pngs)
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temporary file left


def test_html_report_refuses_an_image_that_is_not_png(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="video 'v1'"):
        write_html_report(tmp_path / "r.html", title="t", scores=SCORES, timelines=[("v1", b"GIF89a")])
    assert not (tmp_path / "r.html").exists()
