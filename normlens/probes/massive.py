"""Massive activations (Sun et al. 2024, "Massive Activations in Large Language Models").

Sun et al. call an activation massive when its magnitude is at least 100 and
about 1000 times the median magnitude of its layer's hidden state; they find a
handful of them, on a few fixed channels, at the first token or delimiter
tokens, and tie them to attention sinks and normalization.

:class:`MassiveActivationProbe` finds them in one streaming pass, without
keeping the activations: per site it keeps the ``top_k`` entries of largest
|x| with their (batch, pos, channel) indices, and a histogram of |x| for the
site's median (:func:`~normlens.probes.stats.histogram_quantile`: within one
bin, 2^-7 relative, of the exact median; exact zeros at 0). At the end an
entry is massive when |x| >= ``min_abs`` and |x| >= ``min_ratio`` x median |x|
of its site over all tokens seen. If more entries qualify than ``top_k`` holds,
the site's summary says ``truncated`` (raise ``top_k``). Padded tokens (an
``attention_mask`` on the model call) are left out; NaN/inf entries are
counted, not ranked.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from normlens import sites as S
from normlens.hygiene import eval_mode, rng_preserved
from normlens.io import load_frame, read_json, save_frame, write_json
from normlens.probes.attach import BatchContext, ModelInfo, Probe, ProbeError, attach, real_token_mask
from normlens.probes.reduce import N_HIST_BINS, abs_histogram
from normlens.probes.stats import histogram_quantile

__all__ = ["MassiveActivationProbe", "MassiveActivationResult", "compute_massive_activations"]

ROW_COLUMNS = ["site", "layer", "batch", "pos", "channel", "value", "abs", "ratio"]
SITE_COLUMNS = ["site", "layer", "median_abs", "max_abs", "n_entries", "n_nonfinite", "n_massive", "truncated"]


@dataclass(frozen=True)
class MassiveActivationResult:
    """Massive activations and the per-site medians they are measured against.

    ``rows``: one per massive activation -- site, layer, batch (sequence index in the order
    seen), pos, channel (index into the flattened trailing axes), value (signed), abs, ratio
    (|value| / the site's median |x|; inf where that median is 0), sorted by site then |value|.
    ``per_site``: site, layer, median_abs, max_abs, n_entries (real, finite), n_nonfinite,
    n_massive, truncated (top_k was full of massive entries: there may be more).
    """

    rows: pd.DataFrame
    per_site: pd.DataFrame
    min_abs: float
    min_ratio: float
    top_k: int

    def to_frame(self) -> pd.DataFrame:
        return self.rows.copy()

    def channel_frame(self) -> pd.DataFrame:
        """How often each (site, channel) holds a massive activation (Sun et al.: a few fixed channels)."""
        return (self.rows.groupby(["site", "layer", "channel"], sort=False, dropna=False).size().rename("n_massive")
                .reset_index())

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        save_frame(self.rows, folder / "massive_activations.parquet")
        save_frame(self.per_site, folder / "massive_activation_sites.parquet")
        write_json(folder / "massive_activations.json",
                   {"min_abs": self.min_abs, "min_ratio": self.min_ratio, "top_k": self.top_k})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "MassiveActivationResult":
        folder = Path(folder)
        meta = read_json(folder / "massive_activations.json")
        return cls(load_frame(folder / "massive_activations.parquet"),
                   load_frame(folder / "massive_activation_sites.parquet"),
                   float(meta["min_abs"]), float(meta["min_ratio"]), int(meta["top_k"]))


def _check(min_abs: float, min_ratio: float, top_k: int) -> None:
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    for name, value in (("min_abs", min_abs), ("min_ratio", min_ratio)):
        if not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


class _SiteState:
    """Running top-k (|x|, value, batch, pos, channel), |x| histogram and counts of one site."""

    def __init__(self) -> None:
        self.abs = torch.zeros(0, dtype=torch.float64)
        self.value = torch.zeros(0, dtype=torch.float64)
        self.where = torch.zeros(0, 3, dtype=torch.long)  # (batch, pos, channel)
        self.hist = torch.zeros(N_HIST_BINS, dtype=torch.int64)
        self.zeros = 0
        self.n_entries = 0
        self.n_nonfinite = 0
        self.n_seqs = 0  # sequences seen so far: the batch index offset of the next call


class MassiveActivationProbe(Probe):
    """Streaming detector of massive activations (see the module docstring).

    Args:
        sites: hook names or glob patterns; default the residual stream at every depth
            (Sun et al. study the hidden states between blocks).
        min_abs: smallest |x| that counts (Sun et al.: 100).
        min_ratio: smallest |x| / median |x| of the site that counts (Sun et al.: about 1000).
        top_k: entries kept per site (the candidates).
    """

    name = "massive_activations"

    def __init__(self, sites: Sequence[str] | str | None = None, *, min_abs: float = 100.0,
                 min_ratio: float = 1000.0, top_k: int = 64):
        super().__init__(sites)
        _check(min_abs, min_ratio, top_k)
        self.min_abs, self.min_ratio, self.top_k = float(min_abs), float(min_ratio), top_k
        self.reset()

    def default_sites(self, info: ModelInfo) -> list[str]:
        if info.kind == "module":
            return info.existing(S.module_output(p) for p in info.block_paths)
        return info.existing(S.residual_sites(info.n_layers)) if info.n_layers else []

    def reset(self) -> None:
        self._state: dict[str, _SiteState] = {}

    def update(self, site: str, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> None:
        """Add activations ``x`` (batch, pos, ...) of ``site`` directly; ``attention_mask`` (batch, pos),
        True = real token. Calls for one site number their sequences on from the previous call's."""
        self._add(site, x, real_token_mask(attention_mask))

    def observe(self, site: str, x: torch.Tensor, batch: BatchContext) -> None:
        self._add(site, x, batch.attention_mask)

    def _add(self, site: str, x: torch.Tensor, mask: torch.Tensor | None) -> None:
        x = x.detach()
        if x.dim() < 2:
            raise ProbeError(f"site {site!r}: massive activations need (batch, pos, ...) activations, "
                             f"got shape {tuple(x.shape)}")
        a = (x if x.dim() > 2 else x[..., None]).reshape(x.shape[0], x.shape[1], -1)  # (b, p, channels)
        state = self._state.setdefault(site, _SiteState())
        valid = torch.isfinite(a)
        n_nonfinite = int((~valid).sum())
        if mask is not None:
            if tuple(mask.shape) != tuple(a.shape[:2]):
                raise ProbeError(f"attention_mask of shape {tuple(mask.shape)} does not match the (batch, pos) "
                                 f"axes of site {site!r}, shape {tuple(x.shape)}")
            real = mask.to(device=a.device, dtype=torch.bool)[..., None]
            n_nonfinite = int((~valid & real).sum())
            valid &= real
        magnitude = a.abs()
        if bool(valid.all()):
            state.hist += abs_histogram(magnitude).cpu()
            kept = magnitude
        else:
            state.hist += abs_histogram(magnitude[valid]).cpu()
            kept = torch.where(valid, magnitude, -1.0)  # never ranked above a real entry
        n_valid = int(valid.sum())
        state.zeros += int(((a == 0) & valid).sum())
        state.n_entries += n_valid
        state.n_nonfinite += n_nonfinite
        k = min(self.top_k, kept.numel())
        top, flat = torch.topk(kept.reshape(-1), k)
        good = top >= 0
        top, flat = top[good], flat[good]
        b, p, c = torch.unravel_index(flat, a.shape)
        where = torch.stack([b + state.n_seqs, p, c], 1).cpu()
        value = a.reshape(-1)[flat].double().cpu()
        pool_abs = torch.cat([state.abs, top.double().cpu()])
        order = torch.argsort(pool_abs, descending=True, stable=True)[:self.top_k]
        state.abs = pool_abs[order]
        state.value = torch.cat([state.value, value])[order]
        state.where = torch.cat([state.where, where])[order]
        state.n_seqs += a.shape[0]

    def result(self) -> MassiveActivationResult:
        rows, summary = [], []
        names = [s for s in (self.sites or []) if s in self._state] + [
            s for s in self._state if s not in (self.sites or [])]
        for site in names:
            st = self._state[site]
            median = histogram_quantile(st.hist, zeros=st.zeros) if st.n_entries else float("nan")
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = st.abs.numpy() / median
            massive = (st.abs.numpy() >= self.min_abs) & (ratio >= self.min_ratio)
            layer = S.layer_of(site)
            for i in np.flatnonzero(massive):
                b, p, c = st.where[i].tolist()
                rows.append({"site": site, "layer": layer, "batch": b, "pos": p, "channel": c,
                             "value": float(st.value[i]), "abs": float(st.abs[i]), "ratio": float(ratio[i])})
            summary.append({"site": site, "layer": layer, "median_abs": median,
                            "max_abs": float(st.abs[0]) if st.abs.numel() else float("nan"),
                            "n_entries": st.n_entries, "n_nonfinite": st.n_nonfinite,
                            "n_massive": int(massive.sum()),
                            "truncated": bool(len(massive) == self.top_k and massive.all())})
        return MassiveActivationResult(pd.DataFrame(rows, columns=ROW_COLUMNS),
                                       pd.DataFrame(summary, columns=SITE_COLUMNS),
                                       self.min_abs, self.min_ratio, self.top_k)


def compute_massive_activations(model: nn.Module, tokens: torch.Tensor, *, sites: Sequence[str] | None = None,
                                min_abs: float = 100.0, min_ratio: float = 1000.0, top_k: int = 64,
                                batch_size: int = 16,
                                attention_mask: torch.Tensor | None = None) -> MassiveActivationResult:
    """Massive activations of ``model`` on ``tokens`` (batch, pos) int64, batch by batch, in eval mode.

    Rows give (site, layer, batch, pos, channel, value, ratio to the site's median |x|) for every
    entry with |x| >= ``min_abs`` and >= ``min_ratio`` x that median (Sun et al. 2024: 100 and
    about 1000). ``attention_mask`` (batch, pos), 1 = real token, is passed to the model and pads
    are left out. The model's train flags and the RNG are left as found.
    """
    _check(min_abs, min_ratio, top_k)
    if not torch.is_tensor(tokens) or tokens.dim() != 2:
        raise ValueError(f"tokens must be a (batch, pos) tensor, got {getattr(tokens, 'shape', type(tokens))}")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(tokens.shape):
        raise ValueError(f"attention_mask must have the tokens' shape {tuple(tokens.shape)}, "
                         f"got {tuple(attention_mask.shape)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    probe = MassiveActivationProbe(sites, min_abs=min_abs, min_ratio=min_ratio, top_k=top_k)
    with eval_mode(model), rng_preserved(), attach(model, probe), torch.no_grad():
        for start in range(0, tokens.shape[0], batch_size):
            kwargs = {} if attention_mask is None else {"attention_mask": attention_mask[start:start + batch_size]}
            model(tokens[start:start + batch_size], **kwargs)
    return probe.result()
