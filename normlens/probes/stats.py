"""Streaming activation statistics at residual-stream points, norm input/output, MLP/attention output.

For each site and for two position groups -- "body" (positions >= 1) and
"first" (position 0, the BOS/first token, kept apart as in Sun et al. 2024 and
the LN-removal work) -- the probe accumulates, in memory independent of the
number of tokens:

* per-channel count / mean / M2 / M3 / M4 (:class:`~normlens.probes.moments.Moments`,
  float64, Chan/Pebay merge); the pooled mean, variance, skewness and excess
  kurtosis of all entries follow exactly from them;
* per-token RMS sqrt(mean_c x_c^2): its moments and maximum;
* max |x| and the top-k |x| (exact: the top-k entries lie in the k tokens with
  the largest max |x|, so only those rows are searched);
* median |x| from a histogram of |x| with log-spaced bins -- the top 16 bits of
  the float32 bit pattern (8 exponent bits, 7 mantissa bits), so each bin spans
  a factor 2^(1/128) and the median is exact to 0.8 % relative (exact zeros,
  counted apart, sit at 0); histograms add, so the median merges exactly;
* massive-activation ratio max |x| / median |x| (Sun et al. 2024; NaN when the median is 0);
* the fraction of exact zeros (after ReLU: the MLP post-activation site);
* NaN and inf counts and the number of tokens holding one. Non-finite entries
  are excluded from every other statistic (not averaged in) and flagged.

Padding: with an ``attention_mask`` on the model call (or given to
:meth:`ActivationStatsProbe.update`), padded tokens are left out of every
statistic, and "first" is each sequence's first real token (so left padding
keeps the BOS-like token apart as right padding does).

One tensor seen at two sites in the same forward (a Pre-LN block's input is
also ln1's input) is reduced once. The reduction itself (power sums about a
fixed centre, histogram, top-k, counts) lives in :mod:`normlens.probes.reduce`
and, on the CPU, runs as one fused numba pass per tensor
(:mod:`normlens.probes.cpu_kernel`); position-0 rows are buffered and reduced
in bulk, since a (batch, d) slice per forward is mostly per-call overhead.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from normlens.io import read_npz, save_frame, write_npz
from normlens import sites as S
from normlens.probes.attach import BatchContext, ModelInfo, Probe, ProbeError, real_token_mask
from normlens.probes.moments import Moments
from normlens.probes.reduce import CHUNK_ELEMENTS, N_HIST_BINS, GroupSums, Workspace, abs_histogram

__all__ = ["ActivationStatsProbe", "ActivationStatsResult", "GroupStats", "abs_histogram",
           "default_stat_sites", "histogram_quantile"]

GROUPS = ("body", "first")


def _bin_edges(b: int) -> tuple[float, float]:
    lo = torch.tensor([b << 16], dtype=torch.int32).view(torch.float32).item()
    hi = torch.tensor([min((b + 1) << 16, 0x7F800000)], dtype=torch.int32).view(torch.float32).item()
    return lo, hi


def histogram_quantile(hist: np.ndarray | torch.Tensor, q: float = 0.5, zeros: int = 0) -> float:
    """The q-quantile of |x| from :func:`abs_histogram` counts.

    The sorted values are estimated one by one -- the i-th of the c values in a
    bin [lo, hi) at lo + (hi - lo)(i + 1/2)/c -- and the quantile interpolates
    linearly between the two values at ranks floor(t) and ceil(t), t = q(n - 1)
    (numpy's default "linear" rule), so the median of an even count is the mean
    of the two middle values' estimates: within one bin width (2^-7 relative)
    of the exact median. ``zeros`` of the values in bin 0 are exact zeros
    (counted apart): they sit at 0, not spread over bin 0's denormal range.

    >>> h = abs_histogram(torch.tensor([1.0, 2.0]))
    >>> round(histogram_quantile(h), 2)
    1.51
    """
    counts = np.asarray(hist, dtype=np.float64)
    total = counts.sum()
    if total == 0:
        return float("nan")
    if not 0 <= q <= 1:
        raise ValueError(f"q must lie in [0, 1], got {q}")
    if not 0 <= zeros <= counts[0]:
        raise ValueError(f"zeros must lie in [0, {int(counts[0])}] (the count of bin 0), got {zeros}")
    cum = np.cumsum(counts)

    def value_at(rank: int) -> float:
        if rank < zeros:
            return 0.0
        b = int(np.searchsorted(cum, rank, side="right"))  # the bin holding this rank
        before = cum[b - 1] if b > 0 else 0.0
        inside = counts[b]
        if b == 0:  # the nonzero values of bin 0 (denormals) follow the zeros
            before, inside = float(zeros), counts[0] - zeros
        lo, hi = _bin_edges(b)
        return lo + (hi - lo) * (rank - before + 0.5) / inside

    target = q * (total - 1)
    below = int(np.floor(target))
    low = value_at(below)
    if target == below:
        return float(low)
    return float(low + (target - below) * (value_at(below + 1) - low))


@dataclass
class GroupStats:
    """Accumulated statistics of one site and one position group (mutable; merge-able)."""

    d: int
    top_k: int
    channel: Moments = None  # (d,)
    token_rms: Moments = None  # ()
    rms_max: float = 0.0
    max_abs: float = 0.0
    top: torch.Tensor = None  # (<= top_k,) float64, descending
    hist: torch.Tensor = None  # (N_HIST_BINS,) int64
    n_entries: int = 0  # all entries seen, finite or not
    n_tokens: int = 0
    zeros: int = 0
    nan: int = 0
    inf: int = 0
    nonfinite_tokens: int = 0

    def __post_init__(self) -> None:
        if self.channel is None:
            self.channel = Moments.empty((self.d,))
            self.token_rms = Moments.empty(())
            self.top = torch.zeros(0, dtype=torch.float64)
            self.hist = torch.zeros(N_HIST_BINS, dtype=torch.int64)

    @classmethod
    def from_sums(cls, sums: GroupSums) -> "GroupStats":
        channel, token_rms = sums.moments()
        return cls(d=sums.d, top_k=sums.top_k, channel=channel, token_rms=token_rms, rms_max=sums.rms_max,
                   max_abs=float(sums.top[0]) if sums.top.numel() else 0.0, top=sums.top.clone(),
                   hist=sums.histogram().clone(), n_entries=sums.n_entries, n_tokens=sums.n_tokens, zeros=sums.zeros,
                   nan=sums.nan, inf=sums.inf, nonfinite_tokens=sums.nonfinite_tokens)

    def merge(self, other: "GroupStats") -> "GroupStats":
        if self.d != other.d:
            raise ValueError(f"cannot merge statistics of width {self.d} and {other.d}")
        top = torch.cat([self.top, other.top])
        return GroupStats(
            d=self.d, top_k=self.top_k,
            channel=self.channel.merge(other.channel),
            token_rms=self.token_rms.merge(other.token_rms),
            rms_max=max(self.rms_max, other.rms_max),
            max_abs=max(self.max_abs, other.max_abs),
            top=torch.topk(top, min(self.top_k, top.numel())).values,
            hist=self.hist + other.hist,
            n_entries=self.n_entries + other.n_entries,
            n_tokens=self.n_tokens + other.n_tokens,
            zeros=self.zeros + other.zeros,
            nan=self.nan + other.nan,
            inf=self.inf + other.inf,
            nonfinite_tokens=self.nonfinite_tokens + other.nonfinite_tokens,
        )

    def summary(self) -> dict[str, float]:
        pooled = self.channel.pooled()
        median = histogram_quantile(self.hist, zeros=self.zeros)
        n_finite = self.n_entries - self.nan - self.inf
        top = self.top.tolist() + [float("nan")] * (self.top_k - self.top.numel())
        return {
            "count": float(pooled.count), "mean": float(pooled.mean),
            "variance": float(pooled.variance()), "skewness": float(pooled.skewness()),
            "excess_kurtosis": float(pooled.excess_kurtosis()),
            "rms_mean": float(self.token_rms.mean), "rms_std": float(self.token_rms.variance().sqrt()),
            "rms_max": self.rms_max, "max_abs": self.max_abs, "median_abs": median,
            # Sun et al. 2024's max / median |x|; undefined (NaN) when at least half the entries are 0
            "massive_ratio": self.max_abs / median if median > 0 else float("nan"),
            "top2_abs": top[1] if self.top_k > 1 else float("nan"),
            "top3_abs": top[2] if self.top_k > 2 else float("nan"),
            "zero_fraction": self.zeros / n_finite if n_finite else float("nan"),
            "n_tokens": self.n_tokens, "nan_count": self.nan, "inf_count": self.inf,
            "nonfinite_tokens": self.nonfinite_tokens, "flagged": bool(self.nan or self.inf),
        }

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        arrays = self.channel.to_arrays(prefix + "ch_") | self.token_rms.to_arrays(prefix + "rms_")
        arrays |= {
            prefix + "top": self.top.numpy(), prefix + "hist": self.hist.numpy(),
            prefix + "scalars": np.array([self.d, self.top_k, self.rms_max, self.max_abs, self.n_entries,
                                          self.n_tokens, self.zeros, self.nan, self.inf,
                                          self.nonfinite_tokens], dtype=np.float64),
        }
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> "GroupStats":
        s = arrays[prefix + "scalars"]
        return cls(
            d=int(s[0]), top_k=int(s[1]), channel=Moments.from_arrays(arrays, prefix + "ch_"),
            token_rms=Moments.from_arrays(arrays, prefix + "rms_"), rms_max=float(s[2]),
            max_abs=float(s[3]), top=torch.as_tensor(arrays[prefix + "top"], dtype=torch.float64),
            hist=torch.as_tensor(arrays[prefix + "hist"], dtype=torch.int64), n_entries=int(s[4]),
            n_tokens=int(s[5]), zeros=int(s[6]), nan=int(s[7]), inf=int(s[8]), nonfinite_tokens=int(s[9]),
        )


@dataclass(frozen=True)
class ActivationStatsResult:
    """Per-site, per-position-group statistics. ``stats[site][group]`` is a :class:`GroupStats`."""

    sites: tuple[str, ...]
    stats: dict = field(repr=False)

    def get(self, site: str, group: str = "body") -> GroupStats:
        return self.stats[site][group]

    def to_frame(self) -> pd.DataFrame:
        """One row per (site, group): layer, kind, moments, RMS, max/median, zeros, NaN/inf."""
        rows = []
        for site in self.sites:
            for group, g in self.stats[site].items():
                rows.append({"site": site, "layer": S.layer_of(site), "kind": S.site_kind(site),
                             "group": group, **g.summary()})
        return pd.DataFrame(rows)

    def merge(self, other: "ActivationStatsResult") -> "ActivationStatsResult":
        """Exact merge of results from disjoint data (other batches or processes)."""
        if self.sites != other.sites:
            raise ValueError(f"cannot merge results over different sites: {self.sites} vs {other.sites}")
        return ActivationStatsResult(self.sites, {
            s: {g: self.stats[s][g].merge(other.stats[s][g]) for g in self.stats[s]} for s in self.sites})

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        save_frame(self.to_frame(), folder / "activation_stats.parquet")
        arrays = {}
        for i, site in enumerate(self.sites):
            for group, g in self.stats[site].items():
                arrays |= g.to_arrays(f"{i}/{group}/")
        arrays["sites"] = np.array(self.sites)
        write_npz(folder / "activation_stats.npz", **arrays)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "ActivationStatsResult":
        arrays = read_npz(Path(folder) / "activation_stats.npz")
        sites = tuple(str(s) for s in arrays["sites"])
        stats = {site: {g: GroupStats.from_arrays(arrays, f"{i}/{g}/") for g in GROUPS
                        if f"{i}/{g}/scalars" in arrays} for i, site in enumerate(sites)}
        return cls(sites, stats)


def default_stat_sites(info: ModelInfo) -> list[str]:
    """Residual stream, norm in/out, attention/MLP outputs and MLP post-activation, in depth order."""
    if info.kind == "module":
        names = []
        for path in info.norm_paths:
            names += [S.module_input(path), S.module_output(path)]
        names += [S.module_output(path) for path in info.block_paths]
        return info.existing(names)
    names = []
    slots = S.norm_slots(info.n_layers or 0)  # ln1, ln2 of each block, then ln_final
    for layer in range(info.n_layers or 0):
        ln1, ln2 = slots[2 * layer], slots[2 * layer + 1]
        names += [S.resid_pre(layer), S.norm_in(ln1), S.norm_out(ln1), S.attn_out(layer),
                  S.resid_mid(layer), S.norm_in(ln2), S.norm_out(ln2), S.mlp_post(layer),
                  S.mlp_out(layer)]
    if info.n_layers:
        names += [S.resid_post(info.n_layers - 1), S.norm_in(slots[-1]), S.norm_out(slots[-1])]
    return info.existing(names)


class ActivationStatsProbe(Probe):
    """Streaming activation statistics (see the module docstring).

    Args:
        sites: hook names or glob patterns; default :func:`default_stat_sites`.
        top_k: how many of the largest |x| to keep per site.
        split_first: keep position 0 apart ("first") from positions >= 1 ("body");
            needs (batch, pos, ...) activations. Off: everything is "body".
    """

    name = "activation_stats"

    def __init__(self, sites: Sequence[str] | str | None = None, top_k: int = 8, split_first: bool = True):
        super().__init__(sites)
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        self.top_k = top_k
        self.split_first = split_first
        self.reset()

    def default_sites(self, info: ModelInfo) -> list[str]:
        return default_stat_sites(info)

    def reset(self) -> None:
        self._acc: dict[str, dict[str, GroupSums]] = {}
        self._pending: dict[str, list[torch.Tensor]] = {}  # site -> buffered position-0 rows
        self._pending_entries: dict[str, int] = {}
        self._workspace = Workspace()

    def update(self, site: str, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> None:
        """Add activations ``x`` (..., d) of ``site`` directly (no model needed).

        ``attention_mask``: (batch, pos), 1/True = real token (or a 4-D mask, see
        :func:`~normlens.probes.attach.real_token_mask`); padded tokens are left out.
        """
        self._add(site, x, None, real_token_mask(attention_mask))

    def observe(self, site: str, x: torch.Tensor, batch: BatchContext) -> None:
        self._add(site, x, batch.shared, batch.attention_mask)

    def _add(self, site: str, seen: torch.Tensor, shared: dict | None, mask: torch.Tensor | None) -> None:
        x = seen.detach()  # a new object: ``seen`` itself identifies the tensor across sites
        if x.dim() == 0:
            x = x.reshape(1, 1)
        if x.dim() == 1:
            x = x[:, None]
        d = x.shape[-1]
        if mask is not None and x.dim() >= 3:  # activations without (batch, pos) axes have nothing to drop
            if tuple(x.shape[:2]) != tuple(mask.shape):
                raise ProbeError(f"attention_mask of shape {tuple(mask.shape)} does not match the (batch, pos) axes "
                                 f"of site {site!r}, shape {tuple(x.shape)}; pass a (batch, pos) mask")
            mask = mask.to(device=x.device, dtype=torch.bool)
            if not bool(mask.all()):
                self._add_real_tokens(site, seen, x, mask, shared)
                return
        if self.split_first and x.dim() >= 3:
            self._buffer_first(site, x[:, :1])
            rows_per_position = x[0, 0].numel() // d  # > 1 for per-head activations (b, p, h, d)
            body, p0 = x.reshape(x.shape[0], -1, d), rows_per_position
        else:
            body, p0 = x.reshape(1, -1, d), 0
        self._add_body(site, seen, body, p0, shared)

    def _add_real_tokens(self, site: str, seen: torch.Tensor, x: torch.Tensor, mask: torch.Tensor,
                         shared: dict | None) -> None:
        """Only the tokens where ``mask`` (batch, pos) is True; "first" = each sequence's first real one."""
        d = x.shape[-1]
        body_mask = mask
        if self.split_first:
            has_real = mask.any(1)
            seq = torch.arange(mask.shape[0], device=mask.device)[has_real]
            first = mask[has_real].int().argmax(1)  # the first real position of each sequence
            self._buffer_first(site, x[seq, first])
            body_mask = mask.clone()
            body_mask[seq, first] = False
        self._add_body(site, seen, x[body_mask].reshape(1, -1, d), 0, shared)

    def _add_body(self, site: str, seen: torch.Tensor, body: torch.Tensor, p0: int, shared: dict | None) -> None:
        d = body.shape[-1]
        acc = self._acc.setdefault(site, {})
        key = (self.name, id(self), id(seen))
        memo = shared.get(key) if shared is not None else None
        total = acc.get("body")
        if memo is not None and memo[0]() is seen and (total is None or total.same_centres(memo[1])):
            part = memo[1]  # the same tensor, already reduced at another site
        else:
            part = (total.centred_like() if total is not None else GroupSums(d, self.top_k))
            part.reduce_positions(body, p0, self._workspace)
            if shared is not None:
                shared[key] = (weakref.ref(seen), part)
        # the running total is added into in place; ``part`` may be another site's too (memo)
        acc["body"] = part.copy() if total is None else total.add_(part)

    def _buffer_first(self, site: str, rows: torch.Tensor) -> None:
        self._pending.setdefault(site, []).append(rows.reshape(-1, rows.shape[-1]).clone())
        self._pending_entries[site] = self._pending_entries.get(site, 0) + rows.numel()
        if self._pending_entries[site] >= CHUNK_ELEMENTS // 4:
            self._flush(site)

    def _flush(self, site: str) -> None:
        rows = self._pending.pop(site, None)
        self._pending_entries.pop(site, None)
        if not rows:
            return
        acc = self._acc.setdefault(site, {})
        total = acc.get("first")
        part = total.centred_like() if total is not None else GroupSums(rows[0].shape[-1], self.top_k)
        part.reduce_positions(torch.cat(rows)[None], 0, self._workspace)
        acc["first"] = part if total is None else total.add_(part)

    def result(self) -> ActivationStatsResult:
        for site in list(self._pending):
            self._flush(site)
        sites = tuple(s for s in (self.sites or list(self._acc)) if s in self._acc)
        sites += tuple(s for s in self._acc if s not in sites)
        return ActivationStatsResult(sites, {s: {g: GroupStats.from_sums(self._acc[s][g]) for g in GROUPS
                                                 if g in self._acc[s]} for s in sites})
