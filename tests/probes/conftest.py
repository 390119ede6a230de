import pytest
import torch

import normlens


@pytest.fixture(scope="module")
def model64():
    """A tiny float64 zoo model (Pre-LN), warmed up once so the bridge's own hooks exist."""
    model = normlens.build_model(norm="ln", n_layers=2, d_model=16, n_heads=2, n_ctx=32, act_fn="relu").double()
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 2, dtype=torch.long))
    return model


@pytest.fixture
def tokens():
    return torch.randint(0, 256, (3, 12), generator=torch.Generator().manual_seed(0))
