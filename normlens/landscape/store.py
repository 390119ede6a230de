"""An on-disk grid that fills in chunk by chunk and resumes where it stopped.

The file (.npz, rewritten atomically after every chunk, so a run killed at any
moment leaves the last complete state) holds the flat loss and accuracy per
cell, which chunks are done, the chunk size, and a fingerprint of everything
the values depend on: model weights and buffers, directions, evaluation set,
objective and grid coordinates. Opening a file whose fingerprint differs raises
:class:`GridMismatchError` naming what differs, instead of mixing surfaces.

Each done chunk carries a SHA-256 digest of the fingerprint, its index and its
values, so a file whose values were edited (or damaged) while the fingerprint was
kept is refused on opening. The digest is a checksum, not a signature: someone
who rewrites values and digests alike is caught by the landscape itself, which
re-evaluates one stored cell (the origin when it is stored) before trusting a
resumed grid (:func:`normlens.landscape.compute_landscape`).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Mapping

import numpy as np

from normlens.io import read_npz, write_npz

START_OVER = "delete the file (or pass another grid file) to start over"


class GridMismatchError(ValueError):
    """A grid file was written for other inputs, or cannot be trusted (damaged or edited)."""


def chunk_digest(fingerprint: Mapping[str, str], chunk: int, loss: np.ndarray, accuracy: np.ndarray) -> str:
    """SHA-256 binding one chunk's values to the fingerprint of what produced them."""
    digest = hashlib.sha256(json.dumps(dict(fingerprint), sort_keys=True).encode())
    digest.update(f"|chunk {int(chunk)}|".encode())
    digest.update(np.ascontiguousarray(loss, dtype=np.float64).tobytes())
    digest.update(np.ascontiguousarray(accuracy, dtype=np.float64).tobytes())
    return digest.hexdigest()


class GridStore:
    """Loss/accuracy per cell plus a done-flag and a digest per chunk, persisted at ``path``.

    Chunks are the fixed blocks ``[c*chunk_size, (c+1)*chunk_size)`` of the flat
    cell order, so a resumed (or distributed) run evaluates exactly the same
    batches as an uninterrupted one and gives a bit-identical surface.
    """

    def __init__(self, path: str | Path | None, fingerprint: Mapping[str, str], n_cells: int,
                 chunk_size: int):
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.path = Path(path) if path is not None else None
        self.fingerprint = dict(fingerprint)
        self.n_cells = int(n_cells)
        self.chunk_size = int(chunk_size)
        self.loss = np.full(self.n_cells, np.nan)
        self.accuracy = np.full(self.n_cells, np.nan)
        self.chunk_done = np.zeros(self.n_chunks, dtype=bool)
        self.digests = np.full(self.n_chunks, "", dtype="<U64")

    @property
    def n_chunks(self) -> int:
        return -(-self.n_cells // self.chunk_size)

    def chunk_cells(self, chunk: int) -> np.ndarray:
        return np.arange(chunk * self.chunk_size, min((chunk + 1) * self.chunk_size, self.n_cells))

    def missing_chunks(self) -> np.ndarray:
        return np.flatnonzero(~self.chunk_done)

    def _digest(self, chunk: int) -> str:
        cells = self.chunk_cells(chunk)
        return chunk_digest(self.fingerprint, chunk, self.loss[cells], self.accuracy[cells])

    @classmethod
    def open(cls, path: str | Path | None, fingerprint: Mapping[str, str], n_cells: int,
             chunk_size: int) -> "GridStore":
        """A new store, or the one at ``path`` if it exists and was made for the same inputs.

        An existing file keeps its own chunk size (so resumed chunks match the first run's).
        Every done chunk's digest is checked; any failure is one :class:`GridMismatchError` line.
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
                f"differ); use another file name or {START_OVER}"
            )
        store = cls(path, fingerprint, n_cells, stored["chunk_size"])
        store._adopt(stored, path)
        return store

    def _adopt(self, stored: dict, path: str | Path) -> None:
        """Take a read file's values after checking its layout and every done chunk's digest."""
        if stored["chunk_done"].shape != (self.n_chunks,) or stored["digests"].shape != (self.n_chunks,):
            raise GridMismatchError(
                f"grid file {path} is damaged: {stored['chunk_done'].size} chunk flags and "
                f"{stored['digests'].size} digests for {self.n_chunks} chunks of {self.chunk_size} cells; "
                f"{START_OVER}"
            )
        self.loss, self.accuracy = stored["loss"], stored["accuracy"]
        self.chunk_done, self.digests = stored["chunk_done"], stored["digests"].astype("<U64")
        bad = [int(c) for c in np.flatnonzero(self.chunk_done) if self._digest(c) != self.digests[c]]
        if bad:
            raise GridMismatchError(
                f"grid file {path} was edited or damaged: the values of {len(bad)} chunk(s) (e.g. chunk "
                f"{bad[0]}) do not match their digests; {START_OVER}"
            )

    def record(self, chunk: int, loss: np.ndarray, accuracy: np.ndarray | None, save: bool = True) -> None:
        """Store one chunk's values and (if the store has a path) persist atomically."""
        cells = self.chunk_cells(chunk)
        self.loss[cells] = loss
        if accuracy is not None:
            self.accuracy[cells] = accuracy
        self.chunk_done[chunk] = True
        self.digests[chunk] = self._digest(chunk)
        if save:
            self.save()

    def save(self, path: str | Path | None = None) -> None:
        path = path or self.path
        if path is None:
            return
        write_npz(
            path, loss=self.loss, accuracy=self.accuracy, chunk_done=self.chunk_done, digests=self.digests,
            chunk_size=np.array(self.chunk_size), fingerprint=np.array(json.dumps(self.fingerprint, sort_keys=True)),
        )

    def merge(self, other_path: str | Path) -> None:
        """Take the done chunks of another store file with the same fingerprint (a rank's shard)."""
        stored = read_store(other_path)
        if stored["fingerprint"] != self.fingerprint or stored["chunk_size"] != self.chunk_size:
            raise GridMismatchError(f"shard {other_path} was written for different inputs; {START_OVER}")
        shard = GridStore(other_path, self.fingerprint, self.n_cells, self.chunk_size)
        shard._adopt(stored, other_path)
        self.take_chunks(shard.chunk_done & ~self.chunk_done, shard.loss, shard.accuracy)

    def take_chunks(self, chunks: np.ndarray, loss: np.ndarray, accuracy: np.ndarray) -> None:
        """Copy the chunks flagged in ``chunks`` (a bool per chunk) from whole-grid ``loss``/``accuracy``
        arrays of another store and mark them done."""
        for chunk in np.flatnonzero(chunks):
            cells = self.chunk_cells(chunk)
            self.loss[cells] = loss[cells]
            self.accuracy[cells] = accuracy[cells]
            self.chunk_done[chunk] = True
            self.digests[chunk] = self._digest(chunk)


def read_store(path: str | Path) -> dict:
    """The arrays of a grid file, checked for type and shape; any failure is one
    :class:`GridMismatchError` line naming the file (no pickled objects are loaded)."""
    try:
        data = read_npz(path)
        stored = {
            "loss": np.asarray(data["loss"], dtype=np.float64),
            "accuracy": np.asarray(data["accuracy"], dtype=np.float64),
            "chunk_done": data["chunk_done"], "digests": data["digests"], "chunk_size": data["chunk_size"],
            "fingerprint": json.loads(str(data["fingerprint"])),
        }
    except KeyError as error:
        raise GridMismatchError(f"{path} is not a grid file of this normlens version (no {error} array); "
                                f"{START_OVER}") from None
    except Exception as error:  # not a zip, pickled objects, truncated, bad JSON, ...
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise GridMismatchError(f"{path} is not a readable normlens grid file ({reason}); {START_OVER}") from None
    size = stored["chunk_size"]
    problems = []
    if stored["loss"].ndim != 1 or stored["accuracy"].shape != stored["loss"].shape:
        problems.append(f"loss {stored['loss'].shape} and accuracy {stored['accuracy'].shape} "
                        "are not one value per cell")
    if size.shape != () or size.dtype.kind not in "iu" or int(size) < 1:
        problems.append(f"chunk_size {size.tolist()!r} is not a positive integer")
    if stored["chunk_done"].dtype != np.bool_ or stored["chunk_done"].ndim != 1:
        problems.append("chunk_done is not a list of flags")
    if stored["digests"].dtype.kind != "U" or stored["digests"].ndim != 1:
        problems.append("digests are not a list of strings")
    if not isinstance(stored["fingerprint"], dict):
        problems.append("the fingerprint is not a mapping")
    if problems:
        raise GridMismatchError(f"grid file {path} is damaged ({'; '.join(problems)}); {START_OVER}")
    stored["chunk_size"] = int(size)
    return stored
