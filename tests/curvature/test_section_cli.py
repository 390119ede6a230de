"""The demo-report section and the `normlens hessian` command on tiny models."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

import normlens
from normlens.cli.hessian import register, run_hessian
from normlens.curvature.results import BlockSpectrumResult, EigenResult
from normlens.curvature.section import build_section
from normlens.study import ZooStudy

TINY = dict(n_layers=2, d_model=8, n_heads=2, n_ctx=16, d_vocab=256)


def test_build_section_with_a_diverged_model(tmp_path):
    models = {k: normlens.build_model(norm=k, **TINY).eval() for k in ("ln", "none")}
    with torch.no_grad():
        next(models["none"].parameters()).fill_(float("nan"))
    before = [p.clone() for p in models["ln"].parameters()]
    tokens = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))
    section = build_section(ZooStudy(models, tokens, tmp_path, 0, {"none"}))
    assert section.title == "Hessian spectra" and len(section.figures) == 3
    frame = section.tables[0].frame
    assert list(frame["status"]) == ["ok", "diverged"]
    assert any("Fast settings" in note for note in section.notes)
    eig = EigenResult.load(tmp_path / "hessian" / "ln_eigen.npz")
    assert eig.eigenvalues[0] == pytest.approx(frame.loc[0, "lambda_1"])
    blocks = BlockSpectrumResult.load(tmp_path / "hessian" / "ln_blocks.npz")
    assert blocks.blocks[:3] == ("blocks.0.attn", "blocks.0.mlp", "blocks.0.norms")
    assert all(torch.equal(a, b) for a, b in zip(before, models["ln"].parameters()))


def test_a_model_with_a_non_finite_loss_keeps_its_row(tmp_path, monkeypatch):
    """Not flagged as diverged, but its loss is NaN: a status row and an empty block-heatmap row."""
    import normlens.plots.curvature as plots

    models = {k: normlens.build_model(norm=k, **TINY).eval() for k in ("ln", "none")}
    with torch.no_grad():
        next(models["none"].parameters()).fill_(float("nan"))
    drawn = {}
    original = plots.plot_block_heatmap
    monkeypatch.setattr(plots, "plot_block_heatmap",
                        lambda results, ax=None: drawn.setdefault("names", [r.model for r in results])
                        and original(results, ax=ax))
    tokens = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))
    section = build_section(ZooStudy(models, tokens, tmp_path, 0, set()))
    assert list(section.tables[0].frame["status"]) == ["ok", "non-finite loss"]
    assert drawn["names"] == ["ln", "none"]


def test_run_hessian_writes_data_and_plots(tmp_path):
    model = normlens.build_model(norm="rms", **TINY)
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    section = run_hessian(model, tokens, tmp_path, k=2, trace_matvecs=6, density_probes=1,
                          density_steps=8, params="attn")
    for name in ("eigen.npz", "trace.npz", "density.npz", "blocks.npz", "weight_spectra.npz",
                 "summary.json", "eigenvalues.png", "density.png", "blocks.png", "report.html"):
        assert (tmp_path / name).exists(), name
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_params"] == sum(p.numel() for n, p in model.named_parameters() if ".attn." in n
                                      and "_original_component.attn._original_component" in n)
    assert np.isfinite(summary["eigenvalues"]).all() and section.figures
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64,") == len(section.figures)


def test_cli_bad_input_exits_with_code_2(tmp_path):
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["no/such/checkpoint", "--which", "top", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--which" in result.output
