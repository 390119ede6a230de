"""An on-disk grid that fills in chunk by chunk and resumes where it stopped.

The file (.npz, rewritten atomically after every chunk, so a run killed at any
moment leaves the last complete state) holds the flat loss and accuracy per
cell, which chunks are done, the chunk size, and a fingerprint of everything
the values depend on: model weights, directions, evaluation set, objective and
grid coordinates. Opening a file whose fingerprint differs raises
:class:`GridMismatchError` naming what differs, instead of mixing surfaces.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np

from normlens.io import write_npz


class GridMismatchError(ValueError):
    """A grid file was written for other directions, another model or another grid."""


class GridStore:
    """Loss/accuracy per cell plus a done-flag per chunk, persisted at ``path``.

    Chunks are the fixed blocks ``[c*chunk_size, (c+1)*chunk_size)`` of the flat
    cell order, so a resumed (or distributed) run evaluates exactly the same
    batches as an uninterrupted one and gives a bit-identical surface.
    """

    def __init__(self, path: str | Path | None, fingerprint: Mapping[str, str], n_cells: int,
                 chunk_size: int):
        self.path = Path(path) if path is not None else None
        self.fingerprint = dict(fingerprint)
        self.n_cells = int(n_cells)
        self.chunk_size = int(chunk_size)
        self.loss = np.full(self.n_cells, np.nan)
        self.accuracy = np.full(self.n_cells, np.nan)
        self.chunk_done = np.zeros(self.n_chunks, dtype=bool)

    @property
    def n_chunks(self) -> int:
        return -(-self.n_cells // self.chunk_size)

    def chunk_cells(self, chunk: int) -> np.ndarray:
        return np.arange(chunk * self.chunk_size, min((chunk + 1) * self.chunk_size, self.n_cells))

    def missing_chunks(self) -> np.ndarray:
        return np.flatnonzero(~self.chunk_done)

    @classmethod
    def open(cls, path: str | Path | None, fingerprint: Mapping[str, str], n_cells: int,
             chunk_size: int) -> "GridStore":
        """A new store, or the one at ``path`` if it exists and was made for the same inputs.

        An existing file keeps its own chunk size (so resumed chunks match the first run's).
        """
        if path is None or not Path(path).exists():
            return cls(path, fingerprint, n_cells, chunk_size)
        stored = read_store(path)
        expected = dict(fingerprint)
        differs = sorted(k for k in set(expected) | set(stored["fingerprint"])
                         if expected.get(k) != stored["fingerprint"].get(k))
        if differs or stored["loss"].shape[0] != n_cells:
            raise GridMismatchError(
                f"grid file {path} was written for different inputs ({', '.join(differs) or 'grid size'} "
                "differ); use another file name or delete it to start over"
            )
        store = cls(path, fingerprint, n_cells, stored["chunk_size"])
        store.loss, store.accuracy = stored["loss"], stored["accuracy"]
        store.chunk_done = stored["chunk_done"]
        return store

    def record(self, chunk: int, loss: np.ndarray, accuracy: np.ndarray | None, save: bool = True) -> None:
        """Store one chunk's values and (if the store has a path) persist atomically."""
        cells = self.chunk_cells(chunk)
        self.loss[cells] = loss
        if accuracy is not None:
            self.accuracy[cells] = accuracy
        self.chunk_done[chunk] = True
        if save:
            self.save()

    def save(self, path: str | Path | None = None) -> None:
        path = path or self.path
        if path is None:
            return
        write_npz(
            path, loss=self.loss, accuracy=self.accuracy, chunk_done=self.chunk_done,
            chunk_size=np.array(self.chunk_size), fingerprint=np.array(json.dumps(self.fingerprint, sort_keys=True)),
        )

    def merge(self, other_path: str | Path) -> None:
        """Take the done chunks of another store file with the same fingerprint (a rank's shard)."""
        stored = read_store(other_path)
        if stored["fingerprint"] != self.fingerprint or stored["chunk_size"] != self.chunk_size:
            raise GridMismatchError(f"shard {other_path} was written for different inputs")
        self.take_chunks(stored["chunk_done"] & ~self.chunk_done, stored["loss"], stored["accuracy"])

    def take_chunks(self, chunks: np.ndarray, loss: np.ndarray, accuracy: np.ndarray) -> None:
        """Copy the chunks flagged in ``chunks`` (a bool per chunk) from whole-grid ``loss``/``accuracy``
        arrays of another store and mark them done."""
        for chunk in np.flatnonzero(chunks):
            cells = self.chunk_cells(chunk)
            self.loss[cells] = loss[cells]
            self.accuracy[cells] = accuracy[cells]
            self.chunk_done[chunk] = True


def read_store(path: str | Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {
                "loss": data["loss"].copy(), "accuracy": data["accuracy"].copy(),
                "chunk_done": data["chunk_done"].copy(), "chunk_size": int(data["chunk_size"]),
                "fingerprint": json.loads(str(data["fingerprint"])),
            }
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as error:
        raise GridMismatchError(f"{path} is not a normlens grid file ({error})") from error
