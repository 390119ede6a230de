"""Loss landscapes: filter-normalized random, Hessian, PCA and interpolation axes;
vmap-batched, resumable and distributed grid evaluation; sharpness and curvature."""
from normlens.landscape.directions import (
    Directions,
    DirectionsFileError,
    hessian_directions,
    interpolation_direction,
    normalize_direction,
    pca_directions,
    random_directions,
)
from normlens.landscape.filters import OutputAxis, UnknownLayerWarning, output_axes
from normlens.landscape.grid import axis_coordinates, compute_landscape
from normlens.landscape.metrics import compute_metrics, fit_axis_curvature, sharpness
from normlens.landscape.movable import Exclusion, excluded_parameters
from normlens.landscape.objective import next_token_objective
from normlens.landscape.results import AxisCurvature, LandscapeMetrics, LandscapeResult, Sharpness
from normlens.landscape.store import GridMismatchError

__all__ = [
    "AxisCurvature", "Directions", "DirectionsFileError", "Exclusion", "GridMismatchError", "LandscapeMetrics",
    "LandscapeResult", "OutputAxis", "Sharpness", "UnknownLayerWarning", "axis_coordinates", "compute_landscape",
    "compute_metrics", "excluded_parameters", "fit_axis_curvature", "hessian_directions",
    "interpolation_direction", "next_token_objective", "normalize_direction", "output_axes", "pca_directions",
    "random_directions", "sharpness",
]
