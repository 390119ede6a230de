"""The `normlens hessian` command on tiny models (the zoo's Hessian section: tests/analyses)."""
from __future__ import annotations

import json

import numpy as np
import torch
import typer
from typer.testing import CliRunner

import normlens
from normlens.cli.hessian import register, run_hessian

TINY = dict(n_layers=2, d_model=8, n_heads=2, n_ctx=16, d_vocab=256)


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
