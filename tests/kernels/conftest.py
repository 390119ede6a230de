"""Kernel tests run on CPU tensors through the Triton interpreter.

TRITON_INTERPRET must be set before any ``@triton.jit`` kernel is defined, so
it is set here, before the test modules import normlens.kernels (CI sets it
globally as well). Without triton the whole folder is skipped.
"""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from normlens.kernels.config import is_available  # noqa: E402

if not is_available():  # pragma: no cover - depends on the machine
    collect_ignore_glob = ["test_*.py"]

# "our error <= 2 x torch's own same-dtype error + atol·max(1, |ref|)" (the tolerance rule of fused-kernel test suites such as Liger-Kernel's)
ATOL = {torch.float32: 2e-6, torch.bfloat16: 4e-3, torch.float16: 5e-4}


def max_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """max |value - reference| in float64."""
    return (value.detach().double() - reference.detach().double()).abs().max().item()


@pytest.fixture
def check_against_torch():
    """Assert the kernel's error against a float64 reference is within the field's rule.

    ours, theirs (torch in the same dtype) and reference (float64 from the same
    rounded inputs); ``what`` names the quantity in the failure message.
    """

    def check(what: str, ours, theirs, reference, dtype: torch.dtype) -> None:
        assert ours.shape == reference.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(reference.shape)}"
        assert torch.isfinite(ours).all(), f"{what}: non-finite values"
        err_ours = max_error(ours, reference)
        err_torch = max_error(theirs, reference)
        scale = max(1.0, reference.abs().max().item())
        bound = 2.0 * err_torch + ATOL[dtype] * scale
        assert err_ours <= bound, (
            f"{what} ({dtype}): error {err_ours:.3g} > 2 x torch's {err_torch:.3g} + atol = {bound:.3g}"
        )

    return check
