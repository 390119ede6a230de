import numpy as np
import pytest

from landscape_helpers import LinearRegression, TinyClassifier, regression_data, squared_error, tiny_tokens
from normlens.landscape import (
    LandscapeMetrics, compute_landscape, compute_metrics, random_directions, sharpness,
)
from normlens.landscape.results import LandscapeResult


def test_quadratic_curvature_fit_equals_hessian_and_closed_form(tmp_path):
    model, data = LinearRegression(), regression_data()
    d = random_directions(model, 2, one_d="copy", seed=3)
    result = compute_landscape(model, d, data, span=1.0, resolution=9, objective=squared_error)
    metrics = compute_metrics(result, model=model, directions=d, eval_items=data, objective=squared_error)
    x = data[:, : model.n_in].numpy()
    for k, curv in enumerate(metrics.curvature):
        r = x @ d.axes[k]["weight"].numpy().T + d.axes[k]["bias"].numpy()  # residual change per unit step
        second = 2 * (r * r).mean()  # f''(0) = dᵀHd for L = mean(residual²)
        norm2 = sum(float((t ** 2).sum()) for t in d.axes[k].values())
        assert curv.fit_second_derivative == pytest.approx(second, rel=1e-9)
        assert curv.hessian_rayleigh == pytest.approx(second / norm2, rel=1e-12)
        assert curv.fit_rayleigh == pytest.approx(curv.hessian_rayleigh, rel=1e-9)
        assert curv.relative_error < 1e-9 and curv.n_fit_points == 5
    back = LandscapeMetrics.load(metrics.save(tmp_path / "m.json"))
    assert back == metrics


def test_curvature_fit_approaches_hessian_on_a_nonquadratic_model():
    model, tokens = TinyClassifier(), tiny_tokens()
    d = random_directions(model, 2, seed=1)
    errors = []
    for span in (0.02, 0.002):  # the fit's error is O(span²)
        result = compute_landscape(model, d, tokens, span=span, resolution=5)
        metrics = compute_metrics(result, model=model, directions=d, eval_items=tokens, n_side=2)
        errors.append([c.relative_error for c in metrics.curvature])
    errors = np.array(errors)
    assert (errors[1] < 1e-4).all() and (errors[1] < errors[0] / 30).all()


def test_sharpness_matches_brute_force():
    gen = np.random.default_rng(0)
    coords = (np.linspace(-1, 1, 11), np.linspace(-1, 1, 11))
    loss = gen.random((11, 11))
    loss[5, 5] = 0.1
    result = LandscapeResult(coords, loss, 0.1, "random", "filter", "zero", (1.0, 1.0))
    for radius in (0.25, 0.5, 1.0):
        s = sharpness(result, radius)
        best, where = -np.inf, None
        for i, a in enumerate(coords[0]):
            for j, b in enumerate(coords[1]):
                if np.hypot(a, b) <= radius + 1e-12 and loss[i, j] - 0.1 > best:
                    best, where = loss[i, j] - 0.1, (a, b)
        assert s.increase == pytest.approx(best) and s.at == pytest.approx(where)
        assert s.relative == pytest.approx(best / 1.1)
    loss[6, 5] = np.nan
    assert sharpness(result, 0.25).increase == np.inf and sharpness(result, 0.25).n_nonfinite == 1
    with pytest.raises(ValueError, match="radius must be positive"):
        sharpness(result, 0.0)
