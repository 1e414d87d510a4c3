"""One entry point over the dataset readers, for the catalog: `read_dataset(kind, annotations, ...)`."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import polars as pl

from uwav.datasets.ave import AVE_CLASSES, read_ave
from uwav.datasets.custom import read_custom
from uwav.datasets.llp import LLP_CLASSES, read_llp
from uwav.datasets.unav100 import read_unav100, unav100_classes

READERS: dict[str, Callable[..., tuple[pl.DataFrame, pl.DataFrame]]] = {
    "llp": read_llp,
    "unav100": read_unav100,
    "ave": read_ave,
    "custom": read_custom,
}


def read_dataset(kind: str, annotations: str | os.PathLike[str], **kwargs: Any) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Read a dataset of `kind` ('llp' | 'unav100' | 'ave' | 'custom') from `annotations` (the
    LLP folder, the UnAV-100 JSON, the AVE folder, the custom table); keyword arguments go to the
    reader (media_root, strict, report; dense_path and classes for custom)."""
    reader = READERS.get(kind)
    if reader is None:
        raise ValueError(f"unknown dataset kind {kind!r}; known: {sorted(READERS)}")
    return reader(annotations, **kwargs)


def dataset_classes(kind: str, annotations: str | os.PathLike[str]) -> list[str]:
    """The class list of a dataset in its official order (custom datasets have none: they
    declare theirs in the catalog)."""
    if kind == "llp":
        return list(LLP_CLASSES)
    if kind == "ave":
        return list(AVE_CLASSES)
    if kind == "unav100":
        return unav100_classes(annotations)
    raise ValueError(f"dataset kind {kind!r} has no built-in class list (known: llp, unav100, ave)")
