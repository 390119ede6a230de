"""Checks to run before the work: memory a config needs, finite weights.

Each raises one line (a ``ValueError`` subclass) that says what was found and
names the fix; none allocates the model it is asked about.
"""
from __future__ import annotations

from normlens.models.config import ConfigError, ZooConfig
from normlens.parameters import NonFiniteWeightsError, check_finite_weights  # noqa: F401  (checks run before the work)
from normlens.resources import available_memory, format_bytes


# Python objects per block besides its tensors (modules, hook points, the bridge's
# wrappers): measured as the peak-RSS growth per layer of a 200-layer d_model=8 model.
PER_LAYER_OVERHEAD_BYTES = 256 * 1024


def count_config_parameters(config: ZooConfig) -> int:
    """Parameters of the zoo model ``config`` describes, counted from its shape alone.

    Embeddings (d_vocab + n_ctx rows), per block q/k/v/o with biases, the MLP
    with biases and two norms, a final norm and an unbiased unembedding, each
    norm counted as DyT's (gain, bias, alpha): the built model's
    ``count_parameters`` exactly for DyT, a few parameters fewer for the
    other kinds (tested), found without building it.
    """
    d, d_mlp = config.d_model, config.resolved_d_mlp
    per_norm = 2 * d + 1  # gain, bias, DyT's alpha (at most)
    block = 4 * (d * d + d) + (d * d_mlp + d_mlp) + (d_mlp * d + d) + 2 * per_norm
    return config.d_vocab * d + config.n_ctx * d + config.n_layers * block + per_norm + d * config.d_vocab


def estimate_memory_bytes(config: ZooConfig, *, training: bool = False, bytes_per_value: int = 4) -> int:
    """Bytes the zoo model ``config`` occupies once built (an estimate from the config).

    Parameters at ``bytes_per_value`` (float32: 4), each block's causal mask
    (n_ctx x n_ctx bools) and :data:`PER_LAYER_OVERHEAD_BYTES` of Python
    objects per block. With ``training`` add a gradient and AdamW's two
    moments per parameter (x4 in all); activations are not counted.
    """
    n_values = count_config_parameters(config) * (4 if training else 1)
    per_layer = config.n_ctx * config.n_ctx + PER_LAYER_OVERHEAD_BYTES
    return n_values * bytes_per_value + config.n_layers * per_layer


def check_memory(config: ZooConfig, *, training: bool = False, limit_bytes: int | None = None) -> int:
    """Refuse (ConfigError) a config whose model would not fit; return the estimate.

    ``limit_bytes`` defaults to the memory available on this machine now.
    """
    need = estimate_memory_bytes(config, training=training)
    limit = limit_bytes if limit_bytes is not None else available_memory("cpu")
    if limit is not None and need > limit:
        raise ConfigError(
            f"a model with n_layers={config.n_layers}, d_model={config.d_model}, n_ctx={config.n_ctx}, "
            f"d_vocab={config.d_vocab} needs about {format_bytes(need)} "
            f"({count_config_parameters(config):.3g} parameters{' with gradients and AdamW state' if training else ''}"
            f", {config.n_layers} blocks' masks and modules) but this machine has "
            f"{format_bytes(limit)} available; choose smaller n_layers, d_model, n_ctx or d_vocab")
    return need
