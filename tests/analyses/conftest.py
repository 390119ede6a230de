import pytest
import torch

import normlens

TINY = dict(n_layers=1, d_model=16, n_heads=2, n_ctx=16, d_vocab=256)


@pytest.fixture
def tiny_models():
    """"ln", "rms" and a "none" model whose weights are NaN (a diverged run)."""
    models = {k: normlens.build_model(norm=k, **TINY).eval() for k in ("ln", "rms", "none")}
    with torch.no_grad():
        for p in models["none"].parameters():
            p.fill_(float("nan"))
    return models


@pytest.fixture
def tokens():
    return torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))
