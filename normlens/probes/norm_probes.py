"""Normalization-specific probes: per-token scale, S-curve samples, DyT alpha, residual growth.

* :class:`NormScaleProbe` -- distribution of the norm's per-token divisor
  sqrt(var + eps) at ``hook_scale`` (LN, RMSNorm, frozen-std LN): moments, the
  |x| histogram of :mod:`stats` (median exact to 0.8 %), position 0 apart.
* :class:`SCurveProbe` -- a bounded uniform random sample of (norm input,
  normalized output before the affine) entry pairs per norm slot, the scatter
  of the DyT paper (Zhu et al. 2025, Fig. 2), and :func:`fit_s_curve`, a
  tanh-vs-linear fit summary of it.
* :func:`dyt_alphas` -- DyT's learned alpha per slot.
* :func:`residual_growth` -- residual-stream RMS, norm and variance per depth
  ("The Curse of Depth"), from an :class:`ActivationStatsResult`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from normlens.io import read_npz, save_frame, write_npz
from normlens import sites as S
from normlens.probes.attach import BatchContext, ModelInfo, Probe
from normlens.probes.stats import ActivationStatsProbe, ActivationStatsResult


class NormScaleProbe(ActivationStatsProbe):
    """Statistics of ``hook_scale`` (the per-token 1/sigma divisor) at every norm slot that has one."""

    name = "norm_scale"

    def default_sites(self, info: ModelInfo) -> list[str]:
        slots = S.norm_slots(info.n_layers) if info.n_layers and info.kind != "module" else []
        return info.existing(S.norm_scale(slot) for slot in slots)


@dataclass(frozen=True)
class SCurveResult:
    """Per slot: ``inputs[slot]`` and ``outputs[slot]``, 1-D float64 arrays of equal length.

    ``pre_affine[slot]`` is True when the outputs are the norm's normalized
    output before the gain/bias and before any output scale (``hook_normalized``:
    (x - μ)/σ for LayerNorm, x/rms for RMSNorm, tanh(αx) for DyT), False when the
    slot has no such hook and its module output was sampled instead.
    ``n_seen[slot]``: entries the sample was drawn from.
    """

    slots: tuple[str, ...]
    inputs: dict
    outputs: dict
    pre_affine: dict = field(default_factory=dict)
    n_seen: dict = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        parts = [pd.DataFrame({"slot": slot, "layer": S.layer_of(slot), "input": self.inputs[slot],
                               "output": self.outputs[slot]}) for slot in self.slots]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
            columns=["slot", "layer", "input", "output"])

    def fit_frame(self, margin: float = 0.01) -> pd.DataFrame:
        """Per slot, a·tanh(b·x) + c against a linear fit of the samples (:func:`fit_s_curve`)."""
        rows = [{"slot": slot, "layer": S.layer_of(slot), "pre_affine": bool(self.pre_affine.get(slot, False)),
                 **fit_s_curve(self.inputs[slot], self.outputs[slot], margin=margin)} for slot in self.slots]
        return pd.DataFrame(rows, columns=["slot", "layer", "pre_affine", *_FIT_COLUMNS])

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        arrays = {"slots": np.array(self.slots, dtype=str),
                  "pre_affine": np.array([bool(self.pre_affine.get(s, False)) for s in self.slots], dtype=bool),
                  "n_seen": np.array([int(self.n_seen.get(s, 0)) for s in self.slots], dtype=np.int64)}
        for i, slot in enumerate(self.slots):
            arrays[f"{i}/in"], arrays[f"{i}/out"] = self.inputs[slot], self.outputs[slot]
        save_frame(self.fit_frame(), folder / "s_curve_fit.parquet")
        return write_npz(folder / "s_curve.npz", **arrays)

    @classmethod
    def load(cls, folder: str | Path) -> "SCurveResult":
        a = read_npz(Path(folder) / "s_curve.npz")
        slots = tuple(str(s) for s in a["slots"])
        flags = a["pre_affine"] if "pre_affine" in a else np.zeros(len(slots), dtype=bool)
        seen = a["n_seen"] if "n_seen" in a else np.zeros(len(slots), dtype=np.int64)
        return cls(slots, {s: a[f"{i}/in"] for i, s in enumerate(slots)},
                   {s: a[f"{i}/out"] for i, s in enumerate(slots)},
                   {s: bool(f) for s, f in zip(slots, flags)}, {s: int(n) for s, n in zip(slots, seen)})


_FIT_COLUMNS = ("n_samples", "tanh_a", "tanh_b", "tanh_c", "r2_tanh", "linear_slope", "linear_intercept",
                "r2_linear", "shape")


def fit_s_curve(x: np.ndarray, y: np.ndarray, *, margin: float = 0.01) -> dict:
    """Least-squares fits y ≈ a·tanh(b·x) + c and y ≈ slope·x + intercept, and which shape wins.

    DyT's paper (Zhu et al. 2025, Fig. 2) shows LayerNorm's input→output map as
    tanh-like for inputs far from zero. For each b the best (a, c) are linear least
    squares; b (> 0) is found on a log grid spanning 1e-3 to 1e3 over the 99th
    percentile of |x|, then refined by a bounded scalar search. As b → 0 the tanh
    fit becomes the linear one, so r2_tanh >= r2_linear up to the grid; the
    shape is "tanh" when r2_tanh - r2_linear > ``margin``, else "linear"
    ("undefined" for fewer than 3 samples or constant y).

    Returns a dict with n_samples, tanh_a, tanh_b, tanh_c, r2_tanh, linear_slope,
    linear_intercept, r2_linear, shape.
    """
    from scipy.optimize import minimize_scalar

    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    out = dict.fromkeys(_FIT_COLUMNS, math.nan)
    out.update(n_samples=int(x.size), shape="undefined")
    tss = float(((y - y.mean()) ** 2).sum()) if x.size else 0.0
    spread = float(np.quantile(np.abs(x), 0.99)) if x.size else 0.0
    if x.size < 3 or tss <= 0 or spread <= 0:
        return out

    def solve(feature: np.ndarray) -> tuple[float, float, float]:
        """(coef, offset, rss) of y ≈ coef·feature + offset."""
        design = np.stack([feature, np.ones_like(feature)], axis=1)
        (coef, offset), *_ = np.linalg.lstsq(design, y, rcond=None)
        return float(coef), float(offset), float(((design @ np.array([coef, offset]) - y) ** 2).sum())

    slope, intercept, rss_lin = solve(x)
    grid = np.linspace(math.log(1e-3 / spread), math.log(1e3 / spread), 121)
    rss = np.array([solve(np.tanh(math.exp(g) * x))[2] for g in grid])
    i = int(np.argmin(rss))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    best = minimize_scalar(lambda g: solve(np.tanh(math.exp(g) * x))[2], bounds=(lo, hi), method="bounded",
                           options={"xatol": 1e-10})
    log_b = float(best.x) if best.fun <= rss[i] else float(grid[i])
    a, c, rss_tanh = solve(np.tanh(math.exp(log_b) * x))
    b = math.exp(log_b)  # b > 0; a decreasing map shows as a < 0
    r2_tanh, r2_lin = 1 - rss_tanh / tss, 1 - rss_lin / tss
    out.update(tanh_a=a, tanh_b=b, tanh_c=c, r2_tanh=r2_tanh, linear_slope=slope, linear_intercept=intercept,
               r2_linear=r2_lin, shape="tanh" if r2_tanh - r2_lin > margin else "linear")
    return out


class SCurveProbe(Probe):
    """A uniform random sample of (input, normalized output) entry pairs per norm slot.

    The output is the norm's ``hook_normalized`` -- before the gain/bias and
    before LayerNorm Scaling's 1/sqrt(l) -- as in DyT's paper (Zhu et al. 2025):
    x̂ = (x - μ)/σ for LayerNorm, x/rms for RMSNorm, tanh(αx) for DyT. Slots
    without that hook (the norm-free identity, foreign modules) are sampled at
    their output, marked ``pre_affine=False`` in the result.

    Sampling costs O(n_samples) per batch: each batch draws ``n_samples`` entries
    uniformly with replacement among its real (non-padding) tokens and channels,
    and the running sample is merged with it slot by slot, each slot taking the
    new draw with probability (entries in the batch) / (entries seen so far),
    so the kept sample stays i.i.d. uniform over every entry seen.

    Args:
        slots: norm slots ("blocks.0.ln1", ..., "ln_final"); default all.
        n_samples: pairs kept per slot.
        seed: seeds the sampling (the global RNG is untouched).
    """

    name = "s_curve"

    def __init__(self, slots: Sequence[str] | None = None, n_samples: int = 2048, seed: int = 0):
        super().__init__(None)
        if not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
        self.slots_arg, self.n_samples, self.seed = slots, n_samples, seed
        self.reset()

    def default_sites(self, info: ModelInfo) -> list[str]:
        slots = self.slots_arg or (S.norm_slots(info.n_layers) if info.n_layers and info.kind != "module"
                                   else info.norm_paths)
        names = []
        for slot in slots:
            source = S.module_input(slot)  # a norm slot's hook_in
            outputs = [S.norm_hook(slot, "hook_normalized"),  # bridges: the norm's own hook
                       S.module_output(S.norm_hook(slot, "hook_normalized")),  # plain modules: the HookPoint
                       S.module_output(slot)]  # no normalized hook: the module's output
            target = next((n for n in outputs if info.has(n)), None)
            if info.has(source) and target is not None:
                names += [source, target]
        return names

    def reset(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self._keep: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # slot -> (inputs, outputs), float64 CPU
        self._seen: dict[str, int] = {}
        self._pre_affine: dict[str, bool] = {}
        self._pending: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}  # slot -> (flat index, inputs, n)

    @staticmethod
    def _role(site: str) -> tuple[str, str, bool]:
        """(slot, "in" or "out", pre_affine) of a sampled site."""
        for suffix, role, pre in ((".hook_normalized.hook_out", "out", True), (".hook_normalized", "out", True)):
            if site.endswith(suffix):
                return site[: -len(suffix)], role, pre
        slot, which = S.split_module_site(site)
        return slot, which, False

    def observe(self, site: str, x: torch.Tensor, batch: BatchContext) -> None:
        slot, which, pre_affine = self._role(site)
        if which == "in":
            rows = x.reshape(-1, x.shape[-1]) if x.dim() else x.reshape(1, 1)  # (tokens, d)
            n_tok, d = rows.shape
            mask = batch.attention_mask
            if mask is not None and x.dim() >= 3 and tuple(mask.shape) == tuple(x.shape[:2]):
                real = torch.nonzero(mask.reshape(-1).to(torch.bool)).squeeze(1).cpu().numpy()
            else:
                real = None
            n_real = n_tok if real is None else len(real)
            if n_real == 0 or d == 0:
                return
            tok = self._rng.integers(0, n_real, self.n_samples)
            tok = tok if real is None else real[tok]
            flat = torch.from_numpy(tok * d + self._rng.integers(0, d, self.n_samples)).to(x.device)
            self._pending[slot] = (flat, x.reshape(-1)[flat].detach().double().cpu(), n_real * d)
            return
        pending = self._pending.pop(slot, None)
        if pending is None:
            return
        flat, xin, n_new = pending
        xout = x.reshape(-1)[flat].detach().double().cpu()
        self._pre_affine[slot] = pre_affine
        old = self._keep.get(slot)
        n_old = self._seen.get(slot, 0)
        self._seen[slot] = n_old + n_new
        if old is not None:
            take_new = int(self._rng.binomial(self.n_samples, n_new / (n_old + n_new)))
            order = torch.from_numpy(self._rng.permutation(self.n_samples))
            xin = torch.cat([old[0][:self.n_samples - take_new], xin[:take_new]])[order]
            xout = torch.cat([old[1][:self.n_samples - take_new], xout[:take_new]])[order]
        self._keep[slot] = (xin, xout)

    def result(self) -> SCurveResult:
        slots = tuple(self._keep)
        return SCurveResult(slots, {s: self._keep[s][0].numpy() for s in slots},
                            {s: self._keep[s][1].numpy() for s in slots},
                            {s: self._pre_affine[s] for s in slots}, {s: self._seen[s] for s in slots})


def dyt_alphas(model: nn.Module) -> pd.DataFrame:
    """DyT's alpha per norm slot (empty frame for models without DyT)."""
    from normlens.models import norm_modules  # models are left of probes; imported lazily for plain modules

    rows = []
    for slot, module in norm_modules(model).items():
        alpha = getattr(module, "alpha", None)
        if isinstance(alpha, torch.Tensor) and alpha.numel() == 1:
            rows.append({"slot": slot, "layer": S.layer_of(slot), "alpha": float(alpha.detach())})
    return pd.DataFrame(rows, columns=["slot", "layer", "alpha"])


def residual_growth(stats: ActivationStatsResult, group: str = "body") -> pd.DataFrame:
    """Residual-stream RMS, L2 norm and variance per depth from activation statistics.

    Depth 0 is the embedding (resid_pre of block 0), depth l the output of block l-1.
    """
    rows = []
    n_layers = 1 + max((S.layer_of(s) or 0) for s in stats.sites) if stats.sites else 0
    for depth, site in enumerate(S.residual_sites(n_layers) if n_layers else []):
        if site not in stats.stats:
            continue
        g = stats.get(site, group)
        summary = g.summary()
        rows.append({"depth": depth, "site": site, "rms": summary["rms_mean"],
                     "norm": summary["rms_mean"] * np.sqrt(g.d), "variance": summary["variance"]})
    return pd.DataFrame(rows, columns=["depth", "site", "rms", "norm", "variance"])
