"""The curvature study: a miniature run through run_study (data, report, byte-identical re-render,
computed verdict), its measurements against independent references, reuse of trained models, and the
verdict logic on constructed result files (agree / disagree / inconclusive for each claim)."""
import json
import re

import numpy as np
import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

from analyses.common.batch_landscapes import BatchShapeError, compute_axis_rayleigh, compute_batch_planes
from analyses.common.curvature_claims import (AGREES, DISAGREES, INCONCLUSIVE, aspect_bias, curvature_verdict,
                                              judge_farms, judge_random_axes, judge_smoothing)
from analyses.common.curvature_measure import MeasureSettings, measure_model
from analyses.common.weight_alpha import compute_alpha_rows, layer_group, matrix_kind
from analyses.curvature import STUDY, CurvatureSettings, CurvatureStudy, mode_settings, train_models
from normlens.cli import app
from normlens.curvature.results import BatchCurvatureResult
from normlens.landscape import compute_landscape, random_directions, sharpness
from normlens.models import ZooConfig
from normlens.study import Study, StudyConfig, StudyError, discover_studies, rerender, run_study
from normlens.train import TrainConfig

TINY = CurvatureSettings(
    model=ZooConfig(n_layers=1, d_model=16, n_heads=2, n_ctx=16),
    train=TrainConfig(steps=4, eval_every=2, eval_seqs=4, batch_size=4),
    measure=MeasureSettings(top_steps=6, max_steps=6, density_probes=1, density_steps=5, hessian_steps=6,
                            resolution=3, n_random_axes=2),
    norms=("ln", "none"), n_batches=2, n_seq=2, n_ctx=8)


def tiny_study(settings: CurvatureSettings = TINY) -> CurvatureStudy:
    return CurvatureStudy({"quick": settings, "full": settings})


def quiet(_):
    pass


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("curvature") / "curvature.html"
    run_study(tiny_study(), StudyConfig(), out, log=quiet)
    return out


def test_study_is_discovered_and_listed():
    studies = discover_studies()
    assert isinstance(studies["curvature"], Study) and studies["curvature"] is STUDY
    result = CliRunner().invoke(app, ["analyze", "--list"])
    assert result.exit_code == 0 and re.search(r"^curvature\s+Hessian spectra", result.output, re.M)


def test_miniature_run_saves_data_renders_identically_and_computes_a_verdict(report):
    data = report.parent / "curvature_data"
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["study"] == "curvature" and manifest["mode"] == "quick"
    assert [s["renderer"] for s in manifest["sections"]] == [
        "training", "curvature_claims", "curvature_spectra", "curvature_landscapes", "curvature_weights"]
    assert manifest["provenance"]["seeds"]["train"] == [0, 1]
    for stem in ("ln-seed0", "ln-seed1", "none-seed0", "none-seed1"):
        for path in (f"spectra/{stem}_batches.npz", f"spectra/{stem}_density.npz", f"landscapes/{stem}_random.npz",
                     f"landscapes/{stem}_hessian.npz", f"landscapes/{stem}_hessian.metrics.json"):
            assert (data / path).is_file(), path
    page = report.read_text()
    assert 'class="verdict"' in page and "quick mode" in page
    for text in ("LayerNorm (Pre-LN), seed 1", "no normalization, seed 0", "The three claims, tested",
                 "Hessian spectra and LLA criteria", "Landscapes on random and Hessian axes",
                 "plain ESD α vs FARMS α"):
        assert text in page, text
    assert "could not be rendered" not in page and "(failed)" not in page
    verdict = STUDY.verdict(data)
    assert all(paper in verdict for paper in ("Li et al. 2018", "the LLA paper", "FARMS"))
    assert "2 seeds × 2 batches" in verdict and verdict.count(".") >= 1
    again = rerender(data, report.parent / "again.html", studies={"curvature": tiny_study()})
    assert again.read_bytes() == report.read_bytes()


def test_saved_units_are_the_saved_spectra_and_landscapes(report):
    """The claim units repeat the per-batch numbers of the saved results, not other ones."""
    data = report.parent / "curvature_data"
    units = json.loads((data / "claims" / "units.json").read_text())
    for row in units["ratio"]:
        batches = BatchCurvatureResult.load(data / "spectra" / f"{row['model']}-seed{row['seed']}_batches.npz")
        assert row["lambda_max"] == pytest.approx(batches.eigenvalues[row["batch"], 0])
        assert row["kh"] == pytest.approx(batches.kh[row["batch"]])
        assert row["ratio"] == pytest.approx(row["rayleigh_random"] / row["lambda_max"])
    assert {r["phase"] for r in units["alpha"]} == {"init", "trained"}
    assert len(units["landscape"]) == len(units["ratio"]) == 4 * TINY.n_batches


def test_models_are_reused_and_retrained_when_the_settings_change(tmp_path):
    seeds = (0, 1)
    _, first = train_models(TINY, tmp_path, seeds, split_seed=0, fresh=False, log=quiet)
    assert not any(first.values()) and len(first) == 4
    result = tmp_path / "runs" / "norm-ln" / "seed-0" / "train_result.json"
    saved = json.loads(result.read_text())
    _, second = train_models(TINY, tmp_path, seeds, split_seed=0, fresh=False, log=quiet)
    assert all(second.values()) and json.loads(result.read_text()) == saved  # same run, same wall time
    longer = CurvatureSettings(**{**TINY.__dict__, "train": TrainConfig(steps=5, eval_every=2, eval_seqs=4,
                                                                        batch_size=4)})
    _, third = train_models(longer, tmp_path, seeds, split_seed=0, fresh=False, log=quiet)
    assert not any(third.values())  # another recipe: the old sweep is cleared, not refused


@pytest.mark.parametrize("options,message", [
    ({"epochs": 3}, "has no option epochs"), ({"n_seeds": 1}, "n_seeds must be an integer ≥ 2"),
    ({"steps": "many"}, "must be integers"), ({"steps": 0}, "steps must be a positive integer"),
])
def test_bad_options_are_refused_in_one_line_before_any_work(options, message):
    with pytest.raises(StudyError, match=message):
        mode_settings(StudyConfig(options=options), {"quick": TINY})


def test_settings_need_a_norm_free_reference_and_a_normalized_model():
    with pytest.raises(StudyError, match="must hold 'none'"):
        CurvatureSettings(model=TINY.model, train=TINY.train, measure=TINY.measure, norms=("ln", "dyt"))


# ---- measurements against independent references -------------------------------------------------

class TinyLM(nn.Module):
    """Tokens -> logits over a 7-token vocabulary: small enough for a dense float64 Hessian."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(7, 3)
        self.mix = nn.Linear(3, 3)
        self.head = nn.Linear(3, 7)

    def forward(self, tokens):  # (batch, pos) -> (batch, pos, vocab)
        return self.head(torch.tanh(self.mix(self.embed(tokens))))


def dense_hessian(model, tokens):
    """The full Hessian of the mean next-token loss by torch.autograd.functional.hessian (float64)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])

    def loss(vector):
        params = dict(zip(names, (c.view(s) for c, s in zip(vector.split([s.numel() for s in shapes]), shapes))))
        logits = torch.func.functional_call(model, params, (tokens,))
        return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 7), tokens[:, 1:].reshape(-1))

    return torch.autograd.functional.hessian(loss, flat), names, shapes


def test_axis_rayleigh_matches_a_dense_hessian():
    torch.manual_seed(0)
    model = TinyLM().double()
    batches = list(torch.randint(0, 7, (4, 5), generator=torch.Generator().manual_seed(1)).split(2))
    axes = [{n: torch.randn_like(p) for n, p in model.named_parameters()} for _ in range(3)]
    got = compute_axis_rayleigh(model, axes, batches)  # (2, 3)
    for b, batch in enumerate(batches):
        hessian, names, _ = dense_hessian(model, batch)
        for j, axis in enumerate(axes):
            d = torch.cat([axis[n].reshape(-1) for n in names])
            assert got[b, j] == pytest.approx(float(d @ hessian @ d / (d @ d)), rel=1e-8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_pooled_plane_is_the_plane_over_all_batches_and_batch_sharpness_is_each_batchs():
    torch.manual_seed(0)
    model = TinyLM().double()
    tokens = torch.randint(0, 7, (6, 5), generator=torch.Generator().manual_seed(2))
    batches = list(tokens.split(2))
    directions = random_directions(model, 2, seed=3)
    planes = compute_batch_planes(model, directions, batches, span=0.5, resolution=5, radii=(0.25, 0.5))
    direct = compute_landscape(model, directions, tokens, span=0.5, resolution=5)
    np.testing.assert_allclose(planes.pooled.loss, direct.loss, rtol=1e-10)
    assert planes.pooled.center_loss == pytest.approx(direct.center_loss, rel=1e-12)
    one = compute_landscape(model, directions, batches[1], span=0.5, resolution=5)
    assert planes.sharpness[1, 1] == pytest.approx(sharpness(one, 0.5).increase)
    assert planes.sharpness.shape == (3, 2)
    with pytest.raises(BatchShapeError, match="one shape"):
        compute_batch_planes(model, directions, [tokens[:2], tokens[:3]])


def test_alpha_rows_group_matrices_and_use_the_libraries_fits():
    from normlens.curvature import compute_weight_spectra
    from normlens.models import build_model

    model = build_model(ZooConfig(n_layers=1, d_model=16, n_heads=2, n_ctx=16))
    rows = compute_alpha_rows(model, {"phase": "init", "model": None, "seed": 0})
    by_name = {r["matrix"]: r for r in rows}
    farms = compute_weight_spectra(model, method="farms")
    for name, alpha in zip(farms.names, farms.alphas):
        assert by_name[name]["alpha_farms"] == pytest.approx(alpha, nan_ok=True)
    assert layer_group("blocks.0.attn.q.weight") == "attention" and layer_group("embed.weight") == "embedding"
    assert matrix_kind("blocks.3.mlp.fc_in.weight") == "mlp.fc_in"
    fc_in = next(r for r in rows if r["kind"] == "mlp.fc_in")
    assert fc_in["group"] == "mlp" and fc_in["layer"] == 0 and fc_in["aspect"] == 4.0


def test_measuring_a_model_leaves_it_as_found(tmp_path):
    from normlens.models import build_model

    model = build_model(ZooConfig(n_layers=1, d_model=16, n_heads=2, n_ctx=16)).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rng = torch.get_rng_state()
    tokens = torch.randint(0, 256, (4, 8), generator=torch.Generator().manual_seed(0))
    found = measure_model(model, list(tokens.split(2)), TINY.measure, tmp_path, "m", keys={"model": "ln", "seed": 0})
    assert model.training and all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters()) and torch.equal(torch.get_rng_state(), rng)
    assert [u["batch"] for u in found.ratio_units] == [0, 1] and found.spectra["n_batches"] == 2
    assert (tmp_path / "landscapes" / "m_hessian.npz").is_file()


# ---- verdict logic on constructed result files --------------------------------------------------

def units_with(sharp: dict, ratio: dict, alpha_rows=None, n_batches=4, seeds=(0, 1), noise=0.01):
    """Claim units where model m has sharpness sharp[m] and ratio ratio[m] on every (seed, batch), plus
    a small deterministic spread."""
    rng = np.random.default_rng(0)
    landscape, ratios = [], []
    for model in sharp:
        for seed in seeds:
            for batch in range(n_batches):
                wiggle = 1 + noise * rng.standard_normal()
                landscape.append({"model": model, "seed": seed, "batch": batch, "sharpness_random": sharp[model] * wiggle,
                                  "sharpness_hessian": 1.0})
                ratios.append({"model": model, "seed": seed, "batch": batch, "ratio": ratio[model] * wiggle,
                               "lambda_max": 10.0, "rayleigh_random": 10.0 * ratio[model] * wiggle, "re": 0.1,
                               "kh": 0.5})
    return {"labels": {"ln": "LayerNorm", "rms": "RMSNorm", "none": "no normalization", "dyt": "DyT"},
            "normalized": ["ln", "rms"], "reference": "none", "others": ["dyt"], "seeds": list(seeds),
            "n_batches": n_batches, "radius": 1.0, "n_models": 8, "unconverged": [], "diverged": [],
            "landscape": landscape, "ratio": ratios, "alpha": alpha_rows or []}


def alpha_rows(plain_bias: float, farms_bias: float, seeds=(0, 1), layers=(0, 1), spread=0.05):
    rows = []
    for seed in seeds:
        for layer in layers:
            wiggle = spread * (seed - 0.5) + spread * (layer - 0.5) / 2
            for kind in ("q", "k", "v", "o"):
                rows.append({"phase": "init", "model": None, "seed": seed, "layer": layer, "group": "attention",
                             "matrix": f"blocks.{layer}.attn.{kind}.weight", "alpha_esd_median": 2.0,
                             "alpha_farms": 2.5, "alpha_esd_ks": 4.0})
            for i, kind in enumerate(("fc_in", "fc_out")):
                rows.append({"phase": "init", "model": None, "seed": seed, "layer": layer, "group": "mlp",
                             "matrix": f"blocks.{layer}.mlp.{kind}.weight",
                             "alpha_esd_median": 2.0 + plain_bias + wiggle + 0.01 * i,
                             "alpha_farms": 2.5 + farms_bias + wiggle - 0.01 * i, "alpha_esd_ks": 5.0})
    return rows


SHARP_AGREE = {"ln": 1.0, "rms": 1.2, "dyt": 1.1, "none": 3.0}
RATIO_AGREE = {"ln": 1e-4, "rms": 1.2e-4, "dyt": 3e-5, "none": 5e-4}


def test_smoothing_claim_agrees_disagrees_or_is_inconclusive():
    assert judge_smoothing(units_with(SHARP_AGREE, RATIO_AGREE)).outcome == AGREES
    assert judge_smoothing(units_with({"ln": 3.0, "rms": 3.2, "dyt": 1, "none": 1.0}, RATIO_AGREE)).outcome == DISAGREES
    mixed = judge_smoothing(units_with({"ln": 3.0, "rms": 1.0, "dyt": 1, "none": 2.0}, RATIO_AGREE))
    assert mixed.outcome == INCONCLUSIVE  # one normalized model sharper, one smoother
    noisy = judge_smoothing(units_with({"ln": 1.0, "rms": 1.0, "dyt": 1, "none": 1.02}, RATIO_AGREE, noise=0.3))
    assert noisy.outcome == INCONCLUSIVE
    exact = judge_smoothing(units_with(SHARP_AGREE, RATIO_AGREE, noise=0.0))
    assert "3.00 nats with no normalization" in exact.detail and "+2.00 [2.00, 2.00]" in exact.detail


def test_random_axes_claim_agrees_disagrees_or_is_inconclusive():
    assert judge_random_axes(units_with(SHARP_AGREE, RATIO_AGREE)).outcome == AGREES
    agree = judge_random_axes(units_with(SHARP_AGREE, RATIO_AGREE, noise=0.0))
    assert agree.outcome == AGREES and "5.0e-04 with no normalization" in agree.detail
    assert "paired over 2 seeds × 4 batches" in agree.detail
    flipped = {"ln": 5e-4, "rms": 6e-4, "dyt": 1e-4, "none": 1e-4}
    assert judge_random_axes(units_with(SHARP_AGREE, flipped)).outcome == DISAGREES
    one_batch = units_with(SHARP_AGREE, RATIO_AGREE, n_batches=1, seeds=(0,))
    assert judge_random_axes(one_batch).outcome == INCONCLUSIVE  # one pair: no interval
    dyt_row = next(r for r in agree.rows if r["model"] == "DyT")
    assert dyt_row["in verdict"].startswith("no")


def test_farms_claim_agrees_disagrees_or_is_inconclusive():
    agree = judge_farms(units_with(SHARP_AGREE, RATIO_AGREE, alpha_rows(1.2, 0.0)))
    assert agree.outcome == AGREES and "8 matrix pairs, 2 seeds" in agree.detail
    assert judge_farms(units_with(SHARP_AGREE, RATIO_AGREE, alpha_rows(0.5, 1.5))).outcome == DISAGREES
    none_to_remove = judge_farms(units_with(SHARP_AGREE, RATIO_AGREE, alpha_rows(0.0, 0.0)))
    assert none_to_remove.outcome == INCONCLUSIVE and "no bias for FARMS to remove" in none_to_remove.detail
    values, keys = aspect_bias(alpha_rows(1.2, 0.0), "esd_median")
    assert len(values) == 8 and values.mean() == pytest.approx(1.2 + 0.005)


def test_verdict_is_one_sentence_from_the_saved_file(tmp_path):
    (tmp_path / "claims").mkdir()
    units = units_with(SHARP_AGREE, {"ln": 5e-4, "rms": 6e-4, "dyt": 1e-4, "none": 1e-4}, alpha_rows(1.2, 0.0))
    units["unconverged"] = ["LayerNorm, seed 1"]
    (tmp_path / "claims" / "units.json").write_text(json.dumps(units))
    verdict = curvature_verdict(tmp_path)
    assert verdict.startswith("The result agrees with Li et al. 2018") and verdict.endswith(".")
    assert "the result disagrees with the LLA paper" in verdict and "the result agrees with FARMS" in verdict
    assert "Lanczos short of its tolerance for 1 of 8 models" in verdict
    assert ". The" not in verdict and ". the" not in verdict  # one sentence
    units["ratio"] = [r for r in units["ratio"] if r["model"] != "none"]
    (tmp_path / "claims" / "units.json").write_text(json.dumps(units))
    assert curvature_verdict(tmp_path).startswith("No landscape or Hessian verdict (no normalization missing")
    assert curvature_verdict(tmp_path / "nowhere").startswith("No verdict")
