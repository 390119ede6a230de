"""Layer effectiveness: angular distances, loss when a block is skipped, gradient norms.

* Angular distance (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers";
  Sun et al. 2025, "The Curse of Depth in Large Language Models"):
  d(h_a, h_b) = arccos(cos_sim(h_a, h_b)) / pi in [0, 1] between every pair of
  residual-stream points (depth 0 = embeddings, depth l = after block l-1),
  on the last token of each sequence as both papers measure it
  (``positions="last"``, the default), or averaged over all tokens
  (``positions="all"``, a variant: early positions, which see little context,
  weigh as much as late ones). The (l, l+1) entries are each block's input vs
  output.
* Skip loss: next-token loss with block l replaced by the identity (its output
  set to its input) minus the model's loss.
* Per-sequence values of both are kept, so :meth:`EffectivenessResult.interval_frame`
  gives bootstrap intervals over sequences.
* Gradient norms (Mix-LN): ||dL/dtheta|| per parameter, per layer and per group
  (attn / mlp / norm / embed / unembed), via ``torch.autograd.grad`` -- the
  model's ``.grad`` fields are not touched.

Every function leaves weights, grads, train/eval mode and the RNG state as found.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from normlens.io import load_frame, read_json, read_npz, save_frame, write_json, write_npz
from normlens import sites as S
from normlens.losses import next_token_loss
from normlens.uncertainty import bootstrap_interval


def _n_layers(model: nn.Module) -> int:
    n = getattr(getattr(model, "cfg", None), "n_layers", None)
    if not n:
        raise TypeError(f"{type(model).__name__} has no cfg.n_layers; layer effectiveness needs a bridge")
    return int(n)


def _check_tokens(tokens: torch.Tensor) -> None:
    if not torch.is_tensor(tokens) or tokens.dim() != 2 or tokens.dtype != torch.long:
        raise ValueError(f"tokens must be a (batch, pos) int64 tensor, got "
                         f"{getattr(tokens, 'shape', type(tokens))} {getattr(tokens, 'dtype', '')}")


ANGULAR_POSITIONS = ("last", "all")


def _check_positions(positions: str) -> None:
    if positions not in ANGULAR_POSITIONS:
        raise ValueError(f"positions must be 'last' (the papers' last token) or 'all' (every token), "
                         f"got {positions!r}")


def angular_distances_per_sequence(model: nn.Module, tokens: torch.Tensor, batch_size: int = 16,
                                   positions: str = "last") -> np.ndarray:
    """(n_seq, L+1, L+1) angular distance between residual depths, per sequence.

    ``positions="last"``: on each sequence's last token (Gromov et al. 2024; Curse of Depth);
    ``"all"``: the mean over the sequence's tokens.
    """
    _check_tokens(tokens)
    _check_positions(positions)
    L = _n_layers(model)
    names = S.residual_sites(L)
    hooks = model.hook_dict
    parts = []
    for start in range(0, tokens.shape[0], batch_size):
        store: list[torch.Tensor] = []
        handles = [hooks[n].register_forward_hook(
            lambda mod, args, out: store.append(torch.nn.functional.normalize(out.detach().double(), dim=-1)))
            for n in names]
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                model(tokens[start:start + batch_size])
        finally:
            for h in handles:
                h.remove()
        units = torch.stack(store)  # (L+1, b, pos, d)
        if positions == "last":
            units = units[:, :, -1:]  # (L+1, b, 1, d)
        cos = torch.einsum("abtd,cbtd->bact", units, units).clamp(-1, 1)  # (b, L+1, L+1, tokens)
        dist = (torch.arccos(cos) / torch.pi).mean(-1)  # (b, L+1, L+1)
        dist.diagonal(dim1=1, dim2=2).zero_()
        parts.append(dist)
    return torch.cat(parts).numpy()


def compute_angular_distances(model: nn.Module, tokens: torch.Tensor, batch_size: int = 16,
                              positions: str = "last") -> np.ndarray:
    """(L+1, L+1) mean angular distance between residual depths, symmetric, zero diagonal.

    ``positions``: "last" (each sequence's last token, the papers' measure) or "all" (every token).
    """
    return angular_distances_per_sequence(model, tokens, batch_size, positions).mean(0)


def skip_losses_per_sequence(model: nn.Module, tokens: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(base loss per sequence (n_seq,), loss change per sequence when each block is skipped (n_seq, L))."""
    _check_tokens(tokens)
    L = _n_layers(model)
    hooks = model.hook_dict

    def per_sequence() -> torch.Tensor:
        return next_token_loss(model, tokens, reduction="none").double().mean(-1)  # (n_seq,)

    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        base = per_sequence()
        deltas = []
        for layer in range(L):
            seen: dict[str, torch.Tensor] = {}
            h_in = hooks[S.block_in(layer)].register_forward_hook(lambda m, a, out: seen.__setitem__("x", out))
            h_out = hooks[S.block_out(layer)].register_forward_hook(lambda m, a, out: seen["x"])
            try:
                deltas.append(per_sequence() - base)
            finally:
                h_in.remove()
                h_out.remove()
    return base.cpu().numpy(), torch.stack(deltas, dim=1).cpu().numpy()


def compute_skip_losses(model: nn.Module, tokens: torch.Tensor) -> tuple[float, np.ndarray]:
    """(base loss, loss change when each block is skipped), shape (L,)."""
    base, deltas = skip_losses_per_sequence(model, tokens)
    return float(base.mean()), deltas.mean(0)


_GROUPS = (("norm", re.compile(r"(^|\.)(ln\w*|norm\w*)\.")), ("attn", re.compile(r"\.attn\.")),
           ("mlp", re.compile(r"\.mlp\.")), ("unembed", re.compile(r"^(unembed|head|lm_head)\.")),
           ("embed", re.compile(r"^(tok_embed|embed|pos_embed|pos|wte|wpe)\.")))


def param_group(name: str) -> str:
    name = S.clean_name(name)
    for group, pattern in _GROUPS:
        if pattern.search(name):
            return group
    return "other"


def compute_gradient_norms(model: nn.Module, tokens: torch.Tensor) -> pd.DataFrame:
    """One row per parameter: name, layer, group, gradient L2 norm of the mean next-token loss."""
    _check_tokens(tokens)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        loss = next_token_loss(model, tokens)
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    rows = []
    for (name, _), g in zip(named, grads):
        clean = S.clean_name(name)
        rows.append({"param": clean, "layer": S.layer_of(clean), "group": param_group(name),
                     "grad_norm": float(g.detach().double().norm()) if g is not None else 0.0})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class EffectivenessResult:
    """Angular distances (L+1, L+1), skip-loss deltas (L,), per-parameter gradient norms.

    ``angular_positions``: "last" or "all" (see :func:`compute_angular_distances`).
    Per sequence (None when not kept): ``angular_sequences`` (n_seq, L+1, L+1),
    ``base_loss_sequences`` (n_seq,), ``skip_delta_sequences`` (n_seq, L).
    """

    angular: np.ndarray
    base_loss: float
    skip_delta: np.ndarray
    grad_norms: pd.DataFrame
    angular_positions: str = "last"
    angular_sequences: np.ndarray | None = None
    base_loss_sequences: np.ndarray | None = None
    skip_delta_sequences: np.ndarray | None = None

    def block_frame(self) -> pd.DataFrame:
        """Per block: input/output angular distance, loss change when skipped, gradient norm."""
        L = len(self.skip_delta)
        g = self.grad_norms.dropna(subset=["layer"])
        per_layer = g.assign(sq=g.grad_norm**2).groupby("layer").sq.sum() ** 0.5
        return pd.DataFrame({"layer": np.arange(L), "angular_in_out": [self.angular[l, l + 1] for l in range(L)],
                             "skip_loss_delta": self.skip_delta,
                             "grad_norm": [float(per_layer.get(l, np.nan)) for l in range(L)]})

    def interval_frame(self, *, level: float = 0.95, n_resamples: int = 2000, method: str = "auto",
                       seed: int = 0) -> pd.DataFrame:
        """Per block: angular in/out distance and skip-loss change with intervals of the mean over sequences
        (``method`` as :func:`normlens.uncertainty.bootstrap_interval`: Student's t below 20 sequences, BCa above).

        Columns ``angular_in_out``, ``angular_low``, ``angular_high``,
        ``skip_loss_delta``, ``skip_low``, ``skip_high``, ``n_sequences``
        (:func:`normlens.uncertainty.bootstrap_interval`; NaN bounds without
        per-sequence values or with fewer than two sequences).
        """
        L = len(self.skip_delta)
        rows = []
        for layer in range(L):
            row: dict = {"layer": layer}
            for name, values, point in (
                    ("angular", None if self.angular_sequences is None else self.angular_sequences[:, layer, layer + 1],
                     self.angular[layer, layer + 1]),
                    ("skip", None if self.skip_delta_sequences is None else self.skip_delta_sequences[:, layer],
                     self.skip_delta[layer])):
                iv = (bootstrap_interval(values, level=level, n_resamples=n_resamples, method=method, seed=seed)
                      if values is not None else None)
                row[f"{name}_low"] = iv.low if iv else np.nan
                row[f"{name}_high"] = iv.high if iv else np.nan
                row["angular_in_out" if name == "angular" else "skip_loss_delta"] = float(point)
            row["n_sequences"] = 0 if self.skip_delta_sequences is None else len(self.skip_delta_sequences)
            rows.append(row)
        return pd.DataFrame(rows, columns=["layer", "angular_in_out", "angular_low", "angular_high",
                                           "skip_loss_delta", "skip_low", "skip_high", "n_sequences"])

    def group_frame(self) -> pd.DataFrame:
        """Gradient norm per (layer, group): sqrt of the summed squared norms."""
        g = self.grad_norms.assign(sq=self.grad_norms.grad_norm**2, layer=self.grad_norms.layer.fillna(-1))
        out = g.groupby(["layer", "group"], as_index=False).sq.sum()
        return out.assign(grad_norm=out.sq**0.5).drop(columns="sq")

    def angular_frame(self) -> pd.DataFrame:
        n = self.angular.shape[0]
        a, b = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        return pd.DataFrame({"depth_a": a.ravel(), "depth_b": b.ravel(), "angular": self.angular.ravel()})

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        save_frame(self.angular_frame(), folder / "angular.parquet")
        save_frame(self.block_frame().assign(base_loss=self.base_loss), folder / "blocks.parquet")
        save_frame(self.grad_norms, folder / "grad_norms.parquet")
        arrays = {k: getattr(self, k) for k in _SEQUENCE_ARRAYS if getattr(self, k) is not None}
        write_npz(folder / "effectiveness.npz", **arrays)
        write_json(folder / "effectiveness.json", {"angular_positions": self.angular_positions})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "EffectivenessResult":
        folder = Path(folder)
        ang = load_frame(folder / "angular.parquet")
        n = int(ang.depth_a.max()) + 1
        blocks = load_frame(folder / "blocks.parquet")
        arrays = read_npz(folder / "effectiveness.npz") if (folder / "effectiveness.npz").exists() else {}
        meta = read_json(folder / "effectiveness.json") if (folder / "effectiveness.json").exists() else {}
        return cls(ang.angular.to_numpy().reshape(n, n), float(blocks.base_loss.iloc[0]) if len(blocks) else float("nan"),
                   blocks.skip_loss_delta.to_numpy(), load_frame(folder / "grad_norms.parquet"),
                   meta.get("angular_positions", "all"), *(arrays.get(k) for k in _SEQUENCE_ARRAYS))


_SEQUENCE_ARRAYS = ("angular_sequences", "base_loss_sequences", "skip_delta_sequences")


def compute_effectiveness(model: nn.Module, tokens: torch.Tensor, batch_size: int = 16,
                          positions: str = "last") -> EffectivenessResult:
    """All three measurements on ``tokens`` (batch, pos), per-sequence values kept.

    ``positions``: the angular distance's tokens, "last" (the papers') or "all".
    """
    _check_tokens(tokens)
    _check_positions(positions)
    angular = angular_distances_per_sequence(model, tokens, batch_size, positions)
    base, delta = skip_losses_per_sequence(model, tokens)
    return EffectivenessResult(angular.mean(0), float(base.mean()), delta.mean(0), compute_gradient_norms(model, tokens),
                               positions, angular, base, delta)
