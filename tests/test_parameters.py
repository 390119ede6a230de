"""Parameter selection and detection of parameters the forward never uses."""
import math

import pytest
import torch
import torch.nn as nn

from normlens.parameters import describe_exclusion, describe_parameters, find_unused_parameters


class _TwoPaths(nn.Module):
    """A model with a branch its forward never takes, like a bridge's fused qkv copy."""

    def __init__(self):
        super().__init__()
        self.used = nn.Linear(4, 4)
        self.unused = nn.Linear(4, 4)
        self.zero_grad_gain = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return self.used(x) + 0.0 * self.zero_grad_gain


def _mse(model, batch):
    return model(batch).pow(2).mean()


def test_unused_parameters_found_and_zero_gradient_kept():
    model = _TwoPaths()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    unused = find_unused_parameters(model, torch.randn(3, 4), _mse)
    assert sorted(i.name for i in unused) == ["unused.bias", "unused.weight"]
    assert all(p.grad is None for p in model.parameters())  # nothing written
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    line = describe_exclusion(unused)
    assert line.startswith("excluded 20 parameters") and "unused.weight" in line
    assert describe_exclusion([]) == ""


def test_zoo_model_uses_every_parameter():
    import normlens

    model = normlens.build_model(norm="ln", n_layers=1, d_model=16, n_heads=2, n_ctx=8, seed=0)
    assert find_unused_parameters(model, torch.randint(0, 256, (2, 8))) == []


def test_hf_gpt2_bridge_fused_qkv_is_unused(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    from normlens.models.loading import load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=32, vocab_size=64)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path)
    bridge = load_model(str(tmp_path))
    unused = find_unused_parameters(bridge, torch.randint(0, 64, (2, 8)))
    names = [i.name for i in unused]
    assert names, "the bridge's fused qkv copies should be reported unused"
    # independent check: one backward through the whole bridge leaves exactly those without .grad
    bridge.zero_grad(set_to_none=True)
    logits = bridge(torch.randint(0, 64, (1, 8)))
    logits.sum().backward()
    by_key = dict(bridge.named_parameters())
    no_grad = {i.key for i in describe_parameters(bridge) if by_key[i.key].grad is None}
    assert {i.key for i in unused} == no_grad
    total = sum(math.prod(i.shape) for i in unused)
    assert total > 0
