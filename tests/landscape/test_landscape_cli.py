import pytest
import typer
from typer.testing import CliRunner

from landscape_helpers import tiny_zoo, zoo_tokens
from normlens.cli.landscape import register, run_landscape
from normlens.landscape import Directions, LandscapeMetrics, LandscapeResult


@pytest.fixture
def app(monkeypatch):
    import normlens.models.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda spec, **kw: tiny_zoo("ln", seed=0 if spec == "a" else 1, d_vocab=256 if spec != "small" else 32))
    cli = typer.Typer()
    register(cli)

    @cli.command("noop")
    def noop() -> None:  # a second command keeps typer from collapsing to a single command
        pass

    return cli


def test_run_landscape_writes_surface_metrics_directions_and_plots(tmp_path):
    model = tiny_zoo("rms")
    out = run_landscape(model, zoo_tokens(), tmp_path, resolution=3, span=0.5, log_scale=True)
    result = LandscapeResult.load(out / "landscape.npz")
    assert result.loss.shape == (3, 3) and result.ranges == ((-0.5, 0.5), (-0.5, 0.5))
    Directions.load(out / "directions.safetensors").check_fits(model)
    for name in ("metrics.json", "landscape_2d.png", "landscape_3d.png", "grid.npz", "report.html"):
        assert (out / name).exists()
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "centre loss" in html
    metrics = LandscapeMetrics.load(out / "metrics.json")
    assert all(c.hessian_rayleigh is not None for c in metrics.curvature)  # compared with the Hessian
    assert "Sharpness" in html and "Hessian dᵀHd/dᵀd" in html and "batched-zoo forward" in html


def test_interpolation_axis_defaults_to_a_range_past_both_ends(tmp_path):
    out = run_landscape(tiny_zoo("ln"), zoo_tokens(), tmp_path, axes="interpolate", other=tiny_zoo("ln", seed=1),
                        resolution=7)
    result = LandscapeResult.load(out / "landscape.npz")
    assert result.ndim == 1 and result.ranges == ((-0.25, 1.25),) and 1.0 in result.coords[0]
    assert (out / "landscape_1d.png").exists()


def test_hessian_and_pca_axes(tmp_path):
    model = tiny_zoo("dyt")
    out = run_landscape(model, zoo_tokens(), tmp_path / "h", axes="hessian", dims=1, resolution=3, span=0.1)
    result = LandscapeResult.load(out / "landscape.npz")
    assert result.kind == "hessian" and len(result.info["eigenvalues"]) == 1
    assert result.direction_norms[0] == pytest.approx(1.0)
    trajectory = [tiny_zoo("dyt", seed=s) for s in (1, 2)]
    out = run_landscape(model, zoo_tokens(), tmp_path / "p", axes="pca", trajectory=trajectory, resolution=3)
    result = LandscapeResult.load(out / "landscape.npz")
    assert result.kind == "pca" and len(result.info["trajectory"]) == 3
    with pytest.raises(ValueError, match="at least two --trajectory"):
        run_landscape(model, zoo_tokens(), tmp_path / "q", axes="pca", trajectory=trajectory[:1], resolution=3)


def test_cli_command_runs_and_bad_input_exits_2(app, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["landscape", "a", "--out", str(tmp_path / "o"), "--resolution", "3", "--n-seq", "2",
                             "--n-ctx", "8", "--dims", "1", "--accuracy"])
    assert ok.exit_code == 0, ok.output
    assert LandscapeResult.load(tmp_path / "o" / "landscape.npz").loss.shape == (3,)
    for args, needle in [(["--span", "0"], "span"), (["--resolution", "1"], "resolution"),
                         (["--n-seq", "0"], "evaluation set is empty"), (["--axes", "diagonal"], "--axes must be"),
                         (["--range", "1,2"], "must contain 0"), (["--axes", "interpolate"], "--other")]:
        bad = runner.invoke(app, ["landscape", "a", "--out", str(tmp_path / "b"), "--n-ctx", "8", "--n-seq", "2",
                                  "--resolution", "3", *args])
        assert bad.exit_code == 2, (args, bad.output)
        assert needle in bad.output and "Traceback" not in bad.output
    small = runner.invoke(app, ["landscape", "small", "--out", str(tmp_path / "s"), "--n-ctx", "8", "--n-seq", "2"])
    assert small.exit_code == 2 and "vocabulary" in small.output
    # the grid file of run "o" was made for other directions: refused, not mixed
    clash = runner.invoke(app, ["landscape", "a", "--out", str(tmp_path / "o"), "--resolution", "3", "--n-seq", "2",
                                "--n-ctx", "8", "--dims", "1", "--seed", "5"])
    assert clash.exit_code == 2 and "different inputs" in clash.output


def test_cli_refuses_bad_files_weights_and_resolution_before_the_work(app, tmp_path, monkeypatch):
    import torch

    import normlens.models.loading as loading

    runner = CliRunner()
    base = ["landscape", "a", "--n-ctx", "8", "--n-seq", "2"]
    pickled = tmp_path / "d.safetensors"
    torch.save({"x": torch.zeros(2)}, pickled)
    bad = runner.invoke(app, [*base, "--out", str(tmp_path / "p"), "--resolution", "3", "--directions", str(pickled)])
    assert bad.exit_code == 2 and str(pickled) in bad.output and "Traceback" not in bad.output
    grid = tmp_path / "g.npz"
    grid.write_bytes(b"PK\x03\x04 truncated")
    bad = runner.invoke(app, [*base, "--out", str(tmp_path / "g"), "--resolution", "3", "--grid-file", str(grid)])
    assert bad.exit_code == 2 and str(grid) in bad.output and "delete the file" in bad.output
    # an even resolution on a symmetric span: the error names the fix, as the help says
    bad = runner.invoke(app, [*base, "--out", str(tmp_path / "r"), "--resolution", "4", "--axes", "hessian"])
    assert bad.exit_code == 2 and "use an odd resolution such as 5" in bad.output
    assert not (tmp_path / "r").exists()  # nothing computed, nothing written
    help_text = " ".join(runner.invoke(app, ["landscape", "--help"]).output.split())
    assert "odd" in help_text and "contains 0" in help_text
    ok = runner.invoke(app, [*base, "--out", str(tmp_path / "i"), "--resolution", "4", "--axes", "interpolate",
                             "--other", "b"])  # the interpolation's range (-0.25, 1.25) takes 4 points
    assert ok.exit_code == 0, ok.output
    assert LandscapeResult.load(tmp_path / "i" / "landscape.npz").loss.shape == (4,)

    def diverged(spec, **kw):
        model = tiny_zoo("ln", d_vocab=256)
        with torch.no_grad():
            next(model.parameters())[0, 0] = float("nan")
        return model

    monkeypatch.setattr(loading, "load_model", diverged)
    bad = runner.invoke(app, [*base, "--out", str(tmp_path / "n"), "--resolution", "3"])
    assert bad.exit_code == 2 and "non-finite" in bad.output
    assert not (tmp_path / "n").exists()
