"""Linear probes: held-out scoring, the shared-pass sampler, train flags."""
import numpy as np
import pytest
import torch

from normlens import sites as S
from normlens.probes.attach import attach
from normlens.probes.linear import (ActivationSampleProbe, collect_activations, fit_linear_probes,
                                   sample_positions, score_linear_probes)


@pytest.mark.parametrize("kind", ["ridge", "logistic"])
def test_scores_come_from_the_held_out_split(kind):
    """Random features, random labels: 200 dims over 120 rows fit the training split perfectly,
    so only a held-out score is at chance (a score on the training split would be ~1)."""
    g = np.random.default_rng(0)
    tokens = torch.zeros(4, 30, dtype=torch.long)
    acts = {"a": g.normal(size=(120, 200)).astype(np.float32)}
    idx = np.arange(120)
    labels = g.integers(0, 4, size=(4, 30))
    out = score_linear_probes(acts, idx, tokens, labels, sites=["a"], kind=kind, alpha=1e-3, max_iter=2000)
    row = out.frame.iloc[0]
    assert (row.n_train, row.n_test) == (90, 30)
    assert row.score < 0.6  # chance is 0.25
    reg = score_linear_probes(acts, idx, tokens, g.normal(size=(4, 30)), sites=["a"], alpha=1e-3)
    assert reg.frame.iloc[0].score < 0.3  # R^2 on unseen rows; ~1 on the training rows


def test_sampler_probe_in_batches_equals_one_collection(model64):
    tokens = torch.randint(0, 256, (5, 12), generator=torch.Generator().manual_seed(2))
    sites = S.residual_sites(2)
    want, want_idx = collect_activations(model64, tokens, sites, max_bytes=4 * 16 * 3 * 25, seed=1)
    assert len(want_idx) == 25
    idx = sample_positions(tokens.numel(), {s: 16 for s in sites}, 4 * 16 * 3 * 25, seed=1)
    np.testing.assert_array_equal(idx.numpy(), want_idx)
    probe = ActivationSampleProbe(sites, idx)
    with attach(model64, probe), torch.no_grad():
        for start in range(0, 5, 2):  # batches of 2, 2, 1 sequences
            model64(tokens[start:start + 2])
    got, got_idx = probe.result()
    np.testing.assert_array_equal(got_idx, want_idx)
    _, cache = model64.run_with_cache(tokens)
    for site in sites:
        np.testing.assert_allclose(got[site], want[site], rtol=0, atol=0)
        np.testing.assert_allclose(got[site], cache[site].reshape(60, -1)[want_idx].float().numpy(), rtol=1e-6)


def _mixed_flags(model):
    modules = list(model.modules())
    for i, module in enumerate(modules):
        module.training = i % 3 == 0  # the root trains, some children do not
    return [m.training for m in modules]


def test_linear_probes_run_in_eval_mode_and_restore_each_flag(model64):
    tokens = torch.randint(0, 4, (4, 8), generator=torch.Generator().manual_seed(1))
    flags = _mixed_flags(model64)
    seen = []
    handle = model64.register_forward_pre_hook(
        lambda m, a: seen.append(any(x.training for x in model64.modules())))
    try:
        fit_linear_probes(model64, tokens, "token", kind="ridge", max_bytes=1 << 16)
    finally:
        handle.remove()
        after = [m.training for m in model64.modules()]
        model64.eval()
    assert seen and not any(seen)  # every forward in eval mode
    assert after == flags
