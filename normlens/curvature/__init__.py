"""Curvature: Hessian/GGN operators (only `@`), Lanczos eigenpairs, trace, density, weight spectra."""
from normlens.curvature.density import estimate_density
from normlens.curvature.distributed import DistributedOperator
from normlens.hygiene import preserved_state
from normlens.curvature.lanczos import compute_eigenpairs, lanczos
from normlens.curvature.operators import GGNOperator, HessianOperator
from normlens.parameters import layer_pattern, select_parameters
from normlens.curvature.results import (
    BlockSpectrumResult,
    DensityResult,
    EigenResult,
    TraceResult,
    WeightSpectraResult,
)
from normlens.curvature.trace import estimate_trace
from normlens.curvature.weight_spectra import compute_weight_spectra, fit_power_law

__all__ = [
    "BlockSpectrumResult", "DensityResult", "DistributedOperator", "EigenResult", "GGNOperator",
    "HessianOperator", "TraceResult", "WeightSpectraResult", "compute_eigenpairs",
    "compute_weight_spectra", "estimate_density", "estimate_trace", "fit_power_law", "lanczos",
    "layer_pattern", "preserved_state", "select_parameters",
]
