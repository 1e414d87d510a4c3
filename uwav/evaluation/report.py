"""Run reports: LLP-protocol tables (plain text, Markdown for Prefect artifacts, HTML) and a
self-contained HTML report (inline CSS, images as base64 PNG, no external resource).

Scores are the percentages of `uwav.evaluation.avvp_scores`, keyed by `SCORE_KEYS`.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from uwav.atomic import write_text_atomic
from uwav.evaluation.plots import PNG_MAGIC, figure_png, timeline_figure, training_curves_figure
from uwav.evaluation.protocol import SCORE_KEYS

Style = Literal["text", "markdown"]
# The paper's table layout: rows are the two levels, columns the five scores of each.
LEVELS: tuple[tuple[str, str], ...] = (("Segment-level", "seg"), ("Event-level", "event"))
COLUMNS: tuple[tuple[str, str], ...] = (("A", "a"), ("V", "v"), ("AV", "av"), ("Type@AV", "type"), ("Event@AV", "event"))
# Column titles for tables whose columns are score keys (the ablation table).
SCORE_TITLES: dict[str, str] = {
    f"{level}_{key}": f"{'Seg' if level == 'seg' else 'Event'} {title}" for _, level in LEVELS for title, key in COLUMNS
}
Cell = str | float | int | None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool | np.bool_)


@dataclass(frozen=True)
class _Table:
    """A small table rendered three ways; numbers are formatted with `digits` decimals (integers as they are)."""

    header: Sequence[str]
    rows: Sequence[Sequence[Cell]]
    digits: int = 1

    def _cell(self, value: Cell) -> str:
        if value is None or (_is_number(value) and math.isnan(value)):
            return "n/a"
        if not _is_number(value):
            return str(value)
        if isinstance(value, int | np.integer):
            return str(int(value))
        return f"{float(value):.{self.digits}f}"

    def _cells(self) -> list[list[str]]:
        return [[self._cell(value) for value in row] for row in self.rows]

    def _numeric_columns(self) -> list[bool]:
        """Columns holding only numbers (and gaps) are right-aligned, the rest left-aligned."""
        return [
            all(_is_number(row[i]) or row[i] is None for row in self.rows) and any(_is_number(row[i]) for row in self.rows)
            for i in range(len(self.header))
        ]

    def text(self) -> str:
        cells = [list(self.header), *self._cells()]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.header))]
        numeric = self._numeric_columns()
        return "\n".join(
            "  ".join(
                cell.rjust(width) if right else cell.ljust(width) for cell, width, right in zip(row, widths, numeric, strict=True)
            ).rstrip()
            for row in cells
        )

    def markdown(self) -> str:
        def line(cells: Sequence[str]) -> str:
            # Escaped so that a name can neither break the table nor inject markup into the artifact.
            return "| " + " | ".join(html.escape(cell, quote=False).replace("|", "\\|") for cell in cells) + " |"

        align = ["---:" if right else "---" for right in self._numeric_columns()]
        return "\n".join([line(self.header), "| " + " | ".join(align) + " |", *(line(row) for row in self._cells())])

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(title)}</th>" for title in self.header)
        body = []
        for row, shown in zip(self.rows, self._cells(), strict=True):
            cells = []
            for value, text in zip(row, shown, strict=True):
                if not _is_number(value):
                    cells.append(f"<td>{html.escape(text)}</td>")
                elif isinstance(value, int | np.integer) or math.isnan(value):
                    cells.append(f'<td class="num">{html.escape(text)}</td>')
                else:
                    # Full precision on hover; the table shows the paper's rounding.
                    cells.append(f'<td class="num" title="{html.escape(repr(float(value)))}">{html.escape(text)}</td>')
            body.append("<tr>" + "".join(cells) + "</tr>")
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"

    def render(self, style: Style) -> str:
        if style == "text":
            return self.text()
        if style == "markdown":
            return self.markdown()
        raise ValueError(f"unknown table style {style!r}; expected 'text' or 'markdown'")


def _score(scores: Mapping[str, Any], key: str, what: str) -> float:
    if key not in scores:
        raise KeyError(f"{what}: missing score {key!r} (expected the keys {list(SCORE_KEYS)})")
    return float(scores[key])


# The name of the evaluated model's rows when references are shown beside it.
MODEL_ROW = "HAN"


def _scores_table(
    scores: Mapping[str, Any], digits: int, what: str = "scores", references: Mapping[str, Mapping[str, Any]] | None = None
) -> _Table:
    """The two-level table; with `references` (name -> scores on the same split, e.g. the
    pseudo-labels and predict-nothing), each level lists the model's row and then theirs."""
    titles = [title for title, _ in COLUMNS]
    if not references:
        rows = [[name, *(_score(scores, f"{level}_{key}", what) for _, key in COLUMNS)] for name, level in LEVELS]
        return _Table(["", *titles], rows, digits)
    models = {MODEL_ROW: (scores, what), **{name: (values, f"reference {name!r}") for name, values in references.items()}}
    rows = [
        [name if index == 0 else "", model, *(_score(values, f"{level}_{key}", source) for _, key in COLUMNS)]
        for name, level in LEVELS
        for index, (model, (values, source)) in enumerate(models.items())
    ]
    return _Table(["", "model", *titles], rows, digits)


def _extra_scores(scores: Mapping[str, Any]) -> list[tuple[str, float]]:
    """Scores beyond the LLP protocol's (e.g. `ave_accuracy`), shown under the table."""
    return [(key, float(value)) for key, value in scores.items() if key not in SCORE_KEYS]


def format_scores_table(
    scores: Mapping[str, Any],
    *,
    references: Mapping[str, Mapping[str, Any]] | None = None,
    style: Style = "text",
    digits: int = 1,
) -> str:
    """The LLP-protocol table: rows Segment-level / Event-level, columns A, V, AV, Type@AV, Event@AV.

    `references`: scores on the same split to show beside the model's (name -> scores, e.g. the
    pseudo-labels it trained on and predicting nothing), so a reader sees what training added.
    Keys of `scores` beyond `SCORE_KEYS` (such as `ave_accuracy`) follow as `key: value` lines.
    Raises KeyError naming a missing score key.
    """
    table = _scores_table(scores, digits, references=references).render(style)
    extras = [f"{key}: {value:.{digits}f}" for key, value in _extra_scores(scores)]
    separator = "\n\n" if style == "markdown" else "\n"
    return separator.join([table, *extras]) if extras else table


def scores_markdown(
    scores: Mapping[str, Any], *, references: Mapping[str, Mapping[str, Any]] | None = None, digits: int = 1
) -> str:
    """`format_scores_table` as a Markdown table (for a Prefect markdown artifact)."""
    return format_scores_table(scores, references=references, style="markdown", digits=digits)


def _quality_sources(quality: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str | None, Mapping[str, Any]]]:
    """(split, labels name or None, scores) of every row group of a quality mapping: a split maps
    to its scores, or to {labels name: scores} for several sets of pseudo-labels on its videos."""
    rows: list[tuple[str, str | None, Mapping[str, Any]]] = []
    for split, value in quality.items():
        if value and all(isinstance(scores, Mapping) for scores in value.values()):
            rows += [(split, name, scores) for name, scores in value.items()]
        else:
            rows.append((split, None, value))
    return rows


def _quality_table(quality: Mapping[str, Mapping[str, Any]], digits: int) -> _Table:
    if not quality:
        raise ValueError("pseudo-label quality: no split given")
    groups = _quality_sources(quality)
    named = any(name is not None for _, name, _ in groups)
    rows = [
        [split, *([name] if named else []), level_name,
         *(_score(scores, f"{level}_{key}", f"pseudo-label quality of split {split!r}") for _, key in COLUMNS)]
        for split, name, scores in groups
        for level_name, level in LEVELS
    ]
    return _Table(["split", *(["pseudo-labels"] if named else []), "level", *(title for title, _ in COLUMNS)], rows, digits)


def pseudo_label_quality_table(quality: Mapping[str, Mapping[str, Any]], *, style: Style = "text", digits: int = 1) -> str:
    """Pseudo-label quality (the paper's Table 3) per split: `quality` maps a split name to the
    `pseudo_label_quality` scores of that split, or to {labels name: scores} to show several sets
    of pseudo-labels side by side (a `pseudo-labels` column names them); two rows (segment /
    event level) per split and set."""
    return _quality_table(quality, digits).render(style)


def _ablation_rows(ablation: pl.DataFrame | Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return ablation.to_dicts() if isinstance(ablation, pl.DataFrame) else list(ablation)


def _ablation_table(ablation: pl.DataFrame | Sequence[Mapping[str, Any]], digits: int) -> _Table:
    rows = _ablation_rows(ablation)
    if not rows:
        raise ValueError("ablation: the table is empty")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return _Table([SCORE_TITLES.get(c, c) for c in columns], [[row.get(c) for c in columns] for row in rows], digits)


def ablation_markdown(ablation: pl.DataFrame | Sequence[Mapping[str, Any]], *, digits: int = 1) -> str:
    """The ablation table (`uwav.training.han_train.run_ablation`'s, or a list of row dicts) as Markdown."""
    return _ablation_table(ablation, digits).markdown()


def report_timelines(
    video_ids: Sequence[str],
    classes: Sequence[str],
    pred_audio: np.ndarray,
    pred_visual: np.ndarray,
    gt_audio: np.ndarray | None = None,
    gt_visual: np.ndarray | None = None,
    probs_audio: np.ndarray | None = None,
    probs_visual: np.ndarray | None = None,
    *,
    limit: int = 8,
) -> list[tuple[str, bytes]]:
    """Timeline PNGs of the first `limit` videos, for `write_html_report(timelines=...)`.

    Arrays are (videos, segments, classes), as `decide` returns them; each figure is rendered
    at once so that only PNG bytes are kept.
    """
    n_videos = len(video_ids)
    for name, array in (("pred_audio", pred_audio), ("pred_visual", pred_visual), ("gt_audio", gt_audio),
                        ("gt_visual", gt_visual), ("probs_audio", probs_audio), ("probs_visual", probs_visual)):  # fmt: skip
        if array is not None and (np.ndim(array) != 3 or len(array) != n_videos):
            raise ValueError(f"report_timelines: {name} must be ({n_videos} videos, segments, classes), got shape {np.shape(array)}")

    def pick(array: np.ndarray | None, i: int) -> np.ndarray | None:
        return None if array is None else array[i]

    return [
        (
            video_id,
            figure_png(
                timeline_figure(
                    video_id, classes, pred_audio[i], pred_visual[i], pick(gt_audio, i), pick(gt_visual, i),
                    pick(probs_audio, i), pick(probs_visual, i),
                )  # fmt: skip
            ),
        )
        for i, video_id in enumerate(video_ids[:limit])
    ]


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1d1d1f; margin: 2rem auto;
       max-width: 1180px; padding: 0 1.2rem; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .3rem; }
h2 { font-size: 1.2rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .25rem; }
ul.notes { color: #444; padding-left: 1.2rem; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .92rem; }
th, td { border: 1px solid #d6d6d6; padding: .3rem .7rem; }
th { background: #f3f4f6; text-align: center; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafafa; }
p.extra, p.hint { color: #444; font-size: .92rem; }
figure { margin: 1rem 0 1.6rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .85rem; color: #555; }
"""


def _png_bytes(what: str, image: Figure | bytes) -> bytes:
    data = figure_png(image) if isinstance(image, Figure) else bytes(image)
    if not data.startswith(PNG_MAGIC):
        raise ValueError(f"report: the image for {what} is neither a matplotlib Figure nor PNG bytes")
    return data


def _img(png: bytes, alt: str) -> str:
    encoded = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def write_html_report(
    path: str | Path,
    *,
    title: str,
    scores: Mapping[str, Any],
    references: Mapping[str, Mapping[str, Any]] | None = None,
    classes: Sequence[str] = (),
    pseudo_label_quality: Mapping[str, Mapping[str, Any]] | None = None,
    history: Sequence[Mapping[str, Any]] | None = None,
    timelines: Sequence[tuple[str, Figure | bytes]] = (),
    ablation: pl.DataFrame | Sequence[Mapping[str, Any]] | None = None,
    notes: Sequence[str] = (),
) -> Path:
    """Write a single self-contained HTML report and return its path.

    Sections, in order: notes, the class vocabulary, the LLP-protocol metrics (with `references`
    beside the model's, as `format_scores_table`), pseudo-label quality (per split, and per set
    of pseudo-labels as `pseudo_label_quality_table`),
    the ablation table, training curves (from `TrainResult.history`), and per-video timelines
    ((video_id, Figure or PNG bytes) pairs, e.g. from `report_timelines`). Every text is
    HTML-escaped; images are inline base64 PNGs. Written to a temporary file and renamed into place.
    """
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{html.escape(note)}</li>" for note in notes) + "</ul>")
    if classes:
        parts.append(f'<p class="extra">{len(classes)} classes: {html.escape(", ".join(classes))}</p>')

    parts += ["<h2>Metrics (LLP protocol, %)</h2>", _scores_table(scores, 1, references=references).html()]
    extras = _extra_scores(scores)
    if extras:
        parts.append(_Table(["other score", "%"], extras, 1).html())

    if pseudo_label_quality:
        parts += [
            "<h2>Pseudo-label quality (LLP protocol on the binary pseudo-labels, %)</h2>",
            _quality_table(pseudo_label_quality, 1).html(),
        ]
    if ablation is not None:
        parts += ["<h2>Ablation</h2>", _ablation_table(ablation, 1).html()]
    if history:
        parts += ["<h2>Training curves</h2>", f"<figure>{_img(_png_bytes('training curves', training_curves_figure(history)), 'training curves')}</figure>"]
    if timelines:
        parts += [
            "<h2>Timelines: ground truth vs prediction</h2>",
            '<p class="hint">Per video, the audio panel above the visual panel; filled bars are predicted events, '
            "light outlined boxes the ground truth, the thin line the segment probability.</p>",
        ]
        for video_id, image in timelines:
            png = _png_bytes(f"video {video_id!r}", image)
            parts.append(f"<figure>{_img(png, f'timeline of {video_id}')}<figcaption>{html.escape(video_id)}</figcaption></figure>")

    document = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body>\n</html>\n"
    )
    return write_text_atomic(path, document)
