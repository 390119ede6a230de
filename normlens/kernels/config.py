"""Switches for the fused kernels: availability, the on/off switch, interpreter mode.

Nothing here imports triton at module import time, so ``normlens.kernels``
imports on machines without it.
"""
from __future__ import annotations

import functools
import os

_ENV_SWITCH = "NORMLENS_FUSED"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")

_enabled: bool | None = None  # None: follow the environment variable


@functools.lru_cache(maxsize=1)
def is_available() -> bool:
    """True when triton imports (the kernels can then run, on a GPU or interpreted)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``).

    Host code uses it to keep interpreter-breaking features (querying the GPU's
    SM count, bf16 ``tl.dot``) behind a switch.
    """
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in _TRUE


def use_fused(enabled: bool) -> bool:
    """Switch the zoo's norm modules onto (``True``) or off (``False``) the fused kernels.

    The fused path is taken only for CUDA inputs; CPU inputs always run the
    plain torch code. Overrides the ``NORMLENS_FUSED`` environment variable.

    Returns:
        The previous setting, so callers can restore it.
    """
    global _enabled
    if not isinstance(enabled, bool):
        raise TypeError(f"use_fused expects True or False, got {enabled!r}")
    previous = fused_enabled()
    _enabled = enabled
    return previous


def fused_enabled() -> bool:
    """Whether the fused path is switched on (``use_fused`` or ``NORMLENS_FUSED=1``; off by default)."""
    if _enabled is not None:
        return _enabled
    value = os.environ.get(_ENV_SWITCH, "0").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{_ENV_SWITCH}={value!r} is not understood; expected 1/0, true/false, on/off")
