"""Tidy tables out of probe results: save to and load from Parquet or JSON.

Every probe result has ``to_frame()`` (one row per observation, long format,
ready for seaborn) and ``save(folder)`` / ``load(folder)``. These helpers
write a DataFrame atomically, choosing the format from the file suffix.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from normlens.io import atomic_path, write_json, write_npz

FORMATS = (".parquet", ".json")


def save_frame(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``frame`` to ``path`` (.parquet or .json, records orient) atomically."""
    path = Path(path)
    if path.suffix not in FORMATS:
        raise ValueError(f"cannot save a table as {path.suffix!r}; use one of {', '.join(FORMATS)}")
    frame = frame.reset_index(drop=True)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            tmp.write_text(frame.to_json(orient="records", double_precision=15))
    return path


def load_frame(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".json":
        return pd.DataFrame(json.loads(path.read_text()))
    raise ValueError(f"cannot read a table from {path.suffix!r}; expected one of {', '.join(FORMATS)}")


def save_arrays(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    return write_npz(path, **{k: np.asarray(v) for k, v in arrays.items()})


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def save_meta(path: str | os.PathLike, meta: dict) -> Path:
    return write_json(path, meta)
