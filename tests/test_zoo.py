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
    (dict(d_mlp=1.5), "d_mlp must be a positive integer"),
    (dict(n_layers="2"), "n_layers must be a positive integer, got '2'"),
    (dict(eps=float("nan")), "eps must be a positive finite number"),
    (dict(eps=-1.0), "eps must be a positive finite number"),
    (dict(dyt_alpha0_attn=0.0), "dyt_alpha0_attn must be a positive finite number"),
    (dict(norm_kinds=(("x",),)), r"norm_kinds entry \['x'\] is not a \[slot, kind\] pair"),
    (dict(norm_kinds=(("blocks.9.ln1", "ln"),)), "which a 2-layer model does not have"),
])
def test_bad_configs_name_the_fix(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        build_model(**kwargs)


@pytest.mark.parametrize("field,value", [
    ("n_layers", 100_000), ("n_layers", 10**9), ("d_model", 2 * 10**9), ("n_ctx", 10**12), ("d_vocab", 10**12),
])
def test_absurd_sizes_are_refused_with_an_estimate_before_allocating(field, value, monkeypatch):
    """The refusal comes from the config alone: building anything would take minutes or crash."""
    import normlens.models.zoo as zoo

    def no_build(*args, **kwargs):
        raise AssertionError("the model was allocated before the size check")

    monkeypatch.setattr(zoo, "NativeModel", no_build)
    kwargs = {"n_layers": 2, "d_model": 1024, "n_heads": 4, field: value}
    with pytest.raises(ConfigError, match=r"needs about [0-9.e+]+ [KMGTP]iB .* but this machine has"):
        build_model(**kwargs)


def test_memory_estimate_counts_the_built_model():
    from normlens.models import count_parameters
    from normlens.models.checks import PER_LAYER_OVERHEAD_BYTES, count_config_parameters, estimate_memory_bytes

    for kwargs in (dict(norm="dyt"), dict(norm="dyt", d_mlp=7, n_layers=3, d_vocab=50), dict(norm="ln")):
        config = ZooConfig(**kwargs)
        model = build_model(config)
        built = count_parameters(model)
        counted = count_config_parameters(config)
        assert counted == built if config.norm == "dyt" else 0 <= counted - built <= 2 * config.n_layers + 1
        masks = sum(b.numel() for n, b in model.named_buffers() if "causal_mask" in n)
        assert estimate_memory_bytes(config) == 4 * counted + masks + config.n_layers * PER_LAYER_OVERHEAD_BYTES


def test_dyt_alpha0_per_slot_kind():
    from normlens.models import DEFAULT_DYT_ALPHA0

    config = ZooConfig(norm="dyt", n_layers=2, dyt_alpha0_attn=2.5, dyt_alpha0_final=4.5)
    alphas = {slot: float(m.alpha) for slot, m in norm_modules(build_model(config)).items()}
    mlp = DEFAULT_DYT_ALPHA0["mlp"]  # unset kinds take the documented default
    assert alphas == pytest.approx({"blocks.0.ln1": 2.5, "blocks.0.ln2": mlp, "blocks.1.ln1": 2.5,
                                    "blocks.1.ln2": mlp, "ln_final": 4.5})
    # the single-value spelling still sets every slot, and per-kind values override it
    single = ZooConfig(norm="dyt", n_layers=2, dyt_alpha0=0.7, dyt_alpha0_mlp=3.0)
    alphas = {slot: float(m.alpha) for slot, m in norm_modules(build_model(single)).items()}
    assert alphas == pytest.approx({"blocks.0.ln1": 0.7, "blocks.0.ln2": 3.0, "blocks.1.ln1": 0.7,
                                    "blocks.1.ln2": 3.0, "ln_final": 0.7})
    # a config saved before per-kind values existed loads with its one alpha everywhere
    old = {k: v for k, v in ZooConfig(norm="dyt").to_dict().items() if not k.startswith("dyt_alpha0_")}
    old["dyt_alpha0"] = 0.9
    loaded = ZooConfig.from_dict(old)
    assert {loaded.dyt_alpha0_for(s) for s in ("blocks.0.ln1", "blocks.0.ln2", "ln_final")} == {0.9}


def test_config_round_trips_through_dict():
    config = ZooConfig(norm="rms", placement="mix", norm_kinds=(("blocks.0.ln2", "lnfree"),))
    assert ZooConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown ZooConfig fields"):
        ZooConfig.from_dict({"norm": "ln", "widht": 3})
    with pytest.raises(ConfigError, match=r"norm_kinds entry \['x'\]"):
        ZooConfig.from_dict({"norm_kinds": [["x"]]})
