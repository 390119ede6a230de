import math

import numpy as np
import pandas as pd
import pytest
import torch

from normlens.probes.attach import attach
from normlens.probes.attention import (AttentionEntropyProbe, AttentionEntropyResult, PatternEntropyProbe,
                                       attention_entropy, compute_pattern_entropy, pattern_entropy)


def naive_entropy(q, k, mask=None):
    """Dense -sum p log p with causal (and padding) masking; q, k (b, pos, h, d)."""
    b, n, h, d = q.shape
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
    vis = torch.tril(torch.ones(n, n, dtype=torch.bool))[None, None]
    if mask is not None:
        vis = vis & mask.bool()[:, None, None, :]
    s = s.masked_fill(~vis, -math.inf)
    p = torch.softmax(s, -1).nan_to_num(0.0)
    ent = -(p * torch.log(torch.where(p > 0, p, 1.0))).sum(-1)
    first = torch.zeros(b, dtype=torch.long) if mask is None else torch.tensor(
        [int(torch.nonzero(row)[0]) if row.any() else 0 for row in mask])
    return ent, vis.expand_as(p).sum(-1), p[torch.arange(b), :, :, first]


@pytest.mark.parametrize("block", [1, 3, 64])
def test_blockwise_matches_dense(block):
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 9, 3, 4, generator=g, dtype=torch.float64) * 3 for _ in range(2))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :3] = 0  # left padding: the first three queries see nothing
    mask[1, 7:] = 0
    rows = attention_entropy(q, k, attention_mask=mask, block_size=block)
    ent, nvis, p_first = naive_entropy(q, k, mask)
    torch.testing.assert_close(rows.entropy, ent, rtol=0, atol=1e-12)
    assert torch.equal(rows.n_visible, nvis)
    torch.testing.assert_close(rows.first_mass, p_first, rtol=0, atol=1e-12)  # the first REAL token (key 3)
    assert (rows.first_mass[0, :, 3:] > 0).all()  # key 0 is a pad: its mass would read 0
    assert torch.isfinite(rows.normalized).all() and torch.isfinite(rows.entropy).all()
    assert (rows.entropy[0, :, :3] == 0).all()  # fully masked rows: defined, 0
    log_n = torch.log(nvis.clamp_min(1).double())
    assert (rows.entropy >= 0).all() and (rows.entropy <= log_n + 1e-12).all()
    assert (rows.normalized >= 0).all() and (rows.normalized <= 1).all()


def test_flat_heads_layout_and_uniform_bound():
    q = torch.zeros(1, 6, 8, dtype=torch.float64)  # (b, pos, heads*d_head), zero scores: uniform attention
    rows = attention_entropy(q, q, n_heads=2, block_size=2)
    torch.testing.assert_close(rows.entropy[0, 0], torch.log(torch.arange(1, 7, dtype=torch.float64)))
    torch.testing.assert_close(rows.normalized[0, 0, 1:], torch.ones(5, dtype=torch.float64))


def test_probe_matches_hook_pattern(model64, tokens, tmp_path):
    mask = torch.ones_like(tokens)
    mask[0, :4] = 0
    mask[2, 9:] = 0
    qk, ref = AttentionEntropyProbe(block_size=5), PatternEntropyProbe()
    with attach(model64, [qk, ref]):
        model64(tokens, attention_mask=mask)
        model64(tokens[:1, :7])  # a second, shorter batch: sums per position add up
    a, b = qk.result(), ref.result()
    for key in ("entropy_sum", "normalized_sum"):
        np.testing.assert_allclose(getattr(a, key), getattr(b, key), rtol=0, atol=1e-5)
    for key in ("first_mass_sum", "sequence_entropy", "sequence_first_mass"):
        np.testing.assert_allclose(getattr(a, key), getattr(b, key), rtol=0, atol=1e-5)
    for key in ("count", "choice_count", "sink_count", "normalized_hist", "sequence_length"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    np.testing.assert_array_equal(a.sequence_length, [8, 12, 9, 7])
    assert a.count[0, 0].sum() == 8 + 12 + 9 + 7  # padded queries (also right padding) are not counted
    heads = a.head_frame()
    assert set(heads.state) <= {"overload", "collapse", "normal"}
    s = a.summary()
    assert 0 <= s["overload_fraction"] <= 1 and 0 <= s["sink_rate"] <= 1
    a.save(tmp_path)
    back = AttentionEntropyResult.load(tmp_path)
    for key in ("entropy_sum", "normalized_hist", "sequence_entropy", "sequence_first_mass", "sequence_length"):
        np.testing.assert_array_equal(getattr(back, key), getattr(a, key))
    assert back.skip_queries == a.skip_queries and back.summary() == a.summary()
    merged = a.merge(back)
    assert len(merged.sequence_length) == 8 and merged.summary()["overload_fraction"] == s["overload_fraction"]


def test_left_padding_sink_reads_the_first_real_token(model64, tokens):
    """Per-head first-token mass with left padding equals the pattern's mass on the first real token."""
    mask = torch.ones_like(tokens)
    mask[:, :4] = 0  # every sequence left-padded by 4
    probe = AttentionEntropyProbe(skip_queries=2)
    store = {}
    hooks = [model64.hook_dict[f"blocks.{l}.attn.hook_pattern"].register_forward_hook(
        lambda m, a, out, l=l: store.__setitem__(l, out.detach())) for l in range(2)]
    try:
        with attach(model64, probe), torch.no_grad():
            model64(tokens, attention_mask=mask)
    finally:
        for h in hooks:
            h.remove()
    heads = probe.result().head_frame()
    for (layer, head), mass in heads.set_index(["layer", "head"]).first_token_mass.items():
        expected = store[layer][:, head, 4 + 2:, 4].mean()  # queries at real positions >= 2, key = first real
        assert mass == pytest.approx(float(expected), abs=1e-9)
        assert mass > 0.01  # key 0 (a pad) would read 0


def test_pattern_entropy_reference():
    p = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]], dtype=torch.float64)
    rows = pattern_entropy(p)
    torch.testing.assert_close(rows.entropy[0, 0], torch.tensor([0.0, math.log(2)], dtype=torch.float64))


def test_bad_inputs():
    with pytest.raises(ValueError, match="n_heads"):
        attention_entropy(torch.zeros(1, 3, 5), torch.zeros(1, 3, 5), n_heads=2)
    with pytest.raises(ValueError, match="threshold"):
        AttentionEntropyProbe(overload_threshold=1.5)


# -- constructed heads: what each definition separates --------------------------------------------

def _heads(T: int) -> torch.Tensor:
    """(1, 4, T, T) causal patterns: uniform, one-hot (self), uniform over the last 23 keys, sink-heavy."""
    tril = torch.tril(torch.ones(T, T, dtype=torch.float64))
    uniform = tril / tril.sum(-1, keepdim=True)
    one_hot = torch.eye(T, dtype=torch.float64)
    window = tril - torch.tril(torch.ones(T, T, dtype=torch.float64), -23)
    window = window / window.sum(-1, keepdim=True)
    sink = torch.zeros(T, T, dtype=torch.float64)
    sink[0, 0] = 1.0
    for i in range(1, T):
        sink[i, 0], sink[i, 1:i + 1] = 0.5, 0.5 / i
    return torch.stack([uniform, one_hot, window, sink])[None]


def test_overload_follows_the_paper_and_the_normalized_variant_saturates():
    T = 64
    heads = compute_pattern_entropy([_heads(T)]).head_frame().set_index("head")
    # brute force: mean_i H_i / log T with H_i = log(number of keys attended uniformly)
    uniform_ratio = sum(math.log(i + 1) for i in range(T)) / T / math.log(T)
    window_ratio = sum(math.log(min(i + 1, 23)) for i in range(T)) / T / math.log(T)
    assert heads.entropy_ratio[0] == pytest.approx(uniform_ratio, abs=1e-12) and 0.77 < uniform_ratio < 0.772
    assert heads.entropy_ratio[2] == pytest.approx(window_ratio, abs=1e-12) and window_ratio < 0.75
    assert heads.entropy_ratio[1] == 0 and heads.entropy[1] == 0
    assert list(heads.state) == ["overload", "collapse", "normal", "normal"]
    assert list(heads.overloaded) == [True, False, False, False]
    # the per-query normalized variant calls the 23-of-64 window head overloaded too: it cannot separate them
    assert heads.overloaded_normalized[0] and heads.overloaded_normalized[2]
    assert heads.normalized_entropy[2] > 0.85


def test_collapse_threshold_is_in_nats_and_reported(tmp_path):
    r = compute_pattern_entropy([_heads(16)], collapse_threshold=1.5)
    heads = r.head_frame().set_index("head")
    assert heads.collapsed[1] and not heads.collapsed[0]
    assert heads.collapsed[3] == (heads.entropy[3] < 1.5)
    r.save(tmp_path)
    from normlens.io import read_json
    assert read_json(tmp_path / "attention_entropy.json")["collapse_threshold"] == 1.5


@pytest.mark.parametrize("skip", [0, 1, 8])
def test_sink_rate_is_per_head_mean_first_token_mass(skip):
    T = 32
    r = compute_pattern_entropy([_heads(T)], skip_queries=skip, sink_threshold=0.3)
    heads = r.head_frame().set_index("head")
    p = _heads(T)[0]
    for h in range(4):
        assert heads.first_token_mass[h] == pytest.approx(float(p[h, skip:, 0].mean()), abs=1e-12)
    assert list(heads.sink) == [skip == 0 and float(p[0, :, 0].mean()) > 0.3, False, False, True]
    assert r.summary()["sink_rate"] == pytest.approx(heads.sink.mean())
    # the per-query variant counts query 0 (mass 1 by construction) and the uniform head's queries 1-2
    assert r.summary()["sink_query_fraction"] == pytest.approx(float((p[:, :, 0] > 0.3).double().mean()))


def test_sink_with_left_padding_uses_first_real_token():
    T, pad = 16, 5
    p = torch.zeros(1, 4, T + pad, T + pad, dtype=torch.float64)
    p[..., pad:, pad:] = _heads(T)
    mask = torch.ones(1, T + pad, dtype=torch.long)
    mask[:, :pad] = 0
    padded = compute_pattern_entropy([p], mask).head_frame()
    plain = compute_pattern_entropy([_heads(T)]).head_frame()
    cols = ["entropy", "entropy_ratio", "normalized_entropy", "first_token_mass", "state", "sink"]
    pd.testing.assert_frame_equal(padded[cols], plain[cols])
    assert padded.sink[3] and padded.first_token_mass[3] == pytest.approx(0.5)


def test_position_buckets_of_normalized_entropy():
    T = 64
    r = compute_pattern_entropy([_heads(T)])
    frame = r.bucket_frame()
    assert list(frame[frame["head"] == 0].bucket) == ["[1, 8)", "[8, 16)", "[16, 32)", "[32, 64)"]
    window = frame[frame["head"] == 2].set_index("bucket")
    expected = np.mean([math.log(23) / math.log(i + 1) for i in range(32, 64)])
    assert window.mean_normalized["[32, 64)"] == pytest.approx(expected, abs=1e-12)
    assert window.mean_normalized["[1, 8)"] == pytest.approx(1.0)
    assert window.n_queries["[32, 64)"] == 32 and window.n_queries["[1, 8)"] == 7
    assert window.q10["[32, 64)"] <= window["median"]["[32, 64)"] <= window.q90["[32, 64)"]
    lows = np.array([math.log(23) / math.log(i + 1) for i in range(32, 64)])
    assert abs(window["median"]["[32, 64)"] - np.median(lows)) <= 0.05  # histogram resolution
    assert (frame[frame["head"] == 1].mean_normalized == 0).all()


def test_intervals_over_sequences():
    T = 32
    sharp = torch.eye(T, dtype=torch.float64).expand(1, 4, T, T)
    batch = torch.cat([_heads(T)] * 3 + [sharp] * 3)  # 6 sequences: 3 with diverse heads, 3 all one-hot
    r = compute_pattern_entropy([batch])
    iv = r.intervals(n_resamples=500)
    summary = r.summary()
    for name, interval in iv.items():
        assert interval.n == 6 and interval.estimate == pytest.approx(summary[name])
        assert interval.low <= interval.estimate <= interval.high
    # per-sequence mean entropy is 0 or the diverse value: the interval spans between them
    diverse = compute_pattern_entropy([_heads(T)]).summary()["mean_entropy"]
    assert 0 <= iv["mean_entropy"].low < summary["mean_entropy"] < iv["mean_entropy"].high <= diverse
    same = compute_pattern_entropy([torch.cat([_heads(64)] * 3)]).intervals(n_resamples=200)  # T = 64: uniform overloads
    assert same["overload_fraction"].low == same["overload_fraction"].high == 0.25


def test_bad_pattern_input():
    with pytest.raises(ValueError, match="pattern of layer 0"):
        compute_pattern_entropy([torch.zeros(2, 3, 4)])
    with pytest.raises(ValueError, match="skip_queries"):
        AttentionEntropyProbe(skip_queries=-1)
