"""One rule for what a landscape moves: trainable parameters the forward uses."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from landscape_helpers import TinyClassifier, tiny_tokens
from normlens.landscape import compute_landscape, compute_metrics, hessian_directions, random_directions
from normlens.landscape.objective import next_token_objective


class TwoPaths(TinyClassifier):
    """TinyClassifier plus a branch its forward never reads (like a bridge's fused qkv copy)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.unused = nn.Linear(6, 6).double()


def naive_loss(model, tokens, moves: dict[str, torch.Tensor]) -> float:
    """The loss with ``moves`` added to a copy's parameters, by plain assignment."""
    copy = type(model)()
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        for name, p in copy.named_parameters():
            p.add_(moves.get(name, torch.zeros_like(p)))
        losses, _ = next_token_objective(copy(tokens), tokens)
    return float(losses.mean())


def test_frozen_parameters_get_zero_random_directions():
    model = TinyClassifier()
    model.fc.weight.requires_grad_(False)
    d = random_directions(model, 2, seed=0)
    for axis in d.axes:
        assert torch.count_nonzero(axis["fc.weight"]) == 0
        assert torch.count_nonzero(axis["out.weight"]) > 0
    assert "frozen" in d.info["excluded"] and "fc.weight" in d.info["excluded"]


def test_a_direction_that_moves_a_frozen_parameter_is_refused():
    model, tokens = TinyClassifier(), tiny_tokens()
    d = random_directions(model, 1, seed=0)  # made while every parameter was trainable
    model.fc.weight.requires_grad_(False)
    with pytest.raises(ValueError, match=r"frozen \(requires_grad=False\).*fc\.weight.*requires_grad_\(True\)"):
        compute_landscape(model, d, tokens, resolution=3)


def test_unused_parameters_are_excluded_and_reported():
    model, tokens = TwoPaths(), tiny_tokens()
    d = random_directions(model, 2, seed=0, eval_items=tokens)
    assert all(torch.count_nonzero(axis[n]) == 0 for axis in d.axes for n in ("unused.weight", "unused.bias"))
    assert d.info["excluded"].startswith("excluded 42 parameters that the forward does not use")

    blind = random_directions(model, 2, seed=0)  # no evaluation items: the draw moves the unused branch
    assert torch.count_nonzero(blind.axes[0]["unused.weight"]) > 0
    result = compute_landscape(model, blind, tokens, span=0.5, resolution=3)
    assert "unused.weight" in result.info["excluded"]
    used = [n for n, _ in model.named_parameters() if not n.startswith("unused.")]
    for k, axis in enumerate(blind.axes):  # norms of what moved, computed independently
        expected = float(torch.cat([axis[n].reshape(-1) for n in used]).norm())
        assert result.direction_norms[k] == pytest.approx(expected, rel=1e-12)
        assert expected < blind.norms()[k]
    for i, a in enumerate(result.coords[0]):
        for j, b in enumerate(result.coords[1]):
            moves = {n: a * blind.axes[0][n] + b * blind.axes[1][n] for n in used}
            assert result.loss[i, j] == pytest.approx(naive_loss(model, tokens, moves), rel=1e-10)


def test_hessian_directions_and_metrics_leave_unused_parameters_out():
    model, tokens = TwoPaths(vocab=7, d=3), tiny_tokens(4, 5, vocab=7)
    model.unused = nn.Linear(3, 3).double()
    d = hessian_directions(model, tokens, k=1, seed=0, n_steps=40)
    assert torch.count_nonzero(d.axes[0]["unused.weight"]) == 0 and "unused.weight" in d.info["excluded"]
    result = compute_landscape(model, d, tokens, span=0.1, resolution=5)
    metrics = compute_metrics(result, radii=(0.1,), n_side=2, model=model, directions=d, eval_items=tokens)
    assert metrics.curvature[0].hessian_rayleigh == pytest.approx(d.info["eigenvalues"][0], rel=1e-6)


def test_hf_gpt2_bridge_landscape_excludes_the_fused_qkv_copy(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    from normlens.models.loading import load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=16, vocab_size=32)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path)
    bridge = load_model(str(tmp_path))
    tokens = torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(0))
    d = random_directions(bridge, 1, seed=0, eval_items=tokens)
    qkv = [n for n in d.names if "qkv" in n]
    assert qkv and all(torch.count_nonzero(d.axes[0][n]) == 0 for n in qkv)
    assert "the forward does not use" in d.info["excluded"] and "qkv" in d.info["excluded"]
    result = compute_landscape(bridge, d, tokens, span=0.2, resolution=3)
    assert np.isfinite(result.loss).all() and "qkv" in result.info["excluded"]
    with torch.no_grad():
        from normlens.losses import next_token_loss

        assert result.center_loss == pytest.approx(float(next_token_loss(bridge.eval(), tokens)), rel=1e-5)


def test_an_objective_without_gradient_moves_every_trainable_parameter():
    """A 0-1 loss has no gradient: usage cannot be detected, so nothing is left out (the surface is not flat)."""
    model, tokens = TinyClassifier(), tiny_tokens()

    def zero_one(logits, batch):
        wrong = (logits[:, :-1].argmax(-1) != batch[:, 1:]).double()
        return wrong, None

    d = random_directions(model, 1, seed=0, eval_items=tokens, objective=zero_one)
    assert "excluded" not in d.info and all(torch.count_nonzero(d.axes[0][n]) > 0
                                            for n, p in model.named_parameters() if p.dim() >= 2)
    result = compute_landscape(model, d, tokens, span=2.0, resolution=5, objective=zero_one)
    assert "excluded" not in result.info and np.ptp(result.loss) > 0
