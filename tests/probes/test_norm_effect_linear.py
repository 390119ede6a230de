import contextlib
import math

import numpy as np
import pandas as pd
import pytest
import torch

import normlens
from normlens import sites as S
from normlens.losses import next_token_loss
from normlens.probes.attach import attach
from normlens.probes.effectiveness import (compute_angular_distances, compute_gradient_norms,
                                           compute_skip_losses)
from normlens.probes.linear import fit_linear_probes
from normlens.probes.norm_probes import NormScaleProbe, SCurveProbe, dyt_alphas, residual_growth
from normlens.probes.stats import ActivationStatsProbe


def test_scale_and_s_curve(model64, tokens):
    scale, curve = NormScaleProbe(), SCurveProbe(n_samples=50, seed=3)
    _, cache = model64.run_with_cache(tokens)
    with attach(model64, [scale, curve]):
        model64(tokens[:2])
        model64(tokens[2:])
    site = S.norm_scale("blocks.1.ln1")
    want = cache[site][:, 1:].reshape(-1)
    row = scale.result().to_frame().set_index(["site", "group"]).loc[(site, "body")]
    assert math.isclose(row["mean"], float(want.mean()), rel_tol=1e-10)
    res = curve.result()
    assert set(res.slots) == set(S.norm_slots(2))
    xin = cache[S.norm_in("blocks.0.ln2")].reshape(-1)
    xout = cache[S.norm_hook("blocks.0.ln2", "hook_normalized")].reshape(-1)  # before the affine
    pairs = dict(zip(xin.tolist(), xout.tolist()))
    got_in, got_out = res.inputs["blocks.0.ln2"], res.outputs["blocks.0.ln2"]
    assert len(got_in) == 50 and all(res.pre_affine.values()) and res.n_seen["blocks.0.ln2"] == 3 * 12 * 16
    assert all(pairs[a] == b for a, b in zip(got_in, got_out))  # each sample is a true (in, normalized) pair


def test_dyt_alpha_and_residual_growth(tokens):
    model = normlens.build_model(norm="dyt", n_layers=2, d_model=16, n_heads=2, dyt_alpha0=0.7).double()
    frame = dyt_alphas(model)
    assert len(frame) == 5 and np.allclose(frame.alpha, 0.7)
    probe = ActivationStatsProbe()
    with attach(model, probe):
        model(tokens)
    growth = residual_growth(probe.result())
    _, cache = model.run_with_cache(tokens)
    x = cache[S.resid_post(1)][:, 1:]
    assert list(growth.depth) == [0, 1, 2]
    assert math.isclose(growth.rms.iloc[2], float(x.pow(2).mean(-1).sqrt().mean()), rel_tol=1e-10)


@contextlib.contextmanager
def drawing_from_global_rng(model):
    """While open, every forward of ``model`` draws from the global RNG (as dropout would),
    so a function that does not fork the RNG around its forwards changes the global state."""
    def draw(module, args, out):
        torch.rand(1)  # returns None: the output is left alone

    handle = model.register_forward_hook(draw)
    try:
        yield
    finally:
        handle.remove()


def test_effectiveness_against_naive(model64, tokens):
    grads_before = [p.grad for p in model64.parameters()]
    state = torch.random.get_rng_state()
    with drawing_from_global_rng(model64):
        ang = compute_angular_distances(model64, tokens, batch_size=2, positions="all")
        last = compute_angular_distances(model64, tokens, batch_size=2)
    _, cache = model64.run_with_cache(tokens)
    h0, h1 = cache[S.resid_pre(0)], cache[S.resid_post(0)]
    cos = torch.nn.functional.cosine_similarity(h0, h1, dim=-1)  # (batch, pos)
    assert math.isclose(ang[0, 1], float((torch.arccos(cos) / math.pi).mean()), rel_tol=1e-9)
    # the papers' measure: the last token of each sequence only
    assert math.isclose(last[0, 1], float((torch.arccos(cos[:, -1]) / math.pi).mean()), rel_tol=1e-9)
    assert not math.isclose(last[0, 1], ang[0, 1], rel_tol=1e-3)
    for a in (ang, last):
        assert np.allclose(a, a.T) and (a >= 0).all() and (a <= 1).all() and (np.diag(a) == 0).all()
    with drawing_from_global_rng(model64):
        base, delta = compute_skip_losses(model64, tokens)
    assert math.isclose(base, float(next_token_loss(model64, tokens).detach()), rel_tol=1e-12)
    # skipping block 1 by hand: its output is its input
    hook = model64.hook_dict[S.resid_post(1)].register_forward_hook(lambda m, a, out: cache[S.resid_pre(1)])
    try:
        skipped = float(next_token_loss(model64, tokens).detach())
    finally:
        hook.remove()
    assert math.isclose(delta[1], skipped - base, rel_tol=1e-9, abs_tol=1e-12)
    with drawing_from_global_rng(model64):
        grads = compute_gradient_norms(model64, tokens)
    loss = next_token_loss(model64, tokens)
    params = dict(model64.named_parameters())
    name = next(n for n in params if "mlp" in n and n.endswith("weight"))
    g = torch.autograd.grad(loss, params[name])[0]
    row = grads[grads.param == name.replace("_original_component.", "")]
    assert math.isclose(float(row.grad_norm.iloc[0]), float(g.norm()), rel_tol=1e-10)
    assert set(grads.group) <= {"attn", "mlp", "norm", "embed", "unembed", "other"}
    assert "embed" in set(grads.group) and "unembed" in set(grads.group)
    assert [p.grad for p in model64.parameters()] == grads_before
    assert torch.equal(torch.random.get_rng_state(), state)


def test_linear_probes_seeded_and_bounded(model64):
    tokens = torch.randint(0, 4, (6, 12), generator=torch.Generator().manual_seed(1))
    a = fit_linear_probes(model64, tokens, "token", kind="ridge", max_bytes=200 * 4 * 48, seed=0)
    b = fit_linear_probes(model64, tokens, "token", kind="ridge", max_bytes=200 * 4 * 48, seed=0)
    assert a.frame.equals(b.frame)
    assert (a.frame.n_train + a.frame.n_test == 72).all()  # 3 sites x 16 wide x 4 bytes x 72 <= bound
    small = fit_linear_probes(model64, tokens, "position", max_bytes=3 * 16 * 4 * 20)
    assert (small.frame.n_train + small.frame.n_test == 20).all() and (small.frame.metric == "r2").all()
    assert a.frame.score.iloc[0] > 0.9  # token identity is readable from the embedding
    with pytest.raises(ValueError, match="labels"):
        fit_linear_probes(model64, tokens, "colour")
    with pytest.raises(ValueError, match="kind"):
        fit_linear_probes(model64, tokens, kind="svm")


def test_effectiveness_keeps_sequences_for_intervals(model64, tokens, tmp_path):
    from normlens.probes.effectiveness import EffectivenessResult, compute_effectiveness
    from normlens.uncertainty import bootstrap_interval

    more = torch.randint(0, 256, (8, 12), generator=torch.Generator().manual_seed(3))
    res = compute_effectiveness(model64, more, batch_size=3)
    assert res.angular_positions == "last"
    assert res.angular_sequences.shape == (8, 3, 3) and res.skip_delta_sequences.shape == (8, 2)
    per_token = next_token_loss(model64, more, reduction="none").detach().mean(-1)
    np.testing.assert_allclose(res.base_loss_sequences, per_token.numpy(), rtol=1e-12)
    np.testing.assert_allclose(res.skip_delta_sequences.mean(0), res.skip_delta, rtol=1e-12)
    frame = res.interval_frame(n_resamples=300)
    want = bootstrap_interval(res.skip_delta_sequences[:, 1], n_resamples=300)
    assert frame.skip_low[1] == want.low and frame.skip_high[1] == want.high
    assert (frame.angular_low <= frame.angular_in_out).all() and (frame.angular_in_out <= frame.angular_high).all()
    assert (frame.n_sequences == 8).all()
    res.save(tmp_path)
    back = EffectivenessResult.load(tmp_path)
    assert back.angular_positions == "last"
    np.testing.assert_array_equal(back.angular_sequences, res.angular_sequences)
    np.testing.assert_array_equal(back.skip_delta_sequences, res.skip_delta_sequences)
    pd.testing.assert_frame_equal(back.interval_frame(n_resamples=300), frame)
    with pytest.raises(ValueError, match="positions must be"):
        compute_effectiveness(model64, more, positions="first")
