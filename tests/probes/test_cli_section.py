import torch
import typer
from typer.testing import CliRunner

import normlens
from normlens.cli.probe import probe_model, register


def test_probe_model_writes_data_and_an_offline_report(tmp_path):
    model = normlens.build_model(norm="rms", n_layers=1, d_model=16, n_heads=2, n_ctx=16).eval()
    tokens = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))
    report = probe_model(model, tokens, tmp_path, name="tiny-rms")
    for name in ("activation_stats.parquet", "attention_heads.parquet", "s_curve.npz", "angular.parquet",
                 "linear_probes.parquet"):
        assert (tmp_path / name).exists(), name
    html = report.read_text()
    assert report == tmp_path / "report.html" and "tiny-rms" in html
    assert html.count("data:image/png;base64,") == 9  # one figure per panel drawn by the probes renderer
    assert "http://" not in html and "https://" not in html  # opens offline


def test_cli_bad_spec_exits_2(tmp_path):
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # typer needs two commands to keep the verb name
    result = CliRunner().invoke(app, ["probe", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
