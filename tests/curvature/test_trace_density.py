"""Trace estimators and SLQ density against exact traces and spectra."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from curvature_helpers import dense_hessian, make_mlp, mlp_batch, mlp_loss, mlp_loss_of_call, symmetric
from normlens.curvature import DensityResult, HessianOperator, estimate_density, estimate_trace
from normlens.curvature.density import gaussian_density


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_trace_within_three_standard_errors_dense(method):
    spectrum = np.concatenate([[50.0, 20.0, 8.0], np.random.default_rng(0).normal(0, 1, 97)])
    A = symmetric(spectrum)
    r = estimate_trace(A, 60, method=method, seed=3)
    assert r.std_error > 0
    assert abs(r.estimate - spectrum.sum()) <= 3 * r.std_error
    assert r.n_matvecs == 60


def test_hutchpp_beats_hutchinson_on_a_dominated_spectrum():
    spectrum = np.concatenate([[100.0, 60.0, 30.0, 10.0], np.full(196, 0.1)])
    A = symmetric(spectrum, seed=1)
    plain = estimate_trace(A, 60, method="hutchinson", seed=0)
    plus = estimate_trace(A, 60, method="hutch++", seed=0)
    assert plus.std_error < plain.std_error / 5
    assert abs(plus.estimate - spectrum.sum()) <= 3 * plus.std_error


def test_hutchpp_exact_when_sketch_spans_space():
    A = symmetric([3.0, -1.0, 2.0, 0.5])
    r = estimate_trace(A, 12)
    assert r.estimate == pytest.approx(4.5, abs=1e-12) and r.std_error == 0.0


def test_trace_of_model_hessian_within_three_standard_errors(zoo_dense):
    model, tokens, H = zoo_dense("ln")
    op = HessianOperator(model, tokens)
    for method in ("hutchinson", "hutch++"):
        r = estimate_trace(op, 30, method=method, seed=0)
        assert abs(r.estimate - float(torch.trace(H))) <= 3 * r.std_error, (method, r.estimate, r.std_error)


class VectorOnly:
    """A user operator that multiplies one vector at a time and nothing else."""

    def __init__(self, matrix: torch.Tensor):
        self.matrix, self.shape, self.dtype, self.calls = matrix, matrix.shape, matrix.dtype, 0

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor:
        assert v.dim() == 1, "vectors only"
        self.calls += 1
        return self.matrix @ v


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_vector_only_operators_are_applied_column_by_column(method):
    A = torch.as_tensor(symmetric([5.0, 2.0, 1.0, 0.5, 0.1, -0.3]))
    user = VectorOnly(A)
    r = estimate_trace(user, 9, method=method, seed=1)
    assert user.calls == 9
    assert r.estimate == pytest.approx(estimate_trace(A, 9, method=method, seed=1).estimate, rel=1e-12)


def test_several_batches_run_each_forward_once_per_block():
    """A multi-batch operator keeps no graph: one forward per batch for a whole block of probes."""
    model = make_mlp()
    batches = [mlp_batch(16, seed=s) for s in (1, 2)]
    op = HessianOperator(model, batches, loss_fn=mlp_loss, method="double_backward")
    forwards = []
    handle = model.register_forward_hook(lambda module, args, out: forwards.append(1))
    try:
        r = estimate_trace(op, 6, method="hutchinson", seed=0)
    finally:
        handle.remove()
    assert len(forwards) == 2 and r.n_matvecs == 6  # 12 when applied column by column
    H = dense_hessian(model, lambda call: sum(mlp_loss_of_call(b)(call) for b in batches) / 2)
    probes = torch.randint(0, 2, (H.shape[0], 6), generator=torch.Generator().manual_seed(0),
                           dtype=torch.float64) * 2 - 1
    assert r.estimate == pytest.approx(float((probes * (H @ probes)).sum(0).mean()), rel=1e-10)


def test_trace_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        estimate_trace(torch.eye(3), 6, method="exact")
    with pytest.raises(ValueError, match=">= 3"):
        estimate_trace(torch.eye(3), 2)


def test_density_full_lanczos_recovers_the_spectrum():
    spectrum = np.array([-2.0, -0.5, 0.0, 0.3, 1.0, 4.0])
    A = symmetric(spectrum)
    d = estimate_density(A, n_probes=3, n_steps=6, sigma=0.05, seed=0)
    np.testing.assert_allclose(np.sort(d.nodes, axis=1), np.tile(spectrum, (3, 1)), atol=1e-10)
    np.testing.assert_allclose(d.weights.sum(1), 1.0, atol=1e-12)
    assert d.integral == pytest.approx(1.0, abs=1e-6)
    assert d.lambda_min == pytest.approx(-2.0) and d.lambda_max == pytest.approx(4.0)
    assert d.re == pytest.approx(0.5)


def test_kh_of_a_hand_built_quadrature():
    # Kh = sum_{theta<0} w |theta|^1/2 / sum_{theta>0} w theta^1/2 = (0.5 * 2) / (0.5 * 1) = 2
    one = DensityResult(grid=np.zeros(1), density=np.zeros(1), nodes=np.array([[-4.0, 1.0]]),
                        weights=np.array([[0.5, 0.5]]), sigma=1.0, n=2, n_probes=1, n_steps=2, seed=0)
    assert one.kh == pytest.approx(2.0)
    # two probes pooled: node weights w / 2 = .25 .25 .125 .375 at nodes -4 1 -1 4;
    # (0.25 * 2 + 0.125 * 1) / (0.25 * 1 + 0.375 * 2) = 0.625 / 1.0
    two = DensityResult(grid=np.zeros(1), density=np.zeros(1), nodes=np.array([[-4.0, 1.0], [-1.0, 4.0]]),
                        weights=np.array([[0.5, 0.5], [0.25, 0.75]]), sigma=1.0, n=2, n_probes=2,
                        n_steps=2, seed=0)
    assert two.kh == pytest.approx(0.625)


def test_density_of_model_hessian_integrates_to_one_with_mean_trace_over_n():
    model, batch = make_mlp(), mlp_batch()
    H = dense_hessian(model, mlp_loss_of_call(batch))
    op = HessianOperator(model, batch, mlp_loss)
    n = op.shape[0]
    d = estimate_density(op, n_probes=30, n_steps=20, seed=0)
    assert d.integral == pytest.approx(1.0, abs=1e-5)
    grid_mean = float(np.trapezoid(d.grid * d.density, d.grid))
    assert grid_mean == pytest.approx(d.mean, rel=1e-4, abs=1e-9)
    # the mean is the average of v^T H v over the unit probes: an unbiased estimate of tr(H)/n
    g = torch.Generator().manual_seed(0)
    quad = []
    for _ in range(30):  # same probe draws as estimate_density (one Gaussian start per probe)
        v = torch.randn(n, generator=g, dtype=torch.float64)
        v = v / v.norm()
        quad.append(float(v @ H @ v))
    se = np.std(quad, ddof=1) / math.sqrt(len(quad))
    assert d.mean == pytest.approx(np.mean(quad), rel=1e-8)
    assert abs(d.mean - float(torch.trace(H)) / n) <= 3 * se


def test_gaussian_density_integrates_to_one():
    grid = np.linspace(-10, 10, 4001)
    rho = gaussian_density(np.array([[-1.0, 2.0]]), np.array([[0.25, 0.75]]), grid, 0.3)
    assert np.trapezoid(rho, grid) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("method, n_matvecs", [("hutch++", 3), ("hutchinson", 1)])
def test_too_few_probes_say_there_is_no_error_estimate(method, n_matvecs):
    """Printed "± nan" before; now an explicit state."""
    A = symmetric(np.linspace(1.0, 2.0, 40))
    r = estimate_trace(A, n_matvecs, method=method)
    assert not r.has_std_error and math.isnan(r.std_error)
    assert r.note == "no error estimate (need >= 2 probes)"
    assert "nan" not in r.describe() and "no error estimate" in r.describe()
    assert math.isfinite(r.estimate)
    enough = estimate_trace(A, 4 if method == "hutch++" else 2, method=method)
    assert enough.has_std_error and enough.note == "" and "±" in enough.describe()


def test_exact_trace_says_so():
    r = estimate_trace(symmetric([3.0, -1.0, 2.0, 0.5]), 12)
    assert r.has_std_error and r.std_error == 0.0 and r.describe().endswith("(exact (the sketch spans the whole space))")


@pytest.mark.parametrize("method, bad", [("hutch++", 2), ("hutch++", 0), ("hutchinson", 0), ("hutchinson", 2.5),
                                         ("hutchinson", True)])
def test_trace_counts_are_validated(method, bad):
    with pytest.raises(ValueError, match="integer n_matvecs"):
        estimate_trace(torch.eye(5, dtype=torch.float64), bad, method=method)


def test_density_kh_per_probe_exposes_the_spread(zoo_dense):
    model, tokens, H = zoo_dense("rms")
    op = HessianOperator(model, tokens)
    d = estimate_density(op, n_probes=5, n_steps=8, seed=0)
    per_probe = d.kh_per_probe
    assert per_probe.shape == (5,) and d.re_per_probe.shape == (5,)
    # each probe's Kh, recomputed from its own nodes and weights by a loop
    for p in range(5):
        neg = sum(w * math.sqrt(-t) for t, w in zip(d.nodes[p], d.weights[p]) if t < 0)
        pos = sum(w * math.sqrt(t) for t, w in zip(d.nodes[p], d.weights[p]) if t > 0)
        assert per_probe[p] == pytest.approx(neg / pos, rel=1e-12)
    assert per_probe.min() < d.kh < per_probe.max()
