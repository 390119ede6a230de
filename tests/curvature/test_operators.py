"""Hessian and GGN products against dense oracles; parameter subsets; bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from curvature_helpers import (
    dense_ggn, dense_hessian, make_mlp, make_zoo, mlp_batch, mlp_loss, mlp_loss_from_outputs,
    mlp_loss_of_call, mlp_outputs, zoo_loss_of_call, zoo_tokens,
)
from normlens.curvature import (
    GGNOperator, HessianOperator, compute_eigenpairs, layer_pattern, select_parameters,
)
from normlens.losses import logits_loss


@pytest.mark.parametrize("method", ["double_backward", "forward_over_reverse"])
def test_mlp_hvp_matches_dense_hessian(method):
    model, batch = make_mlp(), mlp_batch()
    H = dense_hessian(model, mlp_loss_of_call(batch))  # autograd.functional.hessian here
    op = HessianOperator(model, batch, mlp_loss, method=method)
    V = torch.randn(op.shape[0], 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(op @ V, H @ V, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op @ V[:, 0], H @ V[:, 0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["double_backward", "forward_over_reverse", "auto"])
def test_zoo_hvp_matches_dense_hessian(zoo_dense, method):
    model, tokens, H = zoo_dense("ln")
    op = HessianOperator(model, tokens, method=method)
    v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(op @ v, H @ v, rtol=1e-9, atol=1e-11)
    assert op.method in ("double_backward", "forward_over_reverse")


def test_weighted_batches_equal_the_weighted_mean_loss():
    model = make_mlp()
    b1, b2 = mlp_batch(8, seed=2), mlp_batch(24, seed=3)
    H1 = dense_hessian(model, mlp_loss_of_call(b1))
    H2 = dense_hessian(model, mlp_loss_of_call(b2))
    v = torch.randn(H1.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    by_size = HessianOperator(model, [b1, b2], mlp_loss, method="double_backward")
    torch.testing.assert_close(by_size @ v, (8 * H1 + 24 * H2) @ v / 32)
    weighted = HessianOperator(model, iter([b1, b2]), mlp_loss, weights=[3.0, 1.0])
    torch.testing.assert_close(weighted @ v, (3 * H1 + H2) @ v / 4)


def test_ggn_matches_dense_ggn_mlp():
    model, batch = make_mlp(), mlp_batch()
    G = dense_ggn(model, lambda call: call(batch[0]), lambda z: mlp_loss_from_outputs(z, batch))
    op = GGNOperator(model, batch, mlp_outputs, mlp_loss_from_outputs)
    v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(op @ v, G @ v, rtol=1e-10, atol=1e-12)
    assert torch.linalg.eigvalsh(G).min() > -1e-10  # cross-entropy GGN is PSD


def test_ggn_matches_dense_ggn_zoo_subset():
    model, tokens = make_zoo("rms"), zoo_tokens(2)
    G = dense_ggn(model, lambda call: call(tokens), lambda z: logits_loss(z, tokens), "attn")
    op = GGNOperator(model, tokens, params="attn")
    # the selection, independently of select_parameters (which the dense reference also uses)
    assert op.shape[0] == sum(p.numel() for n, p in model.named_parameters() if ".attn." in n) > 0
    v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(op @ v, G @ v, rtol=1e-9, atol=1e-11)


def test_subset_hessian_is_the_dense_sub_block():
    model, tokens = make_zoo("dyt"), zoo_tokens(2)
    H = dense_hessian(model, zoo_loss_of_call(tokens), "norms")
    op = HessianOperator(model, tokens, params="norms", method="double_backward")
    assert all(("ln" in n) for n in op.param_names), op.param_names
    assert any(n.endswith("alpha") for n in op.param_names)  # DyT's scalar alpha is a norm parameter
    v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(op @ v, H @ v, rtol=1e-9, atol=1e-11)


def test_parameter_presets_and_patterns():
    model = make_zoo("ln")
    names = lambda sel: [i.name for i in select_parameters(model, sel)]  # noqa: E731
    assert names("attn") and all(".attn." in n for n in names("attn"))
    assert names("mlp") and all(".mlp." in n for n in names("mlp"))
    assert set(names("norms")) == {"blocks.0.ln1.weight", "blocks.0.ln1.bias", "blocks.0.ln2.weight",
                                   "blocks.0.ln2.bias", "ln_final.weight", "ln_final.bias"}
    assert all(len(i.shape) == 2 for i in select_parameters(model, "weights"))
    assert names(layer_pattern(0)) == [n for n in names(None) if n.startswith("blocks.0.")]
    assert names(lambda name, p: p.dim() == 1 and "attn" in name) == [
        n for n in names("attn") if not n.endswith("weight")
    ]
    assert len(names(["attn", "mlp"])) == len(names("attn")) + len(names("mlp"))


def test_bad_input_errors():
    model, batch = make_mlp(), mlp_batch()
    with pytest.raises(ValueError, match="scalar"):
        HessianOperator(model, batch, lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1], reduction="none"))
    with pytest.raises(ValueError, match="matches no trainable parameter"):
        HessianOperator(model, batch, mlp_loss, params="attn")
    with pytest.raises(ValueError, match="not a valid regex"):
        HessianOperator(model, batch, mlp_loss, params="(")
    bad = (batch[0].clone(), batch[1])
    bad[0][0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN"):
        HessianOperator(model, bad, mlp_loss)
    with pytest.raises(FloatingPointError, match="batch 1"):
        HessianOperator(model, [batch, bad], mlp_loss, method="double_backward") @ torch.ones(69, dtype=torch.float64)
    op = HessianOperator(model, batch, mlp_loss)
    with pytest.raises(ValueError, match="asked for 70 eigenpairs"):
        compute_eigenpairs(op, 70)
    with pytest.raises(ValueError, match="asked for 70 eigenpairs"):
        compute_eigenpairs(op, 35, which="both")
    with pytest.raises(ValueError, match=r"shape \(69,\)"):
        op @ torch.ones(5, dtype=torch.float64)
    with pytest.raises(ValueError, match="method"):
        HessianOperator(model, batch, mlp_loss, method="fast")
    with pytest.raises(ValueError, match="weights"):
        HessianOperator(model, [batch, batch], mlp_loss, weights=[1.0])
    with pytest.raises(ValueError, match="no batches"):
        HessianOperator(model, [], mlp_loss)
    with pytest.raises(ValueError, match="tokens"):
        HessianOperator(model, torch.zeros(3, 5))


def test_unflatten_round_trip():
    model, batch = make_mlp(), mlp_batch()
    op = HessianOperator(model, batch, mlp_loss)
    v = torch.arange(op.shape[0], dtype=torch.float64)
    parts = op.unflatten(v)
    assert list(parts) == list(op.param_names) == ["fc1.weight", "fc1.bias", "norm.weight", "norm.bias",
                                                   "fc2.weight", "fc2.bias"]
    assert parts["fc1.weight"].shape == (6, 5)
    torch.testing.assert_close(op.flatten(list(parts.values())), v)


def test_operator_is_a_snapshot_of_the_weights():
    model, batch = make_mlp(), mlp_batch()
    H = dense_hessian(model, mlp_loss_of_call(batch))
    # keep_graph=False: every product reruns the forward pass, so it rereads the weights
    op = HessianOperator(model, batch, mlp_loss, method="double_backward", keep_graph=False)
    v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    first = op @ v
    with torch.no_grad():
        model.fc1.weight.mul_(2.0)
    torch.testing.assert_close(op @ v, first)  # a fresh product still sees the old weights
    torch.testing.assert_close(first, H @ v)
