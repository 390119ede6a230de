"""Fixtures of the curvature tests (helpers live in curvature_helpers.py)."""
from __future__ import annotations

import pytest
import torch

from curvature_helpers import dense_hessian, make_zoo, zoo_loss_of_call, zoo_tokens


@pytest.fixture(scope="session")
def zoo_dense():
    """norm kind -> (float64 model, tokens, dense Hessian), built once per session."""
    cache = {}

    def get(norm: str):
        if norm not in cache:
            model, tokens = make_zoo(norm), zoo_tokens()
            cache[norm] = (model, tokens, dense_hessian(model, zoo_loss_of_call(tokens)))
        return cache[norm]

    return get


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny products run fastest on one thread, above all on shared cores; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
