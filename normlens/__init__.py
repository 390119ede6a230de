"""normlens: probes, curvature and loss landscapes for normalized and norm-free transformers.

The zoo's entry points are imported on first use (PEP 562), so ``import normlens``
and ``normlens --help`` do not pay for importing TransformerLens.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["ZooConfig", "build_model", "get_config", "norm_modules", "__version__"]
_FROM_MODELS = {"ZooConfig", "build_model", "get_config", "norm_modules"}


def __getattr__(name: str) -> Any:
    if name in _FROM_MODELS:
        value = getattr(importlib.import_module("normlens.models"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'normlens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _FROM_MODELS)
