"""Curvature: Hessian/GGN operators (only `@`), Lanczos eigenpairs, trace, density, weight spectra."""
from normlens.curvature.batches import estimate_batch_curvature
from normlens.curvature.density import estimate_density
from normlens.curvature.distributed import DistributedOperator
from normlens.hygiene import preserved_state
from normlens.curvature.lanczos import compute_eigenpairs, lanczos, plan_eigenpairs
from normlens.curvature.memory import MemoryBudgetError, available_memory, check_plan, plan_basis
from normlens.curvature.operators import GGNOperator, HessianOperator, NonFiniteLossError
from normlens.parameters import (
    NonFiniteWeightsError,
    UnusedParameterError,
    check_finite_weights,
    layer_pattern,
    select_parameters,
)
from normlens.curvature.results import (
    BatchCurvatureResult,
    BlockSpectrumResult,
    DensityResult,
    EigenResult,
    TraceResult,
    WeightSpectraResult,
)
from normlens.curvature.trace import estimate_trace
from normlens.curvature.weight_spectra import compute_weight_spectra, fit_power_law

__all__ = [
    "BatchCurvatureResult", "BlockSpectrumResult", "DensityResult", "DistributedOperator", "EigenResult",
    "GGNOperator", "HessianOperator", "MemoryBudgetError", "NonFiniteLossError", "NonFiniteWeightsError",
    "TraceResult", "UnusedParameterError", "WeightSpectraResult", "available_memory", "check_finite_weights",
    "compute_eigenpairs", "compute_weight_spectra", "estimate_batch_curvature", "estimate_density",
    "estimate_trace", "fit_power_law", "lanczos", "layer_pattern", "plan_basis", "plan_eigenpairs", "check_plan", "preserved_state",
    "select_parameters",
]
