"""A 1-D interpolation between two checkpoints reaches the end model, buffers included."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from normlens.landscape import Directions, compute_landscape, interpolation_direction


class BatchNormRegressor(nn.Module):
    """Rows [x | y] -> residuals of a BatchNorm MLP; the running statistics are buffers."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)).double()

    def forward(self, batch):
        return self.net(batch[:, :3]) - batch[:, 3:]


def squared_error(residuals, batch):
    return residuals.pow(2), None


def trained(seed: int, shift: float, steps: int) -> BatchNormRegressor:
    """Running statistics gathered on inputs centred at ``shift`` (no optimizer: only the buffers move)."""
    model = BatchNormRegressor(seed)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model.net(torch.randn(16, 3, generator=gen, dtype=torch.float64) * 2 + shift)
    return model.eval()


def own_loss(model, data) -> float:
    with torch.no_grad():
        return float(squared_error(model.eval()(data), data)[0].mean())


def test_ends_are_the_two_models_own_losses_buffers_included(tmp_path):
    start, end = trained(0, 0.0, 20), trained(1, 10.0, 30)
    data = torch.randn(12, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    d = interpolation_direction(start, end)
    assert d.buffer_names == ["net.1.running_mean", "net.1.running_var"]
    assert d.info["fixed_buffers"] == ["net.1.num_batches_tracked"]  # an integer counter stays start's
    result = compute_landscape(start, d, data, span=(0.0, 1.0), resolution=5, objective=squared_error)
    loss_start, loss_end = own_loss(start, data), own_loss(end, data)
    # the constructed case is one where keeping start's buffers would be far off
    mixed = trained(0, 0.0, 20)
    mixed.load_state_dict({**end.state_dict(), **{k: v for k, v in start.state_dict().items() if "running" in k}})
    assert abs(own_loss(mixed, data) - loss_end) > 0.1 * loss_end
    assert result.loss[0] == pytest.approx(loss_start, rel=1e-12)
    assert result.loss[-1] == pytest.approx(loss_end, rel=1e-10)
    # the midpoint: parameters and float buffers halfway, by plain assignment
    half = trained(0, 0.0, 20)
    with torch.no_grad():
        s, e = start.state_dict(), end.state_dict()
        half.load_state_dict({k: (s[k] + 0.5 * (e[k] - s[k])) if s[k].is_floating_point() else s[k] for k in s})
    assert result.loss[2] == pytest.approx(own_loss(half, data), rel=1e-10)
    assert result.info["interpolated_buffers"] == d.buffer_names
    for name, b in start.named_buffers():  # the start model is left as it was
        assert torch.equal(b, dict(trained(0, 0.0, 20).named_buffers())[name])

    back = Directions.load(d.save(tmp_path / "line.safetensors"))
    assert back.buffer_names == d.buffer_names and back.fingerprint() == d.fingerprint()
    again = compute_landscape(start, back, data, span=(0.0, 1.0), resolution=5, objective=squared_error)
    np.testing.assert_array_equal(again.loss, result.loss)


def test_a_frozen_parameter_that_differs_is_refused():
    start, end = trained(0, 0.0, 5), trained(1, 0.0, 5)
    start.net[0].weight.requires_grad_(False)
    with pytest.raises(ValueError, match=r"frozen.*net\.0\.weight.*requires_grad_\(True\)"):
        interpolation_direction(start, end)
    end.load_state_dict({**end.state_dict(), "net.0.weight": start.net[0].weight.detach().clone()})
    d = interpolation_direction(start, end)  # equal frozen weights: nothing to move there
    assert torch.count_nonzero(d.axes[0]["net.0.weight"]) == 0
