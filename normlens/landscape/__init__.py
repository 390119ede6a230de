"""Loss landscapes: filter-normalized random, Hessian, PCA and interpolation axes;
vmap-batched, resumable and distributed grid evaluation; sharpness and curvature."""
from normlens.landscape.directions import (
    Directions,
    hessian_directions,
    interpolation_direction,
    normalize_direction,
    pca_directions,
    random_directions,
)
from normlens.landscape.grid import axis_coordinates, compute_landscape
from normlens.landscape.metrics import compute_metrics, fit_axis_curvature, sharpness
from normlens.landscape.objective import next_token_objective
from normlens.landscape.results import AxisCurvature, LandscapeMetrics, LandscapeResult, Sharpness
from normlens.landscape.store import GridMismatchError

__all__ = [
    "AxisCurvature", "Directions", "GridMismatchError", "LandscapeMetrics", "LandscapeResult",
    "Sharpness", "axis_coordinates", "compute_landscape", "compute_metrics", "fit_axis_curvature",
    "hessian_directions", "interpolation_direction", "next_token_objective", "normalize_direction",
    "pca_directions", "random_directions", "sharpness",
]
