"""The entropic_overload study: its per-head aggregation against brute force on stored attention
patterns, its seed intervals against numpy, its verdict on constructed results, and a miniature run
through run_study that re-renders byte for byte."""
import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch

from analyses.common import overload_metrics as M
from analyses.entropic_overload import (STUDY, EntropicOverloadStudy, OverloadSettings, measure_entropy,
                                        mode_settings, overload_verdict)
from normlens import build_model
from normlens import sites as S
from normlens.data import load_corpus
from normlens.data.corpus import eval_windows
from normlens.io import load_frame, read_json, write_json
from normlens.models.checkpoint import load_checkpoint
from normlens.study import Study, StudyConfig, StudyError, discover_studies, rerender, run_study
from normlens.train import TrainResult

N_CTX = 64  # a uniform causal head scores 0.771 of log T here: above the 3/4 bar (at T = 32 it is 0.735)
TINY = OverloadSettings(n_layers=2, d_model=16, n_heads=2, n_ctx=N_CTX, steps=4, batch_size=2, warmup_steps=1,
                        eval_every=2, val_seqs=4, n_seeds=2, probe_every=2, probe_seqs=2, entropy_seqs=3,
                        models=(("none", "gelu"), ("none", "relu"), ("ln", "gelu")))


def quiet(_):
    pass


def tiny_study(**changes) -> EntropicOverloadStudy:
    settings = dataclasses.replace(TINY, **changes)
    return EntropicOverloadStudy({"quick": settings, "full": settings})


def brute_force(model, tokens) -> dict[str, np.ndarray]:
    """Per (layer, head) from the stored (batch, head, query, key) patterns, in float64: the paper's mean
    entropy / log T (mean over queries, then over sequences) and the per-query variant H_i / log(i+1)."""
    patterns = {}

    def keep(tensor, hook):
        patterns[hook.name] = tensor.detach().double()

    n_layers = model.cfg.n_layers
    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=[(S.attn_pattern(layer), keep) for layer in range(n_layers)])
    T = tokens.shape[1]
    ratio, variant, entropy = [], [], []
    for layer in range(n_layers):
        p = patterns[S.attn_pattern(layer)]  # (batch, head, query, key)
        h = -(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum(-1)  # (batch, head, query)
        entropy.append(h.mean(-1).mean(0).numpy())
        ratio.append((h.mean(-1) / math.log(T)).mean(0).numpy())
        visible = torch.arange(1, T + 1, dtype=torch.float64)
        variant.append((h[..., 1:] / visible[1:].log()).mean(-1).mean(0).numpy())
    return {"ratio": np.stack(ratio), "variant": np.stack(variant), "entropy": np.stack(entropy)}


# -- the study's aggregation on planted heads -----------------------------------------------------------

@pytest.fixture(scope="module")
def planted():
    """Layer 0 of a norm-free model with head 0 uniform (zero queries) and head 1 sharp (queries and keys
    scaled up, so each query puts almost all its weight on one key)."""
    model = build_model(norm="none", n_layers=2, d_model=16, n_heads=2, n_ctx=N_CTX, seed=3).eval()
    params = {S.clean_name(n): p for n, p in model.named_parameters()}
    d_head = 8
    with torch.no_grad():
        params["layers.0.attn.q.weight"][:d_head] = 0.0
        params["layers.0.attn.q.bias"][:d_head] = 0.0
        params["layers.0.attn.q.weight"][d_head:] *= 3000.0
        params["layers.0.attn.k.weight"][d_head:] *= 3000.0
    tokens = torch.randint(0, 256, (4, N_CTX), generator=torch.Generator().manual_seed(0))
    return model, tokens


def test_metric_separates_a_uniform_head_from_a_sharp_one(planted):
    model, tokens = planted
    result = measure_entropy(model, tokens, collapse_threshold=0.1)
    heads = M.head_table(result, model="free-gelu", seed=0).set_index(["layer", "head"])
    uniform, sharp = heads.loc[(0, 0)], heads.loc[(0, 1)]
    # the uniform head reaches exactly log(T!) / (T log T), above the 3/4 bar; the sharp one is near 0
    assert uniform.entropy_ratio == pytest.approx(M.uniform_head_ratio(N_CTX), abs=1e-5)
    assert uniform.overloaded and not uniform.collapsed
    assert sharp.entropy_ratio < 0.05 and sharp.collapsed and not sharp.overloaded
    assert (heads.model == "free-gelu").all() and (heads.seed == 0).all()


def test_run_metrics_match_brute_force_on_stored_patterns(planted):
    model, tokens = planted
    reference = brute_force(model, tokens)
    metrics = M.run_metrics(measure_entropy(model, tokens, collapse_threshold=0.1), n_layers=2, val_loss=2.0)
    overloaded = (reference["ratio"] >= 0.75) & (reference["ratio"] <= 1)
    assert metrics["overload_fraction"] == pytest.approx(overloaded.mean())
    assert metrics["early_overload_fraction"] == pytest.approx(overloaded[0].mean())  # layer 0 of 2
    assert metrics["early_overload_fraction"] == pytest.approx(0.5)
    assert metrics["collapse_fraction"] == pytest.approx((reference["entropy"] < 0.1).mean())
    assert metrics["mean_entropy_ratio"] == pytest.approx(reference["ratio"].mean(), abs=1e-6)
    assert metrics["overload_fraction_normalized"] == pytest.approx((reference["variant"] > 0.75).mean())
    assert metrics["perplexity"] == pytest.approx(math.exp(2.0))


def test_diverged_run_has_nan_entropy_metrics_and_keeps_its_loss():
    metrics = M.run_metrics(None, n_layers=2, val_loss=float("nan"))
    assert set(metrics) == set(M.RUN_METRICS) and all(math.isnan(v) for v in metrics.values())
    assert M.run_metrics(None, n_layers=2, val_loss=3.0)["val_loss"] == 3.0


def test_uniform_ratio_closed_form():
    for T in (16, 64, 128, 1024):
        assert M.uniform_head_ratio(T) == pytest.approx(np.mean(np.log(np.arange(1, T + 1))) / np.log(T))
    assert M.uniform_head_ratio(32) < 0.75 < M.uniform_head_ratio(64)
    with pytest.raises(ValueError, match="n_ctx"):
        M.uniform_head_ratio(1)


# -- intervals over seeds -------------------------------------------------------------------------------

def _runs() -> pd.DataFrame:
    rows = []
    values = {"free-gelu": ([0.5, 0.75, 0.625], [3.0, 3.1, 2.9]), "free-relu": ([0.25, 0.5, np.nan], [2.8, 2.9, 2.7])}
    for model, (overload, loss) in values.items():
        for seed, (o, l) in enumerate(zip(overload, loss)):
            rows.append({"model": model, "seed": seed, "overload_fraction": o, "val_loss": l, "perplexity": math.exp(l)})
    return pd.DataFrame(rows)


def test_seed_intervals_and_paired_differences_match_numpy():
    runs = _runs()
    per_model = M.model_intervals(runs, ["free-gelu", "free-relu"], ("overload_fraction", "val_loss"))
    gelu = per_model[(per_model.model == "free-gelu") & (per_model.metric == "overload_fraction")].iloc[0]
    assert gelu.estimate == pytest.approx(0.625) and gelu.n == 3 and gelu.low <= 0.625 <= gelu.high
    relu = per_model[(per_model.model == "free-relu") & (per_model.metric == "overload_fraction")].iloc[0]
    assert relu.estimate == pytest.approx(0.375) and relu.n == 2  # the NaN run is left out
    paired = M.paired_comparisons(runs, [("free-gelu", "free-relu")],
                                  ("overload_fraction", "val_loss", "perplexity_reduction")).set_index("metric")
    # seed 2 of ReLU is NaN: two pairs remain for the overload difference
    assert paired.loc["overload_fraction", "estimate"] == pytest.approx(np.mean([0.5 - 0.25, 0.75 - 0.5]))
    assert paired.loc["overload_fraction", "n"] == 2 and paired.loc["overload_fraction", "n_seeds"] == 3
    assert paired.loc["val_loss", "estimate"] == pytest.approx(0.2)
    reduction = np.mean(1 - np.exp(np.array([2.8, 2.9, 2.7])) / np.exp(np.array([3.0, 3.1, 2.9])))
    assert paired.loc["perplexity_reduction", "estimate"] == pytest.approx(reduction)
    assert bool(paired.loc["val_loss", "excludes_zero"])  # 0.2 on every seed: a zero-width interval at 0.2


def test_training_records_become_ratios_to_log_T():
    record = {"steps": [0, 4], "values": {"entropy[layer,head]": [[[1.0, 2.0]], [[0.5, 3.0]]],
                                          "overload_fraction": [1.0, 0.5], "collapse_fraction": [0.0, 0.0],
                                          "mean_entropy_ratio": [0.3, 0.4], "overload_fraction_normalized": [1, 1]},
              "axes": {"entropy[layer,head]": [[0], [0, 1]]}}
    result = TrainResult("m", {}, {}, 1, probes={"attention": record})
    heads = M.training_heads(result, model="free-relu", seed=1, n_ctx=16)
    assert heads.entropy_ratio.tolist() == pytest.approx([v / math.log(16) for v in (1.0, 2.0, 0.5, 3.0)])
    assert heads.step.tolist() == [0, 0, 4, 4] and heads["head"].tolist() == [0, 1, 0, 1]
    summary = M.training_summaries(result, model="free-relu", seed=1)
    assert summary.overload_fraction.tolist() == [1.0, 0.5] and summary.step.tolist() == [0, 4]
    assert M.training_heads(TrainResult("m", {}, {}, 1), model="x", seed=0, n_ctx=16).empty


# -- the verdict on constructed results -------------------------------------------------------------------

def _interval(estimate, low, high, n=3):
    return {"estimate": estimate, "low": low, "high": high, "n": n, "level": 0.95, "method": "percentile"}


def write_comparisons(folder, *, diff, ppl, gelu=(0.6, 0.5, 0.7), relu=(0.2, 0.1, 0.3), n=3, n_ctx=128,
                      ln=(0.1, 0.0, 0.2)):
    intervals = [{"model": "free-gelu", "metric": "overload_fraction", **_interval(*gelu, n=n)},
                 {"model": "free-relu", "metric": "overload_fraction", **_interval(*relu, n=n)}]
    if ln is not None:
        intervals.append({"model": "ln-gelu", "metric": "overload_fraction", **_interval(*ln, n=n)})
    paired = [{"a": "free-gelu", "b": "free-relu", "metric": "overload_fraction", **_interval(*diff, n=n)},
              {"a": "free-gelu", "b": "free-relu", "metric": "perplexity_reduction", **_interval(*ppl, n=n)}]
    write_json(folder / "overload" / "comparisons.json",
               {"mode": "quick", "seeds": list(range(n)), "n_ctx": n_ctx, "overload_threshold": 0.75,
                "uniform_ratio": M.uniform_head_ratio(n_ctx), "intervals": intervals, "paired": paired})
    return folder


@pytest.mark.parametrize("diff,ppl,words", [
    ((0.4, 0.3, 0.5), (0.05, 0.02, 0.08), ["this agrees with ReLU's Revival", "5.0 % [2.0, 8.0] lower",
                                           "agrees in direction"]),
    ((-0.3, -0.5, -0.1), (-0.04, -0.06, -0.02), ["this disagrees with ReLU's Revival", "4.0 % [2.0, 6.0] higher",
                                                 "8.2 % lower): disagrees"]),
    ((0.05, -0.1, 0.2), (0.01, -0.01, 0.03), ["inconclusive at this scale on ReLU's Revival",
                                              "inconclusive at this scale;"]),
])
def test_verdict_agrees_disagrees_or_is_inconclusive(tmp_path, diff, ppl, words):
    sentence = overload_verdict(write_comparisons(tmp_path, diff=diff, ppl=ppl))
    for word in words:
        assert word in sentence
    assert "Norm-free GELU has 60 % [50, 70] of heads overloaded" in sentence
    assert "20 % [10, 30] for norm-free ReLU" in sentence and "(3 seeds" in sentence
    assert "Pre-LN GELU has 10 % [0, 20] overloaded" in sentence and sentence.endswith("(quick mode).")


def test_verdict_without_pairs_or_files_says_so(tmp_path):
    assert "missing" in overload_verdict(tmp_path)
    one = write_comparisons(tmp_path, diff=(0.1, math.nan, math.nan), ppl=(0.0, math.nan, math.nan), n=1)
    assert overload_verdict(one).startswith("Inconclusive: fewer than two seeds")


def test_verdict_says_when_the_bar_is_out_of_reach(tmp_path):
    sentence = overload_verdict(write_comparisons(tmp_path, diff=(0.0, 0.0, 0.0), ppl=(0.0, -0.01, 0.01),
                                                  gelu=(0, 0, 0), relu=(0, 0, 0), n_ctx=16, ln=None))
    assert "inconclusive at this scale" in sentence and "even a uniform head scores only 0.69" in sentence
    assert "Pre-LN" not in sentence


# -- settings -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options,message", [
    ({"stepz": 3}, "no option stepz"),
    ({"models": [("none", "gelu"), ("ln", "gelu")]}, "must include"),
    ({"models": [("none", "gelu"), ("none", "relu"), ("rms", "gelu")]}, "norm in"),
    ({"n_seeds": 1}, "n_seeds must be at least 2"),
    ({"steps": 0}, "steps must be a positive integer"),
])
def test_bad_options_are_one_line_study_errors(options, message):
    with pytest.raises(StudyError, match=message):
        mode_settings(StudyConfig(options=options))


def test_modes_and_discovery():
    quick, full = mode_settings(StudyConfig()), mode_settings(StudyConfig(mode="full"))
    assert quick.n_ctx == full.n_ctx == 128 and full.n_layers == 12 and full.d_model >= 256
    assert len(full.models) == 4 and quick.n_seeds >= 2
    assert mode_settings(StudyConfig(options={"steps": 7})).steps == 7
    studies = discover_studies()
    assert isinstance(studies["entropic_overload"], Study) and studies["entropic_overload"] is STUDY


# -- a miniature run ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    out = tmp_path_factory.mktemp("overload") / "entropic_overload.html"
    study = tiny_study()
    run_study(study, StudyConfig(), out, log=quiet)
    return study, out, out.parent / "entropic_overload_data"


def test_miniature_run_writes_data_and_a_report_that_rerenders_identically(mini):
    study, out, results = mini
    for name in ("runs.parquet", "heads.parquet", "buckets.parquet", "training_heads.parquet",
                 "training_summary.parquet", "comparisons.json", "paired.parquet", "model_intervals.parquet"):
        assert (results / "overload" / name).is_file(), name
    html = out.read_bytes()
    verdict = study.verdict(results)
    assert verdict == overload_verdict(results) and verdict.startswith("Norm-free GELU has")
    text = html.decode()
    assert verdict.replace("'", "&#39;") in text or verdict.replace("'", "&#x27;") in text
    for title in ("Entropic overload: fractions of heads", "Final heads", "Attention entropy over training",
                  "by query position", "Training (seed 0)", "no normalization, ReLU", "LayerNorm (Pre-LN), GELU"):
        assert title in text, title
    assert "could not be rendered" not in text
    rerender(results, studies={"entropic_overload": study})
    assert out.read_bytes() == html


def test_saved_overload_fractions_match_brute_force_on_the_saved_models(mini):
    _, _, results = mini
    runs = load_frame(results / "overload" / "runs.parquet")
    assert len(runs) == len(TINY.models) * TINY.n_seeds and not runs.diverged.any()
    tokens = eval_windows(load_corpus("embedded", seed=0), n_seq=TINY.entropy_seqs, n_ctx=N_CTX, seed=7)
    for row in runs.itertuples():
        model = load_checkpoint(results / "runs" / row.model / f"seed-{row.seed}" / "model").eval()
        reference = brute_force(model, tokens)
        overloaded = (reference["ratio"] >= 0.75) & (reference["ratio"] <= 1)
        assert row.overload_fraction == pytest.approx(overloaded.mean()), (row.model, row.seed)
        assert row.mean_entropy_ratio == pytest.approx(reference["ratio"].mean(), abs=1e-5)
    # the seeds share initial weights across models: the norm-free GELU and ReLU models of a seed start equal
    a = build_model(norm="none", act_fn="gelu", n_layers=2, d_model=16, n_heads=2, n_ctx=N_CTX, seed=1)
    b = build_model(norm="ln", act_fn="relu", n_layers=2, d_model=16, n_heads=2, n_ctx=N_CTX, seed=1)
    shared = {S.clean_name(n): p for n, p in a.named_parameters()}
    for name, p in b.named_parameters():
        if S.clean_name(name) in shared:
            assert torch.equal(p, shared[S.clean_name(name)]), name


def test_training_records_and_intervals_come_from_the_runs(mini):
    _, _, results = mini
    data = read_json(results / "overload" / "comparisons.json")
    runs = load_frame(results / "overload" / "runs.parquet")
    over = load_frame(results / "overload" / "training_heads.parquet")
    saved = TrainResult.from_dict(read_json(results / "runs" / "free-relu" / "seed-1" / "train_result.json"))
    steps, entropy = saved.probe_series("attention", "entropy[layer,head]")
    mine = over[(over.model == "free-relu") & (over.seed == 1)]
    assert sorted(mine.step.unique()) == steps.tolist() == [0, 2, 4]
    last = mine[mine.step == 4].sort_values(["layer", "head"]).entropy_ratio.to_numpy()
    assert last == pytest.approx(entropy[-1].ravel() / math.log(N_CTX))
    gelu = next(r for r in data["intervals"] if r["model"] == "free-gelu" and r["metric"] == "overload_fraction")
    assert gelu["estimate"] == pytest.approx(runs[runs.model == "free-gelu"].overload_fraction.mean())
    diff = next(r for r in data["paired"] if (r["a"], r["b"], r["metric"]) == ("free-gelu", "free-relu",
                                                                               "overload_fraction"))
    per_seed = runs.pivot(index="seed", columns="model", values="overload_fraction")
    assert diff["estimate"] == pytest.approx((per_seed["free-gelu"] - per_seed["free-relu"]).mean())


def test_rerun_reuses_finished_runs_and_retrains_changed_ones(mini, tmp_path):
    study, _, results = mini
    import shutil

    folder = tmp_path / "data"
    shutil.copytree(results / "runs", folder / "runs")
    logs = []
    study.run(StudyConfig(), folder, logs.append)
    assert all("reused" in line for line in logs)
    assert load_frame(folder / "overload" / "runs.parquet").reused.all()
    logs.clear()
    tiny_study(steps=3, eval_every=3, probe_every=3).run(StudyConfig(), folder, logs.append)
    assert not any("reused" in line for line in logs)
    assert TrainResult.from_dict(read_json(folder / "runs" / "free-gelu" / "seed-0" / "train_result.json")).steps[-1] == 2


def test_diverged_runs_are_recorded_and_reported(tmp_path):
    study = tiny_study(lr=1e6, models=(("none", "gelu"), ("none", "relu")))
    out = run_study(study, StudyConfig(), tmp_path / "r.html", log=quiet)
    runs = load_frame(tmp_path / "r_data" / "overload" / "runs.parquet")
    assert runs.diverged.all() and runs.overload_fraction.isna().all()
    text = out.read_text()
    assert "diverged" in text and "could not be rendered" not in text
    assert study.verdict(tmp_path / "r_data").startswith("Inconclusive: fewer than two seeds")


def test_fraction_intervals_stay_within_what_a_fraction_can_take():
    """Three seeds with overload fractions 0, 0 and 0.25: the t interval (mean ± t·s/√3) reaches below 0;
    the reported interval is truncated to [0, 1], the loss interval is not."""
    import pandas as pd

    from analyses.common.overload_metrics import model_intervals

    runs = pd.DataFrame({"model": ["m"] * 3, "seed": [0, 1, 2], "overload_fraction": [0.0, 0.0, 0.25],
                         "val_loss": [2.0, 2.1, 2.6]})
    frame = model_intervals(runs, ["m"], ["overload_fraction", "val_loss"]).set_index("metric")
    half = 4.302652729911275 * np.std([0.0, 0.0, 0.25], ddof=1) / np.sqrt(3)
    assert 0.25 / 3 - half < 0  # the raw t interval leaves [0, 1]
    assert frame.loc["overload_fraction", "low"] == 0.0
    assert frame.loc["overload_fraction", "high"] == pytest.approx(0.25 / 3 + half)
    assert frame.loc["val_loss", "low"] < 2.0  # not a fraction: not truncated
