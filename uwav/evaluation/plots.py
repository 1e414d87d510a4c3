"""Figures for reports and `uwav parse`: per-video audio/visual timelines and training curves.

Figures are built as `matplotlib.figure.Figure` objects without pyplot, so nothing here touches
the global backend, opens a window or keeps figures alive in pyplot's registry: a figure is
freed with its last reference and renders through the Agg canvas to PNG.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from uwav.atomic import write_bytes_atomic

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DEFAULT_DPI = 110
SEGMENT_S = 1.0  # METHOD.md: a video is cut into 1-s segments

# One colour per modality lane: (prediction fill, ground-truth tint).
_LANE_COLOURS = {"audio": ("#1f5fa8", "#cfe0f5"), "visual": ("#c2571a", "#f8dcc8")}
_PROBABILITY_COLOUR = "#222222"
# Validation scores worth a curve, in plotting order; others under `val_` are plotted only when none of these exist.
_PREFERRED_VAL_KEYS = (
    "val_seg_type", "val_seg_event", "val_event_type", "val_event_event", "val_ave_accuracy",
)  # fmt: skip
_NON_SCORE_KEYS = ("val_s", "train_s", "lr", "epoch")


def positive_runs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximal runs of True along the segments of a (segments, classes) bool array.

    Returns (class, start, end) int arrays, one entry per run, `end` exclusive, ordered by class then start.
    """
    x = np.asarray(x, dtype=bool)
    if x.ndim != 2:
        raise ValueError(f"positive_runs: expected a (segments, classes) array, got shape {x.shape}")
    x = x.T  # class rows, so that argwhere below lists runs by class
    padded = np.zeros((x.shape[0], x.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = x
    step = np.diff(padded, axis=1)
    # argwhere is row-major, so the k-th rise and the k-th fall of the array belong to one run.
    starts, ends = np.argwhere(step == 1), np.argwhere(step == -1)
    return starts[:, 0], starts[:, 1], ends[:, 1]


def _as_segment_by_class(name: str, video_id: str, x: np.ndarray | None, shape: tuple[int, int] | None) -> np.ndarray | None:
    if x is None:
        return None
    arr = np.asarray(x)
    if arr.ndim != 2 or (shape is not None and arr.shape != shape):
        expected = "(segments, classes)" if shape is None else str(shape)
        raise ValueError(f"timeline for {video_id!r}: {name} must be {expected}, got shape {arr.shape}")
    return arr


def timeline_figure(
    video_id: str,
    classes: Sequence[str],
    pred_audio: np.ndarray,
    pred_visual: np.ndarray,
    gt_audio: np.ndarray | None = None,
    gt_visual: np.ndarray | None = None,
    probs_audio: np.ndarray | None = None,
    probs_visual: np.ndarray | None = None,
) -> Figure:
    """One video's timeline: an audio panel above a visual panel, one row per class that is
    predicted or annotated in either modality, seconds on the x axis.

    Predictions are filled bars, ground truth light outlined boxes behind them, and probabilities
    (when given) a step line across each row, with the row's bottom at 0 and top at 1.
    All arrays are (segments, classes): predictions and truth bool, probabilities float.
    """
    shape = _as_segment_by_class("pred_audio", video_id, pred_audio, None).shape
    if len(classes) != shape[1]:
        raise ValueError(f"timeline for {video_id!r}: {len(classes)} class names for {shape[1]} classes")

    def lane(modality: str, pred: np.ndarray, gt: np.ndarray | None, prob: np.ndarray | None) -> dict[str, np.ndarray | None]:
        checked_gt = _as_segment_by_class(f"gt_{modality}", video_id, gt, shape)
        return {
            "pred": _as_segment_by_class(f"pred_{modality}", video_id, pred, shape).astype(bool),
            "gt": None if checked_gt is None else checked_gt.astype(bool),
            "prob": _as_segment_by_class(f"probs_{modality}", video_id, prob, shape),
        }

    lanes = {"audio": lane("audio", pred_audio, gt_audio, probs_audio), "visual": lane("visual", pred_visual, gt_visual, probs_visual)}
    has_truth = any(arrays["gt"] is not None for arrays in lanes.values())
    has_prob = any(arrays["prob"] is not None for arrays in lanes.values())
    # Rows: the classes predicted or annotated in either modality, the same rows in both panels.
    shown = np.zeros(shape[1], dtype=bool)
    for arrays in lanes.values():
        for key in ("pred", "gt"):
            if arrays[key] is not None:
                shown |= arrays[key].any(axis=0)
    rows = np.flatnonzero(shown)
    n_segments = shape[0]
    duration = n_segments * SEGMENT_S

    n_rows = max(len(rows), 1)
    fig = Figure(figsize=(min(6.0 + 0.45 * n_segments, 16.0), 1.6 + 2 * (0.5 + 0.42 * n_rows)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 1, sharex=True)
    for ax, (modality, arrays) in zip(axes, lanes.items(), strict=True):
        fill, tint = _LANE_COLOURS[modality]
        ax.set_ylim(n_rows - 0.5, -0.5)  # first class on top
        ax.set_xlim(0, duration)
        ax.set_ylabel(modality, fontsize=11, fontweight="bold", color=fill)
        ax.set_yticks(range(len(rows)), [classes[c] for c in rows], fontsize=9)
        ax.grid(axis="x", color="#dddddd", linewidth=0.6)
        ax.set_axisbelow(True)
        for y in np.arange(0.5, n_rows - 0.5):
            ax.axhline(y, color="#eeeeee", linewidth=0.8)
        if not len(rows):
            ax.text(duration / 2, 0, "no event predicted or annotated", ha="center", va="center", color="#777777")
            ax.set_yticks([])
            continue
        truth, pred, prob = arrays["gt"], arrays["pred"], arrays["prob"]
        if truth is not None:
            row, start, end = positive_runs(truth[:, rows])
            for r, s, e in zip(row, start, end, strict=True):
                ax.broken_barh([(s * SEGMENT_S, (e - s) * SEGMENT_S)], (r - 0.4, 0.8), facecolors=tint, edgecolors=fill, linewidth=1.2)
        row, start, end = positive_runs(pred[:, rows])
        for r, s, e in zip(row, start, end, strict=True):
            ax.broken_barh([(s * SEGMENT_S, (e - s) * SEGMENT_S)], (r - 0.17, 0.34), facecolors=fill)
        if prob is not None:
            edges = np.arange(n_segments + 1) * SEGMENT_S
            for r, c in enumerate(rows):
                values = np.clip(np.asarray(prob[:, c], dtype=float), 0.0, 1.0)
                # Row r spans [r - 0.45, r + 0.45] with the y axis inverted, so probability 1 is the row's top.
                ax.stairs(r + 0.45 - 0.9 * values, edges, baseline=None, color=_PROBABILITY_COLOUR, linewidth=1.0)
    axes[-1].set_xlabel("time (s)")
    step = 1 if n_segments <= 20 else 5 if n_segments <= 100 else 10
    axes[-1].set_xticks(np.arange(0, duration + 1e-9, step * SEGMENT_S))

    # Neutral legend swatches: each panel's colour already says which modality it is.
    handles = [Patch(facecolor="#555555", label="prediction")]
    if has_truth:
        handles.append(Patch(facecolor="#e4e4e4", edgecolor="#555555", label="ground truth"))
    if has_prob:
        handles.append(Line2D([], [], color=_PROBABILITY_COLOUR, linewidth=1.0, label="segment probability (row bottom 0, top 1)"))
    fig.legend(handles=handles, loc="outside upper right", ncols=len(handles), fontsize=8, frameon=False)
    fig.suptitle(video_id, x=0.01, ha="left", fontsize=11)
    return fig


def training_curves_figure(history: Sequence[Mapping[str, Any]]) -> Figure:
    """Loss terms (left) and validation scores (right) per epoch from a training history.

    `history` is `TrainResult.history`: one dict per epoch with `epoch`, `loss*` terms and
    `val_<score>` entries; any other keys are ignored.
    """
    if not history:
        raise ValueError("training_curves_figure: the history is empty")
    epochs = [int(record.get("epoch", i + 1)) for i, record in enumerate(history)]
    keys = list(dict.fromkeys(key for record in history for key in record))
    loss_keys = [k for k in keys if k.startswith("loss")]
    val_keys = [k for k in _PREFERRED_VAL_KEYS if k in keys] or [
        k for k in keys if k.startswith("val_") and k not in _NON_SCORE_KEYS
    ]

    fig = Figure(figsize=(11.0, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, val_ax = fig.subplots(1, 2)
    for ax, series, title in ((loss_ax, loss_keys, "training loss"), (val_ax, val_keys, "validation score (%)")):
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("epoch")
        ax.grid(color="#e5e5e5", linewidth=0.6)
        for key in series:
            values = [float(record[key]) if record.get(key) is not None else np.nan for record in history]
            ax.plot(epochs, values, marker="o" if len(epochs) <= 30 else None, markersize=3, label=key.removeprefix("val_"))
        if series:
            ax.legend(fontsize=8, frameon=False)
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes, color="#777777")
    return fig


def figure_png(fig: Figure, dpi: int = DEFAULT_DPI) -> bytes:
    """The figure rendered as PNG bytes (for embedding as base64 or writing elsewhere)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return buffer.getvalue()


def save_png(fig: Figure, path: str | Path, dpi: int = DEFAULT_DPI) -> Path:
    """Write the figure as a PNG at `path`, atomically; returns the path."""
    return write_bytes_atomic(path, figure_png(fig, dpi))
