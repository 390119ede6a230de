"""Normalization-specific probes: per-token scale, S-curve samples, DyT alpha, residual growth.

* :class:`NormScaleProbe` -- distribution of the norm's per-token divisor
  sqrt(var + eps) at ``hook_scale`` (LN, RMSNorm, frozen-std LN): moments, the
  |x| histogram of :mod:`stats` (median exact to 0.8 %), position 0 apart.
* :class:`SCurveProbe` -- a bounded uniform random sample of (norm input, norm
  output) entry pairs per norm slot, the scatter of the DyT paper (Zhu et al.
  2025, Fig. 2). Sampling: every entry gets a uniform key from a seeded
  generator; the ``n_samples`` smallest keys over all batches are kept
  (bottom-k reservoir), so the sample is uniform over everything seen.
* :func:`dyt_alphas` -- DyT's learned alpha per slot.
* :func:`residual_growth` -- residual-stream RMS, norm and variance per depth
  ("The Curse of Depth"), from an :class:`ActivationStatsResult`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from normlens.io import read_npz, write_npz
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
    """Per slot: ``inputs[slot]`` and ``outputs[slot]``, 1-D float64 arrays of equal length."""

    slots: tuple[str, ...]
    inputs: dict
    outputs: dict

    def to_frame(self) -> pd.DataFrame:
        parts = [pd.DataFrame({"slot": slot, "layer": S.layer_of(slot), "input": self.inputs[slot],
                               "output": self.outputs[slot]}) for slot in self.slots]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
            columns=["slot", "layer", "input", "output"])

    def save(self, folder: str | Path) -> Path:
        arrays = {"slots": np.array(self.slots)}
        for i, slot in enumerate(self.slots):
            arrays[f"{i}/in"], arrays[f"{i}/out"] = self.inputs[slot], self.outputs[slot]
        return write_npz(Path(folder) / "s_curve.npz", **arrays)

    @classmethod
    def load(cls, folder: str | Path) -> "SCurveResult":
        a = read_npz(Path(folder) / "s_curve.npz")
        slots = tuple(str(s) for s in a["slots"])
        return cls(slots, {s: a[f"{i}/in"] for i, s in enumerate(slots)},
                   {s: a[f"{i}/out"] for i, s in enumerate(slots)})


class SCurveProbe(Probe):
    """Bounded uniform sample of (input, output) entry pairs per norm slot (bottom-k reservoir).

    Args:
        slots: norm slots ("blocks.0.ln1", ..., "ln_final"); default all.
        n_samples: pairs kept per slot.
        seed: seeds the sampling keys (the global RNG is untouched).
    """

    name = "s_curve"

    def __init__(self, slots: Sequence[str] | None = None, n_samples: int = 2048, seed: int = 0):
        super().__init__(None)
        if n_samples < 1:
            raise ValueError(f"n_samples must be positive, got {n_samples}")
        self.slots_arg, self.n_samples, self.seed = slots, n_samples, seed
        self.reset()

    def default_sites(self, info: ModelInfo) -> list[str]:
        slots = self.slots_arg or (S.norm_slots(info.n_layers) if info.n_layers and info.kind != "module"
                                   else info.norm_paths)
        names = []
        for slot in slots:  # a norm slot's hook_in/hook_out are its module's input/output sites
            pair = (S.module_input(slot), S.module_output(slot))
            if all(info.has(n) for n in pair):
                names += list(pair)
        return names

    def reset(self) -> None:
        self._gen = torch.Generator().manual_seed(self.seed)
        self._keep: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # slot -> keys, in, out
        self._pending: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def observe(self, site: str, x: torch.Tensor, batch: BatchContext) -> None:
        slot, which = S.split_module_site(site)
        flat = x.reshape(-1)
        if which == "in":
            keys = torch.rand(flat.numel(), generator=self._gen)  # one key per entry
            k = min(self.n_samples, flat.numel())
            keys, idx = torch.topk(keys, k, largest=False)
            self._pending[slot] = (keys, idx, flat[idx].double())
            return
        keys, idx, xin = self._pending.pop(slot)
        xout = flat[idx].double()
        if slot in self._keep:
            old = self._keep[slot]
            keys, xin, xout = torch.cat([old[0], keys]), torch.cat([old[1], xin]), torch.cat([old[2], xout])
        k = min(self.n_samples, keys.numel())
        keys, order = torch.topk(keys, k, largest=False)
        self._keep[slot] = (keys, xin[order], xout[order])

    def result(self) -> SCurveResult:
        slots = tuple(self._keep)
        return SCurveResult(slots, {s: self._keep[s][1].numpy() for s in slots},
                            {s: self._keep[s][2].numpy() for s in slots})


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
