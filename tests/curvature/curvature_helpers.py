"""Tiny seeded models and their dense Hessian / GGN: the oracles of the curvature tests."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, jacrev

import normlens
from normlens.losses import logits_loss
from normlens.parameters import select_parameters

ZOO_KW = dict(n_layers=1, d_model=8, n_heads=2, n_ctx=8, d_vocab=16, d_mlp=16)


class TinyMLP(nn.Module):
    """Linear -> LayerNorm -> GELU -> Linear, 3 classes."""

    def __init__(self, d_in: int = 5, d_hidden: int = 6, n_classes: int = 3):
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.norm = nn.LayerNorm(d_hidden)
        self.fc2 = nn.Linear(d_hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.norm(self.fc1(x))))


def mlp_loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def mlp_outputs(model: nn.Module, batch) -> torch.Tensor:
    return model(batch[0])


def mlp_loss_from_outputs(outputs: torch.Tensor, batch) -> torch.Tensor:
    return F.cross_entropy(outputs, batch[1])


def make_mlp(dtype=torch.float64, seed: int = 0) -> TinyMLP:
    torch.manual_seed(seed)
    model = TinyMLP().to(dtype)
    with torch.no_grad():  # non-trivial norm parameters
        model.norm.weight.add_(0.3 * torch.randn(6, dtype=dtype))
        model.norm.bias.add_(0.1 * torch.randn(6, dtype=dtype))
    return model


def mlp_batch(n: int = 32, seed: int = 1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


def zoo_tokens(n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, ZOO_KW["d_vocab"], (n, ZOO_KW["n_ctx"]), generator=g)


def make_zoo(norm: str, dtype=torch.float64) -> nn.Module:
    model = normlens.build_model(norm=norm, seed=3, **ZOO_KW).to(torch.float64).eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # move norm gains off their init so norm curvature is generic
        for name, p in model.named_parameters():
            if p.dim() <= 1:
                p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return model.to(dtype)


def _flat_function(model, params, fn):
    """(flat parameters of the selected subset) -> fn(model with them), others fixed.

    torch.func.functional_call leaves plain tensors behind in a TransformerLens bridge
    (a module reachable by two paths), which would break the model for later tests, so
    every Parameter object is put back after each call. (A deep copy is no way out:
    a copied bridge's hooks still write into the original's attention.)
    """
    infos = select_parameters(model, params)
    by_key = dict(model.named_parameters())
    tensors = [by_key[i.key].detach() for i in infos]
    sizes = [t.numel() for t in tensors]
    flat = torch.cat([t.reshape(-1) for t in tensors])
    originals = [(m, name, p) for m in model.modules() for name, p in m._parameters.items()]

    def call(x):
        d = {i.key: c.view(t.shape) for i, c, t in zip(infos, x.split(sizes), tensors)}
        try:
            return fn(lambda *a: functional_call(model, d, a))
        finally:
            for m, name, p in originals:
                m._parameters[name] = p

    return call, flat


def dense_hessian(model, loss_of_call, params=None) -> torch.Tensor:
    """Dense Hessian, independent of the operators.

    torch.autograd.functional.hessian (one double-backward per column) for up to
    200 parameters; above that the vmapped reverse-over-reverse torch.func one,
    which is ~100x faster. On torch 2.13 the vmapped one is wrong in the rows of
    nn.LayerNorm's weight (not symmetric), so symmetry is asserted.
    """
    f, flat = _flat_function(model, params, loss_of_call)
    if flat.numel() <= 200:
        return torch.autograd.functional.hessian(f, flat)
    H = jacrev(jacrev(f))(flat)
    torch.testing.assert_close(H, H.T, rtol=0, atol=1e-10, msg="dense oracle not symmetric")
    return H


def dense_ggn(model, outputs_of_call, loss_of_outputs, params=None) -> torch.Tensor:
    """J^T H_z J with J the dense Jacobian of the outputs and H_z the dense loss Hessian in z."""
    f, flat = _flat_function(model, params, outputs_of_call)
    z = f(flat)
    J = jacrev(f)(flat).reshape(z.numel(), -1)  # (n_out, n)
    Hz = jacrev(jacrev(lambda o: loss_of_outputs(o.view(z.shape))))(z.reshape(-1))  # (n_out, n_out)
    return J.T @ Hz @ J


def symmetric(eigenvalues, seed: int = 0) -> torch.Tensor:
    """Q diag(eigenvalues) Q^T for a seeded random orthogonal Q, float64."""
    g = torch.Generator().manual_seed(seed)
    n = len(eigenvalues)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return Q @ torch.diag(torch.as_tensor(eigenvalues, dtype=torch.float64)) @ Q.T


def zoo_loss_of_call(tokens):
    return lambda call: logits_loss(call(tokens), tokens)


def mlp_loss_of_call(batch):
    return lambda call: F.cross_entropy(call(batch[0]), batch[1])
