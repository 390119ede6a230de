"""Direct logit attribution per head and per MLP, and the direct effect measured by ablation.

The final residual stream of a Pre-LN transformer is a sum of component outputs,
r = embeddings + Σ_l (Σ_h head_{l,h} + b_O,l) + Σ_l mlp_l, and the logits are
unembed(norm(r)). For the correct next token t:

* **Direct logit attribution** (as TransformerLens computes it, e.g. Elhage et
  al. 2021, "A Mathematical Framework for Transformer Circuits"): each component
  output v is passed through the final norm *linearized with its cached scale*
  σ of the full residual (LayerNorm: (v - mean(v)) / σ · g; RMSNorm: v / σ · g;
  no norm: v) and projected onto the unembedding column W_U[:, t].
* **Direct effect by ablation** (the check of Baroni, Heimersheim et al. 2025,
  "Transformers Don't Need LayerNorm at Inference Time"): logit_t(r) -
  logit_t(r - v), removing v from the final residual only and re-running only the
  final norm and the unembedding (the norm's scale is recomputed).

The two agree exactly when the final norm is affine (no norm, or LayerNorm with a
frozen std after LN removal) and differ with a live LayerNorm, whose scale σ
depends on v. Component names: ``L{l}H{h}`` (head), ``L{l}.mlp`` and ``rest``
(embeddings and attention output biases: r minus the named components).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from normlens import sites as S
from normlens.hygiene import eval_mode, rng_preserved
from normlens.io import read_json, read_npz, write_json, write_npz

METHODS = ("dla", "ablation")


@dataclass(frozen=True)
class LogitAttributionResult:
    """Per component and token: its contribution to the correct next-token logit.

    ``values`` (n_components, n_seq, pos - 1): position p predicts token p + 1.
    ``layers``/``heads`` per component (head -1 for MLPs, layer and head -1 for
    ``rest``); ``method`` "dla" or "ablation"; ``norm``: how the final norm was
    treated ("layernorm", "rmsnorm", "none").
    """

    components: tuple[str, ...]
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    values: np.ndarray
    method: str
    norm: str

    def to_frame(self) -> pd.DataFrame:
        """One row per component: kind ("head", "mlp", "rest"), mean and std over tokens, n_tokens."""
        flat = self.values.reshape(len(self.components), -1)
        kinds = ["rest" if c == "rest" else "mlp" if h < 0 else "head"
                 for c, h in zip(self.components, self.heads)]
        return pd.DataFrame({"component": list(self.components), "layer": list(self.layers),
                             "head": list(self.heads), "kind": kinds, "mean": flat.mean(1), "std": flat.std(1),
                             "n_tokens": flat.shape[1], "method": self.method})

    def save(self, folder: str | Path, name: str | None = None) -> Path:
        folder = Path(folder)
        stem = name or f"logit_attribution_{self.method}"
        write_npz(folder / f"{stem}.npz", values=self.values)
        write_json(folder / f"{stem}.json", {"components": list(self.components), "layers": list(self.layers),
                                             "heads": list(self.heads), "method": self.method, "norm": self.norm})
        return folder

    @classmethod
    def load(cls, folder: str | Path, name: str = "logit_attribution_dla") -> "LogitAttributionResult":
        folder = Path(folder)
        meta = read_json(folder / f"{name}.json")
        return cls(tuple(meta["components"]), tuple(meta["layers"]), tuple(meta["heads"]),
                   read_npz(folder / f"{name}.npz")["values"], meta["method"], meta["norm"])


@dataclass(frozen=True)
class _FinalNorm:
    kind: str  # "layernorm", "rmsnorm" or "none"
    weight: torch.Tensor | None  # gain times any output scale
    module: nn.Module  # runs the real norm (for the ablation)


def _final_norm(model: nn.Module) -> _FinalNorm:
    """How the final norm maps the residual, with a clear error where no linearization applies."""
    module = model.get_submodule("ln_final")
    inner = getattr(module, "original_component", None) or module
    kind = getattr(inner, "kind", None)  # zoo norms say what they are
    if kind is None:
        tl = (getattr(model.cfg, "normalization_type", None) or "").upper()
        kind = "ln" if tl.startswith("LN") else "rms" if tl.startswith("RMS") else "none" if not tl else tl
    names = {"ln": "layernorm", "lnfree": "layernorm", "rms": "rmsnorm", "none": "none"}
    if kind not in names:
        raise ValueError(f"direct logit attribution needs a final norm that is linear once its scale is frozen "
                         f"(LayerNorm, RMSNorm, frozen-std LayerNorm or none); this model's is {kind!r}")
    weight = getattr(inner, "weight", None)
    weight = weight.detach() if isinstance(weight, torch.Tensor) else None
    scale = float(getattr(inner, "output_scale", 1.0))
    if scale != 1.0:
        weight = weight * scale if weight is not None else None
    return _FinalNorm(names[kind], weight, module)


def _check(model: nn.Module, tokens: torch.Tensor, batch_size: int) -> int:
    n_layers = getattr(getattr(model, "cfg", None), "n_layers", None)
    if not n_layers or not hasattr(model, "hook_dict"):
        raise ValueError(f"{type(model).__name__} is not a TransformerLens bridge; logit attribution needs one")
    if not torch.is_tensor(tokens) or tokens.dim() != 2 or tokens.shape[1] < 2 or tokens.is_floating_point():
        got = f"{tuple(tokens.shape)} {tokens.dtype}" if torch.is_tensor(tokens) else type(tokens).__name__
        raise ValueError(f"tokens must be (batch, pos) integers with pos >= 2, got {got}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    placement = getattr(getattr(model, "normlens_config", None), "placement", "pre")
    if placement in ("post", "mix"):
        raise ValueError(f"the model's placement is {placement!r}: blocks normalize the residual stream, so "
                         "component outputs do not add up to the final residual; use a Pre-LN model")
    needed = [S.attn_hook(l, "hook_z") for l in range(n_layers)] + [S.mlp_out(l) for l in range(n_layers)]
    needed += [S.norm_in("ln_final")]
    missing = [n for n in needed if n not in model.hook_dict]
    if missing:
        raise ValueError(f"the model lacks the hooks {missing[:3]} that logit attribution reads")
    return int(n_layers)


def _components(n_layers: int, n_heads: int) -> tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...]]:
    names, layers, heads = [], [], []
    for layer in range(n_layers):
        for head in range(n_heads):
            names.append(f"L{layer}H{head}"), layers.append(layer), heads.append(head)
        names.append(f"L{layer}.mlp"), layers.append(layer), heads.append(-1)
    return (*names, "rest"), (*layers, -1), (*heads, -1)


def _run(model: nn.Module, tokens: torch.Tensor, n_layers: int) -> dict[str, torch.Tensor]:
    """One forward, keeping the heads' z, the MLP outputs, the final residual and the final norm's scale."""
    names = [S.attn_hook(l, "hook_z") for l in range(n_layers)] + [S.mlp_out(l) for l in range(n_layers)]
    names += [S.norm_in("ln_final")] + ([S.norm_scale("ln_final")] if S.norm_scale("ln_final") in model.hook_dict
                                        else [])
    store: dict[str, torch.Tensor] = {}
    handles = [model.hook_dict[n].register_forward_hook(
        lambda mod, args, out, n=n: store.__setitem__(n, out.detach())) for n in names]
    try:
        model(tokens)
    finally:
        for h in handles:
            h.remove()
    return store


def _component_outputs(model: nn.Module, store: dict[str, torch.Tensor], n_layers: int) -> torch.Tensor:
    """(n_components, batch, pos, d_model): each head's and MLP's write to the residual, then the rest."""
    W_O = model.W_O.detach()  # (layers, heads, d_head, d_model)
    parts = []
    for layer in range(n_layers):
        z = store[S.attn_hook(layer, "hook_z")]  # (b, pos, heads, d_head) or (b, pos, heads*d_head)
        z = z.reshape(*z.shape[:2], *W_O.shape[1:3])  # (b, pos, heads, d_head)
        parts += list(torch.einsum("bphk,hkd->hbpd", z.to(W_O.dtype), W_O[layer]).unbind(0))
        parts.append(store[S.mlp_out(layer)].to(W_O.dtype))
    resid = store[S.norm_in("ln_final")].to(W_O.dtype)  # (b, pos, d)
    parts.append(resid - torch.stack(parts).sum(0))
    return torch.stack(parts)


def _attribute(model: nn.Module, tokens: torch.Tensor, batch_size: int, method: str,
               per_batch: Callable) -> LogitAttributionResult:
    n_layers = _check(model, tokens, batch_size)
    norm = _final_norm(model)
    names, layers, heads = _components(n_layers, int(model.cfg.n_heads))
    chunks = []
    with torch.no_grad(), rng_preserved(), eval_mode(model):
        W_U = model.W_U.detach()  # (d_model, vocab)
        for start in range(0, tokens.shape[0], batch_size):
            batch = tokens[start:start + batch_size]
            store = _run(model, batch, n_layers)
            outputs = _component_outputs(model, store, n_layers)[:, :, :-1]  # (comp, b, pos-1, d)
            u = W_U.T[batch[:, 1:]]  # (b, pos-1, d): the correct next token's unembedding
            chunks.append(per_batch(norm, store, outputs, u).double().cpu())
    return LogitAttributionResult(names, layers, heads, torch.cat(chunks, dim=1).numpy(), method, norm.kind)


def direct_logit_attribution(model: nn.Module, tokens: torch.Tensor, *, batch_size: int = 16) -> LogitAttributionResult:
    """Each head's and MLP's direct contribution to the correct next-token logit, final norm linearized.

    The final norm is frozen at its cached scale σ (TransformerLens's convention):
    DLA_c = ((v_c - mean(v_c)) / σ ⊙ g) · W_U[:, t] for LayerNorm, (v_c / σ ⊙ g) · W_U[:, t]
    for RMSNorm, v_c · W_U[:, t] without a norm. Biases (the norm's and the
    unembedding's) are not attributed.

    Args:
        model: a Pre-LN TransformerLens bridge (zoo model or loaded), final norm LN, RMS, LN-free or none.
        tokens: (n_seq, pos) token ids, pos >= 2.

    Returns:
        :class:`LogitAttributionResult` with method "dla".
    """
    def per_batch(norm: _FinalNorm, store, outputs, u):
        direction = u  # (b, pos-1, d)
        if norm.weight is not None:
            direction = direction * norm.weight.to(u.dtype)
        if norm.kind != "none":
            scale = store[S.norm_scale("ln_final")][:, :-1].to(u.dtype)  # (b, pos-1, 1), the cached σ
            direction = direction / scale
        if norm.kind == "layernorm":
            direction = direction - direction.mean(-1, keepdim=True)  # (v - mean v)·e = v·(e - mean e)
        return torch.einsum("cbpd,bpd->cbp", outputs, direction)

    return _attribute(model, tokens, batch_size, "dla", per_batch)


def direct_effect_by_ablation(model: nn.Module, tokens: torch.Tensor, *, batch_size: int = 16) -> LogitAttributionResult:
    """logit_t(r) - logit_t(r - v_c): each component removed from the final residual only.

    Only the final norm and the unembedding are re-run (the norm's scale is
    recomputed on r - v_c), so for an affine final norm this equals
    :func:`direct_logit_attribution` exactly.
    """
    def per_batch(norm: _FinalNorm, store, outputs, u):
        resid = store[S.norm_in("ln_final")][:, :-1].to(u.dtype)  # (b, pos-1, d)

        def target_logit(r: torch.Tensor) -> torch.Tensor:
            return (norm.module(r).to(u.dtype) * u).sum(-1)  # the unembedding's bias cancels in the difference

        full = target_logit(resid)
        return torch.stack([full - target_logit(resid - v) for v in outputs])

    return _attribute(model, tokens, batch_size, "ablation", per_batch)
