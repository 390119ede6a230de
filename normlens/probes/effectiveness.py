"""Layer effectiveness: angular distances, loss when a block is skipped, gradient norms.

* Angular distance (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers";
  Sun et al. 2025, "The Curse of Depth in Large Language Models"):
  d(h_a, h_b) = arccos(cos_sim(h_a, h_b)) / pi in [0, 1], averaged over tokens,
  between every pair of residual-stream points (depth 0 = embeddings, depth l =
  after block l-1). The (l, l+1) entries are each block's input vs output.
* Skip loss: next-token loss with block l replaced by the identity (its output
  set to its input) minus the model's loss.
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

from normlens.io import load_frame, save_frame
from normlens import sites as S
from normlens.losses import next_token_loss


def _n_layers(model: nn.Module) -> int:
    n = getattr(getattr(model, "cfg", None), "n_layers", None)
    if not n:
        raise TypeError(f"{type(model).__name__} has no cfg.n_layers; layer effectiveness needs a bridge")
    return int(n)


def _check_tokens(tokens: torch.Tensor) -> None:
    if not torch.is_tensor(tokens) or tokens.dim() != 2 or tokens.dtype != torch.long:
        raise ValueError(f"tokens must be a (batch, pos) int64 tensor, got "
                         f"{getattr(tokens, 'shape', type(tokens))} {getattr(tokens, 'dtype', '')}")


def compute_angular_distances(model: nn.Module, tokens: torch.Tensor, batch_size: int = 16) -> np.ndarray:
    """(L+1, L+1) mean angular distance between residual-stream depths, symmetric, zero diagonal."""
    _check_tokens(tokens)
    L = _n_layers(model)
    names = S.residual_sites(L)
    hooks = model.hook_dict
    total = torch.zeros(L + 1, L + 1, dtype=torch.float64)
    count = 0
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
        units = torch.stack(store).flatten(1, 2)  # (L+1, tokens, d)
        cos = torch.einsum("atd,btd->abt", units, units).clamp(-1, 1)  # (L+1, L+1, tokens)
        total += (torch.arccos(cos) / torch.pi).sum(-1)
        count += units.shape[1]
    dist = total / max(count, 1)
    dist.fill_diagonal_(0.0)
    return dist.numpy()


def compute_skip_losses(model: nn.Module, tokens: torch.Tensor) -> tuple[float, np.ndarray]:
    """(base loss, loss change when each block is skipped), shape (L,)."""
    _check_tokens(tokens)
    L = _n_layers(model)
    hooks = model.hook_dict
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        base = float(next_token_loss(model, tokens))
        deltas = []
        for layer in range(L):
            seen: dict[str, torch.Tensor] = {}
            h_in = hooks[S.block_in(layer)].register_forward_hook(lambda m, a, out: seen.__setitem__("x", out))
            h_out = hooks[S.block_out(layer)].register_forward_hook(lambda m, a, out: seen["x"])
            try:
                deltas.append(float(next_token_loss(model, tokens)) - base)
            finally:
                h_in.remove()
                h_out.remove()
    return base, np.array(deltas)


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
    """Angular distances (L+1, L+1), skip-loss deltas (L,), per-parameter gradient norms."""

    angular: np.ndarray
    base_loss: float
    skip_delta: np.ndarray
    grad_norms: pd.DataFrame

    def block_frame(self) -> pd.DataFrame:
        """Per block: input/output angular distance, loss change when skipped, gradient norm."""
        L = len(self.skip_delta)
        g = self.grad_norms.dropna(subset=["layer"])
        per_layer = g.assign(sq=g.grad_norm**2).groupby("layer").sq.sum() ** 0.5
        return pd.DataFrame({"layer": np.arange(L), "angular_in_out": [self.angular[l, l + 1] for l in range(L)],
                             "skip_loss_delta": self.skip_delta,
                             "grad_norm": [float(per_layer.get(l, np.nan)) for l in range(L)]})

    def angular_frame(self) -> pd.DataFrame:
        n = self.angular.shape[0]
        a, b = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        return pd.DataFrame({"depth_a": a.ravel(), "depth_b": b.ravel(), "angular": self.angular.ravel()})

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        save_frame(self.angular_frame(), folder / "angular.parquet")
        save_frame(self.block_frame().assign(base_loss=self.base_loss), folder / "blocks.parquet")
        save_frame(self.grad_norms, folder / "grad_norms.parquet")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "EffectivenessResult":
        folder = Path(folder)
        ang = load_frame(folder / "angular.parquet")
        n = int(ang.depth_a.max()) + 1
        blocks = load_frame(folder / "blocks.parquet")
        return cls(ang.angular.to_numpy().reshape(n, n), float(blocks.base_loss.iloc[0]) if len(blocks) else float("nan"),
                   blocks.skip_loss_delta.to_numpy(), load_frame(folder / "grad_norms.parquet"))


def compute_effectiveness(model: nn.Module, tokens: torch.Tensor, batch_size: int = 16) -> EffectivenessResult:
    """All three measurements on ``tokens`` (batch, pos)."""
    angular = compute_angular_distances(model, tokens, batch_size)
    base, delta = compute_skip_losses(model, tokens)
    return EffectivenessResult(angular, base, delta, compute_gradient_norms(model, tokens))
