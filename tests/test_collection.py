"""The test command itself: doctests are collected, and kernel tests skip visibly without triton."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pytest(*args: str, block_triton: bool = False) -> str:
    prelude = "import sys; sys.modules['triton'] = None; " if block_triton else ""
    code = prelude + f"import pytest; sys.exit(pytest.main({list(args)!r}))"
    if not block_triton:
        code = "import sys; " + code
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    return done.stdout + done.stderr


def test_the_default_command_collects_the_package_doctests_and_each_test_once():
    out = _pytest("--collect-only", "-q", "-p", "no:cacheprovider", "normlens/sites.py", "tests/test_sites.py")
    assert "normlens/sites.py::normlens.sites.norm_slots" in out, out
    assert "tests/test_sites.py::test_block_groups_partition_the_parameters" in out, out
    # test files are not imported a second time as doctest modules
    assert "tests/test_sites.py::tests" not in out and "4 tests collected" in out, out


def test_kernel_tests_without_triton_skip_with_a_reason():
    out = _pytest("-q", "-rs", "-p", "no:cacheprovider", "tests/kernels/test_dyt.py", block_triton=True)
    assert "test_dyt.py: triton is not installed" in out, out
    assert "1 skipped" in out, out
