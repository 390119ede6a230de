"""Lanczos eigenpairs against dense eigendecompositions."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from curvature_helpers import make_zoo, symmetric
from normlens.curvature import HessianOperator, compute_eigenpairs
from normlens.models import NORM_KINDS


def test_dense_matrix_both_ends_and_vectors():
    spectrum = torch.cat([torch.tensor([10.0, 7.0, 5.0]), torch.linspace(-1, 1, 194), torch.tensor([-4.0, -6.0, -9.0])])
    A = symmetric(spectrum)
    r = compute_eigenpairs(A, 3, which="both")
    np.testing.assert_allclose(r.eigenvalues, [10, 7, 5, -9, -6, -4], rtol=1e-8)
    assert r.ends == ("largest",) * 3 + ("smallest",) * 3
    V = torch.tensor(r.eigenvectors)
    np.testing.assert_allclose((A @ V - V * torch.tensor(r.eigenvalues)).norm(dim=0), r.residuals, atol=1e-12)
    assert r.all_converged and r.residuals.max() < 1e-6 * 10
    small = compute_eigenpairs(A, 2, which="smallest")
    np.testing.assert_allclose(small.eigenvalues, [-9, -6], rtol=1e-8)


def test_breakdown_on_low_rank_matrix_still_finds_all():
    A = symmetric([3.0, 2.0, 1.0] + [0.0] * 47)  # Krylov space from one vector has dim 4
    r = compute_eigenpairs(A, 3)
    np.testing.assert_allclose(r.eigenvalues, [3, 2, 1], rtol=1e-10)
    A2 = torch.diag(torch.tensor([5.0, 5.0, 5.0, 1.0, 0.5] + [0.1] * 45, dtype=torch.float64))  # repeated top
    np.testing.assert_allclose(compute_eigenpairs(A2, 4).eigenvalues, [5, 5, 5, 1], rtol=1e-10)


def test_too_few_steps_warns_and_reports_residuals():
    A = symmetric(np.linspace(1.0, 2.0, 300))  # clustered spectrum: slow convergence
    with pytest.warns(RuntimeWarning, match="did not converge"):
        r = compute_eigenpairs(A, 5, n_steps=30, max_steps=30)
    assert not r.all_converged and r.n_steps == 30
    assert r.residuals.shape == (5,)


def test_bad_arguments():
    A = torch.eye(4, dtype=torch.float64)
    with pytest.raises(ValueError, match="asked for 5 eigenpairs"):
        compute_eigenpairs(A, 5)
    with pytest.raises(ValueError, match="which"):
        compute_eigenpairs(A, 1, which="top")
    with pytest.raises(ValueError, match="square"):
        compute_eigenpairs(torch.ones(3, 4), 1)
    with pytest.raises(TypeError, match="operator"):
        compute_eigenpairs([[1.0]], 1)


@pytest.mark.parametrize("norm", NORM_KINDS)
def test_zoo_top5_float64_matches_dense(zoo_dense, norm):
    model, tokens, H = zoo_dense(norm)
    op = HessianOperator(model, tokens, method="double_backward")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # must converge without a warning
        r = compute_eigenpairs(op, 5, seed=1)
    exact = torch.linalg.eigvalsh(H).flip(0)[:5].numpy()
    np.testing.assert_allclose(r.eigenvalues, exact, rtol=1e-4)
    assert np.all(np.diff(r.eigenvalues) <= 0)
    assert r.n_steps >= 2 * 5 + 20
    # eigenvectors as parameter-shaped tensors
    first = r.eigenvector_params(0)
    assert list(first) == list(op.param_names)
    v = torch.cat([t.reshape(-1) for t in first.values()])
    torch.testing.assert_close(H @ v, r.eigenvalues[0] * v, atol=1e-5 * abs(exact[0]), rtol=0)


@pytest.mark.parametrize("norm", ["ln", "dyt"])
def test_zoo_top5_float32_matches_dense(zoo_dense, norm):
    model64, tokens, H = zoo_dense(norm)
    model32 = make_zoo(norm, dtype=torch.float32)
    op = HessianOperator(model32, tokens)
    r = compute_eigenpairs(op, 5, seed=2)
    exact = torch.linalg.eigvalsh(H).flip(0)[:5].numpy()
    np.testing.assert_allclose(r.eigenvalues, exact, rtol=1e-3)
    assert np.all(np.diff(r.eigenvalues) <= 0)


def test_zoo_smallest_and_subset(zoo_dense):
    model, tokens, H = zoo_dense("rms")
    op = HessianOperator(model, tokens)
    r = compute_eigenpairs(op, 2, which="smallest")
    np.testing.assert_allclose(r.eigenvalues, torch.linalg.eigvalsh(H)[:2].numpy(), rtol=1e-4)
