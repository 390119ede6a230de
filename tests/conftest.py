import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def embedded_splits():
    from normlens.data import load_embedded

    return load_embedded(max_bytes=200_000)
