"""Fused LayerNorm / RMSNorm against float64 references and torch's own same-dtype error."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from normlens.kernels import reference
from normlens.kernels.config import interpreting
from normlens.kernels.layer_norm import FusedLayerNorm, fused_layer_norm, norm_backward, norm_forward
from normlens.kernels.rms_norm import FusedRMSNorm, fused_rms_norm

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# odd widths, a power of two, and one row wider than 32 K features (the looped path)
SHAPES = [(7, 1023), (3, 4097), (4, 256), (2, 33001)]

# Sums reduced in a fixed order give the same bits run after run; only compiled
# kernels on a GPU, whose programs run concurrently, can break that (the
# interpreter runs programs one after another).
needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or interpreting(),
    reason="determinism is only testable with compiled kernels on a CUDA GPU (TRITON_INTERPRET=0)",
)


def _inputs(shape, dtype, seed=0, offset=1.5):
    g = torch.Generator(torch.get_default_device()).manual_seed(seed)
    n = shape[-1]
    x = (torch.randn(shape, generator=g) * 2.0 + offset).to(dtype)
    w = (1.0 + 0.5 * torch.randn(n, generator=g)).to(dtype)
    b = (0.5 * torch.randn(n, generator=g)).to(dtype)
    dy = torch.randn(shape, generator=g).to(dtype)
    return x, w, b, dy


def _grads(fn, inputs, dy):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    out = out[0] if isinstance(out, tuple) else out
    return out.detach(), torch.autograd.grad(out, leaves, dy)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_outputs_and_grads(shape, dtype, check_against_torch):
    x, w, b, dy = _inputs(shape, dtype)
    eps = 1e-5
    y, (dx, dw, db) = _grads(lambda x_, w_, b_: fused_layer_norm(x_, w_, b_, eps), (x, w, b), dy)
    y_t, (dx_t, dw_t, db_t) = _grads(
        lambda x_, w_, b_: F.layer_norm(x_, (shape[-1],), w_, b_, eps), (x, w, b), dy
    )
    y_r, (dx_r, dw_r, db_r) = _grads(
        lambda x_, w_, b_: reference.layer_norm(x_, w_, b_, eps),
        (x.double(), w.double(), b.double()), dy.double(),
    )
    assert y.dtype == dtype and dx.dtype == dtype and dw.dtype == dtype
    for what, ours, theirs, ref in [
        ("y", y, y_t, y_r), ("dx", dx, dx_t, dx_r), ("dweight", dw, dw_t, dw_r), ("dbias", db, db_t, db_r),
    ]:
        check_against_torch(what, ours, theirs, ref, dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_outputs_and_grads(shape, dtype, check_against_torch):
    x, w, _, dy = _inputs(shape, dtype)
    eps = 1e-5
    y, (dx, dw) = _grads(lambda x_, w_: fused_rms_norm(x_, w_, eps), (x, w), dy)
    y_t, (dx_t, dw_t) = _grads(lambda x_, w_: F.rms_norm(x_, (shape[-1],), w_, eps), (x, w), dy)
    y_r, (dx_r, dw_r) = _grads(
        lambda x_, w_: reference.rms_norm(x_, w_, eps), (x.double(), w.double()), dy.double()
    )
    for what, ours, theirs, ref in [("y", y, y_t, y_r), ("dx", dx, dx_t, dx_r), ("dweight", dw, dw_t, dw_r)]:
        check_against_torch(what, ours, theirs, ref, dtype)


@pytest.mark.parametrize("shape", [(5, 1023), (2, 33001)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_statistics_side_outputs(shape, dtype):
    """mean and rstd are fp32 and accurate to fp32 accumulation, whatever the input dtype."""
    # a large offset makes E[x²] - E[x]² cancel badly; the kernels must not use it
    x, w, b, _ = _inputs(shape, dtype, offset=300.0)
    _, mean, rstd = fused_layer_norm(x, w, b, 1e-5, return_stats=True)
    _, rstd_rms = fused_rms_norm(x, w, 1e-5, return_stats=True)
    _, mean_r, rstd_r = reference.layer_norm(x.double(), None, None, 1e-5)
    _, rstd_rms_r = reference.rms_norm(x.double(), None, 1e-5)
    for name, ours, ref in [("mean", mean, mean_r), ("rstd", rstd, rstd_r), ("rms rstd", rstd_rms, rstd_rms_r)]:
        assert ours.dtype == torch.float32 and ours.shape == shape[:-1], name
        rel = ((ours.double() - ref).abs() / ref.abs()).max().item()
        assert rel < 2e-5, f"{name}: relative error {rel:.3g}"
    # and no worse than torch's own statistics (computed in fp32 from the same input)
    _, mean_t, rstd_t = torch.native_layer_norm(x.float(), [shape[-1]], None, None, 1e-5)
    assert max_abs(mean, mean_r) <= 2 * max_abs(mean_t.view(-1), mean_r) + 1e-6 * mean_r.abs().max().item()
    assert max_abs(rstd, rstd_r) <= 2 * max_abs(rstd_t.view(-1), rstd_r) + 1e-6 * rstd_r.abs().max().item()


def max_abs(a, b):
    return (a.double().reshape(-1) - b.double().reshape(-1)).abs().max().item()


@pytest.mark.parametrize("rms", [False, True])
def test_looped_path_and_row_groups_match_reference(rms):
    """Force the chunked (wide-row) path and several row groups on a small tensor."""
    x, w, b, dy = _inputs((7, 601), torch.float32, seed=3)  # 5 chunks of 128, the last partial
    bias = None if rms else b
    tiling = dict(max_one_pass=256, chunk=128)
    y, mean, rstd = norm_forward(x, w, bias, 1e-5, rms=rms, **tiling)
    dx, dw, db = norm_backward(
        dy, x, w, mean, rstd, rms=rms, need_bias_grad=not rms, block_m=2, n_row_groups=3, **tiling
    )
    ref_fn = (lambda x_, w_: reference.rms_norm(x_, w_, 1e-5)) if rms else (
        lambda x_, w_, b_: reference.layer_norm(x_, w_, b_, 1e-5)
    )
    inputs = (x.double(), w.double()) if rms else (x.double(), w.double(), b.double())
    y_r, grads_r = _grads(ref_fn, inputs, dy.double())
    torch.testing.assert_close(y.double(), y_r, rtol=0, atol=1e-5)
    torch.testing.assert_close(dx.double(), grads_r[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(dw.double(), grads_r[1], rtol=0, atol=1e-5)
    if not rms:
        torch.testing.assert_close(db.double(), grads_r[2], rtol=0, atol=1e-5)


def test_forward_without_statistics_gives_the_same_output():
    x, w, b, _ = _inputs((5, 300), torch.bfloat16, seed=8)
    y, mean, rstd = norm_forward(x, w, b, 1e-5, rms=False)
    y_plain, no_mean, no_rstd = norm_forward(x, w, b, 1e-5, rms=False, store_stats=False)
    assert no_mean is None and no_rstd is None and mean is not None
    assert torch.equal(y, y_plain)


@needs_gpu
def test_parameter_gradients_are_deterministic():
    """Same inputs, same bits: the partial sums are reduced in a fixed order, no atomics."""
    x, w, b, dy = (t.cuda() for t in _inputs((33, 300), torch.float32, seed=4))
    _, mean, rstd = norm_forward(x, w, b, 1e-5, rms=False)
    runs = [
        norm_backward(dy, x, w, mean, rstd, rms=False, need_bias_grad=True, block_m=4, n_row_groups=4)
        for _ in range(2)
    ]
    for a, c in zip(runs[0], runs[1]):
        assert torch.equal(a, c)


@pytest.mark.parametrize("layout", ["transposed", "column_slice", "permuted_3d", "expanded_dy"])
def test_non_contiguous_inputs(layout):
    g = torch.Generator(torch.get_default_device()).manual_seed(5)
    n = 257
    w = torch.randn(n, generator=g)
    b = torch.randn(n, generator=g)
    if layout == "transposed":
        x = torch.randn(n, 6, generator=g).t()  # (6, n), column stride 6
    elif layout == "column_slice":
        x = torch.randn(6, 2 * n, generator=g)[:, ::2]  # (6, n), column stride 2
    elif layout == "permuted_3d":
        x = torch.randn(3, 4, n, generator=g).transpose(0, 1)  # (4, 3, n), rows do not merge
    else:
        x = torch.randn(6, n, generator=g)
    assert not x.is_contiguous() or layout == "expanded_dy"
    dy = torch.ones(()).expand(x.shape) if layout == "expanded_dy" else torch.randn(x.shape, generator=g)
    for fused, ref, params in [
        (fused_layer_norm, reference.layer_norm, (w, b)),
        (fused_rms_norm, reference.rms_norm, (w,)),
    ]:
        y, grads = _grads(fused, (x, *params), dy)
        y_r, grads_r = _grads(ref, (x.double(), *(p.double() for p in params)), dy.double())
        torch.testing.assert_close(y.double(), y_r, rtol=0, atol=1e-5)
        for gi, gr in zip(grads, grads_r):
            torch.testing.assert_close(gi.double(), gr, rtol=0, atol=2e-5)


def test_gradients_through_statistics_and_double_backward():
    """rstd/mean are differentiable outputs; create_graph=True gives exact second derivatives."""
    x, w, b, _ = _inputs((4, 33), torch.float32, seed=6)
    g = torch.Generator(torch.get_default_device()).manual_seed(7)
    v = torch.randn(x.shape, generator=g)

    def loss(fn, x_, w_, b_):
        y, mean, rstd = fn(x_, w_, b_)
        return (y * y).sum() * 0.5 + (mean * rstd).sum() + rstd.pow(2).sum()

    def hvp(fn, dtype):
        x_, w_, b_ = (t.to(dtype).clone().requires_grad_(True) for t in (x, w, b))
        gx, gw = torch.autograd.grad(loss(fn, x_, w_, b_), (x_, w_), create_graph=True)
        return (gx, gw), torch.autograd.grad((gx * v.to(dtype)).sum(), (x_, w_, b_))

    def closed_form(x_, w_, b_):  # float64 LayerNorm written out, independent of normlens.kernels
        mean = x_.mean(-1)
        rstd = ((x_ - mean[:, None]).pow(2).mean(-1) + 1e-5).rsqrt()
        return (x_ - mean[:, None]) * rstd[:, None] * w_ + b_, mean, rstd

    fused = lambda x_, w_, b_: fused_layer_norm(x_, w_, b_, 1e-5, return_stats=True)  # noqa: E731
    (g1, h1), (g2, h2) = hvp(fused, torch.float32), hvp(closed_form, torch.float64)
    for a, c in zip((*g1, *h1), (*g2, *h2)):
        torch.testing.assert_close(a.double(), c, rtol=1e-5, atol=1e-5)


@pytest.mark.cpu_only
def test_cpu_tensors_without_the_interpreter_get_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        fused_layer_norm(torch.randn(2, 8), torch.ones(8))


def test_modules_and_errors():
    ln, rms = FusedLayerNorm(65), FusedRMSNorm(65)
    x = torch.randn(2, 3, 65)
    torch.testing.assert_close(ln(x), F.layer_norm(x, (65,)), rtol=0, atol=1e-5)
    y, mean, rstd = ln.forward_with_stats(x)
    assert mean.shape == rstd.shape == (2, 3)
    torch.testing.assert_close(rms(x), F.rms_norm(x, (65,), eps=1e-5), rtol=0, atol=1e-5)
    with pytest.raises(TypeError, match="float64"):
        ln(x.double())
    with pytest.raises(ValueError, match=r"expected \(64,\)"):
        ln(torch.randn(2, 64))
    with pytest.raises(ValueError, match=r"expected \(65,\)"):
        fused_layer_norm(x, torch.ones(64))
    assert fused_layer_norm(torch.empty(0, 65), ln.weight, ln.bias).shape == (0, 65)
