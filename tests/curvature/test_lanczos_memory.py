"""Lanczos basis memory (dtype, planning, refusal, spilling), which-end rules and the sign convention."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import normlens.curvature.memory as memory
from curvature_helpers import make_zoo, symmetric, zoo_tokens
from normlens.curvature import HessianOperator, compute_eigenpairs, estimate_density, lanczos
from normlens.curvature.memory import MemoryBudgetError, check_plan, plan_basis


def _ghost_prone(n: int = 400) -> torch.Tensor:
    """A few well-separated top eigenvalues over a dense bulk: without reorthogonalization
    the top ones come back as ghost copies after a few dozen steps."""
    spectrum = np.concatenate([[100.0, 90.0, 80.0], np.linspace(0.0, 1.0, n - 3)])
    return symmetric(spectrum, seed=4)


def test_basis_follows_the_operator_dtype_and_coefficients_are_float64():
    A = _ghost_prone(60)
    assert lanczos(A.float(), 10).basis.dtype == torch.float32
    assert lanczos(A, 10).basis.dtype == torch.float64
    run = lanczos(A.to(torch.bfloat16), 5)
    assert run.basis.dtype == torch.float32  # never below float32
    assert run.alpha.dtype == run.beta.dtype == torch.float64
    model = make_zoo("ln", dtype=torch.float32)
    op = HessianOperator(model, zoo_tokens())
    assert lanczos(op, 4).basis.dtype == torch.float32


def test_spilled_basis_matches_in_memory_and_dense_without_ghosts(tmp_path):
    A = _ghost_prone()
    n = A.shape[0]
    budget = 5 * n * 8  # five float64 vectors in memory, the rest in a memory-mapped file
    spilled = lanczos(A, 150, max_basis_bytes=budget, spill_dir=tmp_path)
    kept = lanczos(A, 150)
    assert spilled.basis.in_memory == 5 and spilled.basis.spilled == 145
    assert os.listdir(tmp_path) == []  # the spill file is unlinked at once
    torch.testing.assert_close(spilled.alpha, kept.alpha, rtol=1e-11, atol=0)  # same algorithm, other block sums
    torch.testing.assert_close(spilled.beta, kept.beta, rtol=1e-11, atol=0)
    Q = spilled.basis.matrix()
    assert float((Q.T @ Q - torch.eye(150, dtype=torch.float64)).abs().max()) < 1e-12
    ritz = torch.linalg.eigvalsh(spilled.tridiagonal())
    for top in (100.0, 90.0, 80.0):  # each converged eigenvalue appears exactly once: no ghosts
        assert int(((ritz - top).abs() < 1e-6).sum()) == 1
    r = compute_eigenpairs(A, 3, max_basis_bytes=budget, spill_dir=tmp_path)
    np.testing.assert_allclose(r.eigenvalues, [100.0, 90.0, 80.0], rtol=1e-10)
    assert r.all_converged


def test_plan_counts_bytes_and_refuses_with_the_numbers(monkeypatch):
    plan = plan_basis(124_439_808, 30, dtype=torch.float32, device="cpu")
    assert plan.vector_bytes == 124_439_808 * 4
    assert plan.memory_bytes == (30 + plan.work_vectors) * 124_439_808 * 4
    assert "30 vectors x 124,439,808 float32" in plan.describe()
    spill = plan_basis(1000, 30, dtype=torch.float64, max_basis_bytes=10 * 8000)
    assert (spill.in_memory, spill.spilled) == (10, 20) and spill.spill_bytes == 20 * 8000

    monkeypatch.setattr(memory, "available_memory", lambda device: 50 * 8 * 1000)  # room for 50 vectors
    A = symmetric(np.linspace(0, 1, 1000))
    with pytest.raises(MemoryBudgetError, match=r"needs .* but .* available.*max_basis_bytes"):
        compute_eigenpairs(A, 3, n_steps=60)
    with pytest.raises(MemoryBudgetError, match="available"):
        estimate_density(A, n_steps=80)
    # a budget that spills makes the same request fit
    r = compute_eigenpairs(A, 1, n_steps=60, max_steps=60, max_basis_bytes=20 * 8000, warn=False)
    assert r.n_steps == 60
    # extensions stop where memory ends instead of failing midway
    r = compute_eigenpairs(A, 3, n_steps=30, warn=False)
    assert r.n_steps <= 50 - (2 + max(4, 3 + 2))  # basis + working vectors within the 50 that fit
    with pytest.raises(MemoryBudgetError, match="free"):
        monkeypatch.setattr(memory.shutil, "disk_usage", lambda path: type("U", (), {"free": 0})())
        check_plan(spill)


@pytest.mark.parametrize("k, which, limit", [(4, "largest", 3), (100000, "largest", 3), (2, "both", 1)])
def test_k_at_or_above_the_size_names_the_limit(k, which, limit):
    A = torch.eye(4, dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"at most k={limit}"):
        compute_eigenpairs(A, k, which=which)
    with pytest.raises(ValueError, match="positive integer"):
        compute_eigenpairs(A, 1.5)


def test_k_huge_on_a_model_operator_is_one_line():
    op = HessianOperator(make_zoo("ln"), zoo_tokens())
    with pytest.raises(ValueError, match=rf"size n={op.shape[0]}"):
        compute_eigenpairs(op, 100000)


def test_largest_is_algebraic_and_magnitude_is_what_pyhessian_returns():
    spectrum = np.concatenate([[-12.0, 6.0, 5.0, -5.5], np.linspace(-1, 1, 96)])
    A = symmetric(spectrum, seed=2)
    largest = compute_eigenpairs(A, 2)
    np.testing.assert_allclose(largest.eigenvalues, [6.0, 5.0], rtol=1e-8)
    magnitude = compute_eigenpairs(A, 3, which="magnitude")
    np.testing.assert_allclose(magnitude.eigenvalues, [-12.0, 6.0, -5.5], rtol=1e-8)
    assert magnitude.ends == ("magnitude",) * 3 and magnitude.which == "magnitude"
    V = torch.tensor(magnitude.eigenvectors)
    torch.testing.assert_close(A @ V, V * torch.tensor(magnitude.eigenvalues), atol=1e-7, rtol=0)


def test_eigenvector_sign_convention_largest_entry_positive():
    """Documented convention: each eigenvector's entry of largest magnitude is positive, so
    runs from different random starts return the same vectors, not their negatives."""
    A = symmetric(np.concatenate([[9.0, 7.0, 5.0, 3.0, 2.5], np.linspace(-1, 1, 75)]), seed=5)
    exact_values, exact_vectors = torch.linalg.eigh(A)
    results = [compute_eigenpairs(A, 5, seed=seed) for seed in (0, 1, 2)]
    for r in results:
        V = r.eigenvectors
        top = V[np.abs(V).argmax(0), np.arange(V.shape[1])]
        assert np.all(top > 0)
        for j in range(5):  # up to sign, the dense eigenvectors; with the sign fixed, equal
            u = exact_vectors[:, -1 - j].numpy()
            u = u * np.sign(u[np.abs(u).argmax()])
            np.testing.assert_allclose(V[:, j], u, atol=1e-7)
    np.testing.assert_allclose(results[0].eigenvectors, results[1].eigenvectors, atol=1e-7)


def test_plan_eigenpairs_validates_before_any_model_exists(monkeypatch):
    from normlens.curvature import plan_eigenpairs

    plan = plan_eigenpairs(124_439_808, 3, dtype=torch.float32)  # GPT-2 small, default steps
    assert plan.n_vectors == 30 and plan.vector_bytes == 124_439_808 * 4
    with pytest.raises(ValueError, match="at most k="):
        plan_eigenpairs(10, 10)
    with pytest.raises(ValueError, match="n_steps"):
        plan_eigenpairs(100, 3, n_steps=0)
    monkeypatch.setattr(memory, "available_memory", lambda device: 8 * 2**30)
    with pytest.raises(MemoryBudgetError, match=r"13\.9 GiB .* needs 17\.2 GiB on cpu but 8\.0 GiB is available"):
        check_plan(plan)  # 30 x 0.46 GiB of basis does not fit in 8 GiB
    check_plan(plan_eigenpairs(124_439_808, 3, n_steps=8, max_basis_bytes=2 * 2**30))
