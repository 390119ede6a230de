import numpy as np
import pytest
import torch
from torch.func import functional_call

from landscape_helpers import LinearRegression, TinyClassifier, dense_hessian, tiny_tokens, tiny_zoo
from normlens.landscape import (
    Directions,
    hessian_directions,
    interpolation_direction,
    normalize_direction,
    pca_directions,
    random_directions,
)
from normlens.landscape.objective import next_token_objective


def test_filter_normalized_rows_have_the_weights_row_norms():
    model = TinyClassifier()
    d = random_directions(model, 2, normalization="filter", seed=3)
    for axis in d.axes:
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                rows = p.detach().reshape(p.shape[0], -1).norm(dim=1)
                got = axis[name].reshape(p.shape[0], -1).norm(dim=1)
                torch.testing.assert_close(got, rows, rtol=1e-13, atol=0)
            else:
                assert torch.count_nonzero(axis[name]) == 0  # one_d="zero"


def test_filter_normalized_zoo_model_float32_and_dyt_alpha_zeroed():
    model = tiny_zoo("dyt")
    d = random_directions(model, 1, seed=0)
    params = dict(model.named_parameters())
    alphas = [n for n in params if n.endswith("alpha")]
    assert alphas and all(torch.count_nonzero(d.axes[0][n]) == 0 for n in alphas)
    for name, p in params.items():
        if p.dim() >= 2:
            torch.testing.assert_close(d.axes[0][name].norm(dim=1), p.detach().norm(dim=1), rtol=1e-6, atol=0)


def test_layer_and_none_normalization_and_copy_rule():
    model = TinyClassifier()
    layer = random_directions(model, 1, normalization="layer", one_d="copy", seed=1).axes[0]
    raw = random_directions(model, 1, normalization="none", one_d="copy", seed=1).axes[0]
    gen = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        draw = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        if p.dim() >= 2:
            torch.testing.assert_close(layer[name].norm(), p.detach().norm(), rtol=1e-13, atol=0)
            torch.testing.assert_close(raw[name], draw)  # "none": the Gaussian draw itself
        else:
            assert torch.equal(layer[name], p.detach()) and torch.equal(raw[name], p.detach())


def test_seeded_same_draw_for_models_of_the_same_shape():
    a, b = TinyClassifier(seed=0), TinyClassifier(seed=5)
    da = random_directions(a, 2, normalization="none", seed=7)
    db = random_directions(b, 2, normalization="none", seed=7)
    dc = random_directions(a, 2, normalization="none", seed=8)
    for k in range(2):
        assert all(torch.equal(da.axes[k][n], db.axes[k][n]) for n in da.names)
    assert not torch.equal(da.axes[0]["fc.weight"], dc.axes[0]["fc.weight"])
    # renormalizing the shared draw to b equals drawing for b directly
    fb = random_directions(b, 2, seed=7)
    again = normalize_direction(da.axes[0], b, "filter", "zero")
    assert all(torch.equal(again[n], fb.axes[0][n]) for n in fb.names)


def test_global_rng_untouched():
    model = TinyClassifier()
    state = torch.random.get_rng_state()
    random_directions(model, 2, seed=0)
    assert torch.equal(state, torch.random.get_rng_state())


def test_save_and_load_roundtrip(tmp_path):
    model = tiny_zoo("rms")
    d = random_directions(model, 2, normalization="filter", one_d="copy", seed=4)
    path = d.save(tmp_path / "dirs.safetensors")
    back = Directions.load(path)
    assert (back.kind, back.normalization, back.one_d, back.seed) == ("random", "filter", "copy", 4)
    assert back.names == d.names
    for k in range(2):
        assert all(torch.equal(back.axes[k][n], d.axes[k][n]) for n in d.names)
    assert back.fingerprint() == d.fingerprint()
    back.check_fits(tiny_zoo("rms", seed=3))  # same shapes: fits another model


def test_directions_that_do_not_fit_the_model_are_refused():
    d = random_directions(tiny_zoo("ln"), 1, seed=0)
    with pytest.raises(ValueError, match="does not fit the model"):
        d.check_fits(tiny_zoo("none"))  # no norm parameters
    wrong = TinyClassifier(d=4)
    with pytest.raises(ValueError, match="shape mismatch"):
        random_directions(TinyClassifier(), 1).check_fits(wrong)


def test_bad_options():
    model = TinyClassifier()
    with pytest.raises(ValueError, match="normalization must be one of"):
        random_directions(model, normalization="filters")
    with pytest.raises(ValueError, match="one_d must be one of"):
        random_directions(model, one_d="keep")
    with pytest.raises(ValueError, match="n_axes must be 1 or 2"):
        random_directions(model, 3)


def test_hessian_directions_match_dense_eigenvectors():
    model = TinyClassifier(vocab=7, d=3)
    tokens = tiny_tokens(4, 5, vocab=7)
    d = hessian_directions(model, tokens, k=2, one_d="zero", seed=0, n_steps=60)
    names = [n for n, p in model.named_parameters() if p.dim() >= 2]

    def loss(params):
        losses, _ = next_token_objective(functional_call(model, params, (tokens,)), tokens)
        return losses.mean()

    h = dense_hessian(model, loss, names)
    values, vectors = np.linalg.eigh(h)
    np.testing.assert_allclose(d.info["eigenvalues"], values[::-1][:2], rtol=1e-8)
    for k in range(2):
        got = torch.cat([d.axes[k][n].reshape(-1) for n in names]).numpy()
        assert abs(abs(got @ vectors[:, -1 - k]) - 1) < 1e-6
        assert all(torch.count_nonzero(d.axes[k][n]) == 0 for n, p in model.named_parameters() if p.dim() < 2)


def test_pca_directions_and_projected_trajectory():
    gen = torch.Generator().manual_seed(0)
    final = {"w": torch.randn(3, 4, generator=gen, dtype=torch.float64), "b": torch.randn(3, generator=gen, dtype=torch.float64)}
    trajectory = [{"w": final["w"] + torch.randn(3, 4, generator=gen, dtype=torch.float64) * (5 - i),
                   "b": final["b"] + 1.0} for i in range(5)] + [final]
    d = pca_directions(trajectory)
    diffs = np.stack([(t["w"] - final["w"]).reshape(-1).numpy() for t in trajectory[:-1]])
    centred = diffs - diffs.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    for k in range(2):
        got = d.axes[k]["w"].reshape(-1).numpy()
        assert abs(abs(got @ vt[k]) - 1) < 1e-10
        assert torch.count_nonzero(d.axes[k]["b"]) == 0
    coords = np.array(d.info["trajectory"])
    expected = np.vstack([diffs @ np.stack([d.axes[k]["w"].reshape(-1).numpy() for k in range(2)]).T, [[0, 0]]])
    np.testing.assert_allclose(coords, expected, atol=1e-12)
    with pytest.raises(ValueError, match="at least 3 checkpoints"):
        pca_directions(trajectory[:2])


def test_interpolation_direction_ends_at_the_other_model():
    a, b = LinearRegression(seed=0), LinearRegression(seed=1)
    d = interpolation_direction(a, b)
    for n, p in a.named_parameters():
        torch.testing.assert_close(p.detach() + 1.0 * d.axes[0][n], dict(b.named_parameters())[n].detach(),
                                   rtol=1e-15, atol=1e-15)
    with pytest.raises(ValueError, match="does not fit"):
        interpolation_direction(a, LinearRegression(n_in=4))


def test_draw_is_made_in_the_models_dtype_on_its_device():
    """The raw draw is torch.randn in the parameter's dtype from a generator of its device, not a
    float64 CPU draw cast afterwards (2.8 GB and minutes at 124 M parameters)."""
    model = TinyClassifier(dtype=torch.float32)
    d = random_directions(model, 2, normalization="none", seed=3)
    gen = torch.Generator(device="cpu").manual_seed(3)
    for axis in d.axes:
        for name, p in model.named_parameters():
            draw = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            assert axis[name].dtype == p.dtype and axis[name].device == p.device
            if p.dim() >= 2:
                assert torch.equal(axis[name], draw), name


def test_bfloat16_model_directions_and_saved_file(tmp_path):
    model = TinyClassifier(dtype=torch.bfloat16)
    d = random_directions(model, 2, seed=0)
    for name, p in model.named_parameters():
        assert d.axes[0][name].dtype == torch.bfloat16
        if p.dim() >= 2:  # norms accumulated in float32, stored in bfloat16
            torch.testing.assert_close(d.axes[0][name].float().norm(dim=1), p.detach().float().norm(dim=1),
                                       rtol=2e-2, atol=0)
    back = Directions.load(d.save(tmp_path / "bf16.safetensors"))
    assert all(torch.equal(back.axes[k][n], d.axes[k][n]) for k in range(2) for n in d.names)
    assert back.fingerprint() == d.fingerprint()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_directions_are_drawn_on_the_models_cuda_device(tmp_path):
    model = tiny_zoo("ln").cuda()
    d = random_directions(model, 2, seed=0)
    assert all(t.is_cuda for axis in d.axes for t in axis.values())
    again = random_directions(model, 2, seed=0)
    assert all(torch.equal(a[n], b[n]) for a, b in zip(d.axes, again.axes) for n in d.names)
    back = Directions.load(d.save(tmp_path / "cuda.safetensors"), device="cuda")
    assert all(torch.equal(back.axes[0][n], d.axes[0][n]) for n in d.names)


def test_unreadable_directions_files_are_one_line_errors(tmp_path):
    from safetensors.torch import save_file

    from normlens.landscape.directions import DirectionsFileError

    good = random_directions(TinyClassifier(), 2, seed=0).save(tmp_path / "good.safetensors").read_bytes()
    cases = {
        "pickle.safetensors": lambda p: torch.save({"axis0/fc.weight": torch.zeros(2)}, p),
        "truncated.safetensors": lambda p: p.write_bytes(good[: len(good) // 2]),
        "empty.safetensors": lambda p: p.write_bytes(b""),
        "foreign.safetensors": lambda p: save_file({"w": torch.zeros(2)}, str(p)),
        "no_names.safetensors": lambda p: save_file({"w": torch.zeros(2)}, str(p), metadata={"normlens": "{}"}),
        "bad_json.safetensors": lambda p: save_file({"w": torch.zeros(2)}, str(p), metadata={"normlens": "{"}),
        "missing_tensor.safetensors": lambda p: save_file({"w": torch.zeros(2)}, str(p), metadata={"normlens": (
            '{"kind": "random", "normalization": "filter", "one_d": "zero", "seed": 0, "info": {}, '
            '"n_axes": 1, "names": ["fc.weight"]}')}),
    }
    for name, write in cases.items():
        path = tmp_path / name
        write(path)
        with pytest.raises(DirectionsFileError) as error:
            Directions.load(path)
        text = str(error.value)
        assert "\n" not in text and str(path) in text and "directions.safetensors" in text, (name, text)
    with pytest.raises(FileNotFoundError, match="no directions file"):
        Directions.load(tmp_path / "absent.safetensors")
