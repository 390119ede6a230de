"""The model zoo: normalized and norm-free GPT-style decoders as TransformerLens bridges."""
from normlens.models.checks import (
    NonFiniteWeightsError,
    check_finite_weights,
    check_memory,
    estimate_memory_bytes,
)
from normlens.models.config import ACTIVATIONS, DEFAULT_DYT_ALPHA0, PLACEMENTS, ConfigError, ZooConfig
from normlens.models.norms import (
    NORM_KINDS,
    DyT,
    FrozenStdLayerNorm,
    LayerNorm,
    NoNorm,
    RMSNorm,
    build_norm,
)
from normlens.models.zoo import build_model, count_parameters, get_config, norm_modules

__all__ = [
    "DEFAULT_DYT_ALPHA0", "NonFiniteWeightsError", "check_finite_weights", "check_memory",
    "estimate_memory_bytes", "ACTIVATIONS", "PLACEMENTS", "NORM_KINDS", "ConfigError", "ZooConfig", "DyT",
    "FrozenStdLayerNorm", "LayerNorm", "NoNorm", "RMSNorm", "build_norm", "build_model",
    "count_parameters", "get_config", "norm_modules",
]
