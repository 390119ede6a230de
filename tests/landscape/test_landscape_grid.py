import numpy as np
import pytest
import torch

from landscape_helpers import (
    LinearRegression, TinyClassifier, regression_data, squared_error, tiny_tokens, tiny_zoo, zoo_tokens,
)
from normlens.landscape import axis_coordinates, compute_landscape, random_directions
from normlens.landscape.objective import next_token_objective
from normlens.losses import next_token_loss


def closed_form_surface(model, data, directions, a, b):
    """L(θ + a d₁ + b d₂) = mean((r₀ + a r₁ + b r₂)²) expanded into its quadratic coefficients."""
    x, y = data[:, : model.n_in].numpy(), data[:, model.n_in:].numpy()
    w, c = model.weight.detach().numpy(), model.bias.detach().numpy()
    r0 = x @ w.T + c - y
    r1 = x @ directions.axes[0]["weight"].numpy().T + directions.axes[0]["bias"].numpy()
    r2 = x @ directions.axes[1]["weight"].numpy().T + directions.axes[1]["bias"].numpy()
    A, B1, B2 = (r0 * r0).mean(), (r0 * r1).mean(), (r0 * r2).mean()
    C11, C12, C22 = (r1 * r1).mean(), (r1 * r2).mean(), (r2 * r2).mean()
    a, b = np.meshgrid(a, b, indexing="ij")
    return A + 2 * a * B1 + 2 * b * B2 + a * a * C11 + 2 * a * b * C12 + b * b * C22


@pytest.mark.parametrize("one_d", ["zero", "copy"])
def test_quadratic_model_surface_equals_closed_form(one_d):
    model, data = LinearRegression(), regression_data()
    d = random_directions(model, 2, one_d=one_d, seed=2)
    result = compute_landscape(model, d, data, span=(-1.5, 2.0), resolution=9, objective=squared_error,
                               points_per_batch=7, items_per_batch=5)
    expected = closed_form_surface(model, data, d, result.coords[0], result.coords[1])
    np.testing.assert_allclose(result.loss, expected, rtol=1e-12, atol=1e-12)
    assert result.accuracy is None and result.one_d == one_d
    assert result.loss.shape == (len(result.coords[0]), len(result.coords[1])) == (9, 9)


def test_origin_is_on_the_grid_and_equals_the_models_loss():
    model = TinyClassifier()
    tokens = tiny_tokens()
    d = random_directions(model, 2, seed=0)
    result = compute_landscape(model, d, tokens, span=0.7, resolution=7)
    i, j = result.origin_index
    assert result.coords[0][i] == 0.0 and result.coords[1][j] == 0.0
    with torch.no_grad():
        losses, _ = next_token_objective(model(tokens), tokens)
    assert abs(result.center_loss - float(losses.mean())) < 1e-13


def test_zoo_model_center_equals_next_token_loss_and_weights_bit_identical():
    model = tiny_zoo("dyt")
    model.train()  # a mode the analysis must restore
    tokens = zoo_tokens()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = {n: id(p) for n, p in model.named_parameters()}
    flags = [m.training for m in model.modules()]
    rng = torch.random.get_rng_state()
    d = random_directions(model, 2, seed=1)
    result = compute_landscape(model, d, tokens, span=1.0, resolution=3)
    for n, p in model.named_parameters():
        assert id(p) == ids[n] and p.grad is None
        assert torch.equal(p.detach(), before[n])  # bit-identical
    assert [m.training for m in model.modules()] == flags
    assert torch.equal(rng, torch.random.get_rng_state())
    model.eval()
    np.testing.assert_allclose(result.center_loss, float(next_token_loss(model, tokens).detach()), rtol=1e-6)
    assert model(tokens).shape == (4, 8, 32)  # the model still runs


def test_batched_equals_naive_loop():
    model = tiny_zoo("ln")
    tokens = zoo_tokens()
    d = random_directions(model, 2, seed=5)
    result = compute_landscape(model, d, tokens, span=0.5, resolution=5, points_per_batch=6, items_per_batch=3,
                               accuracy=True)
    params = {n: p.detach() for n, p in model.named_parameters()}
    copy = tiny_zoo("ln")
    for i, a in enumerate(result.coords[0]):
        for j, b in enumerate(result.coords[1]):
            with torch.no_grad():
                for n, p in copy.named_parameters():
                    p.copy_(params[n] + a * d.axes[0][n] + b * d.axes[1][n])
                logits = copy(tokens)
            losses, correct = next_token_objective(logits, tokens)
            np.testing.assert_allclose(result.loss[i, j], float(losses.mean()), rtol=1e-6)
            np.testing.assert_allclose(result.accuracy[i, j], float(correct.mean()), atol=1e-12)


def test_one_axis_and_asymmetric_range():
    model, data = LinearRegression(), regression_data()
    d = random_directions(model, 1, seed=0)
    result = compute_landscape(model, d, data, span=(0.0, 1.0), resolution=5, objective=squared_error)
    assert result.loss.shape == (5,) and result.coords[0].tolist() == [0, 0.25, 0.5, 0.75, 1.0]
    assert result.center_loss == result.loss[0]


def test_axis_coordinates_have_exactly_resolution_points_and_contain_zero():
    for lo, hi, n in [(-1, 1, 21), (-0.5, 1.5, 21), (0, 1, 2), (-3, 0, 4), (-0.1, 2.0, 7), (-1, 2, 4),
                      (-0.25, 1.25, 7), (-1, 1, 3)]:
        c = axis_coordinates(lo, hi, n)
        assert c[0] == lo and c[-1] == hi and 0.0 in c and len(c) == n, (lo, hi, n, c)
        assert np.all(np.diff(c) > 0)
        neg, pos = c[c <= 0], c[c >= 0]  # each side evenly spaced
        for side in (neg, pos):
            if len(side) > 2:
                np.testing.assert_allclose(np.diff(side), np.diff(side)[0], rtol=1e-12)
    np.testing.assert_allclose(axis_coordinates(-1, 1, 21), np.linspace(-1, 1, 21), atol=1e-15)


@pytest.mark.parametrize("resolution", [2, 4, 20])
def test_even_resolution_on_a_symmetric_span_is_refused_naming_odd_values(resolution):
    with pytest.raises(ValueError, match=rf"use an odd resolution such as {resolution + 1}"):
        axis_coordinates(-1, 1, resolution)
    with pytest.raises(ValueError, match="resolution >= 3"):
        axis_coordinates(-1, 2, 2)


def test_bad_input_gives_clear_errors():
    model, data = LinearRegression(), regression_data()
    d = random_directions(model, 2, seed=0)
    kwargs = dict(objective=squared_error)
    with pytest.raises(ValueError, match="span must be a positive number"):
        compute_landscape(model, d, data, span=0.0, **kwargs)
    with pytest.raises(ValueError, match="positive width"):
        compute_landscape(model, d, data, span=(0.0, 0.0), **kwargs)
    with pytest.raises(ValueError, match="must contain 0"):
        compute_landscape(model, d, data, span=(0.5, 1.0), **kwargs)
    with pytest.raises(ValueError, match="resolution must be an integer >= 2"):
        compute_landscape(model, d, data, resolution=1, **kwargs)
    with pytest.raises(ValueError, match="evaluation set is empty"):
        compute_landscape(model, d, data[:0], **kwargs)
    with pytest.raises(ValueError, match="does not fit the model"):
        compute_landscape(LinearRegression(n_in=4), d, regression_data(n_in=4), **kwargs)
    with pytest.raises(TypeError, match="must be a Directions"):
        compute_landscape(model, d.axes, data, **kwargs)


def test_nan_cells_are_kept_and_counted():
    """Cells whose loss overflows are recorded as they are; the origin stays finite."""
    model, data = LinearRegression(), regression_data()
    d = random_directions(model, 1, normalization="none", seed=0)
    result = compute_landscape(model, d, data, span=1e200, resolution=3, objective=squared_error)
    assert result.n_nonfinite == 2 and np.isfinite(result.center_loss)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_before_any_work(value):
    model, data = LinearRegression(), regression_data()
    d = random_directions(model, 1, seed=0)
    with torch.no_grad():
        model.weight[0, 0] = value
    evaluated = []
    with pytest.raises(ValueError, match=r"in parameter 'weight'.*checkpoint from before the divergence"):
        compute_landscape(model, d, data, resolution=3, objective=squared_error,
                          on_chunk=lambda c, n: evaluated.append(c))
    assert evaluated == []
    with pytest.raises(ValueError, match="non-finite"):
        random_directions(model, 1, seed=0)


def test_one_token_sequences_are_refused():
    model = TinyClassifier()
    d = random_directions(model, 1, seed=0)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        compute_landscape(model, d, tiny_tokens(n_ctx=1), resolution=3)


def test_result_roundtrip(tmp_path):
    model = TinyClassifier()
    d = random_directions(model, 2, seed=0)
    result = compute_landscape(model, d, tiny_tokens(), span=1.0, resolution=3, model_name="tiny", accuracy=True)
    assert result.accuracy is not None
    assert compute_landscape(model, d, tiny_tokens(), span=1.0, resolution=3).accuracy is None
    back = type(result).load(result.save(tmp_path / "r.npz"))
    assert back.model_name == "tiny" and back.kind == "random" and back.seed == 0
    np.testing.assert_array_equal(back.loss, result.loss)
    np.testing.assert_array_equal(back.accuracy, result.accuracy)
    assert back.direction_norms == result.direction_norms and back.ranges == result.ranges
