import math

import numpy as np
import pytest
import torch

from normlens import sites as S
from normlens.probes.attach import attach
from normlens.probes.reduce import use_cpu_kernel
from normlens.probes.stats import ActivationStatsProbe, ActivationStatsResult, histogram_quantile, abs_histogram


@pytest.fixture(params=["cpu_kernel", "torch"])
def reduction_path(request):
    """Run a test once with the fused numba pass and once with the torch operations."""
    previous = use_cpu_kernel(request.param == "cpu_kernel")
    yield request.param
    use_cpu_kernel(previous)


def naive_summary(x):
    x = x.double()
    flat = x.reshape(-1)
    mu = flat.mean()
    d = flat - mu
    m2 = (d**2).mean()
    a = flat.abs()
    rms = x.pow(2).mean(-1).sqrt().reshape(-1)
    return {"mean": mu, "variance": m2, "skewness": (d**3).mean() / m2**1.5,
            "excess_kurtosis": (d**4).mean() / m2**2 - 3, "rms_mean": rms.mean(), "rms_max": rms.max(),
            # the exact median (torch.median returns the lower of the two middle values)
            "max_abs": a.max(), "top2_abs": a.topk(2).values[1], "median_abs": a.quantile(0.5),
            "zero_fraction": (flat == 0).double().mean()}


def test_probe_matches_naive_on_stored_activations(model64, tokens, reduction_path):
    site_names = [S.resid_pre(1), S.norm_out("blocks.0.ln2"), S.mlp_post(0), S.attn_out(1)]
    probe = ActivationStatsProbe(sites=site_names, top_k=4)
    _, cache = model64.run_with_cache(tokens)
    with attach(model64, probe):
        model64(tokens)
    frame = probe.result().to_frame().set_index(["site", "group"])
    for site in site_names:
        x = cache[site]
        for group, part in (("body", x[:, 1:]), ("first", x[:, :1])):
            want = naive_summary(part)
            row = frame.loc[(site, group)]
            for key, value in want.items():
                tol = 0.01 if key == "median_abs" else 1e-9  # the median is a 2^(1/128)-bin histogram
                assert math.isclose(row[key], float(value), rel_tol=tol, abs_tol=1e-12), (site, group, key)
            ch = probe.result().get(site, group).channel
            torch.testing.assert_close(ch.mean, part.reshape(-1, x.shape[-1]).mean(0), rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(ch.variance(), part.reshape(-1, x.shape[-1]).var(0, unbiased=False),
                                       rtol=1e-9, atol=1e-12)
    assert frame.loc[(S.mlp_post(0), "body"), "zero_fraction"] > 0.2  # ReLU zeros are counted


def test_merging_batches_equals_one_pass(model64, tokens, reduction_path):
    one, parts = ActivationStatsProbe(top_k=3), ActivationStatsProbe(top_k=3)
    with attach(model64, one):
        model64(tokens)
    with attach(model64, parts):
        for row in range(tokens.shape[0]):
            model64(tokens[row:row + 1])
    a, b = one.result().to_frame(), parts.result().to_frame()
    assert list(a.site) == list(b.site)
    num = a.select_dtypes("number").columns
    np.testing.assert_allclose(a[num].to_numpy(float), b[num].to_numpy(float), rtol=1e-9, atol=1e-12)
    # and two separately accumulated results merge exactly too
    half1, half2 = ActivationStatsProbe(top_k=3), ActivationStatsProbe(top_k=3)
    with attach(model64, half1):
        model64(tokens[:1])
    with attach(model64, half2):
        model64(tokens[1:])
    c = half1.result().merge(half2.result()).to_frame()
    np.testing.assert_allclose(a[num].to_numpy(float), c[num].to_numpy(float), rtol=1e-9, atol=1e-12)


def test_nan_and_inf_are_counted_not_averaged(reduction_path):
    probe = ActivationStatsProbe(sites=None, top_k=2)
    x = torch.arange(24, dtype=torch.float64).reshape(2, 3, 4)
    x[0, 1, 2] = float("nan")
    x[1, 2, 0] = float("inf")
    probe.update("s", x)
    row = probe.result().to_frame().set_index("group").loc["body"]
    body = x[:, 1:].reshape(-1)
    finite = body[torch.isfinite(body)]
    assert row.nan_count == 1 and row.inf_count == 1 and row.flagged and row.nonfinite_tokens == 2
    assert math.isclose(row["mean"], float(finite.mean()), rel_tol=1e-12)
    assert math.isclose(row["variance"], float(finite.var(unbiased=False)), rel_tol=1e-12)
    assert row.max_abs == float(finite.abs().max())
    assert row.zero_fraction == 0.0
    assert probe.result().to_frame().set_index("group").loc["first", "flagged"] == False  # noqa: E712


def test_histogram_median_and_save_load(tmp_path):
    g = torch.Generator().manual_seed(0)
    a = torch.rand(10001, generator=g) * 50
    med = histogram_quantile(abs_histogram(a))
    assert abs(med / float(a.median()) - 1) < 2 ** (-7)
    probe = ActivationStatsProbe()
    probe.update("s", torch.randn(2, 5, 3, generator=g))
    res = probe.result()
    res.save(tmp_path)
    back = ActivationStatsResult.load(tmp_path)
    np.testing.assert_allclose(back.to_frame().select_dtypes("number").to_numpy(float),
                               res.to_frame().select_dtypes("number").to_numpy(float))


def test_bad_top_k():
    with pytest.raises(ValueError, match="top_k"):
        ActivationStatsProbe(top_k=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_both_paths_match_naive_on_wide_float32_and_per_head_tensors(dtype):
    """Large enough for several threads and 128-row tiles; per-head (b, p, h, d) rows; exact zeros."""
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(5, 70, 3, 40, generator=g) * torch.linspace(0.1, 30, 40) + 2.0).to(dtype)
    x[1, 4, 2, :9] = 0.0
    x[3, 9, 0, 5] = 250.0  # a massive activation
    frames = {}
    for enabled in (True, False):
        previous = use_cpu_kernel(enabled)
        try:
            probe = ActivationStatsProbe(top_k=3)
            probe.update("s", x)
            frames[enabled] = probe.result().to_frame().set_index("group")
        finally:
            use_cpu_kernel(previous)
    body = x[:, 1:].double()
    rows = body.reshape(-1, 40)
    flat = rows.reshape(-1)
    mu = flat.mean()
    dev = flat - mu
    m2 = (dev**2).mean()
    rms = rows.pow(2).mean(-1).sqrt()
    want = {"mean": mu, "variance": m2, "skewness": (dev**3).mean() / m2**1.5,
            "excess_kurtosis": (dev**4).mean() / m2**2 - 3, "rms_mean": rms.mean(), "rms_std": rms.std(unbiased=False),
            "rms_max": rms.max(), "max_abs": flat.abs().max(), "top3_abs": flat.abs().topk(3).values[2],
            "zero_fraction": (flat == 0).double().mean(), "n_tokens": rows.shape[0]}
    tol = 1e-10 if dtype == torch.float64 else 2e-6
    for enabled, frame in frames.items():
        row = frame.loc["body"]
        for key, value in want.items():
            assert math.isclose(row[key], float(value), rel_tol=tol, abs_tol=1e-9), (enabled, key)
        assert abs(row["median_abs"] / float(flat.abs().median()) - 1) < 2 ** -7
        assert frame.loc["first", "n_tokens"] == 5 * 3
    assert row["zero_fraction"] > 0


def test_kernel_falls_back_on_overflow_and_nonfinite_rows():
    """Finite float32 values whose 4th powers overflow, and a NaN row, still give exact float64 answers."""
    x = torch.full((2, 300, 8), 1e12)
    x[:, :, ::2] = -1e12
    x[1, 17, 3] = float("nan")
    probe = ActivationStatsProbe(split_first=False)
    probe.update("s", x)
    row = probe.result().to_frame().iloc[0]
    finite = x.double().reshape(-1)
    finite = finite[torch.isfinite(finite)]
    assert row.nan_count == 1 and row.nonfinite_tokens == 1
    assert math.isclose(row["variance"], float(finite.var(unbiased=False)), rel_tol=1e-12)
    assert math.isclose(row["excess_kurtosis"], float(((finite - finite.mean())**4).mean() / finite.var(unbiased=False)**2 - 3),
                        rel_tol=1e-9, abs_tol=1e-9)


def _variance_in_child(queue):
    probe = ActivationStatsProbe(split_first=False)
    probe.update("s", torch.randn(8, 200, 64, generator=torch.Generator().manual_seed(5)))
    queue.put(float(probe.result().to_frame().iloc[0]["variance"]))


@pytest.mark.skipif("fork" not in __import__("multiprocessing").get_all_start_methods(), reason="needs fork")
def test_statistics_work_in_a_process_forked_after_the_threaded_pass_ran():
    """The worker threads do not survive fork: a forked child starts its own pool."""
    import multiprocessing

    x = torch.randn(8, 200, 64, generator=torch.Generator().manual_seed(5))
    probe = ActivationStatsProbe(split_first=False)
    probe.update("s", x)  # large enough for the parallel pass: the parent's pool is running
    want = float(probe.result().to_frame().iloc[0]["variance"])
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_variance_in_child, args=(queue,))
    child.start()
    child.join(120)
    assert child.exitcode == 0
    assert math.isclose(queue.get(timeout=5), want, rel_tol=1e-6)  # float32 tiles split differently


def test_a_tensor_too_large_for_one_fused_pass_is_split_exactly(monkeypatch):
    import normlens.probes.reduce as reduce_module

    x = torch.randn(6, 50, 16, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    whole = ActivationStatsProbe(top_k=3)
    whole.update("s", x)
    monkeypatch.setattr(reduce_module, "KERNEL_MAX_ELEMENTS", 2 * 50 * 16)  # three passes of two sequences
    calls = []
    original = reduce_module.cpu_kernel.reduce_rows
    monkeypatch.setattr(reduce_module.cpu_kernel, "reduce_rows",
                        lambda part, *args: calls.append(part.shape[0]) or original(part, *args))
    split = ActivationStatsProbe(top_k=3)
    split.update("s", x)
    assert calls[:3] == [2, 2, 2]  # the body in three passes (then the buffered position-0 rows)
    a, b = whole.result().to_frame(), split.result().to_frame()
    num = a.select_dtypes("number").columns
    np.testing.assert_allclose(a[num].to_numpy(float), b[num].to_numpy(float), rtol=1e-10, atol=1e-12)


def test_the_fused_pass_leaves_torchs_thread_count_alone():
    """numba's OpenMP layer reset torch's intra-op thread count on its first launch (issue 14).

    Checked in a fresh process: the reset happened once per process, at the first parallel pass."""
    import subprocess
    import sys

    code = ("import torch\n"
            "from normlens.probes.stats import ActivationStatsProbe\n"
            "torch.set_num_threads(1)\n"
            "probe = ActivationStatsProbe()\n"
            "probe.update('s', torch.randn(8, 512, 64))\n"
            "probe.result()\n"
            "print(torch.get_num_threads())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.split()[-1] == "1"


@pytest.mark.parametrize("n_threads", [1, 3])
def test_fused_pass_is_exact_for_any_number_of_threads(n_threads, monkeypatch):
    import normlens.probes.cpu_kernel as kernel

    monkeypatch.setattr(kernel, "MIN_ROWS_PER_THREAD", 8)
    previous = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        assert kernel.n_threads_for(100) == n_threads
        x = torch.randn(5, 41, 24, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        x[2, 7] = 0.0
        probe = ActivationStatsProbe(top_k=4)
        probe.update("s", x)
        row = probe.result().to_frame().set_index("group").loc["body"]
    finally:
        torch.set_num_threads(previous)
    want = naive_summary(x[:, 1:])
    for key, value in want.items():
        tol = 0.01 if key == "median_abs" else 1e-10
        assert math.isclose(row[key], float(value), rel_tol=tol, abs_tol=1e-12), key


def test_histogram_median_within_one_bin_of_the_exact_median():
    """Small and even counts included: the old rule returned the lower middle bin ([1, 2] -> 1.008)."""
    g = np.random.default_rng(0)
    for n in list(range(1, 41)) + [101, 1000]:
        for _ in range(5):
            a = np.exp(g.normal(0, 3, n)) * g.choice([-1, 1], n)
            a[g.random(n) < 0.2] = 0.0
            exact = float(np.median(np.abs(a)))
            t = torch.from_numpy(a).float()
            est = histogram_quantile(abs_histogram(t.abs()), zeros=int((t == 0).sum()))
            assert abs(est - exact) <= 2 ** -7 * exact + 1e-30, (n, est, exact)
    assert abs(histogram_quantile(abs_histogram(torch.tensor([1.0, 2.0]))) - 1.5) < 1.5 * 2 ** -7


def test_median_of_small_first_position_groups(reduction_path):
    x = torch.tensor([[[1.0, -2.0]], [[4.0, 8.0]]])  # first group: 4 entries, exact median 3
    probe = ActivationStatsProbe(split_first=True)
    probe.update("s", torch.cat([x, torch.ones(2, 1, 2)], 1))
    row = probe.result().to_frame().set_index("group").loc["first"]
    assert abs(row["median_abs"] - 3.0) <= 3.0 * 2 ** -7


def test_mostly_zero_activations_have_median_zero_and_no_massive_ratio(reduction_path):
    """ReLU output with >= half exact zeros: median 0 (was ~1e-40) and max/median undefined (was ~1e40)."""
    g = torch.Generator().manual_seed(1)
    x = torch.relu(torch.randn(4, 16, 32, generator=g) - 0.5)  # ~69 % zeros
    probe = ActivationStatsProbe(split_first=False)
    probe.update("s", x)
    row = probe.result().to_frame().iloc[0]
    assert (x == 0).double().mean() > 0.5
    assert row["median_abs"] == 0.0
    assert math.isnan(row["massive_ratio"])
    y = torch.relu(torch.randn(4, 16, 32, generator=g) + 1.0)  # a few zeros, median positive
    probe = ActivationStatsProbe(split_first=False)
    probe.update("s", y)
    row = probe.result().to_frame().iloc[0]
    exact = float(np.median(y.reshape(-1).numpy().astype(np.float64)))
    assert abs(row["median_abs"] - exact) <= exact * 2 ** -7
    assert math.isclose(row["massive_ratio"], float(y.max()) / row["median_abs"])


def test_one_tensor_at_two_sites_over_several_forwards(model64, tokens, reduction_path):
    """Running totals are added into in place; a part shared by two sites (one tensor) must stay intact."""
    a, b = S.resid_pre(1), S.norm_in("blocks.1.ln1")  # Pre-LN: the same tensor
    probe = ActivationStatsProbe(sites=[a, b])
    with attach(model64, probe):
        for part in tokens.split(1):
            model64(part)
    frame = probe.result().to_frame().set_index(["site", "group"])
    _, cache = model64.run_with_cache(tokens)
    for site in (a, b):
        want = naive_summary(cache[a][:, 1:])
        for key in ("mean", "variance", "excess_kurtosis", "max_abs", "rms_mean"):
            assert math.isclose(frame.loc[(site, "body"), key], float(want[key]), rel_tol=1e-9), (site, key)
    assert frame.loc[(a, "body"), "count"] == frame.loc[(b, "body"), "count"] == 3 * 11 * 16
