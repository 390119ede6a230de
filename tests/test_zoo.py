"""Zoo models: every norm kind and placement builds, runs, trains, and is what it claims."""
import itertools
import math

import pytest
import torch

from normlens.data import repeated_sequences
from normlens.losses import next_token_loss
from normlens.models import NORM_KINDS, PLACEMENTS, ConfigError, ZooConfig, build_model, norm_modules
from normlens.models.norms import DyT, NoNorm

TINY = dict(n_layers=4, d_model=16, n_heads=2, n_ctx=12, d_vocab=32)


@pytest.mark.parametrize("norm,placement", list(itertools.product(NORM_KINDS, PLACEMENTS)))
def test_every_kind_and_placement_trains(norm, placement):
    model = build_model(norm=norm, placement=placement, **TINY)
    tokens = repeated_sequences(8, 12, period=4, vocab_size=32, seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss = next_token_loss(model, tokens)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]


def test_norm_modules_are_the_requested_kind():
    for norm in NORM_KINDS:
        kinds = {m.kind for m in norm_modules(build_model(norm=norm, **TINY)).values()}
        assert kinds == {norm}


def test_placements_of_blocks():
    config = ZooConfig(placement="mix", n_layers=8)
    assert [config.block_placement(i) for i in range(8)] == ["post"] * 2 + ["pre"] * 6
    assert ZooConfig(placement="mix", n_layers=2).block_placement(0) == "post"
    model = build_model(placement="post", **TINY)
    assert isinstance(norm_modules(model)["ln_final"], NoNorm)  # Post-LN ends in a norm already
    assert {b.original_component.placement for b in model.blocks} == {"post"}


def test_layernorm_scaling_scales_by_inverse_sqrt_depth():
    model = build_model(placement="scaled", **TINY)
    scales = [norm_modules(model)[f"blocks.{i}.ln1"].output_scale for i in range(4)]
    assert scales == pytest.approx([1.0, 1 / math.sqrt(2), 1 / math.sqrt(3), 0.5])


def test_post_ln_block_applies_norm_after_residual_sum():
    """Post-LN: the residual stream leaving a block is the output of its ln2."""
    model = build_model(placement="post", **TINY)
    tokens = torch.randint(0, 32, (2, 12))
    _, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], cache["blocks.0.ln2.hook_out"])


def test_same_seed_same_weights_across_norm_kinds():
    ln, dyt = build_model(norm="ln", **TINY), build_model(norm="dyt", **TINY)
    assert torch.equal(ln.blocks[0].attn.q.original_component.weight,
                       dyt.blocks[0].attn.q.original_component.weight)
    other = build_model(norm="ln", seed=1, **TINY)
    assert not torch.equal(ln.embed.original_component.weight, other.embed.original_component.weight)


def test_build_does_not_touch_global_rng():
    state = torch.get_rng_state()
    build_model(**TINY)
    assert torch.equal(state, torch.get_rng_state())


def test_transformerlens_hooks_exist_for_our_norms():
    model = build_model(norm="dyt", **TINY)
    tokens = torch.randint(0, 32, (1, 12))
    _, cache = model.run_with_cache(tokens)
    alpha = norm_modules(model)["blocks.1.ln2"].alpha
    torch.testing.assert_close(cache["blocks.1.ln2.hook_pre_tanh"], alpha * cache["blocks.1.ln2.hook_in"])
    assert cache["blocks.0.attn.hook_pattern"].shape == (1, 2, 12, 12)
    ln_cache = build_model(norm="ln", **TINY).run_with_cache(tokens)[1]
    assert ln_cache["blocks.0.ln1.hook_scale"].shape == (1, 12, 1)


def test_gradients_reach_dyt_alpha_through_the_bridge():
    model = build_model(norm="dyt", **TINY)
    next_token_loss(model, torch.randint(0, 32, (2, 12))).backward()
    alphas = [m.alpha for m in norm_modules(model).values() if isinstance(m, DyT)]
    assert all(a.grad is not None and a.grad.abs() > 0 for a in alphas)


@pytest.mark.parametrize("kwargs,message", [
    (dict(norm="batchnorm"), "unknown norm kind 'batchnorm'"),
    (dict(d_model=64, n_heads=5), "n_heads=5 does not divide d_model=64"),
    (dict(placement="sandwich"), "unknown placement"),
    (dict(act_fn="swish"), "unknown activation"),
    (dict(n_layers=0), "n_layers must be a positive integer"),
])
def test_bad_configs_name_the_fix(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        build_model(**kwargs)


def test_config_round_trips_through_dict():
    config = ZooConfig(norm="rms", placement="mix", norm_kinds=(("blocks.0.ln2", "lnfree"),))
    assert ZooConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown ZooConfig fields"):
        ZooConfig.from_dict({"norm": "ln", "widht": 3})
