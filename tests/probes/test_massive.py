"""Massive-activation detector (Sun et al. 2024) against brute force on constructed and model activations."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

import normlens
from normlens import sites as S
from normlens.probes.massive import MassiveActivationProbe, MassiveActivationResult, compute_massive_activations


def brute_force(acts, min_abs=100.0, min_ratio=1000.0, mask=None):
    """{(site, batch, pos, channel): value} of every massive entry, from all activations at once (float64)."""
    out = {}
    for site, x in acts.items():
        a = x.double().reshape(x.shape[0], x.shape[1], -1)
        real = torch.ones(a.shape[:2], dtype=torch.bool) if mask is None else mask.bool()
        median = float(np.median(a[real].abs().numpy()))
        for b, p, c in torch.nonzero((a.abs() >= min_abs) & (a.abs() >= min_ratio * median) & real[..., None]).tolist():
            out[(site, b, p, c)] = float(a[b, p, c])
    return out


def found(result):
    return {(r.site, r.batch, r.pos, r.channel): r.value for r in result.rows.itertuples()}


def test_planted_values_are_found_with_their_indices_and_ratios(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 20, 32, generator=g)  # median |x| ~ 0.67
    x[0, 0, 7] = 900.0  # first token, fixed channel, as Sun et al. report
    x[3, 0, 7] = -850.0
    x[4, 11, 2] = 2000.0
    x[5, 5, 5] = 150.0  # >= 100 but only ~220 x the median: not massive
    x[1, 3, 9] = 99.0  # ~150 x the median, below 100
    probe = MassiveActivationProbe(top_k=8)
    probe.update("a", x[:4])
    probe.update("a", x[4:])  # a second batch: sequence indices continue at 4
    probe.update("b", torch.randn(6, 20, 32, generator=g))  # nothing planted
    res = probe.result()
    assert found(res) == brute_force({"a": x}) == {("a", 0, 0, 7): 900.0, ("a", 3, 0, 7): -850.0,
                                                   ("a", 4, 11, 2): 2000.0}
    median = float(np.median(x.abs().numpy()))
    for r in res.rows.itertuples():
        assert math.isclose(r.ratio, abs(r.value) / median, rel_tol=2 ** -7)
    sites = res.per_site.set_index("site")
    assert sites.loc["a", "n_massive"] == 3 and sites.loc["b", "n_massive"] == 0
    assert not sites.truncated.any() and sites.loc["a", "max_abs"] == 2000.0
    assert res.channel_frame().set_index("channel").loc[7, "n_massive"] == 2
    res.save(tmp_path)
    back = MassiveActivationResult.load(tmp_path)
    pd.testing.assert_frame_equal(back.rows, res.rows)
    assert (back.min_abs, back.min_ratio, back.top_k) == (100.0, 1000.0, 8)


def test_nothing_planted_gives_no_rows_and_thresholds_are_parameters():
    x = torch.randn(4, 16, 8, generator=torch.Generator().manual_seed(1))
    probe = MassiveActivationProbe()
    probe.update("s", x)
    res = probe.result()
    assert res.rows.empty and res.per_site.n_massive.tolist() == [0]
    loose = MassiveActivationProbe(min_abs=2.0, min_ratio=3.0, top_k=4096)
    loose.update("s", x)
    assert found(loose.result()) == brute_force({"s": x}, 2.0, 3.0) and len(loose.result().rows) > 0


def test_full_top_k_is_flagged_and_pads_and_nan_are_left_out():
    x = torch.randn(2, 10, 4, generator=torch.Generator().manual_seed(2))
    x[0, :6, 0] = 5000.0
    x[1, 8, 1] = float("nan")
    x[1, 9, 2] = 1e6  # a pad
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 9] = False
    probe = MassiveActivationProbe(top_k=4)
    probe.update("s", x, attention_mask=mask)
    res = probe.result()
    site = res.per_site.iloc[0]
    assert len(res.rows) == 4 and bool(site.truncated)
    assert site.n_nonfinite == 1 and site.n_entries == 19 * 4 - 1
    roomy = MassiveActivationProbe(top_k=16)
    roomy.update("s", x, attention_mask=mask)
    clean = x.clone()
    clean[1, 8, 1] = 0.0  # brute force without the NaN (its median moves by less than a bin)
    assert found(roomy.result()) == brute_force({"s": clean}, mask=mask)
    assert not roomy.result().per_site.truncated.any()


def test_bad_arguments():
    for kwargs in ({"top_k": 0}, {"min_abs": -1.0}, {"min_ratio": float("nan")}):
        with pytest.raises(ValueError):
            MassiveActivationProbe(**kwargs)


def test_zoo_model_with_a_planted_residual_spike():
    model = normlens.build_model(norm="ln", n_layers=2, d_model=32, n_heads=2, n_ctx=16, seed=0).double().eval()
    with torch.no_grad():
        model.pos.weight[0, 5] += 3000.0  # every sequence's first token carries a spike on channel 5
    tokens = torch.randint(0, 256, (5, 16), generator=torch.Generator().manual_seed(3))
    res = compute_massive_activations(model, tokens, batch_size=2)
    _, cache = model.run_with_cache(tokens)
    sites = S.residual_sites(2)
    assert found(res) == pytest.approx(brute_force({s: cache[s] for s in sites}))
    assert set(res.rows.pos) == {0} and set(res.rows.channel) == {5} and len(res.rows) == 5 * len(sites)
    assert set(res.rows.site) == set(sites)
    plain = normlens.build_model(norm="ln", n_layers=2, d_model=32, n_heads=2, n_ctx=16, seed=0).double()
    assert compute_massive_activations(plain, tokens).rows.empty
    with pytest.raises(ValueError, match="tokens"):
        compute_massive_activations(model, tokens[0])
