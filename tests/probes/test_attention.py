import math

import numpy as np
import pytest
import torch

from normlens.probes.attach import attach
from normlens.probes.attention import (AttentionEntropyProbe, AttentionEntropyResult, PatternEntropyProbe,
                                       attention_entropy, pattern_entropy)


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
    return ent, vis.expand_as(p).sum(-1), p[..., 0]


@pytest.mark.parametrize("block", [1, 3, 64])
def test_blockwise_matches_dense(block):
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 9, 3, 4, generator=g, dtype=torch.float64) * 3 for _ in range(2))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :3] = 0  # left padding: the first three queries see nothing
    mask[1, 7:] = 0
    rows = attention_entropy(q, k, attention_mask=mask, block_size=block)
    ent, nvis, p0 = naive_entropy(q, k, mask)
    torch.testing.assert_close(rows.entropy, ent, rtol=0, atol=1e-12)
    assert torch.equal(rows.n_visible, nvis)
    torch.testing.assert_close(rows.first_mass, p0, rtol=0, atol=1e-12)
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
    for key in ("count", "choice_count", "sink_count"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    heads = a.head_frame()
    assert set(heads.state) <= {"overload", "collapse", "normal"}
    s = a.summary()
    assert 0 <= s["overload_fraction"] <= 1 and 0 <= s["sink_rate"] <= 1
    a.save(tmp_path)
    back = AttentionEntropyResult.load(tmp_path)
    np.testing.assert_array_equal(back.entropy_sum, a.entropy_sum)


def test_pattern_entropy_reference():
    p = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]], dtype=torch.float64)
    rows = pattern_entropy(p)
    torch.testing.assert_close(rows.entropy[0, 0], torch.tensor([0.0, math.log(2)], dtype=torch.float64))


def test_bad_inputs():
    with pytest.raises(ValueError, match="n_heads"):
        attention_entropy(torch.zeros(1, 3, 5), torch.zeros(1, 3, 5), n_heads=2)
    with pytest.raises(ValueError, match="threshold"):
        AttentionEntropyProbe(overload_threshold=0.1, collapse_threshold=0.5)
