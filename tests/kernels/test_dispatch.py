"""The zoo's norm modules on the fused path: same outputs, same hook values, same gradients.

The modules take the fused path only for CUDA inputs; here ``fused_forward`` is
called directly (and, for a whole bridge, patched in) on CPU tensors, which the
Triton interpreter runs.
"""
from __future__ import annotations

import sys

import pytest
import torch

import normlens
from normlens.kernels import dispatch, fused_enabled, use_fused
from normlens.models import DyT, LayerNorm, NoNorm, RMSNorm, norm_modules

pytestmark = pytest.mark.cpu_only  # dispatch decisions on CPU tensors (see tests/kernels/conftest.py)


@pytest.fixture
def fused_on():
    previous = use_fused(True)
    yield
    use_fused(previous)


def _module(kind, d=48, output_scale=1.0):
    torch.manual_seed(0)
    mod = {"ln": LayerNorm, "rms": RMSNorm, "dyt": DyT}[kind](d, output_scale=output_scale)
    with torch.no_grad():
        for p in mod.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return mod


def _out_and_grads(mod, x, forward):
    x = x.clone().requires_grad_(True)
    y = forward(mod, x)
    params = [x, *mod.parameters()]
    grads = torch.autograd.grad(y.float().pow(2).sum(), params)
    return y.detach(), grads


@pytest.mark.parametrize("kind", ["ln", "rms", "dyt"])
@pytest.mark.parametrize("output_scale", [1.0, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_forward_equals_module_forward(kind, output_scale, dtype, fused_on):
    mod = _module(kind, output_scale=output_scale)
    x = (torch.randn(2, 5, 48) * 2 + 0.5).to(dtype)
    y_f, g_f = _out_and_grads(mod, x, dispatch.fused_forward)
    y_t, g_t = _out_and_grads(mod, x, lambda m, x_: m(x_))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    assert y_f.dtype == dtype
    torch.testing.assert_close(y_f.float(), y_t.float(), **tol)
    for a, b in zip(g_f, g_t):
        torch.testing.assert_close(a.float(), b.float(), **tol)


@pytest.mark.parametrize("kind", ["ln", "rms"])
def test_hook_scale_fires_with_the_kernel_statistics(kind, fused_on):
    mod = _module(kind)
    x = torch.randn(3, 7, 48) * 2 + 1
    seen = {}
    mod.hook_scale.add_hook(lambda t, hook: seen.__setitem__("fused", t.detach().clone()))
    dispatch.fused_forward(mod, x)
    mod.hook_scale.remove_hooks()
    mod.hook_scale.add_hook(lambda t, hook: seen.__setitem__("torch", t.detach().clone()))
    mod(x)
    mod.hook_scale.remove_hooks()
    assert seen["fused"].shape == seen["torch"].shape == (3, 7, 1)
    torch.testing.assert_close(seen["fused"], seen["torch"], rtol=1e-6, atol=0)


@pytest.mark.parametrize("kind", ["ln", "rms"])
def test_hook_that_replaces_the_scale_is_honoured(kind, fused_on):
    mod = _module(kind)
    x = torch.randn(2, 4, 48) * 2 + 1
    frozen = lambda t, hook: torch.full_like(t, 1.7)  # noqa: E731 - the "fake LN" intervention
    for run in ("fused", "torch"):
        mod.hook_scale.add_hook(frozen)
        y = dispatch.fused_forward(mod, x) if run == "fused" else mod(x)
        mod.hook_scale.remove_hooks()
        if run == "fused":
            y_fused = y
    torch.testing.assert_close(y_fused, y, rtol=1e-6, atol=1e-6)


def test_paths_that_stay_in_torch(fused_on):
    x = torch.randn(2, 48)
    ln, dyt = _module("ln"), _module("dyt")
    assert dispatch.fused_forward(ln, x) is not None
    ln.hook_normalized.add_hook(lambda t, hook: None)
    assert dispatch.fused_forward(ln, x) is None  # the kernel does not produce hook_normalized
    ln.hook_normalized.remove_hooks()
    dyt.hook_pre_tanh.add_hook(lambda t, hook: None)
    assert dispatch.fused_forward(dyt, x) is None
    dyt.hook_pre_tanh.remove_hooks()
    assert dispatch.fused_forward(NoNorm(48), x) is None
    assert dispatch.fused_forward(ln, x.double()) is None
    under_vmap = []
    torch.func.vmap(lambda row: under_vmap.append(dispatch.fused_forward(ln, row)) or row)(x)
    assert under_vmap == [None]  # torch.func transforms take the torch path
    use_fused(False)
    assert not fused_enabled() and dispatch.fused_forward(ln, x) is None


def test_per_point_parameters_take_the_torch_path(fused_on):
    """The landscape's batched zoo forward swaps in (P, 1, 1, d) gains and a (P, 1, 1, 1) alpha."""
    from normlens.parameters import swapped_parameters

    x = torch.randn(3, 2, 4, 48)
    for kind in ("ln", "dyt"):
        mod = _module(kind)
        assert dispatch.fused_forward(mod, x) is not None
        swaps = {"weight": mod.weight.detach().expand(3, 1, 1, 48)}
        if kind == "dyt":
            swaps = {"alpha": mod.alpha.detach().expand(3, 1, 1, 1)}
        with swapped_parameters({n: [(mod, n)] for n in swaps}, swaps):
            assert dispatch.fused_forward(mod, x) is None


def test_cpu_module_forward_is_unchanged_with_fused_on(fused_on):
    """CPU inputs never take the fused path: bitwise the same as with it off."""
    mod = _module("ln")
    x = torch.randn(2, 3, 48)
    y_on = mod(x)
    use_fused(False)
    assert torch.equal(y_on, mod(x))


def test_whole_bridge_on_the_fused_path(monkeypatch, fused_on):
    """Logits, cached hook_scale and parameter grads of a zoo model agree when every norm is fused."""
    model = normlens.build_model(norm="ln", n_layers=1, d_model=32, n_heads=2, n_ctx=16, d_vocab=64, seed=0)
    tokens = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    names = lambda n: n.endswith("hook_scale")  # noqa: E731

    def run():
        logits, cache = model.run_with_cache(tokens, names_filter=names)
        grads = torch.autograd.grad(logits.pow(2).mean(), [p for p in model.parameters() if p.requires_grad])
        return logits.detach(), {k: v.detach() for k, v in cache.items()}, grads

    logits_t, cache_t, grads_t = run()
    original = LayerNorm.forward

    def fused_everywhere(self, x):
        y = dispatch.fused_forward(self, x)
        return y if y is not None else original(self, x)

    monkeypatch.setattr(LayerNorm, "forward", fused_everywhere)
    calls = []
    monkeypatch.setattr(dispatch, "has_hooks", lambda m, _h=dispatch.has_hooks: calls.append(1) or _h(m))
    logits_f, cache_f, grads_f = run()
    assert calls, "the fused path was not taken"
    assert len(norm_modules(model)) == 3 and set(cache_f) == set(cache_t) and len(cache_t) == 3
    torch.testing.assert_close(logits_f, logits_t, rtol=1e-5, atol=1e-5)
    for name in cache_t:
        torch.testing.assert_close(cache_f[name], cache_t[name], rtol=1e-6, atol=1e-7)
    for a, b in zip(grads_f, grads_t):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_package_imports_without_triton(monkeypatch):
    """With triton unimportable: the package and the dispatcher import, is_available() is False."""
    import importlib

    from normlens.kernels import config

    monkeypatch.setattr(normlens, "kernels", sys.modules["normlens.kernels"])  # restored after
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` raise ImportError
    for name in ("normlens.kernels", "normlens.kernels.config", "normlens.kernels.dispatch"):
        monkeypatch.delitem(sys.modules, name)  # restored after the test
    config.is_available.cache_clear()
    try:
        kernels = importlib.import_module("normlens.kernels")
        fresh_dispatch = importlib.import_module("normlens.kernels.dispatch")
        assert kernels.is_available() is False
        with pytest.raises(ImportError, match="pip install triton"):
            kernels.fused_layer_norm  # noqa: B018
        kernels.use_fused(True)
        assert fresh_dispatch.fused_forward(_module("ln"), torch.randn(2, 48)) is None
    finally:
        config.is_available.cache_clear()


def test_switch_validates_its_input(monkeypatch):
    from normlens.kernels import config

    with pytest.raises(TypeError, match="True or False"):
        use_fused("yes")
    monkeypatch.setattr(config, "_enabled", None)
    monkeypatch.setenv("NORMLENS_FUSED", "1")
    assert fused_enabled()
    monkeypatch.setenv("NORMLENS_FUSED", "off")
    assert not fused_enabled()
    monkeypatch.setenv("NORMLENS_FUSED", "maybe")
    with pytest.raises(ValueError, match="NORMLENS_FUSED"):
        fused_enabled()
