import numpy as np
import pytest

from landscape_helpers import LinearRegression, TinyClassifier, regression_data, squared_error, tiny_tokens
from normlens.landscape import GridMismatchError, compute_landscape, random_directions
from normlens.landscape.store import GridStore


class Interrupt(Exception):
    pass


def _stop_after(n):
    seen = []

    def callback(chunk, n_chunks):
        seen.append(chunk)
        if len(seen) >= n:
            raise Interrupt

    return callback, seen


def test_interrupted_run_resumes_to_the_identical_surface(tmp_path):
    model, tokens = TinyClassifier(), tiny_tokens()
    d = random_directions(model, 2, seed=0)
    kwargs = dict(span=1.0, resolution=7, points_per_batch=5, items_per_batch=2, accuracy=True)
    full = compute_landscape(model, d, tokens, **kwargs)

    path = tmp_path / "grid.npz"
    stop, first = _stop_after(4)
    with pytest.raises(Interrupt):
        compute_landscape(model, d, tokens, grid_file=path, **kwargs, on_chunk=stop)
    assert path.exists()
    # a stray temporary file from a write killed midway must not matter
    (tmp_path / ".grid.npz.abc.tmp").write_bytes(b"partial")
    rest = []
    resumed = compute_landscape(model, d, tokens, grid_file=path, **kwargs, on_chunk=lambda c, n: rest.append(c))
    resumed2_calls = []
    compute_landscape(model, d, tokens, grid_file=path, **kwargs,
                      on_chunk=lambda c, n: resumed2_calls.append(c))
    np.testing.assert_array_equal(resumed.loss, full.loss)  # bit-identical
    np.testing.assert_array_equal(resumed.accuracy, full.accuracy)
    assert len(first) == 4 and sorted(first + rest) == list(range(10))  # 49 cells in chunks of 5
    assert resumed2_calls == []  # a finished grid computes nothing


def test_resume_computes_only_missing_chunks(tmp_path):
    model, data = LinearRegression(), regression_data()
    d = random_directions(model, 2, seed=0)
    kwargs = dict(span=1.0, resolution=5, points_per_batch=4, objective=squared_error)
    path = tmp_path / "g.npz"
    stop, first = _stop_after(3)
    with pytest.raises(Interrupt):
        compute_landscape(model, d, data, grid_file=path, on_chunk=stop, **kwargs)
    rest = []
    compute_landscape(model, d, data, grid_file=path, on_chunk=lambda c, n: rest.append(c), **kwargs)
    assert sorted(first + rest) == list(range(7)) and not set(first) & set(rest)  # 25 cells / 4


def test_grid_file_for_other_directions_or_model_is_refused(tmp_path):
    model, data = LinearRegression(), regression_data()
    d = random_directions(model, 2, seed=0)
    kwargs = dict(span=1.0, resolution=3, objective=squared_error)
    path = tmp_path / "g.npz"
    compute_landscape(model, d, data, grid_file=path, **kwargs)
    with pytest.raises(GridMismatchError, match="directions"):
        compute_landscape(model, random_directions(model, 2, seed=1), data, grid_file=path, **kwargs)
    other = LinearRegression(seed=9)
    with pytest.raises(GridMismatchError, match="model"):
        compute_landscape(other, random_directions(other, 2, seed=0), data, grid_file=path, **kwargs)
    with pytest.raises(GridMismatchError, match="eval_set"):
        compute_landscape(model, d, data[:5], grid_file=path, **kwargs)
    with pytest.raises(GridMismatchError, match="grid"):
        compute_landscape(model, d, data, grid_file=path, **{**kwargs, "resolution": 5})


def test_a_file_that_is_not_a_grid_is_refused(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(GridMismatchError, match="not a readable normlens grid file"):
        GridStore.open(path, {"model": "x"}, 4, 2)
