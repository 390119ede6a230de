"""The model is left exactly as found; results survive save/load."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from curvature_helpers import make_zoo, zoo_tokens
from normlens.curvature import (
    EigenResult, HessianOperator, WeightSpectraResult, compute_eigenpairs, compute_weight_spectra,
    estimate_density, estimate_trace, preserved_state,
)
from normlens.curvature.results import DensityResult, TraceResult


def _snapshot(model):
    return (
        [p.detach().clone() for p in model.parameters()],
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        [b.clone() for b in model.buffers()],
        [m.training for m in model.modules()],
    )


def _assert_same(model, snap):
    params, grads, buffers, modes = snap
    for p, v in zip(model.parameters(), params):
        assert torch.equal(p, v)
    for p, g in zip(model.parameters(), grads):
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    for b, v in zip(model.buffers(), buffers):
        assert torch.equal(b, v)
    assert [m.training for m in model.modules()] == modes


def test_analyses_leave_a_training_zoo_model_untouched():
    model = make_zoo("lnfree").train()  # live-tracking buffers would move in train mode
    for norm in model.modules():
        if hasattr(norm, "live"):
            norm.live.fill_(True)
    tokens = zoo_tokens(2)
    F.cross_entropy(model(tokens)[:, :-1].reshape(-1, 16), tokens[:, 1:].reshape(-1)).backward()
    model.train()
    snap = _snapshot(model)
    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(7)
    expected = (torch.rand(3), np.random.rand(), random.random())
    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(7)
    op = HessianOperator(model, tokens)
    compute_eigenpairs(op, 2, n_steps=8, max_steps=8, warn=False)
    estimate_trace(op, 6)
    estimate_density(op, n_probes=1, n_steps=5)
    _assert_same(model, snap)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.random.rand() == expected[1] and random.random() == expected[2]


class DropoutNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.fc(x))


def test_dropout_in_train_mode_is_switched_off_with_a_warning_or_refused():
    torch.manual_seed(0)
    model = DropoutNet().double().train()
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    loss = lambda m, b: F.cross_entropy(m(b[0]), b[1])  # noqa: E731
    with pytest.warns(RuntimeWarning, match="dropout"):
        op = HessianOperator(model, (x, y), loss)
    v = torch.randn(op.shape[0], dtype=torch.float64)
    assert model.training and model.drop.training
    model_eval = DropoutNet().double()
    model_eval.load_state_dict(model.state_dict())
    model_eval.eval()
    torch.testing.assert_close(op @ v, HessianOperator(model_eval, (x, y), loss) @ v)
    with pytest.raises(RuntimeError, match="model.eval"):
        HessianOperator(model, (x, y), loss, train_mode="refuse")


def test_preserved_state_restores_after_an_exception():
    model = DropoutNet().double().train()
    snap = _snapshot(model)
    with pytest.raises(KeyError), pytest.warns(RuntimeWarning):
        with preserved_state(model):
            assert not model.training
            with torch.no_grad():
                model.fc.weight.add_(1.0)
            model.fc.weight.grad = torch.ones_like(model.fc.weight)
            raise KeyError("boom")
    _assert_same(model, snap)


def test_results_round_trip(tmp_path):
    A = torch.diag(torch.arange(1.0, 41.0, dtype=torch.float64))
    eig = compute_eigenpairs(A, 3)
    eig.save(tmp_path / "eig.npz")
    back = EigenResult.load(tmp_path / "eig.npz")
    np.testing.assert_array_equal(back.eigenvalues, eig.eigenvalues)
    np.testing.assert_array_equal(back.eigenvectors, eig.eigenvectors)
    assert back.ends == eig.ends and back.n_steps == eig.n_steps
    with pytest.raises(ValueError):
        back.eigenvalues[0] = 1.0  # read-only
    tr = estimate_trace(A, 9, method="hutchinson")
    tr.save(tmp_path / "tr.npz")
    assert TraceResult.load(tmp_path / "tr.npz").estimate == tr.estimate
    d = estimate_density(A, n_probes=2, n_steps=10)
    d.save(tmp_path / "d.npz")
    assert DensityResult.load(tmp_path / "d.npz").kh == d.kh
    ws = compute_weight_spectra(nn.Linear(20, 10))
    ws.save(tmp_path / "w.npz")
    back_ws = WeightSpectraResult.load(tmp_path / "w.npz")
    assert back_ws.shapes == ((10, 20),) and back_ws.names == ("weight",)
    with pytest.raises(ValueError, match="TraceResult"):
        EigenResult.load(tmp_path / "tr.npz")
    model, tokens = make_zoo("ln"), zoo_tokens(2)
    r = compute_eigenpairs(HessianOperator(model, tokens), 1, n_steps=6, max_steps=6, warn=False)
    r.save(tmp_path / "m.npz")
    params = EigenResult.load(tmp_path / "m.npz").eigenvector_params(0)
    assert params["blocks.0.attn.q.weight"].shape == (8, 8)
