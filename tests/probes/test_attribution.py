"""Direct logit attribution vs the direct effect by ablation (exact without a live LayerNorm)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from normlens.models import build_model
from normlens.models.ln_removal import LNRemovalConfig, remaining_layernorms, remove_layernorm
from normlens.probes.attribution import (LogitAttributionResult, direct_effect_by_ablation,
                                         direct_logit_attribution)

TINY = dict(n_layers=2, d_model=16, n_heads=2, n_ctx=16)


@pytest.fixture
def tokens():
    return torch.randint(0, 256, (3, 12), generator=torch.Generator().manual_seed(0))


def _trained_like(model):
    """Non-trivial norm gains and biases, so the affine part matters."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def test_dla_and_ablation_against_hand_computation(tokens):
    model = _trained_like(build_model(norm="ln", **TINY)).double().eval()
    dla = direct_logit_attribution(model, tokens, batch_size=2)
    abl = direct_effect_by_ablation(model, tokens, batch_size=2)
    assert dla.components[:3] == ("L0H0", "L0H1", "L0.mlp") and dla.components[-1] == "rest"
    assert dla.values.shape == (2 * 3 + 1, 3, 11)
    _, cache = model.run_with_cache(tokens)
    ln = model.ln_final.original_component
    target = tokens[:, 1:]
    w_u = model.W_U.detach()[:, target].permute(1, 2, 0)  # (b, pos-1, d)
    # head L1H0 by hand: z_h W_O[h], centred, divided by the cached scale, times the gain, onto W_U[:, t]
    z = cache["blocks.1.attn.hook_z"].reshape(3, 12, 2, 8)[:, :-1, 0]
    v = z @ model.W_O[1, 0].detach()
    sigma = (cache["ln_final.hook_in"][:, :-1].var(-1, unbiased=False, keepdim=True) + ln.eps).sqrt()
    want = (((v - v.mean(-1, keepdim=True)) / sigma * ln.weight.detach()) * w_u).sum(-1)
    np.testing.assert_allclose(dla.values[dla.components.index("L1H0")], want.detach().numpy(), rtol=1e-10,
                               atol=1e-12)
    # MLP 0 by ablation: F.layer_norm and the full unembedding, independent of the module's code
    resid = cache["ln_final.hook_in"][:, :-1]
    mlp = cache["blocks.0.hook_mlp_out"][:, :-1]

    def logit(r):
        full = F.layer_norm(r, (16,), ln.weight.detach(), ln.bias.detach(), ln.eps) @ model.W_U.detach()
        return full.gather(-1, target[..., None])[..., 0]

    np.testing.assert_allclose(abl.values[abl.components.index("L0.mlp")], (logit(resid) - logit(resid - mlp)).numpy(),
                               rtol=1e-10, atol=1e-12)
    # with a live LayerNorm the two disagree
    assert np.abs(dla.values - abl.values).max() > 1e-2 * np.abs(dla.values).max()


@pytest.mark.parametrize("norm", ["none", "lnfree"])
def test_affine_final_norm_makes_dla_exact(norm, tokens):
    model = _trained_like(build_model(norm=norm, **TINY)).double()
    model.train()
    dla = direct_logit_attribution(model, tokens)
    abl = direct_effect_by_ablation(model, tokens)
    assert model.training  # the caller's train flag is left as found
    np.testing.assert_allclose(dla.values, abl.values, rtol=0, atol=1e-10)
    assert np.abs(dla.values).max() > 1e-3
    # the components add up to the final residual: their DLA sums to the logit minus the bias terms
    logits = model(tokens).detach()
    target = logits[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
    ln = model.ln_final.original_component
    bias = (ln.bias.detach() @ model.W_U.detach())[tokens[:, 1:]] if norm == "lnfree" else 0.0
    np.testing.assert_allclose(dla.values.sum(0), (target - bias).numpy(), rtol=0, atol=1e-10)


def test_ln_removed_copy_agrees_and_original_does_not(embedded_splits, tokens):
    """A zoo LN model and its LN-free copy (staged removal, a tiny budget)."""
    model = build_model(**TINY)
    free, _ = remove_layernorm(model, embedded_splits, LNRemovalConfig(
        warmup_steps=0, steps_per_removal=1, final_steps=0, batch_size=2, eval_seqs=2), progress=False)
    assert remaining_layernorms(free) == []
    errors = {}
    for name, m in (("ln", model), ("ln_free", free)):
        dla, abl = direct_logit_attribution(m, tokens), direct_effect_by_ablation(m, tokens)
        errors[name] = np.abs(dla.values - abl.values).max() / np.abs(abl.values).max()
    assert errors["ln_free"] < 1e-5
    assert errors["ln"] > 1e-2


def test_result_round_trip_and_frame(tokens, tmp_path):
    model = build_model(norm="none", **TINY)
    res = direct_logit_attribution(model, tokens)
    res.save(tmp_path)
    back = LogitAttributionResult.load(tmp_path)
    assert back.components == res.components and back.norm == "none" and back.method == "dla"
    np.testing.assert_array_equal(back.values, res.values)
    frame = res.to_frame()
    assert list(frame.kind[:3]) == ["head", "head", "mlp"] and frame.kind.iloc[-1] == "rest"
    assert (frame.n_tokens == 33).all()


def test_bad_models_and_tokens(tokens):
    with pytest.raises(ValueError, match="final norm"):
        direct_logit_attribution(build_model(norm="dyt", **TINY), tokens)
    with pytest.raises(ValueError, match="placement"):
        direct_effect_by_ablation(build_model(placement="post", **TINY), tokens)
    with pytest.raises(ValueError, match="tokens must be"):
        direct_logit_attribution(build_model(**TINY), tokens[:, :1])
