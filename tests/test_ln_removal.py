import torch

from normlens.models import build_model, norm_modules
from normlens.models.ln_removal import LNRemovalConfig, remaining_layernorms, remove_layernorm
from normlens.models.norms import FrozenStdLayerNorm
from normlens.train import TrainConfig, train

TINY = dict(n_layers=2, d_model=16, n_heads=2, n_ctx=16)


def test_staged_removal_leaves_no_per_token_std(embedded_splits):
    model = build_model(**TINY)
    train(model, embedded_splits, TrainConfig(steps=20), progress=False)
    before = [t.clone() for t in model.parameters()]
    removed, result = remove_layernorm(model, embedded_splits, LNRemovalConfig(final_steps=5), progress=False)
    # the source model is untouched
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert remaining_layernorms(model) == ["blocks.0.ln1", "blocks.0.ln2", "blocks.1.ln1", "blocks.1.ln2", "ln_final"]
    assert remaining_layernorms(removed) == []
    # the paper's order: every ln2, every ln1, the final LN, then position 0
    assert [slot for _, slot in result.schedule] == [
        "blocks.0.ln2", "blocks.1.ln2", "blocks.0.ln1", "blocks.1.ln1", "ln_final", "first-position"]
    # independent check: every norm is affine in its input (no division by the token's own std)
    x = torch.randn(2, 5, 16)
    for norm in norm_modules(removed).values():
        assert isinstance(norm, FrozenStdLayerNorm)
        torch.testing.assert_close(norm(3 * x) - norm.bias, 3 * (norm(x) - norm.bias), rtol=1e-5, atol=1e-5)
    assert result.val_loss_after < result.val_loss_before + 0.5  # removal costs little
    assert all(v > 0 for v in result.frozen_std.values())


def test_post_ln_model_has_no_final_norm_to_remove(embedded_splits):
    """Post-LN blocks end in a norm, so the final slot is NoNorm: its stage is skipped, not crashed on."""
    model = build_model(placement="post", **TINY)
    removed, result = remove_layernorm(model, embedded_splits, LNRemovalConfig(final_steps=2), progress=False)
    assert [slot for _, slot in result.schedule] == [
        "blocks.0.ln2", "blocks.1.ln2", "blocks.0.ln1", "blocks.1.ln1", "first-position"]
    assert remaining_layernorms(removed) == [] and "ln_final" not in result.frozen_std


def test_removal_refuses_models_without_layernorm(embedded_splits):
    import pytest

    with pytest.raises(ValueError, match="needs a LayerNorm model"):
        remove_layernorm(build_model(norm="rms", **TINY), embedded_splits)
