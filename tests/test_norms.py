"""Each norm module against an independent formula (F.layer_norm, F.rms_norm, tanh)."""
import pytest
import torch
import torch.nn.functional as F

from normlens.models.norms import DyT, FrozenStdLayerNorm, LayerNorm, NoNorm, RMSNorm, build_norm


def _randomize(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))
    return module


@pytest.fixture
def x():
    return torch.randn(3, 5, 17, dtype=torch.float64) * 3 + 1


def test_layernorm_matches_torch(x):
    norm = _randomize(LayerNorm(17, eps=1e-5).double())
    expected = F.layer_norm(x, (17,), norm.weight, norm.bias, eps=1e-5)
    torch.testing.assert_close(norm(x), expected, rtol=1e-12, atol=1e-12)


def test_rmsnorm_matches_torch(x):
    norm = _randomize(RMSNorm(17, eps=1e-6).double())
    expected = F.rms_norm(x, (17,), norm.weight, eps=1e-6)
    torch.testing.assert_close(norm(x), expected, rtol=1e-12, atol=1e-12)


def test_dyt_matches_formula(x):
    norm = _randomize(DyT(17, alpha0=0.5).double())
    expected = norm.weight * torch.tanh(norm.alpha * x) + norm.bias
    torch.testing.assert_close(norm(x), expected, rtol=0, atol=0)
    assert DyT(4, alpha0=0.7).alpha.item() == pytest.approx(0.7)


def test_dyt_gradient_reaches_alpha(x):
    norm = DyT(17).double()
    norm(x).pow(2).sum().backward()
    expected = (2 * norm(x) * norm.weight * (1 - torch.tanh(norm.alpha * x) ** 2) * x).sum()
    torch.testing.assert_close(norm.alpha.grad, expected.detach())


def test_nonorm_is_identity(x):
    assert torch.equal(NoNorm(17)(x), x)


def test_output_scale_multiplies_output(x):
    plain, scaled = LayerNorm(17).double(), LayerNorm(17, output_scale=0.5).double()
    torch.testing.assert_close(scaled(x), 0.5 * plain(x))


def test_hook_scale_is_layernorm_denominator(x):
    norm = LayerNorm(17).double()
    seen = {}
    norm.hook_scale.add_hook(lambda t, hook: seen.setdefault("scale", t))
    norm(x)
    expected = torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(seen["scale"], expected)
    norm.hook_scale.remove_hooks()


def test_lnfree_equals_ln_when_tokens_have_the_frozen_std():
    d_model, frozen = 16, 2.5
    raw = torch.randn(2, 6, d_model, dtype=torch.float64)
    centred = raw - raw.mean(-1, keepdim=True)
    # scale every token so that sqrt(var + eps) equals the frozen std exactly
    target_var = frozen**2 - 1e-5
    x = centred / centred.pow(2).mean(-1, keepdim=True).sqrt() * target_var**0.5 + 0.3
    ln, fake = _randomize(LayerNorm(d_model).double()), FrozenStdLayerNorm(d_model, std=frozen).double()
    fake.load_state_dict(ln.state_dict(), strict=False)
    torch.testing.assert_close(fake(x), ln(x), rtol=1e-12, atol=1e-12)
    # and differs from it on tokens with another std
    assert not torch.allclose(fake(3 * x), ln(3 * x))


def test_lnfree_is_affine_in_its_input():
    fake = _randomize(FrozenStdLayerNorm(8, std=1.7).double())
    x = torch.randn(2, 4, 8, dtype=torch.float64)
    torch.testing.assert_close(fake(3 * x) - fake.bias, 3 * (fake(x) - fake.bias))


def test_live_lnfree_tracks_ema_of_token_std():
    fake = FrozenStdLayerNorm(8, std=1.0, live=True).double().train()
    x = torch.randn(2, 4, 8, dtype=torch.float64) * 4
    token_std = torch.sqrt(x.var(-1, unbiased=False) + 1e-5)  # (2, 4)
    fake(x)
    assert fake.std.item() == pytest.approx(0.9 * 1.0 + 0.1 * token_std[:, 1:].mean().item())
    assert fake.std_first.item() == pytest.approx(0.9 * 1.0 + 0.1 * token_std[:, :1].mean().item())
    ln = LayerNorm(8).double()
    torch.testing.assert_close(fake(x), ln(x))  # live: a real LayerNorm


def test_first_position_stays_live_until_frozen():
    fake = FrozenStdLayerNorm(8, std=2.0).double()
    fake.freeze(keep_first_position_live=True)
    x = torch.randn(1, 3, 8, dtype=torch.float64) * 5
    ln = LayerNorm(8).double()
    torch.testing.assert_close(fake(x)[:, 0], ln(x)[:, 0])
    fake.std_first.fill_(4.0)
    fake.freeze_first_position()  # position 0 joins the common divisor, as in the released checkpoints
    centred = x - x.mean(-1, keepdim=True)
    torch.testing.assert_close(fake(x), centred / 2.0)
    assert not fake.divides_by_token_std
    # a model saved when position 0 kept its own divisor still divides it by std_first
    fake.separate_first_position.fill_(True)
    torch.testing.assert_close(fake(x)[:, 0], centred[:, 0] / 4.0)
    torch.testing.assert_close(fake(x)[:, 1:], centred[:, 1:] / 2.0)


def test_value_path_divides_by_its_own_std():
    """Through a value projection the attention-input norm's output is rescaled to the value divisor."""
    import torch.nn as nn

    from normlens.models.norms import attach_value_path

    torch.manual_seed(0)
    fake = _randomize(FrozenStdLayerNorm(8, std=2.0, live=True, output_scale=0.5).double()).eval()
    value = nn.Linear(8, 8).double()
    attach_value_path(fake, value)
    x = torch.randn(2, 5, 8, dtype=torch.float64) * 3
    centred = x - x.mean(-1, keepdim=True)
    own = (centred.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()

    def reference(divisor):  # the value projection of s * (centred / divisor * g + b)
        return value(0.5 * (centred / divisor * fake.weight + fake.bias))

    torch.testing.assert_close(value(fake(x)), reference(own))  # both live: no change
    fake.freeze(keep_first_position_live=True, path="qk")  # queries/keys frozen, values live
    out = fake(x)
    torch.testing.assert_close(out[:, 1:], 0.5 * (centred[:, 1:] / 2.0 * fake.weight + fake.bias))
    torch.testing.assert_close(value(out), reference(own))
    fake.std_value.fill_(3.0)
    fake.freeze(keep_first_position_live=True, path="value")
    expected_divisor = torch.cat([own[:, :1], torch.full_like(own[:, 1:], 3.0)], dim=1)
    torch.testing.assert_close(value(fake(x)), reference(expected_divisor))
    fake.freeze_first_position()
    torch.testing.assert_close(value(fake(x)), reference(torch.full_like(own, 3.0)))
    # gradients reach the gain through the value path
    fake.weight.grad = None
    value(fake(x)).sum().backward()
    assert fake.weight.grad is not None and torch.isfinite(fake.weight.grad).all()


def test_unknown_kind_names_the_choices():
    with pytest.raises(ValueError, match="ln, rms, dyt, none, lnfree"):
        build_norm("batchnorm", 8)


def test_half_precision_input_keeps_dtype():
    x = torch.randn(2, 3, 8).to(torch.bfloat16)
    out = LayerNorm(8)(x)
    assert out.dtype == torch.bfloat16
    expected = F.layer_norm(x.float(), (8,))
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)
