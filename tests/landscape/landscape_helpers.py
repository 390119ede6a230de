"""Tiny seeded models for the landscape tests (importable by spawned workers)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn


class LinearRegression(nn.Linear):
    """out = x Wᵀ + b − y on rows [x | y]; with squared error the loss is an exact quadratic in θ.

    An ``nn.Linear`` (weight (n_out, n_in)), so filter normalization knows its output axis.
    """

    def __init__(self, n_in: int = 3, n_out: int = 2, seed: int = 0):
        super().__init__(n_in, n_out, dtype=torch.float64)
        gen = torch.Generator().manual_seed(seed)
        self.n_in = n_in
        self.weight = nn.Parameter(torch.randn(n_out, n_in, generator=gen, dtype=torch.float64))
        self.bias = nn.Parameter(torch.randn(n_out, generator=gen, dtype=torch.float64))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        x, y = batch[:, : self.n_in], batch[:, self.n_in:]
        return x @ self.weight.T + self.bias - y  # (n, n_out) residuals


def squared_error(residuals: torch.Tensor, batch: torch.Tensor):
    return residuals.pow(2), None


def regression_data(n: int = 12, n_in: int = 3, n_out: int = 2, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, n_in + n_out, generator=gen, dtype=torch.float64)


class TinyClassifier(nn.Module):
    """Embedding -> LayerNorm -> GELU MLP -> logits over tokens: a next-token model without attention."""

    def __init__(self, vocab: int = 11, d: int = 6, seed: int = 0, dtype=torch.float64):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.embed = nn.Embedding(vocab, d)
        self.ln = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 2 * d)
        self.out = nn.Linear(2 * d, vocab)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.7)
        self.to(dtype)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.ln(self.embed(tokens))  # (batch, pos, d)
        return self.out(torch.nn.functional.gelu(self.fc(h)))  # (batch, pos, vocab)


def tiny_tokens(n_seq: int = 5, n_ctx: int = 7, vocab: int = 11, seed: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n_seq, n_ctx), generator=gen)


def tiny_zoo(norm: str = "ln", seed: int = 0, d_vocab: int = 32):
    import normlens

    return normlens.build_model(norm=norm, n_layers=1, d_model=16, n_heads=2, n_ctx=8, d_vocab=d_vocab, seed=seed)


def zoo_tokens(n_seq: int = 4, n_ctx: int = 8, seed: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 32, (n_seq, n_ctx), generator=gen)


def dense_hessian(model: nn.Module, loss_of_params, names: list[str]) -> np.ndarray:
    """The full Hessian over ``names`` by torch.autograd.functional.hessian on a flat vector."""
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    flat = torch.cat([params[n].reshape(-1) for n in names])

    def f(vector):
        parts = dict(params)
        for n, s, piece in zip(names, shapes, torch.split(vector, sizes)):
            parts[n] = piece.view(s)
        return loss_of_params(parts)

    return torch.func.hessian(f)(flat).detach().numpy()
