import json
import pickle

import numpy as np
import pytest

from landscape_helpers import LinearRegression, TinyClassifier, regression_data, squared_error, tiny_tokens
from normlens.landscape import GridMismatchError, compute_landscape, random_directions
from normlens.io import read_npz
from normlens.landscape.store import GridStore, chunk_digest


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


def _finished_grid(tmp_path, **extra):
    model, tokens = TinyClassifier(), tiny_tokens()
    d = random_directions(model, 2, seed=0)
    kwargs = dict(span=1.0, resolution=5, points_per_batch=4, **extra)
    path = tmp_path / "grid.npz"
    result = compute_landscape(model, d, tokens, grid_file=path, **kwargs)
    return model, d, tokens, kwargs, path, result


def _rewrite(path, **changes):
    arrays = read_npz(path)
    arrays.update(changes)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def _one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def test_values_rewritten_with_the_fingerprint_kept_are_refused(tmp_path):
    model, d, tokens, kwargs, path, result = _finished_grid(tmp_path)
    loss = read_npz(path)["loss"].copy()
    loss[12] = 0.123  # the origin of the 5 x 5 grid
    _rewrite(path, loss=loss)
    computed = []
    with pytest.raises(GridMismatchError) as error:
        compute_landscape(model, d, tokens, grid_file=path, on_chunk=lambda c, n: computed.append(c), **kwargs)
    assert str(path) in _one_line(error) and "edited or damaged" in str(error.value)
    assert "delete the file" in str(error.value) and computed == []


def test_a_forged_digest_is_caught_by_evaluating_the_origin_again(tmp_path):
    model, d, tokens, kwargs, path, result = _finished_grid(tmp_path)
    stored = read_npz(path)
    fingerprint = json.loads(str(stored["fingerprint"]))
    loss, digests = stored["loss"].copy(), stored["digests"].copy()
    loss[12] = 0.123
    chunk = 12 // 4
    cells = slice(4 * chunk, 4 * chunk + 4)
    digests[chunk] = chunk_digest(fingerprint, chunk, loss[cells], stored["accuracy"][cells])
    _rewrite(path, loss=loss, digests=digests)
    with pytest.raises(GridMismatchError) as error:
        compute_landscape(model, d, tokens, grid_file=path, **kwargs)
    text = _one_line(error)
    assert f"holds f = 0.123 at the origin but the model gives {result.center_loss:.6g}" in text
    assert str(path) in text and "delete the file" in text


def test_a_partial_grid_without_the_origin_is_checked_on_a_stored_cell(tmp_path):
    model, tokens = TinyClassifier(), tiny_tokens()
    d = random_directions(model, 2, seed=0)
    kwargs = dict(span=1.0, resolution=5, points_per_batch=4)
    path = tmp_path / "grid.npz"
    stop, first = _stop_after(1)
    with pytest.raises(Interrupt):
        compute_landscape(model, d, tokens, grid_file=path, on_chunk=stop, **kwargs)
    assert first == [0]  # chunk 0 holds cells 0-3, not the origin (cell 12)
    stored = read_npz(path)
    loss, digests = stored["loss"].copy(), stored["digests"].copy()
    loss[0] += 1.0
    digests[0] = chunk_digest(json.loads(str(stored["fingerprint"])), 0, loss[:4], stored["accuracy"][:4])
    _rewrite(path, loss=loss, digests=digests)
    with pytest.raises(GridMismatchError, match=r"at cell 0 \(-1, -1\) but the model gives"):
        compute_landscape(model, d, tokens, grid_file=path, **kwargs)


@pytest.mark.parametrize("damage, needle", [
    (dict(chunk_size=np.array(0)), "chunk_size 0 is not a positive integer"),
    (dict(chunk_size=np.array(2.5)), "chunk_size 2.5 is not a positive integer"),
    (dict(chunk_done=np.ones(9, dtype=bool)), "9 chunk flags"),
    (dict(chunk_done=np.ones(3, dtype=bool)), "3 chunk flags"),
    (dict(loss=np.zeros((5, 5))), "one value per cell"),
    (dict(fingerprint=np.array("{not json")), "not a readable normlens grid file"),
    (dict(fingerprint=np.array("[1, 2]")), "fingerprint is not a mapping"),
])
def test_damaged_grid_files_are_one_line_errors(tmp_path, damage, needle):
    model, d, tokens, kwargs, path, result = _finished_grid(tmp_path)
    _rewrite(path, **damage)
    with pytest.raises(GridMismatchError) as error:
        compute_landscape(model, d, tokens, grid_file=path, **kwargs)
    text = _one_line(error)
    assert needle in text and str(path) in text and "delete the file" in text


def test_pickled_truncated_and_old_grid_files_are_one_line_errors(tmp_path):
    model, d, tokens, kwargs, path, result = _finished_grid(tmp_path)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(GridMismatchError) as error:
        compute_landscape(model, d, tokens, grid_file=path, **kwargs)
    assert "not a readable normlens grid file" in _one_line(error)
    with open(path, "wb") as handle:  # an .npz whose arrays need pickle to load
        np.savez(handle, loss=np.array([{"a": 1}], dtype=object))
    with pytest.raises(GridMismatchError) as error:
        compute_landscape(model, d, tokens, grid_file=path, **kwargs)
    assert "not a readable normlens grid file" in _one_line(error)
    path.write_bytes(pickle.dumps({"loss": [0.1]}))
    with pytest.raises(GridMismatchError) as error:
        compute_landscape(model, d, tokens, grid_file=path, **kwargs)
    assert str(path) in _one_line(error)
    path.write_bytes(good)
    arrays = read_npz(path)
    del arrays["digests"]  # a file from before chunks carried digests
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    with pytest.raises(GridMismatchError, match="not a grid file of this normlens version"):
        compute_landscape(model, d, tokens, grid_file=path, **kwargs)
