"""Operators work on the parameters the forward uses; bad weights and fused attention handled first."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from curvature_helpers import make_zoo, zoo_tokens
from normlens.curvature import GGNOperator, HessianOperator, compute_eigenpairs
from normlens.curvature.blocks import compute_block_spectra
from normlens.parameters import NonFiniteWeightsError, UnusedParameterError, describe_parameters


@pytest.fixture(scope="module")
def gpt2_bridge(tmp_path_factory):
    """A 2-layer GPT-2 saved with save_pretrained and loaded through the project's HF path, float64."""
    transformers = pytest.importorskip("transformers")
    from normlens.models.loading import load_model

    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path_factory.mktemp("gpt2")
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=32, vocab_size=64)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    bridge = load_model(str(folder)).to(torch.float64).eval()
    mp.undo()
    return bridge


def _flat_grad(model, infos, tokens, flat):
    """Gradient of the mean next-token loss w.r.t. the ``infos`` parameters set to ``flat`` (live model)."""
    from normlens.losses import next_token_loss

    by_key = dict(model.named_parameters())
    tensors = [by_key[i.key] for i in infos]
    saved = [t.detach().clone() for t in tensors]
    try:
        with torch.no_grad():
            for t, piece in zip(tensors, flat.split([t.numel() for t in tensors])):
                t.copy_(piece.view(t.shape))
        grads = torch.autograd.grad(next_token_loss(model, tokens), tensors)
    finally:
        with torch.no_grad():
            for t, s in zip(tensors, saved):
                t.copy_(s)
    return torch.cat([g.reshape(-1) for g in grads])


def test_gpt2_bridge_hessian_leaves_out_unused_fused_qkv(gpt2_bridge):
    """Crashed before ("differentiated Tensor ... not used in the graph"); now exact on the used ones."""
    tokens = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1))
    op = HessianOperator(gpt2_bridge, tokens)
    assert op.excluded.startswith("excluded ") and "forward does not use" in op.excluded
    assert any("qkv" in info.name for info in op.excluded_parameters)
    used = [i for i in describe_parameters(gpt2_bridge) if i.key not in {e.key for e in op.excluded_parameters}]
    assert op.shape[0] == sum(math.prod(i.shape) for i in used)
    # independent reference: central differences of the gradient on the live model, float64
    v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    theta = torch.cat([p.detach().reshape(-1) for p in (dict(gpt2_bridge.named_parameters())[i.key] for i in op.selected)])
    eps = 1e-5
    reference = (_flat_grad(gpt2_bridge, op.selected, tokens, theta + eps * v)
                 - _flat_grad(gpt2_bridge, op.selected, tokens, theta - eps * v)) / (2 * eps)
    for method in ("double_backward", "forward_over_reverse"):
        hv = HessianOperator(gpt2_bridge, tokens, method=method) @ v
        assert float((hv - reference).norm() / reference.norm()) < 1e-5, method  # the tied unembedding counts
    gradient = _flat_grad(gpt2_bridge, op.selected, tokens, theta)
    torch.testing.assert_close(op.gradient(), gradient, rtol=1e-10, atol=1e-12)
    result = compute_eigenpairs(op, 1, n_steps=12, max_steps=12, warn=False)
    assert result.excluded == op.excluded and result.eigenvalues.shape == (1,)


def test_asking_for_unused_parameters_is_an_error(gpt2_bridge):
    tokens = torch.randint(0, 64, (2, 8))
    unused = HessianOperator(gpt2_bridge, tokens, params=r"blocks\.0\.attn\.").excluded_parameters
    name = unused[0].name
    with pytest.raises(UnusedParameterError, match="does not use"):
        HessianOperator(gpt2_bridge, tokens, params=name)  # named exactly
    with pytest.raises(UnusedParameterError, match="does not use"):
        HessianOperator(gpt2_bridge, tokens, params=r"qkv")  # a pattern that selects only unused ones
    # a pattern that also selects used parameters drops the unused ones and says so
    op = HessianOperator(gpt2_bridge, tokens, params=r"blocks\.0\.attn\.")
    assert op.excluded and all("qkv" not in n for n in op.param_names)


def test_gpt2_block_spectra_skip_unused(gpt2_bridge):
    tokens = torch.randint(0, 64, (2, 8))
    result = compute_block_spectra(gpt2_bridge, tokens, blocks={"attn0": r"^blocks\.0\.attn\.", "qkv": "qkv"},
                                   n_steps=4)
    assert np.isfinite(result.top_eigenvalues[0]) and np.isnan(result.top_eigenvalues[1])
    assert result.n_params[1] == 0 and "forward does not use" in result.excluded


def test_zoo_model_excludes_nothing():
    op = HessianOperator(make_zoo("ln"), zoo_tokens())
    assert op.excluded == "" and op.excluded_parameters == ()


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_weights_refused_before_any_forward(value):
    model = make_zoo("rms")
    with torch.no_grad():
        model.blocks[0].attn.q.weight[0, 0] = value
    calls = []

    def loss_fn(m, batch):
        calls.append(1)
        return m(batch).logsumexp(-1).mean()

    for build in (lambda: HessianOperator(model, zoo_tokens(), loss_fn),
                  lambda: GGNOperator(model, zoo_tokens())):
        with pytest.raises(NonFiniteWeightsError, match=r"in parameter 'blocks\.0\.attn\.q\.weight'"):
            build()
    assert calls == []
    assert issubclass(NonFiniteWeightsError, ValueError)


def test_one_forward_of_the_batch_builds_the_kept_graph():
    """The loss check and the kept graph share one forward (there were two)."""
    model = make_zoo("ln")
    tokens = zoo_tokens()
    full_batch_forwards = []

    def loss_fn(m, batch):
        if batch.shape[0] == tokens.shape[0]:  # the unused-parameter check runs on one example
            full_batch_forwards.append(1)
        from normlens.losses import next_token_loss
        return next_token_loss(m, batch)

    op = HessianOperator(model, tokens, loss_fn)
    for seed in range(3):
        op @ torch.randn(op.shape[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    assert len(full_batch_forwards) == 1


class SDPAttention(nn.Module):
    """One causal attention layer through F.scaled_dot_product_attention, then a linear readout."""

    def __init__(self, d: int = 4, n_out: int = 3):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, n_out)

    def forward(self, x):  # (B, T, d)
        q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)  # (B, 1, T, d) each
        return self.out(F.scaled_dot_product_attention(q, k, v, is_causal=True).squeeze(1))


def _explicit_attention(params, x):
    """The same layer written out: softmax(q k^T / sqrt(d) + causal mask) v (no SDPA)."""
    w_qkv, b_qkv, w_out, b_out = params
    q, k, v = (x @ w_qkv.T + b_qkv).chunk(3, dim=-1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    mask = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril()
    weights = scores.masked_fill(~mask, -math.inf).softmax(-1)
    return (weights @ v) @ w_out.T + b_out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_curvature_through_scaled_dot_product_attention(dtype):
    """The fused CPU kernel has no second derivative: a raw torch error before the fix."""
    torch.manual_seed(0)
    model = SDPAttention().to(dtype)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(3, 5, 4, generator=g, dtype=dtype), torch.randint(0, 3, (3, 5), generator=g)

    def loss_fn(m, batch):
        return F.cross_entropy(m(batch[0]).reshape(-1, 3), batch[1].reshape(-1))

    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()

    def reference_loss(theta):
        params = [c.view(s) for c, s in zip(theta.split([math.prod(s) for s in shapes]), shapes)]
        return F.cross_entropy(_explicit_attention(params, x.double()).reshape(-1, 3), y.reshape(-1))

    H = torch.autograd.functional.hessian(reference_loss, flat)
    v = torch.randn(flat.numel(), generator=g, dtype=torch.float64)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-11)
    for method in ("double_backward", "forward_over_reverse"):
        op = HessianOperator(model, (x, y), loss_fn, method=method)
        torch.testing.assert_close((op @ v.to(dtype)).double(), H @ v, **tol)
    ggn = GGNOperator(model, (x, y), output_fn=lambda m, b: m(b[0]),
                      output_loss_fn=lambda z, b: F.cross_entropy(z.reshape(-1, 3), b[1].reshape(-1)))
    assert torch.isfinite(ggn @ v.to(dtype)).all()
