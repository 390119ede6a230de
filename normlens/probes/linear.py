"""Linear probes: how much of a label is linearly readable from each layer's activations.

Activations are collected by a probe (:class:`ActivationSampleProbe`, so they
can be gathered in a forward pass other probes share) that keeps only a seeded
random subset of token positions, sized so that all kept activations fit in
``max_bytes`` (float32); nothing else is stored. Forwards run in eval mode.
Each site gets a scikit-learn probe fitted on a seeded train split and scored
on the held-out rest:

* categorical labels (token identity, integer user labels): LogisticRegression
  (``kind="logistic"``) or RidgeClassifier (``kind="ridge"``), score = accuracy;
* continuous labels (position, float user labels): Ridge, score = R^2.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from normlens.hygiene import eval_mode
from normlens.io import load_frame, save_frame
from normlens import sites as S
from normlens.probes.attach import BatchContext, Probe, attach, model_info, resolve_sites

KINDS = ("logistic", "ridge")


@dataclass(frozen=True)
class LinearProbeResult:
    """Held-out score per site; ``metric`` is "accuracy" or "r2"."""

    frame: pd.DataFrame  # site, layer, score, metric, n_train, n_test, label, kind

    def to_frame(self) -> pd.DataFrame:
        return self.frame.copy()

    def save(self, folder: str | Path) -> Path:
        return save_frame(self.frame, Path(folder) / "linear_probes.parquet")

    @classmethod
    def load(cls, folder: str | Path) -> "LinearProbeResult":
        return cls(load_frame(Path(folder) / "linear_probes.parquet"))


def default_probe_sites(model: nn.Module) -> list[str]:
    info, _ = model_info(model)
    return S.residual_sites(info.n_layers) if info.n_layers and info.kind != "module" else [
        S.module_output(p) for p in info.block_paths]


def activation_widths(model: nn.Module, sites: Sequence[str], tokens: torch.Tensor) -> dict[str, int]:
    """Width (entries per token) of each site's activation, from one forward on ``tokens[:1, :2]``."""
    width: dict[str, int] = {}

    class _Width(Probe):
        def observe(self, site: str, x: torch.Tensor, batch: BatchContext) -> None:
            width[site] = x[0, 0].numel()

    probe = _Width(list(sites))
    with eval_mode(model), attach(model, probe), torch.no_grad(), torch.random.fork_rng(devices=[]):
        model(tokens[:1, :2])
    return {site: width[site] for site in probe.sites}


def sample_positions(n_tokens: int, widths: dict[str, int], max_bytes: int, seed: int = 0) -> torch.Tensor:
    """Sorted flat (batch * pos) indices of a seeded random subset of tokens whose float32
    activations at all ``widths``' sites together fit in ``max_bytes``."""
    per_token = 4 * sum(widths.values())
    n_keep = min(n_tokens, max(1, max_bytes // max(per_token, 1)))
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n_tokens, generator=gen)[:n_keep].sort().values


class ActivationSampleProbe(Probe):
    """Keeps the activations of the tokens at flat indices ``idx`` (into batch * pos of the whole
    token tensor), which the model sees in order, batch after batch; nothing else is stored.

    ``result()`` -> (site -> float32 array (len(idx seen), width), the flat indices seen).
    """

    name = "activation_sample"

    def __init__(self, sites: Sequence[str] | str, idx: torch.Tensor):
        super().__init__(sites)
        self.idx = torch.as_tensor(idx, dtype=torch.long)
        self.reset()

    def reset(self) -> None:
        self._offset = 0
        self._batch_tokens = 0
        self._kept: dict[str, list[torch.Tensor]] = {}

    def observe(self, site: str, x: torch.Tensor, batch: BatchContext) -> None:
        n = x.shape[0] * x.shape[1]  # (batch, pos, ...)
        self._batch_tokens = n
        lo, hi = torch.searchsorted(self.idx, torch.tensor([self._offset, self._offset + n])).tolist()
        rows = (self.idx[lo:hi] - self._offset).to(x.device)
        self._kept.setdefault(site, []).append(x.detach().reshape(n, -1)[rows].float().cpu())

    def end_batch(self, batch: BatchContext) -> None:
        self._offset += self._batch_tokens
        self._batch_tokens = 0

    def result(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        n_seen = int(torch.searchsorted(self.idx, torch.tensor(self._offset)))
        acts = {s: torch.cat(self._kept[s]).numpy() for s in self.sites if s in self._kept}
        return acts, self.idx[:n_seen].numpy()


def collect_activations(model: nn.Module, tokens: torch.Tensor, sites: Sequence[str], max_bytes: int,
                        seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Activations (n_kept, d) per site at a seeded random subset of positions, and their flat indices.

    Runs in eval mode (each module's own train flag is restored afterwards)."""
    info, _ = model_info(model)
    sites = resolve_sites(list(sites), info.hook_names)
    idx = sample_positions(tokens.numel(), activation_widths(model, sites, tokens), max_bytes, seed)
    probe = ActivationSampleProbe(sites, idx)
    with eval_mode(model), attach(model, probe), torch.no_grad(), torch.random.fork_rng(devices=[]):
        model(tokens)
    return probe.result()


def _targets(tokens: torch.Tensor, labels: str | np.ndarray | torch.Tensor, kind: str,
             test_fraction: float) -> tuple[np.ndarray, str]:
    """Check the arguments; (batch, pos) label array and the label's name."""
    if kind not in KINDS:
        raise ValueError(f"unknown probe kind {kind!r}; choose one of {', '.join(KINDS)}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    if not torch.is_tensor(tokens) or tokens.dim() != 2:
        raise ValueError(f"tokens must be a (batch, pos) tensor, got {getattr(tokens, 'shape', type(tokens))}")
    if isinstance(labels, str):
        if labels == "token":
            return tokens.numpy(), "token"
        if labels == "position":
            return np.broadcast_to(np.arange(tokens.shape[1], dtype=np.float64), tokens.shape), "position"
        raise ValueError(f"labels must be 'token', 'position' or a (batch, pos) array, got {labels!r}")
    y_all = labels.numpy() if torch.is_tensor(labels) else np.asarray(labels)
    if y_all.shape != tuple(tokens.shape):
        raise ValueError(f"labels must have the tokens' shape {tuple(tokens.shape)}, got {y_all.shape}")
    return y_all, "user"


def _score(acts: dict[str, np.ndarray], idx: np.ndarray, sites: Sequence[str], y_all: np.ndarray,
           label_name: str, *, kind: str, test_fraction: float, seed: int, alpha: float,
           max_iter: int) -> LinearProbeResult:
    from sklearn.linear_model import LogisticRegression, Ridge, RidgeClassifier
    from sklearn.model_selection import train_test_split

    categorical = np.issubdtype(y_all.dtype, np.integer) or y_all.dtype == bool
    y = np.asarray(y_all).reshape(-1)[idx]
    rows = []
    for site, X in acts.items():
        X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_fraction, random_state=seed)
        if categorical:
            est = (LogisticRegression(C=1.0 / alpha, max_iter=max_iter) if kind == "logistic"
                   else RidgeClassifier(alpha=alpha))
            metric = "accuracy"
        else:
            est, metric = Ridge(alpha=alpha), "r2"
        if categorical and len(np.unique(y_tr)) < 2:
            score = float(np.mean(y_te == y_tr[0]))
        else:
            est.fit(X_tr, y_tr)
            score = float(est.score(X_te, y_te))
        rows.append({"site": site, "layer": S.layer_of(site), "depth": sites.index(site) if site in sites else None,
                     "score": score, "metric": metric, "n_train": len(y_tr), "n_test": len(y_te),
                     "label": label_name, "kind": kind if categorical else "ridge"})
    return LinearProbeResult(pd.DataFrame(rows))


def score_linear_probes(
    acts: dict[str, np.ndarray],
    idx: np.ndarray,
    tokens: torch.Tensor,
    labels: str | np.ndarray | torch.Tensor = "token",
    *,
    sites: Sequence[str],
    kind: str = "logistic",
    test_fraction: float = 0.25,
    seed: int = 0,
    alpha: float = 1.0,
    max_iter: int = 200,
) -> LinearProbeResult:
    """:func:`fit_linear_probes` on activations already collected by :func:`collect_activations`.

    ``acts, idx`` come from ``collect_activations(model, tokens, sites, max_bytes, seed)``; one
    collection serves several labels. ``sites``: the names or patterns it was given.
    """
    y_all, label_name = _targets(tokens, labels, kind, test_fraction)
    return _score(acts, idx, list(sites), y_all, label_name, kind=kind, test_fraction=test_fraction,
                  seed=seed, alpha=alpha, max_iter=max_iter)


def fit_linear_probes(
    model: nn.Module,
    tokens: torch.Tensor,
    labels: str | np.ndarray | torch.Tensor = "token",
    *,
    sites: Sequence[str] | None = None,
    kind: str = "logistic",
    test_fraction: float = 0.25,
    max_bytes: int = 32 << 20,
    seed: int = 0,
    alpha: float = 1.0,
    max_iter: int = 200,
) -> LinearProbeResult:
    """Fit one probe per site predicting ``labels`` and score it on a held-out split.

    Args:
        tokens: (batch, pos) int64.
        labels: "token" (the token id at that position), "position", or a
            (batch, pos) array of user labels (integers: classes; floats: regression).
        sites: hook names or patterns; default the residual stream at every depth.
        kind: "logistic" or "ridge" (for classes); regression always uses Ridge.
        max_bytes: memory bound on the kept float32 activations (all sites together).
    """
    y_all, label_name = _targets(tokens, labels, kind, test_fraction)  # checked before any forward pass
    sites = list(sites) if sites is not None else default_probe_sites(model)
    acts, idx = collect_activations(model, tokens, sites, max_bytes, seed)
    return _score(acts, idx, sites, y_all, label_name, kind=kind, test_fraction=test_fraction, seed=seed,
                  alpha=alpha, max_iter=max_iter)
