"""VALOR's released segment pseudo-labels (`Franklin905/VALOR`; `NTUBarista/valor_features`'
`CLIP.zip` and `CLAP.zip`) as uwav's pseudo-labels (`stages.pseudo_labels.source: released`), or
scored beside the generated ones.

Per video, `<root>/CLAP/segment_pseudo_labels/<id11>.npy` (audio) and
`<root>/CLIP/segment_pseudo_labels/<id11>.npy` (visual), `root` being VALOR's `data/` folder:
(10, 25) integer 0/1 arrays, segments x classes in LLP's class order. VALOR's
`utils/clap_preprocess.py` / `utils/clip_preprocess.py` make them from each segment's zero-shot
CLAP / CLIP logits above hand-set class thresholds, for the classes of the video's weak label
only; `dataloader_avvp.py` reads them as they are and `main_avvp.py` trains on them with
BCE-with-logits. They are binary and come without logits: as uwav pseudo-labels their soft labels
are the same 0/1 values and their logits NaN. A video whose two files are not both present,
readable, of the video's (segments, classes) shape and 0/1 is skipped and listed (video, file,
problem) in `problems`.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from uwav.contracts import MODALITIES, AudioVisual
from uwav.errors import MissingInputError
from uwav.features.official import PROBLEM_SCHEMA, load_checked, problem_row
from uwav.features.released import RELEASED_LABEL_FOLDERS, release_file_stem

# How reports name each `stages.pseudo_labels.source`'s labels.
LABEL_SOURCE_NAMES: dict[str, str] = {"generate": "UWAV generator", "released": "VALOR release"}


@dataclass(frozen=True)
class ReleasedPseudoLabels:
    """The released labels of the videos asked for whose two files are good, in the order asked:
    `labels` (N, T, C) int8 per modality, zero beyond a video's segments; `problems` lists the
    skipped videos' files (`uwav.features.official.PROBLEM_SCHEMA`)."""

    video_ids: list[str]
    labels: AudioVisual[np.ndarray]
    lengths: np.ndarray  # (N,) segments per video
    problems: pl.DataFrame


def released_label_folders(root: Path) -> AudioVisual[Path]:
    """The audio (CLAP) and visual (CLIP) pseudo-label folders under VALOR's `data/` folder `root`."""
    folders = AudioVisual(**{modality: Path(root) / RELEASED_LABEL_FOLDERS[modality] for modality in MODALITIES})
    absent = [str(folder) for folder in folders if not folder.is_dir()]
    if absent:
        raise MissingInputError(
            f"released pseudo-labels under {root}: no folder {', '.join(absent)} (VALOR's CLIP.zip and CLAP.zip "
            "unpacked into the folder given as stages.pseudo_labels.released_root)"
        )
    return folders


def _read_video(
    folders: AudioVisual[Path], kind: str, video_id: str, n_segments: int, n_classes: int
) -> tuple[dict[str, np.ndarray], list[dict[str, str]]]:
    labels, problems = {}, []
    for modality, folder in zip(MODALITIES, folders, strict=True):
        path = folder / f"{release_file_stem(kind, video_id)}.npy"
        values, problem = load_checked(path, (n_segments, n_classes))
        if problem is None and not np.isin(values, (0.0, 1.0)).all():
            problem = ("invalid values", "not 0/1 labels")
        if problem is not None:
            problems.append(problem_row(video_id, RELEASED_LABEL_FOLDERS[modality], str(path), *problem))
            continue
        labels[modality] = values.astype(np.int8)
    return labels, problems


def read_released_pseudo_labels(
    root: Path, kind: str, video_ids: Sequence[str], n_segments: Sequence[int], n_classes: int, *, workers: int = 4
) -> ReleasedPseudoLabels:
    """VALOR's pseudo-labels of `video_ids` (with `n_segments` each, of a dataset of `kind`, whose
    files are named as `uwav.features.released.release_file_stem` says) and `n_classes` classes."""
    folders = released_label_folders(root)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(pool.map(lambda job: _read_video(folders, kind, job[0], job[1], n_classes), zip(video_ids, n_segments, strict=True)))
    good = [i for i, (_, problems) in enumerate(results) if not problems]
    lengths = np.asarray([n_segments[i] for i in good], dtype=np.int64)
    n_time = int(lengths.max()) if good else 0
    arrays = {modality: np.zeros((len(good), n_time, n_classes), dtype=np.int8) for modality in MODALITIES}
    for row, i in enumerate(good):
        for modality in MODALITIES:
            arrays[modality][row, : lengths[row]] = results[i][0][modality]
    return ReleasedPseudoLabels(
        video_ids=[video_ids[i] for i in good],
        labels=AudioVisual(**arrays),
        lengths=lengths,
        problems=pl.DataFrame([row for _, problems in results for row in problems], schema=PROBLEM_SCHEMA),
    )
