"""Property-based tests (hypothesis) of the numeric cores' invariants, each against an
independent float64 NumPy reference:

* streaming statistics: any split into batches, any merge order (within a probe and
  across "processes") gives the statistics of the concatenation; NaN/inf counted and
  excluded, exact zeros counted;
* attention entropy: 0 <= H <= log(n_visible), equal to the materialized softmax's
  entropy; uniform rows give log n, one-hot rows give 0;
* filter normalization (Li et al. 2018): per output unit ‖d_i‖ = ‖θ_i‖ for Linear,
  GPT-2 Conv1D, Embedding, (transposed) convolutions; 1-D parameters zero or copied;
* save/load round trips are exact (curvature results, directions, npz, tables,
  zoo checkpoints).
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from normlens.curvature.results import DensityResult, EigenResult, TraceResult
from normlens.io import load_frame, read_npz, save_frame, write_npz
from normlens.kernels.online_entropy import blockwise_attention_entropy, compute_attention_entropy
from normlens.landscape.directions import Directions, normalize_direction, random_directions
from normlens.probes.moments import Moments
from normlens.probes.reduce import use_cpu_kernel
from normlens.probes.stats import ActivationStatsProbe

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- helpers ---------------------------------------------------------------------------------

def _split(data, n: int, min_parts: int = 1) -> list[tuple[int, int]]:
    """A random split of range(n) into contiguous, non-empty [start, stop) pieces."""
    cuts = data.draw(st.sets(st.integers(1, n - 1), max_size=n - 1)) if n > 1 else set()
    bounds = [0, *sorted(cuts), n]
    return list(zip(bounds[:-1], bounds[1:]))


def _merge_in_random_order(data, items: list, merge) -> object:
    """Merge ``items`` pairwise in a random tree order (any two, either way round)."""
    items = list(items)
    while len(items) > 1:
        i = data.draw(st.integers(0, len(items) - 1))
        a = items.pop(i)
        j = data.draw(st.integers(0, len(items) - 1))
        b = items.pop(j)
        items.append(merge(a, b) if data.draw(st.booleans()) else merge(b, a))
    return items[0]


def _ref_moments(x: np.ndarray) -> tuple[int, float, float, float]:
    """count, mean, population variance, excess kurtosis of a 1-D float64 array (NaN where undefined)."""
    n = x.size
    if n == 0:
        return 0, math.nan, math.nan, math.nan
    mean = float(np.mean(x))
    dev = x - mean
    m2, m4 = float(np.sum(dev**2)), float(np.sum(dev**4))
    kurt = n * m4 / m2**2 - 3 if m2 > 0 else math.nan
    return n, mean, m2 / n, kurt


def _close(got: float, want: float, rtol: float, atol: float) -> bool:
    if math.isnan(want):
        return math.isnan(got)
    return abs(got - want) <= atol + rtol * abs(want)


@st.composite
def _grid_arrays(draw, dtype, max_rows: int = 24, max_cols: int = 4):
    """(n, d) arrays of small integers times 2^k plus an offset: exact in float32, any scale."""
    n = draw(st.integers(1, max_rows))
    d = draw(st.integers(1, max_cols))
    ints = draw(hnp.arrays(np.int64, (n, d), elements=st.integers(-64, 64)))
    scale = 2.0 ** draw(st.integers(-4, 4))
    offset = draw(st.just(0) | st.integers(-200, 200))
    return ((ints + offset) * scale).astype(dtype)


# -- streaming statistics --------------------------------------------------------------------

@FAST
@given(x=_grid_arrays(np.float64), data=st.data())
def test_moments_any_split_any_merge_order_equals_one_pass(x, data):
    parts = [Moments.from_batch(torch.from_numpy(x[a:b])) for a, b in _split(data, x.shape[0])]
    if data.draw(st.booleans()):
        parts.append(Moments.empty((x.shape[1],)))  # an empty accumulator (a process that saw nothing)
    merged = _merge_in_random_order(data, parts, Moments.merge)
    scale = float(np.abs(x).max()) or 1.0
    for c in range(x.shape[1]):
        n, mean, var, kurt = _ref_moments(x[:, c])
        assert float(merged.count[c]) == n
        assert _close(float(merged.mean[c]), mean, 1e-12, 1e-12 * scale)
        assert _close(float(merged.variance()[c]), var, 1e-9, 1e-12 * scale**2)
        assert _close(float(merged.excess_kurtosis()[c]), kurt, 1e-7, 1e-7)
    n, mean, var, kurt = _ref_moments(x.reshape(-1))
    pooled = merged.pooled()
    assert float(pooled.count) == n
    assert _close(float(pooled.mean), mean, 1e-12, 1e-12 * scale)
    assert _close(float(pooled.variance()), var, 1e-9, 1e-12 * scale**2)
    assert _close(float(pooled.excess_kurtosis()), kurt, 1e-7, 1e-7)


SPECIALS = (0.0, -0.0, math.nan, math.inf, -math.inf, 1e-40)  # 1e-40: a float32 denormal, not a zero


@st.composite
def _activations(draw):
    """float32 (n, d) activations on a grid, some entries replaced by 0, -0, NaN, ±inf, denormals."""
    x = draw(_grid_arrays(np.float32, max_rows=20, max_cols=5))
    n_special = draw(st.integers(0, x.size))  # up to every entry: few finite values stress top-k and counts
    for _ in range(n_special):
        i, j = draw(st.integers(0, x.shape[0] - 1)), draw(st.integers(0, x.shape[1] - 1))
        x[i, j] = draw(st.sampled_from(SPECIALS))
    return x


@FAST
@given(x=_activations(), kernel=st.booleans(), data=st.data())
def test_activation_stats_any_batching_and_process_merge_equals_numpy(x, kernel, data):
    batches = [x[a:b] for a, b in _split(data, x.shape[0])]
    n_proc = data.draw(st.integers(1, len(batches)))
    owner = [data.draw(st.integers(0, n_proc - 1)) for _ in batches]
    owner[:n_proc] = range(n_proc)  # every process sees at least one batch
    previous = use_cpu_kernel(kernel)
    try:
        results = []
        for p in range(n_proc):
            probe = ActivationStatsProbe(sites=["s"], top_k=3, split_first=False)
            for batch, o in zip(batches, owner):
                if o == p:
                    shape = data.draw(st.sampled_from(["2d", "3d"]))  # (n, d) or (1, n, d)
                    t = torch.from_numpy(batch.copy())
                    probe.update("s", t if shape == "2d" else t[None])
            results.append(probe.result())
    finally:
        use_cpu_kernel(previous)
    merged = _merge_in_random_order(data, results, lambda a, b: a.merge(b))
    g = merged.get("s")
    summary = g.summary()

    x64 = x.astype(np.float64)
    finite = np.isfinite(x64)
    n, mean, var, kurt = _ref_moments(x64[finite])
    scale = float(np.abs(x64[finite]).max()) if finite.any() else 1.0
    assert summary["count"] == n
    assert _close(summary["mean"], mean, 1e-6, 1e-6 * scale)
    assert _close(summary["variance"], var, 1e-5, 1e-6 * scale**2)
    assert _close(summary["excess_kurtosis"], kurt, 1e-4, 1e-4)
    assert summary["max_abs"] == (float(np.abs(x64[finite]).max()) if finite.any() else 0.0)
    top = np.sort(np.abs(x64[finite]))[::-1][:3]
    np.testing.assert_array_equal(g.top.numpy(), top)
    assert summary["nan_count"] == int(np.isnan(x64).sum())
    assert summary["inf_count"] == int(np.isinf(x64).sum())
    assert summary["nonfinite_tokens"] == int((~finite).any(1).sum())
    assert summary["n_tokens"] == x.shape[0]
    assert g.n_entries == x.size
    assert g.zeros == int((x64 == 0).sum())  # -0.0 is a zero; denormals are not
    for c in range(x.shape[1]):
        col = x64[:, c][finite[:, c]]
        n_c, mean_c, var_c, _ = _ref_moments(col)
        assert float(g.channel.count[c]) == n_c
        if n_c:
            assert _close(float(g.channel.mean[c]), mean_c, 1e-6, 1e-6 * scale)
            assert _close(float(g.channel.variance()[c]), var_c, 1e-5, 1e-6 * scale**2)

    with tempfile.TemporaryDirectory() as tmp:  # the merged result survives save/load exactly
        loaded = type(merged).load(merged.save(tmp))
    a, b = g.to_arrays(""), loaded.get("s").to_arrays("")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("rows", [[[math.nan, 0.0]], [[math.nan], [0.0], [0.0], [0.0]], [[math.inf, 2.0], [0.0, 1.0]]])
def test_top_abs_values_are_finite_entries_only(rows):
    # regression: the zeros standing in for NaN/inf used to enter the top-k |x| (and top2/top3_abs)
    x = np.array(rows, dtype=np.float32)
    probe = ActivationStatsProbe(sites=["s"], top_k=3, split_first=False)
    probe.update("s", torch.from_numpy(x))
    finite = np.abs(x[np.isfinite(x)]).astype(np.float64)
    np.testing.assert_array_equal(probe.result().get("s").top.numpy(), np.sort(finite)[::-1][:3])


# -- attention entropy -----------------------------------------------------------------------

def _ref_entropy(q: np.ndarray, k: np.ndarray, causal: bool, keep: np.ndarray | None):
    """Materialized float64 softmax: (entropy, logsumexp, n_visible), each (b, h, n_q)."""
    b, h, n_q, d = q.shape
    n_k = k.shape[2]
    s = np.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(d)
    vis = np.ones((b, 1, n_q, n_k), dtype=bool)
    if causal:
        vis &= np.arange(n_k)[None, :] <= np.arange(n_q)[:, None]
    if keep is not None:
        vis &= keep[:, None, None, :]
    vis = np.broadcast_to(vis, s.shape)
    ent = np.zeros((b, h, n_q))
    lse = np.full((b, h, n_q), -np.inf)
    for idx in np.ndindex(b, h, n_q):
        row = s[idx][vis[idx]]
        if row.size:
            z = row - row.max()
            p = np.exp(z) / np.exp(z).sum()
            ent[idx] = -np.sum(p[p > 0] * np.log(p[p > 0]))
            lse[idx] = row.max() + math.log(np.exp(z).sum())
    return ent, lse, vis.sum(-1)


@st.composite
def _qk(draw, dtype=np.float64, same_length: bool = False):
    b, h, d = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 4))
    n_q = draw(st.integers(1, 9))
    n_k = n_q if same_length else draw(st.integers(1, 9))
    gain = draw(st.sampled_from([0.1, 1.0, 4.0, 12.0]))  # flat to peaked softmax
    elements = st.floats(-2, 2, allow_nan=False, width=32)
    q = draw(hnp.arrays(dtype, (b, h, n_q, d), elements=elements)) * gain
    k = draw(hnp.arrays(dtype, (b, h, n_k, d), elements=elements))
    keep = draw(hnp.arrays(np.bool_, (b, n_k))) if draw(st.booleans()) else None
    return q.astype(dtype), k.astype(dtype), keep


@FAST
@given(qk=_qk(), causal=st.booleans(), block=st.integers(1, 5))
def test_blockwise_entropy_bounds_and_equals_materialized_softmax(qk, causal, block):
    q, k, keep = qk  # causal with n_q != n_k: positions aligned at 0
    mask = None if keep is None else torch.from_numpy(keep)
    out = blockwise_attention_entropy(torch.from_numpy(q), torch.from_numpy(k), causal=causal,
                                      key_padding_mask=mask, block_size=block)
    ent, lse, n_vis = _ref_entropy(q, k, causal, keep)
    h = out.entropy.numpy()
    assert np.all(h >= 0)
    assert np.all(h <= np.log(np.maximum(n_vis, 1)) + 1e-12)
    np.testing.assert_allclose(h, ent, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(np.isinf(out.logsumexp.numpy()), n_vis == 0)
    np.testing.assert_allclose(out.logsumexp.numpy()[n_vis > 0], lse[n_vis > 0], rtol=1e-12, atol=1e-12)
    normalized = out.normalized.numpy()
    choice = n_vis > 1
    np.testing.assert_allclose(normalized[choice], (ent / np.log(np.maximum(n_vis, 2)))[choice],
                               rtol=1e-9, atol=1e-12)
    assert np.all(normalized[~choice] == 0)


def _triton_on_cpu() -> bool:
    try:
        from normlens.kernels._launch import interpreting
        from normlens.kernels.config import is_available
    except ImportError:
        return False
    return is_available() and interpreting()


@pytest.mark.skipif(not _triton_on_cpu(), reason="needs triton with TRITON_INTERPRET=1")
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(qk=_qk(np.float32, same_length=True), causal=st.booleans())
def test_fused_entropy_kernel_bounds_and_equals_materialized_softmax(qk, causal):
    q, k, keep = qk
    mask = None if keep is None else torch.from_numpy(keep)
    out = compute_attention_entropy(torch.from_numpy(q), torch.from_numpy(k), causal=causal,
                                    key_padding_mask=mask, backend="triton")
    ent, _, n_vis = _ref_entropy(q.astype(np.float64), k.astype(np.float64), causal, keep)
    h = out.entropy.numpy().astype(np.float64)
    assert np.all(h >= 0)
    assert np.all(h <= np.log(np.maximum(n_vis, 1)) + 1e-5)
    np.testing.assert_allclose(h, ent, rtol=1e-4, atol=1e-5)


@FAST
@given(n=st.integers(1, 12), d=st.integers(1, 4), causal=st.booleans(), block=st.integers(1, 6),
       level=st.floats(-5, 5), hot=st.data())
def test_uniform_rows_give_log_n_and_one_hot_rows_give_zero(n, d, causal, block, level, hot):
    # all-equal scores: q = 0 -> every visible key has the same score -> H = log(n_visible)
    q = torch.zeros(1, 1, n, d, dtype=torch.float64)
    k = torch.full((1, 1, n, d), level, dtype=torch.float64)
    out = blockwise_attention_entropy(q, k, causal=causal, block_size=block)
    n_vis = np.arange(1, n + 1) if causal else np.full(n, n)
    np.testing.assert_allclose(out.entropy[0, 0].numpy(), np.log(n_vis), rtol=1e-12, atol=1e-12)
    # one key far above the rest (non-causal: every query sees it) -> H ~ 0
    j = hot.draw(st.integers(0, n - 1))
    k = torch.zeros(1, 1, n, d, dtype=torch.float64)
    k[0, 0, j, 0] = 1.0
    q = torch.zeros(1, 1, n, d, dtype=torch.float64)
    q[..., 0] = 60.0 * math.sqrt(d)  # score 60 on key j, 0 elsewhere
    out = blockwise_attention_entropy(q, k, causal=False, block_size=block)
    assert torch.all(out.entropy <= 1e-20) and torch.all(out.entropy >= 0)


# -- filter normalization --------------------------------------------------------------------

def _conv1d_class():
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    return Conv1D


LAYERS = ("linear", "conv1d_hf", "embedding", "conv", "conv_transpose")


def _layer(kind: str, a: int, b: int, groups: int) -> tuple[nn.Module, int, int]:
    """(module, output axis of its weight, groups) — written out here, not taken from filters.py."""
    if kind == "linear":
        return nn.Linear(a, b), 0, 1
    if kind == "conv1d_hf":
        return _conv1d_class()(b, a), 1, 1  # Conv1D(nf=out, nx=in): weight (in, out)
    if kind == "embedding":
        return nn.Embedding(a, b), 0, 1
    if kind == "conv":
        return nn.Conv1d(a * groups, b * groups, 2, groups=groups), 0, 1
    return nn.ConvTranspose1d(a * groups, b * groups, 2, groups=groups), 1, groups


def _ref_unit_norms(w: np.ndarray, axis: int, groups: int) -> np.ndarray:
    """Norm of every output unit's entries, by an explicit loop over units."""
    if groups == 1:
        return np.array([np.linalg.norm(np.take(w, i, axis=axis)) for i in range(w.shape[axis])])
    in_per_group, out_per_group = w.shape[0] // groups, w.shape[1]
    return np.array([np.linalg.norm(w[j * in_per_group:(j + 1) * in_per_group, c])
                     for j in range(groups) for c in range(out_per_group)])


@FAST
@given(kinds=st.lists(st.sampled_from(LAYERS), min_size=1, max_size=3), a=st.integers(1, 4), b=st.integers(1, 4),
       groups=st.integers(1, 2), one_d=st.sampled_from(["zero", "copy"]), seed=st.integers(0, 2**31 - 1),
       dead_unit=st.booleans(), through_builder=st.booleans())
def test_filter_normalized_units_have_the_weights_unit_norms(kinds, a, b, groups, one_d, seed, dead_unit,
                                                             through_builder):
    gen = torch.Generator().manual_seed(seed)
    specs = [_layer(kind, a, b, groups) for kind in kinds]
    model = nn.ModuleDict({f"m{i}": m for i, (m, _, _) in enumerate(specs)})
    model.add_module("norm", nn.LayerNorm(b))
    model.double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
        if dead_unit:  # a unit of θ that is all zero gets a zero direction
            first = specs[0]
            torch.select(model["m0"].weight, first[1], 0).zero_()
    params = dict(model.named_parameters())
    if through_builder:
        direction = random_directions(model, 1, normalization="filter", one_d=one_d, seed=seed).axes[0]
        raw = None
    else:
        raw = {n: torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in params.items()}
        direction = normalize_direction(raw, model, "filter", one_d)
    for i, (_, axis, g) in enumerate(specs):
        name = f"m{i}.weight"
        d, w = direction[name].numpy(), params[name].detach().numpy()
        np.testing.assert_allclose(_ref_unit_norms(d, axis, g), _ref_unit_norms(w, axis, g), rtol=1e-12, atol=1e-12)
        if raw is not None:  # each unit only rescaled: d_i is a non-negative multiple of raw d_i
            r = raw[name].numpy()
            for unit in range(w.shape[axis]) if g == 1 else []:
                du, ru = np.take(d, unit, axis=axis), np.take(r, unit, axis=axis)
                factor = np.linalg.norm(du) / np.linalg.norm(ru)
                np.testing.assert_allclose(du, factor * ru, rtol=1e-12, atol=1e-12)
    for name, p in params.items():
        if p.dim() <= 1:  # biases, norm gains: zero or θ, never normalized
            want = torch.zeros_like(p) if one_d == "zero" else p.detach()
            assert torch.equal(direction[name], want), name


@FAST
@given(shape=hnp.array_shapes(min_dims=2, max_dims=3, max_side=4), seed=st.integers(0, 2**31 - 1))
def test_layer_normalized_tensor_has_the_weights_norm(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    theta = {"w": torch.randn(shape, generator=gen, dtype=torch.float64)}
    raw = {"w": torch.randn(shape, generator=gen, dtype=torch.float64)}
    d = normalize_direction(raw, theta, "layer")["w"]
    assert math.isclose(float(d.norm()), float(theta["w"].norm()), rel_tol=1e-12)


# -- save/load round trips -------------------------------------------------------------------

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=8)  # any text but lone surrogates
FLOAT = st.floats(allow_nan=True, allow_infinity=True)
NUMERIC_DTYPES = (np.float16, np.float32, np.float64, np.int8, np.int32, np.int64, np.uint8, np.bool_,
                  np.complex64)


def _f64(shape) -> st.SearchStrategy:
    return hnp.arrays(np.float64, shape, elements=FLOAT)


def _same(a, b) -> bool:
    """Exactly equal: arrays bit for bit (dtype, shape, bytes), floats including NaN, containers by item."""
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, float):
        return isinstance(b, float) and (a == b or (math.isnan(a) and math.isnan(b)))
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _assert_round_trip(result) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = result.save(Path(tmp) / "r.npz")
        loaded = type(result).load(path)
    for f in result.__dataclass_fields__:
        assert _same(getattr(result, f), getattr(loaded, f)), (f, getattr(result, f), getattr(loaded, f))


@st.composite
def _eigen_results(draw):
    k, n = draw(st.integers(0, 4)), draw(st.integers(0, 5))
    names = tuple(draw(st.lists(TEXT, max_size=3)))
    return EigenResult(
        eigenvalues=draw(_f64((k,))), eigenvectors=draw(_f64((n, k))), residuals=draw(_f64((k,))),
        converged=draw(hnp.arrays(np.bool_, (k,))),
        ends=tuple(draw(st.lists(st.sampled_from(["largest", "smallest", "magnitude"]), min_size=k, max_size=k))),
        n_steps=draw(st.integers(0, 10**6)), n_matvecs=draw(st.integers(0, 10**9)), tol=draw(FLOAT),
        seed=draw(st.integers(-2**63, 2**63 - 1)), param_names=names,
        param_shapes=tuple(tuple(draw(st.lists(st.integers(0, 9), max_size=3))) for _ in names),
        which=draw(st.sampled_from(["largest", "smallest", "both", "magnitude"])),
        warning=draw(TEXT), excluded=draw(TEXT))


@st.composite
def _trace_results(draw):
    return TraceResult(
        estimate=draw(FLOAT), std_error=draw(FLOAT), method=draw(TEXT), n_matvecs=draw(st.integers(0, 10**9)),
        n=draw(st.integers(0, 10**9)), seed=draw(st.integers(0, 2**32)), samples=draw(_f64((draw(st.integers(0, 6)),))),
        exact_part=draw(FLOAT), note=draw(TEXT))


@st.composite
def _density_results(draw):
    g, p, s = draw(st.integers(0, 6)), draw(st.integers(0, 3)), draw(st.integers(0, 4))
    return DensityResult(
        grid=draw(_f64((g,))), density=draw(_f64((g,))), nodes=draw(_f64((p, s))), weights=draw(_f64((p, s))),
        sigma=draw(FLOAT), n=draw(st.integers(0, 10**9)), n_probes=p, n_steps=s, seed=draw(st.integers(0, 2**32)),
        excluded=draw(TEXT))


@FAST
@given(result=st.one_of(_eigen_results(), _trace_results(), _density_results()))
def test_curvature_results_round_trip_exactly(result):
    _assert_round_trip(result)


KEY = st.lists(st.text("abcxyz019_", min_size=1, max_size=4), min_size=1, max_size=3).map("/".join)


def _any_array() -> st.SearchStrategy:
    shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
    numeric = st.sampled_from(NUMERIC_DTYPES).flatmap(lambda dt: hnp.arrays(dt, shapes))
    chars = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")  # numpy strips trailing NULs
    text = hnp.unicode_string_dtypes(max_len=5).flatmap(
        lambda dt: hnp.arrays(dt, shapes, elements=st.text(chars, max_size=dt.itemsize // 4)))
    return st.one_of(numeric, text)


@FAST
@given(arrays=st.dictionaries(KEY, _any_array(), max_size=4))
def test_npz_round_trip_is_bit_exact(arrays):
    with tempfile.TemporaryDirectory() as tmp:
        back = read_npz(write_npz(Path(tmp) / "a.npz", **arrays))
    assert back.keys() == arrays.keys()
    for key, value in arrays.items():
        assert _same(value, back[key]), (key, value, back[key])


@st.composite
def _frames(draw, min_rows: int = 0, floats: st.SearchStrategy = FLOAT):
    n = draw(st.integers(min_rows, 6))
    columns = draw(st.lists(st.text("abcdefgh", min_size=1, max_size=4), min_size=1, max_size=4, unique=True))
    data = {}
    for name in columns:
        kind = draw(st.sampled_from(["float", "int", "bool", "str"]))
        if kind == "float":
            data[name] = np.array(draw(st.lists(floats, min_size=n, max_size=n)), dtype=np.float64)
        elif kind == "int":
            data[name] = np.array(draw(st.lists(st.integers(-2**63, 2**63 - 1), min_size=n, max_size=n)),
                                  dtype=np.int64)
        elif kind == "bool":
            data[name] = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
        else:
            data[name] = pd.Series(draw(st.lists(TEXT, min_size=n, max_size=n)), dtype="str")
    return pd.DataFrame(data)


@FAST
@given(frame=_frames())
def test_parquet_tables_round_trip_exactly(frame):
    with tempfile.TemporaryDirectory() as tmp:
        back = load_frame(save_frame(frame, Path(tmp) / "t.parquet"))
    pd.testing.assert_frame_equal(back, frame, check_exact=True)


@FAST
@given(frame=_frames(min_rows=1))
def test_json_tables_round_trip_exactly_with_nonfinite_as_nan(frame):
    # .json tables are strict JSON: NaN and ±inf are written as null and read back as NaN;
    # a frame without rows reads back without columns (records orient)
    with tempfile.TemporaryDirectory() as tmp:
        back = load_frame(save_frame(frame, Path(tmp) / "t.json"))
    floats = [c for c in frame if frame[c].dtype == np.float64]
    pd.testing.assert_frame_equal(back.drop(columns=floats), frame.drop(columns=floats), check_exact=True)
    for c in floats:
        want = np.where(np.isfinite(frame[c].to_numpy()), frame[c].to_numpy(), np.nan)
        np.testing.assert_array_equal(back[c].to_numpy(np.float64), want)


@st.composite
def _directions(draw):
    n_axes = draw(st.integers(1, 2))
    names = draw(st.lists(st.text("abc.", min_size=1, max_size=5), min_size=1, max_size=3, unique=True))
    dtypes = [draw(st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64])) for _ in names]
    shapes = [draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3)) for _ in names]

    def tensor(shape, dtype):
        values = draw(hnp.arrays(np.float32, shape, elements=st.floats(width=32)))
        return torch.from_numpy(values).to(dtype)

    axes = tuple({n: tensor(s, dt) for n, s, dt in zip(names, shapes, dtypes)} for _ in range(n_axes))
    buffers = ()
    if draw(st.booleans()):
        buffers = tuple({"buf": tensor((2,), torch.float32)} for _ in range(n_axes))
    json_value = st.recursive(st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.floats(allow_nan=False)
                              | TEXT, lambda inner: st.lists(inner, max_size=3)
                              | st.dictionaries(TEXT, inner, max_size=3), max_leaves=6)
    return Directions(axes, draw(st.sampled_from(["random", "hessian", "pca", "interpolation"])),
                      draw(st.sampled_from(["filter", "layer", "none", "unit"])),
                      draw(st.sampled_from(["zero", "copy", "included"])),
                      draw(st.none() | st.integers(0, 2**31)), draw(st.dictionaries(TEXT, json_value, max_size=3)),
                      buffers)


def _same_tensors(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(
        a[n].dtype == b[n].dtype and a[n].shape == b[n].shape
        and torch.equal(a[n].view(-1).view(torch.uint8) if a[n].numel() else a[n],
                        b[n].view(-1).view(torch.uint8) if b[n].numel() else b[n]) for n in a)


@FAST
@given(directions=_directions())
def test_directions_round_trip_exactly(directions):
    with tempfile.TemporaryDirectory() as tmp:
        back = Directions.load(directions.save(Path(tmp) / "d.safetensors"))
    assert (back.kind, back.normalization, back.one_d, back.seed) == (
        directions.kind, directions.normalization, directions.one_d, directions.seed)
    assert back.info == directions.info
    assert len(back.axes) == len(directions.axes) and len(back.buffers) == len(directions.buffers)
    for mine, theirs in zip(directions.axes + directions.buffers, back.axes + back.buffers):
        assert _same_tensors(mine, theirs)
    assert back.fingerprint() == directions.fingerprint()


@FEW
@given(norm=st.sampled_from(["ln", "rms", "dyt", "none", "lnfree"]),
       placement=st.sampled_from(["pre", "post", "mix", "scaled"]), act_fn=st.sampled_from(["gelu", "relu"]),
       n_layers=st.integers(1, 2), n_heads=st.sampled_from([1, 2]), seed=st.integers(0, 2**31 - 1))
def test_zoo_checkpoint_round_trip_gives_bit_identical_logits(norm, placement, act_fn, n_layers, n_heads, seed):
    from normlens.models import build_model
    from normlens.models.checkpoint import load_checkpoint, save_checkpoint

    model = build_model(norm=norm, placement=placement, act_fn=act_fn, n_layers=n_layers, d_model=8,
                        n_heads=n_heads, n_ctx=6, d_vocab=16, seed=seed % 1000)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # move every state tensor off its init (persistent buffers too: a frozen std)
        for t in model.state_dict(keep_vars=True).values():
            if t.is_floating_point():
                t.add_(0.1 * torch.randn(t.shape, generator=gen, dtype=t.dtype))
    tokens = torch.randint(0, 16, (2, 6), generator=gen)
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(model, Path(tmp) / "ck", extra={"step": seed})
        loaded = load_checkpoint(Path(tmp) / "ck")
    assert loaded.normlens_config == model.normlens_config
    mine, theirs = model.state_dict(), loaded.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[n], theirs[n]) for n in mine)
    with torch.no_grad():
        assert torch.equal(model(tokens), loaded(tokens))
