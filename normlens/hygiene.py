"""Leave the model exactly as found: weights, buffers, grads, train/eval mode, RNG.

A curvature analysis evaluates the loss many times. If the model is in training
mode, dropout would make every product a different random matrix and BatchNorm
would update its running statistics; both are refused or switched off (with a
warning), never silently mixed in.
"""
from __future__ import annotations

import random
import warnings
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn

TRAIN_MODE_POLICIES = ("eval", "refuse")

_STOCHASTIC_TYPES: tuple[type[nn.Module], ...] = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
    nn.modules.batchnorm._BatchNorm,
)


def stochastic_modules(model: nn.Module) -> list[str]:
    """Names of modules that behave differently in training mode and are training now.

    Dropout with p > 0 (random masks) and BatchNorm (batch statistics, running
    averages updated in place).
    """
    found = []
    for name, module in model.named_modules():
        if not module.training or not isinstance(module, _STOCHASTIC_TYPES):
            continue
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p == 0:
            continue
        found.append(name or type(module).__name__)
    return found


def check_train_mode(model: nn.Module, policy: str = "eval") -> None:
    """Refuse (policy "refuse") or warn that dropout/BatchNorm will be switched off ("eval")."""
    if policy not in TRAIN_MODE_POLICIES:
        raise ValueError(f"train_mode must be one of {TRAIN_MODE_POLICIES}, got {policy!r}")
    found = stochastic_modules(model)
    if not found:
        return
    listed = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
    if policy == "refuse":
        raise RuntimeError(
            f"the model is in training mode with dropout/BatchNorm ({listed}); the Hessian of a "
            "random loss is not defined. Call model.eval() first or pass train_mode='eval'."
        )
    warnings.warn(
        f"the model is in training mode with dropout/BatchNorm ({listed}); curvature is "
        "computed in eval mode (dropout off, BatchNorm running statistics), and the mode is "
        "restored afterwards",
        RuntimeWarning,
        stacklevel=3,
    )


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module in eval mode; restore each module's own flag on exit."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


@contextmanager
def rng_preserved(device: torch.device | None = None) -> Iterator[None]:
    """Restore the torch (CPU and ``device``), NumPy and Python RNG states on exit."""
    devices = [device] if device is not None and device.type == "cuda" else []
    np_state = np.random.get_state()
    py_state = random.getstate()
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


@contextmanager
def preserved_state(model: nn.Module, *, train_mode: str = "eval") -> Iterator[nn.Module]:
    """Run an analysis in eval mode and put everything back afterwards.

    Saves parameters and buffers (values), ``.grad`` of every parameter, each
    module's training flag and the RNG states; restores them in place on exit,
    even after an exception, so tensors keep their identity.

    Args:
        train_mode: "eval" switches dropout/BatchNorm off with a warning,
            "refuse" raises if the model is training with them.
    """
    check_train_mode(model, train_mode)
    params = list(model.parameters())
    buffers = list(model.buffers())
    saved_params = [p.detach().clone() for p in params]
    saved_grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
    saved_buffers = [b.detach().clone() for b in buffers]
    device = params[0].device if params else None
    with rng_preserved(device), eval_mode(model):
        try:
            yield model
        finally:
            with torch.no_grad():
                for p, value, grad in zip(params, saved_params, saved_grads):
                    p.copy_(value)
                    if grad is None:
                        p.grad = None
                    elif p.grad is None:
                        p.grad = grad
                    else:
                        p.grad.copy_(grad)
                for b, value in zip(buffers, saved_buffers):
                    b.copy_(value)
