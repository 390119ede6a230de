"""Fused DyT against a float64 reference and torch's own same-dtype error."""
from __future__ import annotations

import pytest
import torch

from normlens.kernels import reference
from normlens.kernels.config import interpreting
from normlens.kernels.dyt import FusedDyT, dyt_backward, dyt_forward, fused_dyt

DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# Sums reduced in a fixed order give the same bits run after run; only compiled
# kernels on a GPU, whose programs run concurrently, can break that (the
# interpreter runs programs one after another).
needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or interpreting(),
    reason="determinism is only testable with compiled kernels on a CUDA GPU (TRITON_INTERPRET=0)",
)


def _inputs(shape, dtype, seed=0):
    g = torch.Generator(torch.get_default_device()).manual_seed(seed)
    n = shape[-1]
    # scores spanning the tanh's linear part, its knee and saturation (and tiny |alpha·x|)
    x = (torch.randn(shape, generator=g) * 3.0).to(dtype)
    alpha = torch.tensor(0.7)  # the zoo keeps alpha in fp32
    w = (1.0 + 0.5 * torch.randn(n, generator=g)).to(dtype)
    b = (0.5 * torch.randn(n, generator=g)).to(dtype)
    dy = torch.randn(shape, generator=g).to(dtype)
    return x, alpha, w, b, dy


def _run(fn, inputs, dy):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    y = fn(*leaves)
    return y.detach(), torch.autograd.grad(y, leaves, dy)


def _torch_same_dtype(x, a, w, b):
    return torch.tanh(a.to(x.dtype) * x) * w + b


@pytest.mark.parametrize("shape", [(7, 1023), (3, 4097), (2, 33001)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dyt_outputs_and_grads(shape, dtype, check_against_torch):
    x, a, w, b, dy = _inputs(shape, dtype)
    y, grads = _run(fused_dyt, (x, a, w, b), dy)
    y_t, grads_t = _run(_torch_same_dtype, (x, a, w, b), dy)
    y_r, grads_r = _run(reference.dyt, (x.double(), a.double(), w.double(), b.double()), dy.double())
    assert y.dtype == dtype and grads[0].dtype == dtype and grads[1].dtype == torch.float32
    names = ("dx", "dalpha", "dweight", "dbias")
    check_against_torch("y", y, y_t, y_r, dtype)
    for name, ours, theirs, ref in zip(names, grads, grads_t, grads_r):
        check_against_torch(name, ours, theirs, ref, dtype)


def test_tanh_is_accurate_near_zero_and_saturates():
    """The exp-based tanh: relative accuracy for tiny arguments, exact ±1 far out, no NaN."""
    x = torch.tensor([[0.0, 1e-30, -1e-8, 1e-4, 0.2499, 0.2501, -3.0, 20.0, -100.0, 1e4]])
    y = dyt_forward(x, torch.tensor(1.0), torch.ones(x.shape[-1]), None)
    ref = torch.tanh(x.double())
    rel = ((y.double() - ref).abs() / ref.abs().clamp_min(1e-300)).nan_to_num(0.0)
    assert rel.max().item() < 4e-7
    assert y[0, 0].item() == 0.0 and y[0, -1].item() == 1.0 and y[0, -2].item() == -1.0


def test_row_groups_and_column_chunks():
    x, a, w, b, dy = _inputs((11, 300), torch.float32, seed=2)
    tiling = dict(chunk=128, block_m=2, n_row_groups=3)
    grads = dyt_backward(dy, x, a, w, need_bias_grad=True, **tiling)
    _, grads_r = _run(reference.dyt, (x.double(), a.double(), w.double(), b.double()), dy.double())
    for ours, ref in zip(grads, grads_r):
        torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-4)  # dalpha sums 3300 terms
    y = dyt_forward(x, a, w, b, chunk=128, block_m=2)
    torch.testing.assert_close(y.double(), reference.dyt(x.double(), a.double(), w.double(), b.double()), rtol=0, atol=1e-6)


@needs_gpu
def test_row_groups_backward_is_deterministic():
    x, a, w, b, dy = (t.cuda() for t in _inputs((11, 300), torch.float32, seed=2))
    tiling = dict(chunk=128, block_m=2, n_row_groups=3)
    out = [dyt_backward(dy, x, a, w, need_bias_grad=True, **tiling) for _ in range(2)]
    for first, second in zip(*out):
        assert torch.equal(first, second)


def test_non_contiguous_input_and_double_backward():
    g = torch.Generator(torch.get_default_device()).manual_seed(3)
    x = torch.randn(40, 5, generator=g).t()  # (5, 40), column stride 5
    a, w, b = torch.tensor(0.5), torch.randn(40, generator=g), torch.randn(40, generator=g)
    dy = torch.randn(5, 40, generator=g)
    y, grads = _run(fused_dyt, (x, a, w, b), dy)
    y_r, grads_r = _run(reference.dyt, (x, a, w, b), dy)
    torch.testing.assert_close(y, y_r, rtol=0, atol=1e-6)
    for ours, ref in zip(grads, grads_r):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)

    def second_order(fn, dtype):
        leaves = [t.to(dtype).clone().requires_grad_(True) for t in (x, a, w, b)]
        loss = fn(*leaves).pow(2).sum()
        gx, ga = torch.autograd.grad(loss, leaves[:2], create_graph=True)
        return torch.autograd.grad(gx.sum() + ga, leaves)

    closed_form = lambda x_, a_, w_, b_: w_ * torch.tanh(a_ * x_) + b_  # noqa: E731 - float64 oracle
    for ours, ref in zip(second_order(fused_dyt, torch.float32), second_order(closed_form, torch.float64)):
        torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-5)


def test_module_and_errors():
    layer = FusedDyT(16, alpha0=0.5)
    x = torch.randn(2, 3, 16)
    torch.testing.assert_close(layer(x), torch.tanh(0.5 * x), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="one-element"):
        fused_dyt(x, torch.ones(2), layer.weight, layer.bias)
    with pytest.raises(TypeError, match="float64"):
        layer(x.double())
