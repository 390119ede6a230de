"""`normlens report FOLDER` re-renders every verb's report from its saved data, byte for byte."""
import json

import pytest
import torch
from typer.testing import CliRunner

import normlens
from normlens.cli import app
from normlens.cli.hessian import run_hessian
from normlens.cli.landscape import run_landscape
from normlens.cli.probe import probe_model

runner = CliRunner()
TINY = dict(n_layers=1, d_model=16, n_heads=2, n_ctx=16, d_vocab=256)
NASTY = "m$\\alpha$x $\\nope{$ <script>alert(1)</script>"  # mathtext and markup in a model name


def tokens(n_seq: int = 2, n_ctx: int = 16) -> torch.Tensor:
    return torch.randint(0, 256, (n_seq, n_ctx), generator=torch.Generator().manual_seed(0))


def run_verb(kind: str, out, name: str = "tiny"):
    model = normlens.build_model(norm="rms", **TINY).eval()
    if kind == "probe":
        probe_model(model, tokens(), out, name=name)
    elif kind == "hessian":
        run_hessian(model, tokens(), out, name=name, k=2, trace_matvecs=4, density_probes=1, density_steps=6)
    else:
        run_landscape(model, tokens(), out, resolution=3, span=0.5, model_name=name)
    return out / "report.html"


@pytest.mark.parametrize("kind", ["probe", "hessian", "landscape"])
def test_verb_report_rerenders_identically(kind, tmp_path):
    out = tmp_path / kind
    report = run_verb(kind, out)
    first = report.read_bytes()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == kind and manifest["report"] == "report.html" and manifest["files"]
    assert "could not be rendered" not in first.decode()
    report.unlink()
    result = runner.invoke(app, ["report", str(out)])  # in place, where the run wrote it
    assert result.exit_code == 0, result.output
    assert report.read_bytes() == first
    result = runner.invoke(app, ["report", str(out), "-o", str(out / "again.html")])
    assert result.exit_code == 0 and (out / "again.html").read_bytes() == first


@pytest.mark.parametrize("kind", ["probe", "landscape"])
def test_model_names_with_mathtext_and_markup_are_drawn_and_shown_as_text(kind, tmp_path):
    page = run_verb(kind, tmp_path / kind, name=NASTY).read_text()
    assert "could not be rendered" not in page and "<script>alert" not in page
    assert "m$\\alpha$x $\\nope{$ &lt;script&gt;alert(1)&lt;/script&gt;" in page
