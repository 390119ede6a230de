"""Kernel tests: through the Triton interpreter on CPU tensors, or compiled on a CUDA GPU.

* Default (``TRITON_INTERPRET=1``, set in tests/conftest.py unless the command
  sets it): every kernel runs in Triton's CPU interpreter on CPU tensors.
* ``TRITON_INTERPRET=0`` on a machine with a CUDA GPU (benchmarks/gpu_check.sh):
  the kernels are compiled, and each test runs with torch's default device set
  to CUDA, so the same assertions check the compiled kernels on the GPU; the
  tests that need CPU tensors (marked ``cpu_only``) skip with a reason, and the
  determinism tests (``needs_gpu``), which skip everywhere else, run.
* Without triton every module here but the references' is reported as skipped, with the reason.
"""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from normlens.kernels.config import interpreting, is_available  # noqa: E402

COMPILED_ON_GPU = is_available() and not interpreting() and torch.cuda.is_available()
NO_TRITON = "triton is not installed: the fused-kernel tests need it (pip install -e '.[test]')"
RUN_WITHOUT_TRITON = ("test_reference.py",)  # the float64 torch references need no triton


class _SkippedModule(pytest.Module):
    """A test module that is reported as skipped instead of being imported."""

    def collect(self):
        pytest.skip(f"{self.path.name}: {NO_TRITON}", allow_module_level=True)


def pytest_pycollect_makemodule(module_path, parent):
    if not is_available() and module_path.name.startswith("test_") and module_path.name not in RUN_WITHOUT_TRITON:
        return _SkippedModule.from_parent(parent, path=module_path)
    return None


def pytest_configure(config):
    config.addinivalue_line("markers", "cpu_only: the test needs CPU tensors (runs under the interpreter only)")


@pytest.fixture(autouse=True)
def _kernel_device(request):
    """Compiled on a GPU: CUDA as torch's default device for the test (see the module docstring)."""
    if not COMPILED_ON_GPU:
        yield
        return
    if request.node.get_closest_marker("cpu_only"):
        pytest.skip("needs CPU tensors: runs under the Triton interpreter (the default test command)")
    torch.set_default_device("cuda")
    try:
        yield
    finally:
        torch.set_default_device(None)


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
