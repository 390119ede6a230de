"""The batched zoo forward against the generic vmap path and a naive per-point loop."""
import numpy as np
import pytest
import torch

from landscape_helpers import TinyClassifier, tiny_tokens, zoo_tokens
import normlens
from normlens.landscape import compute_landscape, random_directions
from normlens.landscape.objective import next_token_objective
from normlens.landscape.zoo_forward import _inner
from normlens.models.zoo import norm_modules


def zoo64(**overrides):
    """A 2-layer zoo model in float64, so the two paths must agree to rounding."""
    config = dict(n_layers=2, d_model=16, n_heads=2, n_ctx=8, d_vocab=32, seed=0)
    config.update(overrides)
    return normlens.build_model(**config).double()


def both_paths(model, directions, tokens, **kwargs):
    fast = compute_landscape(model, directions, tokens, span=0.8, resolution=5, accuracy=True, **kwargs)
    slow = compute_landscape(model, directions, tokens, span=0.8, resolution=5, accuracy=True,
                             zoo_fast_path=False, **kwargs)
    return fast, slow


@pytest.mark.parametrize("norm,placement", [
    ("ln", "pre"), ("rms", "pre"), ("dyt", "pre"), ("none", "pre"), ("lnfree", "pre"),
    ("ln", "post"), ("ln", "mix"), ("rms", "scaled"), ("dyt", "post"),
])
@pytest.mark.parametrize("one_d", ["zero", "copy"])
def test_batched_zoo_forward_equals_generic_path(norm, placement, one_d):
    model = zoo64(norm=norm, placement=placement)
    with torch.no_grad():  # non-trivial gains, biases and alpha, as after training
        gen = torch.Generator().manual_seed(4)
        for p in model.parameters():
            if p.dim() <= 1:
                p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    d = random_directions(model, 2, one_d=one_d, seed=3)
    fast, slow = both_paths(model, d, zoo_tokens(), points_per_batch=7, items_per_batch=3)
    assert fast.info["forward_path"] == "batched-zoo" and slow.info["forward_path"] == "vmap"
    np.testing.assert_allclose(fast.loss, slow.loss, rtol=1e-12)
    np.testing.assert_array_equal(fast.accuracy, slow.accuracy)


def test_frozen_std_with_a_live_first_position():
    model = zoo64(norm="lnfree")
    for norm in norm_modules(model).values():
        norm.freeze(keep_first_position_live=True)  # position 0 divides by its own std
    d = random_directions(model, 2, one_d="copy", seed=1)
    fast, slow = both_paths(model, d, zoo_tokens())
    assert fast.info["forward_path"] == "batched-zoo"
    np.testing.assert_allclose(fast.loss, slow.loss, rtol=1e-12)


def test_float32_zoo_matches_a_naive_loop():
    model = normlens.build_model(norm="dyt", n_layers=2, d_model=16, n_heads=2, n_ctx=8, d_vocab=32, seed=1)
    tokens = zoo_tokens()
    d = random_directions(model, 2, one_d="copy", seed=2)
    result = compute_landscape(model, d, tokens, span=0.5, resolution=3)
    assert result.info["forward_path"] == "batched-zoo"
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    for i, a in enumerate(result.coords[0]):
        for j, b in enumerate(result.coords[1]):
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(params[n] + a * d.axes[0][n] + b * d.axes[1][n])
                losses, _ = next_token_objective(model(tokens), tokens)
            np.testing.assert_allclose(result.loss[i, j], float(losses.mean()), rtol=1e-6)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(params[n])


def test_moving_only_some_parameters():
    """Directions that leave most tensors fixed: fixed weights broadcast over the points."""
    model = zoo64(norm="ln")
    d = random_directions(model, 1, seed=0)
    for name in d.names:
        if "mlp" not in name:
            d.axes[0][name].zero_()
    fast, slow = both_paths(model, d, zoo_tokens())
    assert fast.info["forward_path"] == "batched-zoo"
    np.testing.assert_allclose(fast.loss, slow.loss, rtol=1e-12)


def test_a_hook_that_changes_the_output_keeps_the_generic_path():
    model = zoo64(norm="ln")
    tokens = zoo_tokens()
    d = random_directions(model, 2, seed=0)
    plain = compute_landscape(model, d, tokens, span=0.8, resolution=3)
    handle = _inner(model.original_model.head).register_forward_hook(lambda module, args, out: 0.5 * out)
    try:
        hooked = compute_landscape(model, d, tokens, span=0.8, resolution=3)
        with torch.no_grad():
            expected, _ = next_token_objective(model(tokens), tokens)
    finally:
        handle.remove()
    assert hooked.info["forward_path"] == "vmap"  # the batched path would ignore the hook
    np.testing.assert_allclose(hooked.center_loss, float(expected.mean()), rtol=1e-12)
    assert abs(hooked.center_loss - plain.center_loss) > 1e-3


def test_other_models_take_the_generic_path():
    model = TinyClassifier()
    result = compute_landscape(model, random_directions(model, 1, seed=0), tiny_tokens(), resolution=3)
    assert result.info["forward_path"] == "vmap"


def test_a_diverging_zoo_model_is_recorded_not_crashed_on():
    """Finite weights whose forward overflows: NaN cells are recorded, and the generic path is kept."""
    model = zoo64(norm="none")
    with torch.no_grad():
        next(model.parameters()).fill_(1e300)  # the token embedding: finite, but the forward overflows
    result = compute_landscape(model, random_directions(model, 1, seed=0), zoo_tokens(), resolution=3)
    assert result.info["forward_path"] == "vmap"  # the probe could not compare finite values
    assert result.n_nonfinite == 3
