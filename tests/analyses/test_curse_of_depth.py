"""The curse_of_depth study: a miniature run end to end, its key numbers against brute-force
references, the comparisons' intervals, and the verdict on constructed results."""
import json
import math
import re

import numpy as np
import pytest
import torch

from analyses.common.depth import deep_layers, fit_slope, nan_measurement, run_metrics
from analyses.curse_of_depth import (DATA_DIR, STUDY, SUMMARY, CurseOfDepthStudy, DepthSettings, default_modes,
                                     depth_verdict, judge, judge_comparison, mode_settings, summarize,
                                     train_placements)
from normlens import sites as S
from normlens.losses import next_token_loss
from normlens.models import ZooConfig, build_model
from normlens.models.checkpoint import load_checkpoint
from normlens.study import Study, StudyConfig, StudyError, discover_studies, rerender, run_study
from normlens.train import TrainConfig

TINY = DepthSettings(model=ZooConfig(n_layers=4, d_model=16, n_heads=2, n_ctx=16),
                     train=TrainConfig(steps=4, batch_size=4, eval_every=2, eval_seqs=16, warmup_steps=1),
                     n_seeds=2, n_measure_seqs=8, probe_every=2, n_resamples=200)


def tiny_study(settings: DepthSettings = TINY) -> CurseOfDepthStudy:
    return CurseOfDepthStudy({"quick": settings, "full": settings})


def quiet(_):
    pass


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """The miniature study run once: (report path, results folder)."""
    out = tmp_path_factory.mktemp("depth") / "curse_of_depth.html"
    path = run_study(tiny_study(), StudyConfig(), out, log=quiet)
    return path, out.parent / "curse_of_depth_data"


# -- the miniature run -----------------------------------------------------------------------------

def test_study_is_discovered_and_its_modes_are_deep_enough():
    assert isinstance(discover_studies()["curse_of_depth"], Study)
    modes = default_modes()
    quick, full = modes["quick"], modes["full"]
    assert quick.model.n_layers >= 8 and quick.n_seeds >= 2 and set(quick.placements) == {"pre", "scaled", "mix", "post"}
    assert full.model.n_layers >= 12 and full.model.d_model >= 256 and full.model.n_ctx >= 512


def test_miniature_run_writes_report_and_data_and_rerenders_identically(ran):
    path, data = ran
    page = path.read_text()
    for words in ("Pre-LN", "LayerNorm Scaling", "Mix-LN (Post-LN in layer 1, Pre-LN after)", "Post-LN",
                  "Claims tested", "Residual-stream variance with depth", "Layer effectiveness",
                  "Gradient norms per layer", "quick mode", 'class="verdict"'):
        assert words in page, words
    assert page.count("<img") >= 7 and "alt=" in page
    summary = json.loads((data / DATA_DIR / SUMMARY).read_text())
    assert summary["placements"] == ["pre", "scaled", "mix", "post"] and summary["seeds"] == [0, 1]
    assert len(summary["runs"]) == 8 and all((data / DATA_DIR / r["file"]).is_file() for r in summary["runs"])
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["study"] == "curse_of_depth" and [s["renderer"] for s in manifest["sections"]] == [
        "depth_claims", "depth_loss", "depth_variance", "depth_effectiveness", "depth_gradients"]
    before = path.read_bytes()
    again = rerender(data, path.parent / "again.html", studies={"curse_of_depth": tiny_study()})
    assert again.read_bytes() == before
    verdict = STUDY.verdict(data)
    assert verdict.startswith("LayerNorm Scaling curbs the growth") and "2 seeds" in verdict
    assert len(re.findall(r"— (agrees|disagrees|inconclusive at this scale)", verdict)) >= 7
    assert verdict.replace("&", "&amp;")[:60] in page  # the verdict on the page is the one computed from the data


def test_same_initial_weights_for_every_placement_of_a_seed():
    models = {p: build_model(TINY.model.replace(placement=p, seed=3)) for p in ("pre", "scaled", "mix", "post")}
    reference = dict(models["pre"].named_parameters())
    for model in models.values():
        for name, param in model.named_parameters():
            assert torch.equal(param, reference[name]), name


def test_saved_measurements_match_brute_force(ran):
    """Variance per depth, last-token angular distance, gradient norm per layer and the fitted slope,
    recomputed from the saved model with plain hooks and autograd in float64."""
    _, data = ran
    summary = json.loads((data / DATA_DIR / SUMMARY).read_text())
    run = next(r for r in summary["runs"] if r["placement"] == "scaled" and r["seed"] == 1)
    saved = np.load(data / DATA_DIR / run["file"])
    model = load_checkpoint(data / "models" / "runs" / "placement-scaled" / "seed-1" / "model").double()
    from normlens.data import load_corpus
    from normlens.data.corpus import eval_windows

    tokens = eval_windows(load_corpus("embedded", seed=0), n_seq=TINY.n_measure_seqs, n_ctx=16, seed=0)
    L = TINY.model.n_layers
    seen = {}
    hooks = [model.hook_dict[name].register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, out))
             for name in S.residual_sites(L)]
    with torch.no_grad():
        model(tokens)
    for h in hooks:
        h.remove()
    stream = [seen[name] for name in S.residual_sites(L)]  # L+1 x (n_seq, pos, d)
    variance = np.array([x[:, 1:].reshape(-1).var(unbiased=False).item() for x in stream])
    np.testing.assert_allclose(saved["variance"], variance, rtol=1e-4)
    last = [x[:, -1] for x in stream]
    angular = np.stack([torch.arccos(torch.cosine_similarity(last[l], last[l + 1], dim=-1).clamp(-1, 1)).numpy() / np.pi
                        for l in range(L)], axis=1)
    np.testing.assert_allclose(saved["angular"], angular, atol=1e-5)
    model.zero_grad()
    next_token_loss(model, tokens).backward()
    grads = np.zeros(L)
    for name, param in model.named_parameters():
        layer = S.layer_of(S.clean_name(name))
        if layer is not None:
            grads[layer] += float(param.grad.pow(2).sum())
    np.testing.assert_allclose(saved["grad_norm_end"], np.sqrt(grads), rtol=1e-4)
    slope = np.polyfit(np.arange(1, L + 1), np.log(variance[1:]), 1)[0]
    assert run["variance_log_slope"] == pytest.approx(slope, rel=1e-4)
    skip = saved["skip_delta"]
    assert skip.shape == (TINY.n_measure_seqs, L) and np.isfinite(skip).all()
    assert run["skip_deep"] == pytest.approx(skip[:, deep_layers(L)].mean(), rel=1e-9)


def test_rerun_reuses_the_trained_models_and_other_settings_retrain(ran, tmp_path):
    import shutil

    _, data = ran
    models = shutil.copytree(data / "models", tmp_path / "models")
    first = train_placements(TINY, (0, 1), models, split_seed=0, fresh=False, log=quiet)
    original = json.loads((data / DATA_DIR / SUMMARY).read_text())
    # reused, not retrained: the wall time of the run that trained each model
    assert sorted(first.runs.wall_time_s) == sorted(r["train_seconds"] for r in original["runs"])
    other = DepthSettings(**{**TINY.__dict__, "train": TINY.train.replace(steps=3), "placements": ("pre",)})
    again = train_placements(other, (0,), models, split_seed=0, fresh=False, log=quiet)
    assert list(again.runs.n_steps) == [3]
    assert sorted(p.name for p in (models / "runs").iterdir()) == ["placement-pre"]  # the old runs were cleared
    assert json.loads((models / "study.json").read_text())["train"]["steps"] == 3


# -- settings -------------------------------------------------------------------------------------

@pytest.mark.parametrize("options,message", [
    ({"layers": 3}, "no option layers"),
    ({"steps": 0}, "steps must be a positive integer"),
    ({"n_seeds": "3"}, "n_seeds must be a positive integer"),
])
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(StudyError, match=message):
        mode_settings(StudyConfig(options=options), {"quick": TINY})


def test_options_apply():
    settings = mode_settings(StudyConfig(options={"steps": 3, "n_seeds": 1}), {"quick": TINY})
    assert settings.train.steps == 3 and settings.n_seeds == 1 and settings.train.warmup_steps == 1
    with pytest.raises(StudyError, match="eval_seqs must be at least 16"):
        DepthSettings(model=TINY.model, train=TINY.train.replace(eval_seqs=8))


# -- metrics and comparisons on constructed numbers -----------------------------------------------

def arrays(variance, skip, angular, grads, n_seq=4):
    L = len(grads)
    return {"variance": np.asarray(variance, float), "rms": np.sqrt(variance),
            "angular": np.tile(angular, (n_seq, 1)).astype(float), "angular_matrix": np.zeros((L + 1, L + 1)),
            "base_loss": np.full(n_seq, 2.0), "skip_delta": np.tile(skip, (n_seq, 1)).astype(float),
            "grad_norm_end": np.asarray(grads, float), "grad_norm_train": np.tile(grads, (3, 1)).astype(float),
            "val_steps": np.array([2, 4]), "val_loss": np.array([3.0, 2.5])}


def test_run_metrics_against_closed_forms():
    growth = 1.5
    a = arrays(0.02 * growth ** np.arange(5), [0.5, 0.02, 0.004, -0.001], [0.4, 0.1, 0.05, 0.02], [4.0, 2.0, 1.0, 1.0])
    m = run_metrics(a, ineffective_nats=0.01)
    assert m["variance_log_slope"] == pytest.approx(math.log(growth))
    assert m["variance_slope"] == pytest.approx(fit_slope(np.arange(1, 5), a["variance"][1:]))
    assert m["skip_deep"] == pytest.approx((0.004 - 0.001) / 2) and m["angular_deep"] == pytest.approx(0.035)
    assert m["ineffective_deep"] == 1.0 and m["ineffective_all"] == 0.5
    assert m["grad_spread"] == pytest.approx(np.std(np.log([4.0, 2.0, 1.0, 1.0])))
    assert m["grad_deep_early"] == pytest.approx(1.0 / 3.0)
    assert fit_slope([0, 1, 2], [1.0, 3.0, 5.0]) == pytest.approx(2.0) and math.isnan(fit_slope([1], [2]))
    nan = run_metrics(nan_measurement(4, 3), ineffective_nats=0.01)
    assert all(math.isnan(v) for v in nan.values())


def record(placement, seed, scale, loss=2.5, diverged=False):
    """Pre-LN-like growth for "pre" and flatter growth elsewhere, scaled per seed."""
    growth = {"pre": 1.6, "scaled": 1.3, "mix": 1.5, "post": 1.0}[placement] * (1 + 0.01 * seed)
    skip = {"pre": [0.5, 0.01, 0.001, 0.0], "scaled": [0.5, 0.03, 0.02, 0.02]}.get(placement, [0.5, 0.02, 0.01, 0.01])
    grads = {"pre": [4.0, 2.0, 1.0, 0.5], "post": [0.5, 1.0, 2.0, 4.0]}.get(placement, [1.0, 1.1, 1.0, 0.9])
    a = arrays(scale * growth ** np.arange(5), skip, [0.3, 0.1, 0.05, 0.04], grads)
    a["skip_delta"] = a["skip_delta"] + 0.001 * np.arange(4)[:, None] * (1 + seed)  # sequences differ
    if diverged:
        a = a | nan_measurement(4, 4)
    return {"placement": placement, "seed": seed, "file": f"runs/{placement}_seed-{seed}.npz", "diverged": diverged,
            "diverged_step": 3 if diverged else None, "final_val_loss": loss + 0.01 * seed, "train_seconds": 1.0,
            "arrays": a}


def test_summarize_pairs_seeds_and_leaves_diverged_runs_out():
    settings = DepthSettings(model=TINY.model, train=TINY.train, n_resamples=200)
    records = [record(p, s, 1.0 + s, loss={"pre": 2.5, "scaled": 2.4, "mix": 2.45, "post": 2.6}[p])
               for p in ("pre", "scaled", "mix", "post") for s in (0, 1, 2)]
    records[-1] = record("post", 2, 1.0, diverged=True)
    summary = summarize(records, settings, (0, 1, 2))
    found = {c["key"]: c for c in summary["comparisons"]}
    variance = found["variance"]
    expected = [math.log(1.3 * (1 + 0.01 * s)) - math.log(1.6 * (1 + 0.01 * s)) for s in (0, 1, 2)]
    np.testing.assert_allclose(variance["per_seed"], expected)
    assert variance["estimate"] == pytest.approx(np.mean(expected)) and variance["n"] == 3
    assert variance["low"] <= variance["estimate"] <= variance["high"] < 0
    assert judge_comparison(variance) == "agrees"
    skip = found["skip"]
    assert skip["sequences"]["n"] == 4 and skip["estimate"] > 0 and judge_comparison(skip) == "agrees"
    assert found["pre_gradients"]["a"] is None and judge_comparison(found["pre_gradients"]) == "agrees"
    assert found["mix_vs_post"]["n"] == 2  # the diverged Post-LN seed drops out of its pairs
    assert found["post_loss"]["direction"] is None and judge_comparison(found["post_loss"]) == "no claim"
    assert found["scaled_loss"]["estimate"] == pytest.approx(-0.1)
    assert summary["deep_layers"] == [3, 4] and summary["curves"]["pre"]["variance"]["n"] == 3
    assert summary["curves"]["post"]["variance"]["n"] == 2


@pytest.mark.parametrize("low,high,n,direction,expected", [
    (-0.3, -0.1, 3, "lower", "agrees"), (0.1, 0.3, 3, "lower", "disagrees"), (-0.1, 0.2, 3, "lower", "inconclusive"),
    (0.1, 0.3, 3, "higher", "agrees"), (-0.3, -0.1, 3, "higher", "disagrees"),
    (-0.3, -0.1, 1, "lower", "inconclusive"), (math.nan, math.nan, 3, "lower", "inconclusive"),
    (-0.3, -0.1, 3, None, "no claim"),
])
def test_judge(low, high, n, direction, expected):
    assert judge(low, high, n, direction) == expected


def test_judge_needs_both_intervals_to_agree():
    both = {"low": 0.1, "high": 0.2, "n": 3, "direction": "higher", "sequences": {"low": 0.05, "high": 0.3, "n": 16}}
    assert judge_comparison(both) == "agrees"
    assert judge_comparison(both | {"sequences": {"low": -0.05, "high": 0.3, "n": 16}}) == "inconclusive"
    with pytest.raises(ValueError, match="direction"):
        judge(0.1, 0.2, 3, "up")


def comparison(key, metric, b, a, direction, estimate, low, high, n=3, b_value=1.0, a_value=1.0, sequences=None):
    return {"key": key, "metric": metric, "b": b, "a": a, "direction": direction, "claim": "", "estimate": estimate,
            "low": low, "high": high, "n": n, "b_value": b_value, "a_value": a_value, "sequences": sequences}


def write_summary(folder, comparisons, runs=()):
    path = folder / DATA_DIR / SUMMARY
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"comparisons": comparisons, "level": 0.95, "deep_layers": [5, 6, 7, 8],
                                "ineffective_nats": 0.01, "labels": {"post": "Post-LN"}, "runs": list(runs)}))
    return depth_verdict(folder)


def full_set(sign):
    """Every comparison agreeing (sign=+1), disagreeing (-1) or straddling zero (0); ten are judged in
    the verdict (the share of ineffective layers is reported beside the skip loss, not judged)."""
    def iv(direction):
        s = (-1 if direction == "lower" else 1) * sign
        return (0.2 * s, min(0.1 * s, 0.3 * s), max(0.1 * s, 0.3 * s)) if sign else (0.05, -0.1, 0.2)
    seq = lambda d: {"estimate": iv(d)[0], "low": iv(d)[1], "high": iv(d)[2], "n": 64}  # noqa: E731
    return [
        comparison("variance", "variance_log_slope", "scaled", "pre", "lower", *iv("lower"), b_value=0.19, a_value=0.35),
        comparison("variance_linear", "variance_slope", "scaled", "pre", "lower", *iv("lower"), b_value=1.17,
                   a_value=4.59),
        comparison("skip", "skip_deep", "scaled", "pre", "higher", *iv("higher"), sequences=seq("higher")),
        comparison("angular", "angular_deep", "scaled", "pre", "higher", *iv("higher"), sequences=seq("higher")),
        comparison("ineffective", "ineffective_deep", "scaled", "pre", "lower", *iv("lower"), b_value=0.25, a_value=1.0),
        comparison("pre_gradients", "log_grad_deep_early", "pre", None, "lower", *iv("lower"), b_value=-0.5, a_value=None),
        comparison("post_gradients", "log_grad_deep_early", "post", None, "higher", *iv("higher"), b_value=0.3,
                   a_value=None),
        comparison("mix_vs_pre", "grad_spread", "mix", "pre", "lower", *iv("lower")),
        comparison("mix_vs_post", "grad_spread", "mix", "post", "lower", *iv("lower")),
        comparison("scaled_loss", "final_val_loss", "scaled", "pre", "lower", *iv("lower")),
        comparison("mix_loss", "final_val_loss", "mix", "pre", "lower", *iv("lower")),
    ]


def test_verdict_agree_disagree_inconclusive(tmp_path):
    agree = write_summary(tmp_path, full_set(+1))
    assert agree.count("— agrees") == 10 and "disagrees" not in agree and "inconclusive" not in agree
    assert "ln(variance) grows 0.350 per layer under Pre-LN and 0.190 under LayerNorm Scaling" in agree
    assert "difference -0.200 [-0.300, -0.100], 95% paired interval over 3 seeds) — agrees; fitted linearly, the " \
           "variance grows 4.59 vs 1.17 per layer (difference -0.2 [-0.3, -0.1]) — agrees." in agree
    assert "over 64 held-out sequences" in agree and "100% vs 25% of them are ineffective" in agree
    assert "deep/early ratio of training gradient norms after warm-up is 0.61" in agree
    disagree = write_summary(tmp_path, full_set(-1))
    assert disagree.count("— disagrees") == 10 and "— agrees" not in disagree
    unsure = write_summary(tmp_path, full_set(0))
    assert unsure.count("— inconclusive at this scale") == 10
    mixed = full_set(+1)
    mixed[2]["sequences"] = {"estimate": 0.1, "low": -0.1, "high": 0.3, "n": 64}  # seeds agree, sequences do not
    assert "— inconclusive at this scale; their last-token angular distance" in write_summary(tmp_path, mixed)


def test_verdict_names_diverged_runs_and_missing_data(tmp_path):
    text = write_summary(tmp_path, full_set(+1)[:1], runs=[{"placement": "post", "seed": 2, "diverged": True}])
    assert text.endswith("Diverged (left out of the pairs): Post-LN seed 2.")
    assert write_summary(tmp_path, []).startswith("No verdict")
    assert depth_verdict(tmp_path / "nothing").startswith("No verdict")
