"""Frozen, serializable results of the curvature analyses.

Every result is a frozen dataclass that holds data only (never a model). Arrays
are NumPy, made read-only. ``result.save(path)`` writes one ``.npz`` file: the
arrays as entries and every other field as JSON under ``__meta__``;
``Cls.load(path)`` reads it back.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch

from normlens.io import write_npz

T = TypeVar("T", bound="_Saveable")


def _to_tuples(value: Any) -> Any:
    """JSON lists back to tuples, recursively (frozen dataclasses hold tuples)."""
    if isinstance(value, list):
        return tuple(_to_tuples(item) for item in value)
    return value


class _Saveable:
    """Save/load for frozen dataclasses whose fields are arrays or JSON values."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                if value.flags.writeable or value.base is not None:  # an owned read-only array is kept as is
                    value = value.copy()
                    value.setflags(write=False)
                object.__setattr__(self, f.name, value)

    def save(self, path: str | os.PathLike) -> Path:
        """Write this result to ``path`` (an ``.npz`` file), atomically."""
        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, Any] = {"__class__": type(self).__name__}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                arrays[f.name] = value
            else:
                meta[f.name] = value
        arrays["__meta__"] = np.array(json.dumps(meta))
        return write_npz(path, **arrays)

    @classmethod
    def load(cls: type[T], path: str | os.PathLike) -> T:
        """Read a result written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["__meta__"]))
            arrays = {key: data[key] for key in data.files if key != "__meta__"}
        stored = meta.pop("__class__", None)
        if stored != cls.__name__:
            raise ValueError(f"{path} holds a {stored}, not a {cls.__name__}; load it with that class")
        fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        values = {key: _to_tuples(value) for key, value in meta.items() if key in fields}
        values.update(arrays)
        return cls(**values)


@dataclass(frozen=True, eq=False)
class EigenResult(_Saveable):
    """Eigenpairs of a curvature operator from Lanczos.

    Attributes:
        eigenvalues: (k,) for which="largest" (algebraically largest, not largest
            in magnitude) in descending order, for "smallest" in ascending order;
            for "both" the k largest (descending) then the k smallest (ascending);
            for "magnitude" by descending |lambda|; ``ends`` says which is which.
        eigenvectors: (n, k) unit vectors, columns matching ``eigenvalues``.
        residuals: (k,) ||H v - lambda v|| for every pair.
        converged: (k,) residual <= tol * max|lambda|.
        ends: per pair "largest", "smallest" or "magnitude".
        n_steps: Lanczos steps taken; n_matvecs: operator products used.
        param_names / param_shapes: how a flat vector maps onto the parameters
            (empty for a plain matrix).
        which: the rule that chose the pairs ("largest" = algebraically largest).
        warning: why the result should not be trusted ("" when every pair converged).
        excluded: the operator's note on parameters left out (unused by the forward).
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    residuals: np.ndarray
    converged: np.ndarray
    ends: tuple[str, ...]
    n_steps: int
    n_matvecs: int
    tol: float
    seed: int
    param_names: tuple[str, ...] = ()
    param_shapes: tuple[tuple[int, ...], ...] = ()
    which: str = "largest"
    warning: str = ""
    excluded: str = ""

    @property
    def all_converged(self) -> bool:
        return bool(np.all(self.converged))

    def eigenvector_params(self, index: int) -> dict[str, torch.Tensor]:
        """Eigenvector ``index`` as parameter-shaped tensors, keyed by parameter name."""
        if not self.param_names:
            raise ValueError("this result came from a plain matrix; it has no parameter names")
        vector = torch.from_numpy(np.array(self.eigenvectors[:, index]))
        return unflatten(vector, self.param_names, self.param_shapes)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "eigenvalue": self.eigenvalues,
                "residual": self.residuals,
                "converged": self.converged,
                "end": list(self.ends),
            }
        )


@dataclass(frozen=True, eq=False)
class TraceResult(_Saveable):
    """A stochastic trace estimate with its standard error.

    Attributes:
        estimate: the trace estimate; std_error: its standard error (NaN when
            there is none: fewer than 2 probes; see ``has_std_error``).
        samples: the per-probe quadratic forms of the stochastic part.
        exact_part: Hutch++'s deterministic tr(Q^T H Q) (0 for Hutchinson).
        note: why there is no error estimate, or that the result is exact ("" otherwise).
    """

    estimate: float
    std_error: float
    method: str
    n_matvecs: int
    n: int
    seed: int
    samples: np.ndarray
    exact_part: float = 0.0
    note: str = ""

    @property
    def has_std_error(self) -> bool:
        """True when ``std_error`` is a number (at least 2 probes, or exact)."""
        return math.isfinite(self.std_error)

    def describe(self, digits: int = 4) -> str:
        """'12.34 ± 0.56', or '12.34 (no error estimate (need >= 2 probes))'."""
        value = f"{self.estimate:.{digits}g}"
        if self.has_std_error and not self.note:
            return f"{value} ± {self.std_error:.2g}"
        return f"{value} ({self.note})"


@dataclass(frozen=True, eq=False)
class DensityResult(_Saveable):
    """Spectral density from stochastic Lanczos quadrature (SLQ).

    Attributes:
        grid: (G,) eigenvalue axis; density: (G,) Gaussian-smoothed density on it.
        nodes: (n_probes, n_steps) Ritz values; weights: same shape, squared
            first components of the Ritz vectors, each row summing to 1.
        sigma: width of the Gaussian kernel.
        excluded: the operator's note on parameters left out (unused by the forward).
    """

    grid: np.ndarray
    density: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    sigma: float
    n: int
    n_probes: int
    n_steps: int
    seed: int
    excluded: str = ""

    @property
    def node_weights(self) -> np.ndarray:
        """Quadrature weights of all nodes, summing to 1: weights / n_probes."""
        return self.weights / self.n_probes

    @property
    def integral(self) -> float:
        """Trapezoid integral of the density over the grid (1 up to the grid's tails)."""
        return float(np.trapezoid(self.density, self.grid))

    @property
    def mean(self) -> float:
        """Mean eigenvalue of the quadrature measure, an estimate of tr(H)/n."""
        return float(np.sum(self.node_weights * self.nodes))

    @property
    def lambda_min(self) -> float:
        return float(self.nodes.min())

    @property
    def lambda_max(self) -> float:
        return float(self.nodes.max())

    @property
    def re(self) -> float:
        """LLA criterion re = |lambda_min / lambda_max| from the extreme Ritz values."""
        return abs(self.lambda_min / self.lambda_max) if self.lambda_max != 0 else math.inf

    @property
    def kh(self) -> float:
        """LLA criterion Kh = sum_{theta<0} w |theta|^1/2 / sum_{theta>0} w theta^1/2 (all probes)."""
        return kh_of(self.nodes, self.node_weights)

    @property
    def kh_per_probe(self) -> np.ndarray:
        """(n_probes,) Kh of each probe's quadrature alone: its spread shows the estimator's noise."""
        return np.array([kh_of(nodes, weights) for nodes, weights in zip(self.nodes, self.weights)])

    @property
    def re_per_probe(self) -> np.ndarray:
        """(n_probes,) re = |lambda_min / lambda_max| from each probe's extreme Ritz values."""
        return np.array([abs(row.min() / row.max()) if row.max() != 0 else math.inf for row in self.nodes])


def kh_of(nodes: np.ndarray, weights: np.ndarray) -> float:
    """Kh = sum_{theta<0} w |theta|^1/2 / sum_{theta>0} w theta^1/2 over nodes/weights of any shape."""
    w, theta = np.ravel(weights), np.ravel(nodes)
    negative = float(np.sum(w[theta < 0] * np.sqrt(-theta[theta < 0])))
    positive = float(np.sum(w[theta > 0] * np.sqrt(theta[theta > 0])))
    return negative / positive if positive > 0 else math.inf


@dataclass(frozen=True, eq=False)
class WeightSpectraResult(_Saveable):
    """Empirical spectral densities of W^T W / N per weight matrix, with tail fits.

    Attributes:
        names / shapes: one entry per matrix.
        eigenvalues: all matrices' eigenvalues concatenated; ``offsets`` (M + 1,)
            delimit them (use :meth:`eigenvalues_of`).
        alphas, xmins, ks_distances, n_tail: the power-law tail fit per matrix
            (p(x) ~ x^-alpha for x >= xmin; Kolmogorov-Smirnov distance).
        method: "esd" (whole matrix) or "farms" (pooled fixed-size windows).
        xmin_rule: "ks" (KS-chosen xmin) or "median" (the FARMS authors' xmin_mid).
        window / max_windows: the FARMS window (rows, cols) and positions per
            dimension asked for ((0, 0) and 0 for "esd").
        n_windows / window_shapes: per matrix, windows pooled and the window used
            (smaller than ``window`` for a small matrix; the matrix itself for "esd").
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    eigenvalues: np.ndarray
    offsets: np.ndarray
    alphas: np.ndarray
    xmins: np.ndarray
    ks_distances: np.ndarray
    n_tail: np.ndarray
    method: str = "esd"
    xmin_rule: str = "ks"
    window: tuple[int, int] = (0, 0)
    max_windows: int = 0
    n_windows: tuple[int, ...] = ()
    window_shapes: tuple[tuple[int, int], ...] = ()

    @property
    def farms(self) -> bool:
        return self.method == "farms"

    def eigenvalues_of(self, name: str) -> np.ndarray:
        if name not in self.names:
            raise KeyError(f"no weight matrix named {name!r}; have {list(self.names)}")
        i = self.names.index(name)
        return self.eigenvalues[self.offsets[i] : self.offsets[i + 1]]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "matrix": list(self.names),
                "shape": ["x".join(map(str, s)) for s in self.shapes],
                "alpha": self.alphas,
                "xmin": self.xmins,
                "ks_distance": self.ks_distances,
                "n_tail": self.n_tail,
                "method": self.method,
                "xmin_rule": self.xmin_rule,
            }
        )


@dataclass(frozen=True, eq=False)
class BlockSpectrumResult(_Saveable):
    """Top (algebraically largest) Hessian eigenvalue restricted to each parameter block of one model.

    Attributes:
        blocks: block labels, e.g. "blocks.0.attn"; n_params: (B,) their sizes.
        top_eigenvalues: (B,) largest eigenvalue of the block's Hessian (NaN if
            the model diverged); residuals: (B,) ||Hv - lambda v||.
        excluded: note on parameters left out because the forward does not use them.
    """

    model: str
    blocks: tuple[str, ...]
    n_params: np.ndarray
    top_eigenvalues: np.ndarray
    residuals: np.ndarray
    n_steps: int
    excluded: str = ""

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "model": self.model,
                "block": list(self.blocks),
                "n_params": self.n_params,
                "top_eigenvalue": self.top_eigenvalues,
                "residual": self.residuals,
            }
        )


@dataclass(frozen=True, eq=False)
class BatchCurvatureResult(_Saveable):
    """Top eigenvalues and LLA criteria per batch and for the average over batches.

    Attributes:
        eigenvalues / residuals / eigen_converged: (B, k) per batch, columns in
            the order of ``ends`` (see :class:`EigenResult`).
        re, kh: (B,) LLA criteria of each batch's SLQ density.
        batch_weights: (B,) the weights of the averaged operator (batch sizes by default).
        average_*: the same on the operator of the weighted average loss (NaN
            when it was not computed).
        converged: every eigenpair (per batch and average) met its residual tolerance.
        warning: non-convergence, a single batch, or metrics whose standard error
            across batches exceeds ``max_relative_error`` of their mean ("" if none).
        excluded: note on parameters left out because the forward does not use them.

    Per-batch means and standard errors are unweighted (each batch one sample).
    """

    eigenvalues: np.ndarray
    residuals: np.ndarray
    eigen_converged: np.ndarray
    re: np.ndarray
    kh: np.ndarray
    batch_weights: np.ndarray
    average_eigenvalues: np.ndarray
    average_residuals: np.ndarray
    average_converged: np.ndarray
    average_re: float
    average_kh: float
    ends: tuple[str, ...]
    which: str
    n_steps: int
    density_probes: int
    density_steps: int
    seed: int
    max_relative_error: float
    converged: bool
    warning: str
    excluded: str = ""

    @property
    def n_batches(self) -> int:
        return int(self.eigenvalues.shape[0])

    @staticmethod
    def eigenvalue_labels(ends: tuple[str, ...] | list[str]) -> list[str]:
        """Metric names of the eigenvalue columns: lambda_1, lambda_2 (largest), lambda_min_1 (smallest),
        lambda_abs_1 (largest magnitude)."""
        prefix = {"largest": "lambda_", "smallest": "lambda_min_", "magnitude": "lambda_abs_"}
        counts: dict[str, int] = {}
        labels = []
        for end in ends:
            counts[end] = counts.get(end, 0) + 1
            labels.append(f"{prefix[end]}{counts[end]}")
        return labels

    def metrics(self) -> dict[str, np.ndarray]:
        """Metric name -> (B,) per-batch values: the eigenvalue labels, "re" and "kh"."""
        out = {label: self.eigenvalues[:, i] for i, label in enumerate(self.eigenvalue_labels(self.ends))}
        out.update(re=self.re, kh=self.kh)
        return out

    def average_of(self, metric: str) -> float:
        """The averaged operator's value of ``metric``."""
        if metric == "re":
            return float(self.average_re)
        if metric == "kh":
            return float(self.average_kh)
        return float(self.average_eigenvalues[self.eigenvalue_labels(self.ends).index(metric)])

    def std_error(self, metric: str) -> float:
        """Standard error of the per-batch mean of ``metric`` (NaN for fewer than 2 batches)."""
        from normlens.uncertainty import standard_error

        return standard_error(self.metrics()[metric])

    def interval(self, metric: str, *, level: float = 0.95, seed: int = 0):
        """Bootstrap interval (:func:`normlens.uncertainty.bootstrap_interval`) of the per-batch mean."""
        from normlens.uncertainty import bootstrap_interval

        return bootstrap_interval(self.metrics()[metric], level=level, seed=seed)

    def summary(self, *, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
        """One row per metric: averaged operator, per-batch mean, standard error, interval, range."""
        rows = []
        for metric, values in self.metrics().items():
            interval = self.interval(metric, level=level, seed=seed)
            se = self.std_error(metric)
            rows.append({
                "metric": metric,
                "average": self.average_of(metric),
                "batch_mean": interval.estimate,
                "std_error": se,
                "relative_error": se / abs(interval.estimate) if interval.estimate else math.nan,
                "low": interval.low,
                "high": interval.high,
                "min": float(np.nanmin(values)),
                "max": float(np.nanmax(values)),
                "n_batches": self.n_batches,
            })
        return pd.DataFrame(rows)


def unflatten(
    vector: torch.Tensor, names: tuple[str, ...] | list[str], shapes: tuple[tuple[int, ...], ...] | list
) -> dict[str, torch.Tensor]:
    """Split a flat (n,) vector into parameter-shaped tensors, in ``names`` order."""
    sizes = [math.prod(shape) for shape in shapes]
    if vector.numel() != sum(sizes):
        raise ValueError(
            f"vector has {vector.numel()} entries but the parameters hold {sum(sizes)}"
        )
    chunks = vector.reshape(-1).split(sizes)
    return {name: chunk.reshape(shape) for name, chunk, shape in zip(names, chunks, shapes)}
