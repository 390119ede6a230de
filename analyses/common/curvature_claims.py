"""The curvature study's three claims, judged from its saved per-unit numbers (``claims/units.json``).

1. Li et al. 2018, *Visualizing the Loss Landscape of Neural Nets*: on filter-normalized random
   planes, networks become comparable, and architecture that eases optimization (skip
   connections there; normalization here) makes the landscape smoother. Tested as: the sharpness
   of the random plane (largest loss rise within a radius of the model) is larger without
   normalization than with LayerNorm and with RMSNorm.
2. The LLA paper, *Investigating generalization ... by means of loss landscapes and Hessian
   analysis*: random-direction plots can mislead when normalization layers are present; the top
   Hessian eigenvectors are better axes. Tested as: the curvature a random filter-normalized axis
   sees, dᵀHd/dᵀd, as a share of λmax on the same batch, is smaller (sharpness understated more)
   with LayerNorm and RMSNorm than without normalization.
3. FARMS, *Eigenspectrum Analysis of Neural Networks without Aspect Ratio Bias*: the weight
   ESD's heavy-tail α depends on the matrix's aspect ratio; fixed-aspect-ratio windows remove
   that. Tested at initialization (i.i.d. entries: any α difference between shapes is bias) as:
   α of each 4:1 MLP matrix minus the mean α of the square attention matrices of its layer, by
   the plain ESD (same median-xmin fit) and by FARMS; FARMS agrees when |bias| shrinks.

Each comparison is paired (same seed and batch, or same seed and layer) and carries a
confidence interval (:mod:`normlens.uncertainty`); outcomes are "agrees" (every compared interval on the
claim's side of 0), "disagrees" (every one on the other side) or "inconclusive at this scale".
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from normlens.io import read_json
from normlens.uncertainty import Interval, bootstrap_interval, paired_difference_interval

UNITS = Path("claims") / "units.json"
AGREES, DISAGREES, INCONCLUSIVE = "agrees", "disagrees", "inconclusive at this scale"
LEVEL = 0.95


@dataclass(frozen=True)
class ClaimResult:
    """One claim's outcome, the clause the verdict uses, and the rows of its table."""

    key: str
    paper: str
    claim: str
    outcome: str
    detail: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    def clause(self) -> str:
        if self.outcome == AGREES:
            head = f"the result agrees with {self.paper} ({self.claim})"
        elif self.outcome == DISAGREES:
            head = f"the result disagrees with {self.paper} ({self.claim})"
        else:
            head = f"the result is inconclusive at this scale for {self.paper} ({self.claim})"
        return f"{head}: {self.detail}" if self.detail else head


def read_units(results: str | Path) -> dict[str, Any]:
    """The saved units of a results folder (``claims/units.json``)."""
    return read_json(Path(results) / UNITS)


def _fmt(value: float, digits: int = 2) -> str:
    if not math.isfinite(value):
        return "n/a"
    if value != 0 and abs(value) < 10 ** -(digits + 1):
        return f"{value:.{max(digits - 1, 0)}e}"
    return f"{value:.{digits + 1}f}" if abs(value) < 1 else f"{value:.{digits}f}"


def _interval_text(interval: Interval, fmt: Callable[[float], str] = _fmt) -> str:
    if not (math.isfinite(interval.low) and math.isfinite(interval.high)):
        return f"{_signed(interval.estimate, fmt)} (no interval: n={interval.n})"
    return f"{_signed(interval.estimate, fmt)} [{fmt(interval.low)}, {fmt(interval.high)}]"


def _signed(value: float, fmt: Callable[[float], str]) -> str:
    text = fmt(value)
    return text if text.startswith("-") or text == "n/a" else "+" + text


def _outcome(intervals: Sequence[Interval]) -> str:
    """AGREES when every interval lies above 0, DISAGREES when every one lies below, else INCONCLUSIVE."""
    usable = [i for i in intervals if math.isfinite(i.low) and math.isfinite(i.high)]
    if not intervals or len(usable) != len(intervals):
        return INCONCLUSIVE
    if all(i.low > 0 for i in usable):
        return AGREES
    if all(i.high < 0 for i in usable):
        return DISAGREES
    return INCONCLUSIVE


def _paired(rows: Sequence[Mapping[str, Any]], model: str, reference: str, value: str,
            keys: Sequence[str] = ("seed", "batch")) -> tuple[np.ndarray, np.ndarray, int]:
    """Values of ``model`` and ``reference`` matched on ``keys`` (finite pairs only), and the seed count."""
    def table(name: str) -> dict[tuple, float]:
        return {tuple(r[k] for k in keys): float(r[value]) for r in rows
                if r["model"] == name and r.get(value) is not None}

    a, b = table(model), table(reference)
    common = [k for k in sorted(a) if k in b and math.isfinite(a[k]) and math.isfinite(b[k])]
    seeds = {k[0] for k in common}
    return np.array([a[k] for k in common]), np.array([b[k] for k in common]), len(seeds)


def _label(units: Mapping[str, Any], key: str) -> str:
    return units.get("labels", {}).get(key, key)


def _compare(units: Mapping[str, Any], rows_key: str, value: str) -> tuple[list[dict[str, Any]], dict[str, Interval]]:
    """Per compared model: mean values, and the paired interval of reference − model."""
    reference = units["reference"]
    table, intervals = [], {}
    for model in [*units["normalized"], *units.get("others", [])]:
        mine, ref, n_seeds = _paired(units[rows_key], model, reference, value)
        interval = paired_difference_interval(ref, mine, level=LEVEL) if len(mine) else \
            Interval(math.nan, math.nan, math.nan, LEVEL, 0, "none")
        intervals[model] = interval
        table.append({"model": _label(units, model), "n seeds": n_seeds, "n pairs": int(len(mine)),
                      "model mean": float(mine.mean()) if len(mine) else math.nan,
                      f"{_label(units, reference)} mean": float(ref.mean()) if len(ref) else math.nan,
                      "difference (reference − model)": interval.estimate,
                      "95% low": interval.low, "95% high": interval.high,
                      "in verdict": "yes" if model in units["normalized"] else "no (shown for comparison)"})
    return table, intervals


def _design(units: Mapping[str, Any], n_seeds: int) -> str:
    return f"paired over {n_seeds} seeds × {units.get('n_batches', '?')} batches"


@dataclass(frozen=True)
class _Comparison:
    """Each normalized model against the reference model on one saved measurement."""

    table: list[dict[str, Any]]
    intervals: dict[str, Interval]
    normalized: list[str]
    outcome: str
    reference: str
    means: dict[str, float]
    ref_mean: float
    n_seeds: int


def _comparison(units: Mapping[str, Any], rows_key: str, value: str) -> _Comparison:
    table, intervals = _compare(units, rows_key, value)
    normalized = list(units["normalized"])
    reference = _label(units, units["reference"])
    return _Comparison(
        table, intervals, normalized, _outcome([intervals[m] for m in normalized]), reference,
        {row["model"]: row["model mean"] for row in table},
        table[0][f"{reference} mean"] if table else math.nan,
        min((row["n seeds"] for row in table[: len(normalized)]), default=0))


def judge_smoothing(units: Mapping[str, Any]) -> ClaimResult:
    """Claim 1 (Li et al. 2018): the random filter-normalized plane is sharper without normalization."""
    paper, claim = "Li et al. 2018", "normalization smooths the filter-normalized landscape"
    c = _comparison(units, "landscape", "sharpness_random")
    detail = (f"within radius {units.get('radius', 1.0):g} of the model the random plane rises {_fmt(c.ref_mean)} nats "
              f"with {c.reference} vs "
              + " and ".join(f"{_fmt(c.means[_label(units, m)])} with {_label(units, m)}" for m in c.normalized)
              + ", differences " + " and ".join(_interval_text(c.intervals[m]) for m in c.normalized)
              + f" nats ({_design(units, c.n_seeds)})")
    return ClaimResult("smoothing", paper, claim, c.outcome, detail, c.table)


def judge_random_axes(units: Mapping[str, Any]) -> ClaimResult:
    """Claim 2 (LLA): random filter-normalized axes understate λmax more with normalization layers."""
    paper = "the LLA paper"
    claim = "random axes understate sharpness more when normalization layers are present"
    c = _comparison(units, "ratio", "ratio")
    detail = ("a random filter-normalized axis sees dᵀHd/dᵀd = "
              + " and ".join(f"{_fmt(c.means[_label(units, m)])} of λmax with {_label(units, m)}" for m in c.normalized)
              + f" vs {_fmt(c.ref_mean)} with {c.reference} (reference minus model "
              + " and ".join(_interval_text(c.intervals[m]) for m in c.normalized)
              + f"; {_design(units, c.n_seeds)})")
    unconverged = units.get("unconverged", [])
    if unconverged:
        detail += f" (Lanczos short of its tolerance for {len(unconverged)} of {units.get('n_models', '?')} models)"
    return ClaimResult("random_axes", paper, claim, c.outcome, detail, c.table)


def aspect_bias(rows: Sequence[Mapping[str, Any]], fit: str) -> tuple[np.ndarray, list[tuple]]:
    """Per (model, seed, layer, MLP matrix): α(MLP matrix) − mean α(attention matrices of the layer)."""
    attention: dict[tuple, list[float]] = {}
    for r in rows:
        if r["group"] == "attention" and r["layer"] is not None:
            attention.setdefault((r.get("model"), r["seed"], r["layer"]), []).append(float(r[f"alpha_{fit}"]))
    values, keys = [], []
    for r in rows:
        key = (r.get("model"), r["seed"], r["layer"])
        if r["group"] == "mlp" and key in attention:
            square = np.array(attention[key])
            value = float(r[f"alpha_{fit}"]) - float(square.mean())
            if math.isfinite(value):
                values.append(value)
                keys.append((*key, r["matrix"]))
    return np.array(values), keys


def _bias_rows(rows: Sequence[Mapping[str, Any]], phase: str) -> dict[str, Any]:
    chosen = [r for r in rows if r["phase"] == phase]
    plain, keys_plain = aspect_bias(chosen, "esd_median")
    farms, keys_farms = aspect_bias(chosen, "farms")
    common = sorted(set(keys_plain) & set(keys_farms), key=repr)
    p = np.array([plain[keys_plain.index(k)] for k in common])
    f = np.array([farms[keys_farms.index(k)] for k in common])
    return {"plain": bootstrap_interval(p, level=LEVEL), "farms": bootstrap_interval(f, level=LEVEL),
            "reduction": paired_difference_interval(np.abs(p), np.abs(f), level=LEVEL),
            "n": len(common), "n_seeds": len({k[1] for k in common})}


def judge_farms(units: Mapping[str, Any]) -> ClaimResult:
    """Claim 3 (FARMS): at initialization, FARMS α shows less aspect-ratio bias than plain-ESD α."""
    paper, claim = "FARMS", "fixed-aspect-ratio windows remove the aspect-ratio bias of the ESD's α"
    rows = units.get("alpha", [])
    table = []
    found = {}
    for phase in ("init", "trained"):
        if not any(r["phase"] == phase for r in rows):
            continue
        found[phase] = bias = _bias_rows(rows, phase)
        for name, interval in (("plain ESD (median xmin)", bias["plain"]), ("FARMS", bias["farms"]),
                               ("|plain| − |FARMS|", bias["reduction"])):
            table.append({"weights": "at initialization" if phase == "init" else "trained", "quantity": name,
                          "mean": interval.estimate, "95% low": interval.low, "95% high": interval.high,
                          "n matrix pairs": bias["n"], "n seeds": bias["n_seeds"]})
    init = found.get("init")
    if init is None or init["n"] < 2:
        return ClaimResult("farms", paper, claim, INCONCLUSIVE,
                           "fewer than 2 MLP/attention matrix pairs at initialization", table)
    plain, farms, reduction = init["plain"], init["farms"], init["reduction"]
    if not plain.excludes(0.0):
        outcome = INCONCLUSIVE
    elif reduction.low > 0:
        outcome = AGREES
    elif reduction.high < 0:
        outcome = DISAGREES
    else:
        outcome = INCONCLUSIVE
    detail = (f"at initialization α of each 4:1 MLP matrix minus its layer's square attention matrices is "
              f"{_interval_text(plain)} by the plain ESD (median xmin) and {_interval_text(farms)} by FARMS "
              f"({init['n']} matrix pairs, {init['n_seeds']} seeds)")
    if not plain.excludes(0.0):
        detail += ", so the plain ESD shows no bias for FARMS to remove"
    trained = found.get("trained")
    if trained is not None and trained["n"]:
        detail += (f"; after training the same differences are {_signed(trained['plain'].estimate, _fmt)} (plain) "
                   f"and {_signed(trained['farms'].estimate, _fmt)} (FARMS) over {trained['n']} pairs")
    return ClaimResult("farms", paper, claim, outcome, detail, table)


def judge_claims(results: str | Path) -> list[ClaimResult]:
    """The three claims' outcomes from ``results/claims/units.json``."""
    units = read_units(results)
    return [judge_smoothing(units), judge_random_axes(units), judge_farms(units)]


def curvature_verdict(results: str | Path) -> str:
    """One sentence: each claim's outcome with its key numbers, intervals and counts."""
    path = Path(results) / UNITS
    if not path.is_file():
        return "No verdict: the study saved no claim data (claims/units.json is missing)."
    units = read_units(results)
    missing = [_label(units, m) for m in [*units["normalized"], units["reference"]]
               if not any(r["model"] == m for r in units.get("ratio", []))]
    claims = [judge_farms(units)]
    if not missing:
        claims = [judge_smoothing(units), judge_random_axes(units), *claims]
    sentence = "; ".join(c.clause() for c in claims)
    if missing:
        sentence = (f"no landscape or Hessian verdict ({', '.join(missing)} missing or diverged); " + sentence)
    sentence = sentence[0].upper() + sentence[1:] + "."
    diverged = units.get("diverged", [])
    return sentence if not diverged else sentence[:-1] + f" (diverged: {', '.join(diverged)})."


__all__ = ["AGREES", "ClaimResult", "DISAGREES", "INCONCLUSIVE", "UNITS", "aspect_bias", "curvature_verdict",
           "judge_claims", "judge_farms", "judge_random_axes", "judge_smoothing", "read_units"]
