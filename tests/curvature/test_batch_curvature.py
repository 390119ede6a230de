"""Curvature per batch and for the average, with standard errors and convergence warnings."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from curvature_helpers import dense_hessian, make_zoo, zoo_loss_of_call, zoo_tokens
from normlens.curvature import BatchCurvatureResult, HessianOperator, estimate_batch_curvature, estimate_density


@pytest.fixture(scope="module")
def zoo_batches():
    model = make_zoo("dyt")
    batches = [zoo_tokens(4, seed=s) for s in range(4)]
    return model, batches


def test_per_batch_and_average_eigenvalues_match_dense(zoo_batches):
    model, batches = zoo_batches
    r = estimate_batch_curvature(model, batches, k=2, density_probes=2, density_steps=10, seed=3)
    assert r.eigenvalues.shape == (4, 2) and r.n_batches == 4 and r.converged
    for b, tokens in enumerate(batches):
        exact = torch.linalg.eigvalsh(dense_hessian(model, zoo_loss_of_call(tokens))).flip(0)[:2]
        np.testing.assert_allclose(r.eigenvalues[b], exact.numpy(), rtol=1e-4)
    # equal batch sizes: the average loss is the mean loss over the concatenated tokens
    everything = torch.cat(batches)
    exact = torch.linalg.eigvalsh(dense_hessian(model, zoo_loss_of_call(everything))).flip(0)[:2]
    np.testing.assert_allclose(r.average_eigenvalues, exact.numpy(), rtol=1e-4)
    assert np.all(r.eigenvalues[:, 0].mean() >= r.average_eigenvalues[0] - 1e-9)  # lambda_max is convex
    # per-batch Kh and re: the density of that batch's operator with the documented seed
    for b, tokens in enumerate(batches):
        d = estimate_density(HessianOperator(model, tokens), n_probes=2, n_steps=10, seed=3 + 1 + b)
        assert r.kh[b] == pytest.approx(d.kh, rel=1e-10) and r.re[b] == pytest.approx(d.re, rel=1e-10)
    # standard errors by the textbook formula, and a summary row per metric
    for metric, values in r.metrics().items():
        assert r.std_error(metric) == pytest.approx(np.std(values, ddof=1) / math.sqrt(4), rel=1e-12)
    table = r.summary()
    assert list(table["metric"]) == ["lambda_1", "lambda_2", "re", "kh"]
    row = table.set_index("metric").loc["kh"]
    assert row["low"] <= row["batch_mean"] <= row["high"] and row["average"] == r.average_kh
    assert row["min"] == r.kh.min() and row["max"] == r.kh.max()


def test_one_probe_few_steps_exposes_the_kh_spread_and_warns(zoo_batches):
    model, batches = zoo_batches
    r = estimate_batch_curvature(model, batches, k=1, n_steps=3, max_steps=3, density_probes=1, density_steps=3,
                                 max_relative_error=0.01, include_average=False)
    assert not r.converged and "did not converge on" in r.warning
    assert "unstable across batches" in r.warning and r.kh.std() > 0
    assert math.isnan(r.average_kh) and np.isnan(r.average_eigenvalues).all()


def test_single_batch_says_there_is_no_standard_error(zoo_batches):
    model, batches = zoo_batches
    r = estimate_batch_curvature(model, batches[:1], k=1, density_steps=6)
    assert "one batch" in r.warning and math.isnan(r.std_error("kh"))


def test_result_round_trip_and_labels(tmp_path, zoo_batches):
    model, batches = zoo_batches
    r = estimate_batch_curvature(model, batches[:2], k=1, which="both", density_steps=6)
    assert BatchCurvatureResult.eigenvalue_labels(r.ends) == ["lambda_1", "lambda_min_1"]
    back = BatchCurvatureResult.load(r.save(tmp_path / "batches.npz"))
    np.testing.assert_array_equal(back.kh, r.kh)
    assert back.warning == r.warning and back.ends == r.ends and back.converged == r.converged
