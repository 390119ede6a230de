"""Hessian benchmark: HVP cost relative to a gradient, and top-5 eigenvalues vs PyHessian 0.1.

Run: python benchmarks/bench_hessian.py     (or as part of: python -m benchmarks)
The PyHessian comparison needs the benchmark-only extra: pip install -e ".[bench]".

Everything runs on one CPU thread, side by side in one process, each timing
repeated and the median taken (other jobs share the cores). Reference
eigenvalues come from the dense float64 Hessian (torch.func, reverse-over-reverse).
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from torch.func import functional_call, jacrev  # noqa: E402

import normlens  # noqa: E402
from benchmarks.results import Row  # noqa: E402
from benchmarks.timing import median_seconds  # noqa: E402
from normlens.curvature import HessianOperator, compute_eigenpairs  # noqa: E402
from normlens.losses import logits_loss  # noqa: E402

REPEATS = 5


def median_time(fn, repeats: int = REPEATS) -> float:
    return median_seconds(fn, repeats, warmup=True)


class LogitsForPyHessian(nn.Module):
    """PyHessian calls criterion(model(inputs), targets): flatten next-token logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = self.model(tokens)  # (batch, pos, d_vocab)
        return logits[:, :-1].reshape(-1, logits.shape[-1])  # (batch * (pos - 1), d_vocab)


def hvp_ratio(make, tokens: torch.Tensor, label: str) -> dict:
    model = make()
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(0))
    cold = HessianOperator(model, tokens, method="double_backward", keep_graph=False)
    fwd_rev = HessianOperator(model, tokens, method="forward_over_reverse")
    warm = HessianOperator(model, tokens, method="double_backward")  # graph kept between products
    t_grad = median_time(cold.gradient)
    t_cold = median_time(lambda: cold @ v)
    t_fr = median_time(lambda: fwd_rev @ v)
    t_warm = median_time(lambda: warm @ v)
    # a plain eager loss.backward() on a twin of the model, for scale
    plain = make()

    def plain_grad():
        plain.zero_grad()
        logits_loss(plain(tokens), tokens).backward()

    t_plain = median_time(plain_grad)
    n = cold.shape[0]
    print(f"[{label}] {n} params, tokens {tuple(tokens.shape)}")
    print(f"  gradient (functional_call) {t_grad * 1e3:7.2f} ms   plain loss.backward() {t_plain * 1e3:7.2f} ms")
    print(f"  HVP double backward, fresh graph   {t_cold * 1e3:7.2f} ms   ratio {t_cold / t_grad:.2f}")
    print(f"  HVP forward-over-reverse           {t_fr * 1e3:7.2f} ms   ratio {t_fr / t_grad:.2f}")
    print(f"  HVP double backward, kept graph    {t_warm * 1e3:7.2f} ms   ratio {t_warm / t_grad:.2f}"
          "   (normlens default for one batch)")
    return {"label": label, "n_params": n, "grad_s": t_grad, "plain_backward_s": t_plain,
            "hvp_fresh_s": t_cold, "hvp_forward_over_reverse_s": t_fr, "hvp_kept_graph_s": t_warm,
            "ratio_fresh": t_cold / t_grad, "ratio_forward_over_reverse": t_fr / t_grad,
            "ratio_kept_graph": t_warm / t_grad}


def dense_top(make, tokens: torch.Tensor, k: int) -> np.ndarray:
    model64 = make().double()
    named = list(model64.named_parameters())
    sizes = [p.numel() for _, p in named]
    flat = torch.cat([p.detach().reshape(-1) for _, p in named])

    def loss(x):
        params = {n: c.view(p.shape) for (n, p), c in zip(named, x.split(sizes))}
        return logits_loss(functional_call(model64, params, (tokens,)), tokens)

    H = jacrev(jacrev(loss))(flat)
    return torch.linalg.eigvalsh(H).flip(0)[:k].numpy()


def compare_pyhessian(make, tokens: torch.Tensor, k: int = 5) -> dict | None:
    try:
        from pyhessian import hessian as PyHessian
    except ImportError:
        print('PyHessian not installed: pip install -e ".[bench]"')
        return None
    exact = dense_top(make, tokens, k)
    model = make()

    def ours():
        op = HessianOperator(model, tokens)
        return compute_eigenpairs(op, k, seed=0).eigenvalues

    def theirs(fresh: nn.Module):
        torch.manual_seed(0)  # PyHessian draws its start vectors from the global RNG
        wrapped = LogitsForPyHessian(fresh)  # PyHessian calls .eval() and fills .grad: a fresh twin
        inputs, targets = tokens, tokens[:, 1:].reshape(-1)
        h = PyHessian(wrapped, nn.CrossEntropyLoss(), data=(inputs, targets), cuda=False)
        values, _ = h.eigenvalues(top_n=k)  # defaults: maxIter=100, tol=1e-3
        return np.array(values)

    ours_values, theirs_values = ours(), theirs(make())
    t_ours = median_time(ours, 3)
    t_theirs_all = []
    for _ in range(3):
        fresh = make()
        start = time.perf_counter()
        theirs(fresh)
        t_theirs_all.append(time.perf_counter() - start)
    t_theirs = statistics.median(t_theirs_all)
    err_ours = np.abs(ours_values - exact) / np.abs(exact)
    err_theirs = np.abs(theirs_values - exact) / np.abs(exact)
    err_theirs_sorted = np.abs(np.sort(theirs_values)[::-1] - exact) / np.abs(exact)
    print(f"[top-{k} eigenvalues, tiny zoo transformer fitted to its batch, float32, "
          f"{sum(p.numel() for p in model.parameters())} params]")
    print(f"  dense float64 : {np.array2string(exact, precision=6)}")
    print(f"  normlens      : {np.array2string(ours_values, precision=6)}  max rel err {err_ours.max():.2e}"
          f"  time {t_ours:.3f} s")
    print(f"  PyHessian 0.1 : {np.array2string(theirs_values, precision=6)}  max rel err {err_theirs.max():.2e}"
          f" (sorted {err_theirs_sorted.max():.2e})  time {t_theirs:.3f} s")
    print(f"  time ratio normlens / PyHessian = {t_ours / t_theirs:.2f}"
          f"   (normlens <= 0.1% error: {bool(err_ours.max() <= 1e-3)})")
    return {"k": k, "exact": exact.tolist(), "normlens": np.asarray(ours_values).tolist(),
            "pyhessian": theirs_values.tolist(), "normlens_max_rel_err": float(err_ours.max()),
            "pyhessian_max_rel_err": float(err_theirs.max()),
            "pyhessian_sorted_max_rel_err": float(err_theirs_sorted.max()),
            "normlens_s": t_ours, "pyhessian_s": t_theirs, "time_ratio": t_ours / t_theirs,
            "n_params": sum(p.numel() for p in model.parameters())}


def tiny_untrained() -> nn.Module:
    return normlens.build_model(norm="ln", n_layers=1, d_model=8, n_heads=2, n_ctx=8, d_vocab=16, seed=3)


def fit_to_batch(model: nn.Module, tokens: torch.Tensor, steps: int = 150) -> list[torch.Tensor]:
    """Adam on the batch itself, to a point near a minimum (like the anchors' trained MLP).

    At a random init the Hessian's largest-magnitude eigenvalues are negative and
    power iteration (PyHessian) returns those instead of the top ones.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        logits_loss(model(tokens), tokens).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def _models():
    """The fitted tiny model (for PyHessian and the dense reference) and the demo-sized model, as factories."""
    tiny_tokens = torch.randint(0, 16, (4, 8), generator=torch.Generator().manual_seed(0))
    fitted = fit_to_batch(tiny_untrained(), tiny_tokens)

    def tiny():
        model = tiny_untrained().eval()
        with torch.no_grad():
            for p, q in zip(model.parameters(), fitted):
                p.copy_(q)
        return model

    def demo():
        return normlens.build_model(norm="ln", seed=0).eval()

    demo_tokens = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    return (tiny, tiny_tokens), (demo, demo_tokens)


def rows(quick: bool = False) -> list[Row]:
    """HVP ÷ gradient and top-5 eigenvalues vs PyHessian as benchmark rows, on one CPU thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        (tiny, tiny_tokens), (demo, demo_tokens) = _models()
        h = hvp_ratio(demo, demo_tokens, "demo zoo transformer (2 layers, d_model 64)")
        out = [
            Row("hessian", "HVP ÷ gradient (demo zoo model, 4×32 tokens; kept graph, the default)",
                h["ratio_kept_graph"], target="≤ 2.5x",
                detail=f"{h['n_params']} params; fresh graph {h['ratio_fresh']:.2f}x, forward-over-reverse "
                f"{h['ratio_forward_over_reverse']:.2f}x; gradient {h['grad_s'] * 1e3:.1f} ms", extra=h),
        ]
        p = compare_pyhessian(tiny, tiny_tokens)
        if p is None:
            out.append(Row("hessian", "top-5 eigenvalues vs PyHessian", None,
                           detail='skipped: PyHessian is not installed (pip install -e ".[bench]")'))
            return out
        out += [
            Row("hessian", "top-5 eigenvalues: normlens max relative error (dense float64 reference)",
                p["normlens_max_rel_err"], "", target="≤ 1e-3", extra=p),
            Row("hessian", "top-5 eigenvalues: PyHessian 0.1 max relative error", p["pyhessian_max_rel_err"], "",
                detail=f"sorted {p['pyhessian_sorted_max_rel_err']:.2e} (PyHessian returns largest magnitude)"),
            Row("hessian", "top-5 eigenvalues: time normlens ÷ PyHessian", p["time_ratio"], target="≤ 1x",
                detail=f"{p['normlens_s']:.3f} s vs {p['pyhessian_s']:.3f} s, {p['n_params']} params"),
        ]
        return out
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    torch.set_num_threads(1)
    (tiny, tiny_tokens), (demo, demo_tokens) = _models()
    hvp_ratio(tiny, tiny_tokens, "tiny zoo transformer (1 layer, d_model 8)")
    hvp_ratio(demo, demo_tokens, "demo zoo transformer (2 layers, d_model 64)")
    compare_pyhessian(tiny, tiny_tokens)


if __name__ == "__main__":
    main()
