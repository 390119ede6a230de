"""The shared analyses save data; the report's renderers draw the same numbers back from it."""
import math

import pytest
import torch

from analyses.common import ModelSet
from analyses.common.curvature import HessianSettings, run_hessians
from analyses.common.landscape import LandscapeSettings, run_landscapes
from analyses.common.probes import run_probes
from normlens.curvature.results import BlockSpectrumResult, EigenResult
from normlens.landscape import LandscapeResult
from normlens.report.sections import render_sections

LABELS = {"ln": "LayerNorm (Pre-LN)", "rms": "RMSNorm", "none": "no normalization"}


def test_probes_show_a_diverged_model_and_save_tables(tiny_models, tokens, tmp_path):
    models = ModelSet(tiny_models, tokens, LABELS, diverged={"none"})
    ref = run_probes(models, tmp_path)
    section, = render_sections(tmp_path, [ref])
    assert any(note.startswith("no normalization:") and "diverged" in note for note in section.notes)
    assert len(section.figures) == 9 and all(f.alt_text for f in section.figures)
    summary = next(t.frame for t in section.tables if t.caption == "Per-model summary")
    assert list(summary.model) == ["LayerNorm (Pre-LN)", "RMSNorm"]  # names in words, diverged left out
    assert (tmp_path / "probes" / "summary.parquet").exists() and (tmp_path / "probes" / "ln").is_dir()


def test_hessians_keep_a_diverged_and_a_non_finite_model(tiny_models, tokens, tmp_path):
    before = [p.clone() for p in tiny_models["ln"].parameters()]
    models = ModelSet(tiny_models, tokens, LABELS, diverged={"rms"})  # "none" is NaN but not flagged
    ref = run_hessians(models, tmp_path, settings=HessianSettings(n_seq=2, n_ctx=8, top_steps=6, density_steps=6,
                                                                  block_steps=3))
    section, = render_sections(tmp_path, [ref])
    frame = section.tables[0].frame
    assert list(frame.status) == ["ok", "diverged", "non-finite loss"]
    assert list(frame.model) == ["LayerNorm (Pre-LN)", "RMSNorm", "no normalization"]
    assert any("Fast settings" in note for note in section.notes) and len(section.figures) == 3
    eig = EigenResult.load(tmp_path / "hessian" / "ln_eigen.npz")
    assert eig.eigenvalues[0] == pytest.approx(frame.loc[0, "lambda_1"])
    blocks = BlockSpectrumResult.load(tmp_path / "hessian" / "ln_blocks.npz")
    assert blocks.blocks[:3] == ("blocks.0.attn", "blocks.0.mlp", "blocks.0.norms")
    assert all(torch.equal(a, b) for a, b in zip(before, tiny_models["ln"].parameters()))


def test_hessian_heatmap_keeps_an_empty_row_per_model_without_a_hessian(tiny_models, tokens, tmp_path,
                                                                        monkeypatch):
    import normlens.report.sections.curvature as renderer

    drawn = {}
    original = renderer.plot_block_heatmap
    monkeypatch.setattr(renderer, "plot_block_heatmap",
                        lambda results, ax=None: drawn.setdefault("names", [r.model for r in results])
                        and original(results, ax=ax))
    ref = run_hessians(ModelSet(tiny_models, tokens, LABELS), tmp_path,
                       settings=HessianSettings(n_seq=2, n_ctx=8, top_steps=6, density_steps=6, block_steps=3))
    render_sections(tmp_path, [ref])
    assert drawn["names"] == ["LayerNorm (Pre-LN)", "RMSNorm", "no normalization"]


def test_landscapes_compare_models_and_show_diverged(tiny_models, tokens, tmp_path):
    models = ModelSet(tiny_models, tokens[:3, :8], LABELS, diverged={"none"})
    before = {n: p.detach().clone() for n, p in tiny_models["ln"].named_parameters()}
    ref = run_landscapes(models, tmp_path, settings=LandscapeSettings(resolution=5, n_seq=3))
    section, = render_sections(tmp_path, [ref])
    frame = section.tables[0].frame
    assert list(frame["model"]) == ["LayerNorm (Pre-LN)", "RMSNorm", "no normalization"]
    assert list(frame["status"]) == ["ok", "ok", "diverged"] and math.isnan(frame["loss f(0,0)"][2])
    assert any(n.startswith("no normalization: diverged") for n in section.notes) and len(section.figures) == 2
    result = LandscapeResult.load(tmp_path / "landscape" / "ln.npz")
    assert result.loss.shape == (5, 5) and result.normalization == "filter" and result.one_d == "zero"
    assert frame["loss f(0,0)"][0] == result.center_loss
    assert all(torch.equal(p.detach(), before[n]) and p.grad is None for n, p in tiny_models["ln"].named_parameters())
