"""Landscape results: frozen, serializable, holding no model."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from normlens.io import write_json, write_npz, read_json


def origin_index(coords: tuple[np.ndarray, ...]) -> tuple[int, ...]:
    """Per axis, the index of the coefficient 0.0 (every grid axis contains it exactly)."""
    return tuple(int(np.flatnonzero(c == 0.0)[0]) for c in coords)


@dataclass(frozen=True, eq=False)  # holds arrays: compare fields explicitly
class LandscapeResult:
    """A 1-D or 2-D loss surface f(a, b) = L(θ + a·d₁ + b·d₂).

    Args:
        coords: per axis, the (n_k,) coefficients; each contains 0.0 exactly.
        loss: (n_0,) or (n_0, n_1); ``loss[i, j] = f(coords[0][i], coords[1][j])``.
            NaN/inf where the model diverged.
        accuracy: same shape as ``loss``, or None.
        center_loss: f at the origin (the model's own loss on the evaluation set).
        kind, normalization, one_d, seed: how the directions were made.
        direction_norms: ‖d_k‖ per axis.
        model_name, eval_name, n_eval_items: what was evaluated.
        fingerprint: hash of model, directions, evaluation set and grid.
        info: extras (Hessian eigenvalues, PCA trajectory coordinates, ...).
    """

    coords: tuple[np.ndarray, ...]
    loss: np.ndarray
    center_loss: float
    kind: str
    normalization: str
    one_d: str
    direction_norms: tuple[float, ...]
    accuracy: Optional[np.ndarray] = None
    seed: Optional[int] = None
    model_name: str = ""
    eval_name: str = ""
    n_eval_items: int = 0
    fingerprint: str = ""
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ndim(self) -> int:
        return len(self.coords)

    @property
    def origin_index(self) -> tuple[int, ...]:
        return origin_index(self.coords)

    @property
    def n_nonfinite(self) -> int:
        """Cells whose loss is NaN or inf (diverged points)."""
        return int((~np.isfinite(self.loss)).sum())

    @property
    def ranges(self) -> tuple[tuple[float, float], ...]:
        return tuple((float(c[0]), float(c[-1])) for c in self.coords)

    def describe(self) -> str:
        """One line for plots: span, axes and normalization."""
        span = " × ".join(f"[{lo:g}, {hi:g}]" for lo, hi in self.ranges)
        what = {"random": f"random, {self.normalization}-normalized",
                "hessian": "Hessian eigenvectors (unit)",
                "pca": "trajectory PCA (unit)",
                "interpolation": "interpolation"}.get(self.kind, self.kind)
        one_d = {"zero": "1-D zeroed", "copy": "1-D copied", "included": "1-D included"}.get(self.one_d, self.one_d)
        return f"span {span}; {what}; {one_d}"

    def _meta(self) -> dict[str, Any]:
        meta = asdict(self)
        for key in ("coords", "loss", "accuracy"):
            meta.pop(key)
        meta["direction_norms"] = list(self.direction_norms)
        meta["info"] = dict(self.info)
        return meta

    def save(self, path: str | Path) -> Path:
        """Write to an .npz (arrays + a JSON ``meta`` string) atomically."""
        arrays = {f"coords_{k}": np.asarray(c) for k, c in enumerate(self.coords)}
        arrays["loss"] = np.asarray(self.loss)
        if self.accuracy is not None:
            arrays["accuracy"] = np.asarray(self.accuracy)
        arrays["meta"] = np.array(json.dumps(self._meta()))
        return write_npz(path, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "LandscapeResult":
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            n_axes = sum(1 for k in data.files if k.startswith("coords_"))
            coords = tuple(data[f"coords_{k}"] for k in range(n_axes))
            loss = data["loss"]
            accuracy = data["accuracy"] if "accuracy" in data.files else None
        meta["direction_norms"] = tuple(meta["direction_norms"])
        return cls(coords=coords, loss=loss, accuracy=accuracy, **meta)


@dataclass(frozen=True)
class Sharpness:
    """Largest loss increase max_{‖(a,b)‖ ≤ radius} f(a, b) − f(0, 0) over grid cells.

    ``relative`` is the increase divided by (1 + f(0, 0)) (Keskar et al. 2017's
    normalization). A non-finite cell inside the radius makes both inf.
    """

    radius: float
    increase: float
    relative: float
    at: tuple[float, ...]
    n_cells: int
    n_nonfinite: int


@dataclass(frozen=True)
class AxisCurvature:
    """Curvature along one axis: a quadratic fit at the centre vs the Hessian.

    ``fit_second_derivative`` is f''(0) in coefficient units (= dᵀHd for an exact
    fit); ``fit_rayleigh`` = f''(0)/‖d‖²; ``hessian_rayleigh`` = dᵀHd/dᵀd from a
    Hessian-vector product (None when not computed).
    """

    axis: int
    fit_second_derivative: float
    fit_rayleigh: float
    hessian_rayleigh: Optional[float]
    n_fit_points: int
    fit_halfwidth: float

    @property
    def relative_error(self) -> Optional[float]:
        if self.hessian_rayleigh is None or self.hessian_rayleigh == 0:
            return None
        return abs(self.fit_rayleigh - self.hessian_rayleigh) / abs(self.hessian_rayleigh)


@dataclass(frozen=True)
class LandscapeMetrics:
    """Numbers summarizing one surface."""

    center_loss: float
    sharpness: tuple[Sharpness, ...]
    curvature: tuple[AxisCurvature, ...]
    n_nonfinite: int

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for c, item in zip(out["curvature"], self.curvature):
            c["relative_error"] = item.relative_error
        return out

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "LandscapeMetrics":
        data = read_json(path)
        sharp = tuple(Sharpness(**{**s, "at": tuple(s["at"])}) for s in data["sharpness"])
        curv = tuple(AxisCurvature(**{k: v for k, v in c.items() if k != "relative_error"})
                     for c in data["curvature"])
        return cls(data["center_loss"], sharp, curv, data["n_nonfinite"])
