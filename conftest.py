"""Collection rules for ``python -m pytest`` (tests/ and the package's doctests).

* The fused kernels run through Triton's CPU interpreter unless the command
  says otherwise (benchmarks/gpu_check.sh sets ``TRITON_INTERPRET=0`` on a GPU
  machine). It must be set before triton is first imported: triton's own
  library functions are ``@triton.jit``-decorated at import.
* ``--doctest-modules`` (pyproject addopts) collects docstring examples from
  the package only: test files under tests/ are not imported a second time as
  doctest modules. The kernel modules import triton at module level, so
  without triton they are left out of doctest collection (their tests in
  tests/kernels are reported as skipped, with the reason).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from _pytest.doctest import DoctestModule  # noqa: E402

PACKAGE = Path(__file__).resolve().parent / "normlens"


def _has_triton() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except ValueError:  # sys.modules["triton"] is None: imports of it are blocked
        return False


collect_ignore_glob: list[str] = [] if _has_triton() else ["normlens/kernels/*.py"]


@pytest.hookimpl(wrapper=True)
def pytest_collect_file(file_path, parent):
    collected = yield
    if PACKAGE in Path(file_path).resolve().parents:
        return collected
    return [node for node in collected if not isinstance(node, DoctestModule)]
