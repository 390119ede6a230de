"""Atomic file writes and the readers that go with them: a reader never sees a half-written
result or checkpoint. Tables go to Parquet or JSON (by suffix), arrays to NPZ, metadata to JSON."""
from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as JSON atomically. NaN/inf are kept (as JSON's NaN/Infinity)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_json_default))
    return Path(path)


def as_json_value(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), for comparisons with saved data."""
    return json.loads(json.dumps(value, default=_json_default))


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Write arrays to an .npz file atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


TABLE_FORMATS = (".parquet", ".json")


def _table_cell(value: Any) -> Any:
    """A JSON table cell: NaN, ±inf and missing values become null (read back as NaN)."""
    if isinstance(value, (str, bool, int, list, dict)):
        return value
    if value is None or pd.isna(value) or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return value if isinstance(value, (float, np.generic)) else str(value)


def save_frame(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``frame`` to ``path`` (.parquet or .json, records orient) atomically.

    JSON floats are written in full (the shortest repr that reads back exactly;
    pandas' writer keeps at most 15 digits); NaN and ±inf are written as null.
    """
    path = Path(path)
    if path.suffix not in TABLE_FORMATS:
        raise ValueError(f"cannot save a table as {path.suffix!r}; use one of {', '.join(TABLE_FORMATS)}")
    frame = frame.reset_index(drop=True)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            records = [{str(k): _table_cell(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]
            tmp.write_text(json.dumps(records, default=_json_default, allow_nan=False))
    return path


def load_frame(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by :func:`save_frame`."""
    path = Path(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".json":
        return pd.DataFrame(json.loads(path.read_text()))
    raise ValueError(f"cannot read a table from {path.suffix!r}; expected one of {', '.join(TABLE_FORMATS)}")


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an .npz file written by :func:`write_npz` (no pickled objects)."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
