"""Padded tokens: the (batch, pos) real-token mask behind 2-D and 4-D attention masks, and probes that skip pads."""
import math
import warnings

import numpy as np
import pytest
import torch

from normlens import sites as S
from normlens.probes.attach import HF_MASKS, NATIVE_MASKS, BatchContext, attach, mask_rules, real_token_mask
from normlens.probes.attention import AttentionEntropyProbe, PatternEntropyProbe
from normlens.probes.stats import ActivationStatsProbe


def _padding(n_pos=12):
    mask = torch.ones(3, n_pos, dtype=torch.bool)
    mask[0, :4] = False  # left padding
    mask[2, 9:] = False  # right padding
    return mask


def _four_d(mask, causal=True, additive=False, unmask_unattended=False):
    n = mask.shape[1]
    allowed = mask[:, None, None, :].expand(-1, 2, n, -1)
    if causal:
        allowed = allowed & torch.ones(n, n, dtype=torch.bool).tril()
    if unmask_unattended:  # Hugging Face's SDPA path: fully hidden rows attend everywhere
        allowed = allowed | ~allowed.any(-1, keepdim=True)
    if additive:
        return torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    return allowed


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("additive", [False, True])
@pytest.mark.parametrize("unmask", [False, True])
def test_real_token_mask_from_4d_padding_masks(causal, additive, unmask):
    mask = _padding()
    four = _four_d(mask, causal, additive, unmask)
    torch.testing.assert_close(real_token_mask(four), mask)
    torch.testing.assert_close(real_token_mask(four[:, 0]), mask)  # 3-D
    native = four if additive else ~four  # TransformerLens native attention: bool True = hidden
    torch.testing.assert_close(real_token_mask(native, NATIVE_MASKS), mask)
    assert real_token_mask(mask.long()).dtype == torch.bool


def test_bool_convention_follows_the_model(model64):
    assert mask_rules(model64) == NATIVE_MASKS
    assert mask_rules(torch.nn.Linear(2, 2)) == HF_MASKS
    hidden_pads = ~_padding()[:, None, None, :].expand(-1, 1, 12, -1)  # True = this key is a pad
    torch.testing.assert_close(real_token_mask(hidden_pads, NATIVE_MASKS), _padding())
    torch.testing.assert_close(real_token_mask(~hidden_pads, HF_MASKS), _padding())


def test_masks_that_are_not_padding_give_no_mask():
    n = 8
    i = torch.arange(n)
    window = ((i[:, None] - i[None]) >= 0) & ((i[:, None] - i[None]) < 3)  # sliding window
    assert real_token_mask(window[None, None].expand(2, 1, n, n)) is None
    packed = (i[:, None] // 4 == i[None] // 4) & (i[:, None] >= i[None])  # two documents in one row
    assert real_token_mask(packed[None, None]) is None
    assert real_token_mask(torch.ones(2, 1, 3, 8, dtype=torch.bool)) is None  # q != k (a KV cache)
    assert real_token_mask(torch.ones(2, 8, 1, 1, 1)) is None
    assert real_token_mask(None) is None
    ctx = BatchContext(attention_mask=window[None, None])
    assert ctx.attention_mask is None and ctx.model_mask is not None
    no_pad = real_token_mask(torch.ones(n, n, dtype=torch.bool).tril()[None, None].expand(2, 1, n, n))
    assert no_pad.shape == (2, n) and bool(no_pad.all())


def _naive(part):
    flat = part.double().reshape(-1)
    mu = flat.mean()
    var = ((flat - mu) ** 2).mean()
    return {"count": flat.numel(), "mean": float(mu), "variance": float(var),
            "max_abs": float(flat.abs().max()), "median_abs": float(np.median(flat.abs().numpy()))}


def _check_groups(frame, x, mask):
    """frame rows (site's body/first) against the real tokens of x (batch, pos, d) alone."""
    first = mask.int().argmax(1)
    first_rows = x[torch.arange(x.shape[0]), first]
    body_mask = mask.clone()
    body_mask[torch.arange(x.shape[0]), first] = False
    for group, part in (("first", first_rows), ("body", x[body_mask])):
        row = frame.loc[group]
        for key, value in _naive(part).items():
            tol = 2 ** -7 if key == "median_abs" else 1e-9
            assert math.isclose(row[key], value, rel_tol=tol, abs_tol=1e-12), (group, key, row[key], value)


def test_stats_probe_counts_only_real_tokens():
    x = torch.randn(4, 12, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # 384 entries
    mask = torch.ones(4, 12, dtype=torch.bool)
    mask[0, :3] = mask[1, 9:] = mask[3, :6] = False  # 36 of 48 tokens real: 288 entries
    x[~mask] = 1e3  # pads that would dominate every statistic
    probe = ActivationStatsProbe()
    probe.update("s", x, attention_mask=mask.long())
    frame = probe.result().to_frame().set_index("group")
    assert frame["count"].sum() == 288 and frame["n_tokens"].sum() == 36
    _check_groups(frame, x, mask)


@pytest.mark.parametrize("kind", ["2d", "4d_bool", "4d_additive"])
def test_attached_probes_skip_pads_with_2d_and_4d_masks(model64, tokens, kind):
    mask = _padding()
    given = {"2d": mask.long(), "4d_bool": ~_four_d(mask),  # the zoo's native attention: True = hidden
             "4d_additive": _four_d(mask, additive=True).double()}[kind]
    site = S.resid_pre(1)
    _, cache = model64.run_with_cache(tokens, attention_mask=given)
    stats, entropy, pattern = ActivationStatsProbe(sites=[site]), AttentionEntropyProbe(), PatternEntropyProbe()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a padding mask is understood: no warning
        with attach(model64, [stats, entropy, pattern]):
            model64(tokens, attention_mask=given)
    _check_groups(stats.result().to_frame().set_index("group"), cache[site], mask)
    a, b = entropy.result(), pattern.result()
    np.testing.assert_allclose(a.entropy_sum, b.entropy_sum, rtol=0, atol=1e-5)
    # the attention probe saw the same (batch, pos) mask as with a 2-D mask: its counts depend on it alone
    reference = AttentionEntropyProbe()
    with attach(model64, reference):
        model64(tokens, attention_mask=mask.long())
    np.testing.assert_array_equal(a.count, reference.result().count)
    unmasked = AttentionEntropyProbe()
    with attach(model64, unmasked):
        model64(tokens)
    assert unmasked.result().count.sum() > a.count.sum()


def test_a_mask_that_is_not_padding_warns_and_counts_every_token(model64, tokens):
    n = tokens.shape[1]
    i = torch.arange(n)
    window = (((i[:, None] - i[None]) >= 0) & ((i[:, None] - i[None]) < 3))[None, None].expand(3, 1, n, n)
    stats = ActivationStatsProbe(sites=[S.resid_pre(1)])
    with attach(model64, stats), pytest.warns(UserWarning, match="not a padding mask"):
        model64(tokens, attention_mask=window)
    assert stats.result().to_frame()["n_tokens"].sum() == tokens.numel()
