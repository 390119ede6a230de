"""The zoo over seeds: losses on a fixed evaluation set, paired differences with intervals, a verdict
that carries them, the papers' attention metrics beside the old ones, and probes over training."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from analyses.common.curvature import HessianSettings
from analyses.common.landscape import LandscapeSettings
from analyses.common.probes import ProbeSettings
from analyses.common.zoo_models import ZooSettings, ZooSweep, TrainedZoo, zoo_seed_tables
from analyses.zoo import PARITY_NATS, REMOVAL_NATS, ZooModeSettings, ZooStudy, judge, zoo_verdict
from normlens import sites as S
from normlens.data.corpus import eval_windows, load_embedded
from normlens.io import load_frame
from normlens.models import ZooConfig
from normlens.models.checkpoint import load_checkpoint
from normlens.models.ln_removal import LNRemovalConfig
from normlens.study import StudyConfig, rerender, run_study
from normlens.train import TrainConfig

TRAIN = TrainConfig(steps=4, eval_every=2, eval_seqs=16, batch_size=4, eval_seed=5)
TINY = ZooModeSettings(
    ZooSettings(model=ZooConfig(n_layers=1, d_model=16, n_heads=2, n_ctx=16), train=TRAIN,
                removal=LNRemovalConfig(warmup_steps=1, steps_per_removal=1, final_steps=1, batch_size=4, eval_seqs=4),
                eval_seqs=6, n_seeds=3, probe_every=2),
    ProbeSettings(n_seq=6, s_curve_samples=64, probe_bytes=1 << 16, effectiveness_seqs=6, n_resamples=200),
    HessianSettings(n_seq=2, n_ctx=8, top_k=2, top_steps=5, density_steps=5, block_steps=3),
    LandscapeSettings(resolution=3, n_seq=2))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo") / "zoo.html"
    study = ZooStudy({"quick": TINY, "full": TINY})
    run_study(study, StudyConfig(options={"analyses": ["probes"]}), out, log=lambda _: None)
    return SimpleNamespace(page=out, data=out.parent / "zoo_data", study=study)


def _loss(model, tokens):
    """Next-token cross-entropy written out (float64), independent of normlens.losses."""
    with torch.no_grad():
        logits = model(tokens).double()
    return float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)))


def test_every_seed_is_validated_on_one_fixed_set_and_paired_differences_follow(run):
    seeds = json.loads((run.data / "training" / "seeds.json").read_text())
    assert seeds["seeds"] == [0, 1, 2] and seeds["eval"] == {"eval_seed": 5, "eval_seqs": 16, "n_ctx": 16}
    tokens = eval_windows(load_embedded(seed=0), n_seq=16, n_ctx=16, seed=5)  # not the training seed's
    losses = {}
    for row in seeds["runs"]:
        folder = (run.data / "models" / "ln-removed" / f"seed-{row['seed']}" if row["name"] == "ln→lnfree" else
                  run.data / "models" / "sweep" / "runs" / f"norm-{row['name']}" / f"seed-{row['seed']}")
        losses[row["name"], row["seed"]] = _loss(load_checkpoint(folder / "model"), tokens)
        assert row["final_val_loss"] == pytest.approx(losses[row["name"], row["seed"]], abs=1e-5)
    for pair in seeds["paired"]:
        diffs = [losses[pair["name"], s] - losses["ln", s] for s in (0, 1, 2)]
        assert pair["n"] == 3 and pair["estimate"] == pytest.approx(np.mean(diffs), abs=1e-5)
        half = 4.302652729911275 * np.std(diffs, ddof=1) / np.sqrt(3)  # Student's t(0.975, 2), 3 seeds
        assert pair["low"] == pytest.approx(np.mean(diffs) - half, abs=1e-5)
        assert pair["high"] == pytest.approx(np.mean(diffs) + half, abs=1e-5)
    cost = seeds["removal_cost"]
    assert cost["baseline"] in ("before", "control") and cost["n"] == 3
    if cost["baseline"] == "before":  # no LayerNorm-kept control on this branch: the fixed-set difference
        assert cost["values"] == pytest.approx([losses["ln→lnfree", s] - losses["ln", s] for s in (0, 1, 2)], abs=1e-5)
    verdict = zoo_verdict(run.data)
    dyt = next(p for p in seeds["paired"] if p["name"] == "dyt")
    assert f"{dyt['estimate']:+.3f}" in verdict and "over 3 seeds" in verdict and "95% CI [" in verdict


def test_report_shows_seeds_old_and_new_metrics_and_rerenders_identically(run, tmp_path):
    page = run.page.read_text()
    for text in ("Final validation loss over 3 seeds", "Paired differences against LayerNorm (Pre-LN)",
                 "LayerNorm removal per seed", "use seed 0 only", "Attention entropy over training",
                 "old (per-query normalized", "S-curve fits per norm slot",
                 "Per-block effectiveness: last-token angular distance", "massive activations",
                 "definitions (95 % intervals over sequences) beside the old per-query variants"):
        assert text.lower() in page.lower(), text
    original = run.page.read_bytes()
    again = rerender(run.data, run.page, studies={"zoo": run.study})  # links are relative to the page
    assert again.read_bytes() == original


def _patterns(model, tokens):
    store = {}
    hooks = [model.hook_dict[S.attn_pattern(layer)].register_forward_hook(
        lambda module, args, out, layer=layer: store.__setitem__(layer, out.detach().double()))
        for layer in range(model.cfg.n_layers)]
    try:
        with torch.no_grad():
            model(tokens)
    finally:
        for hook in hooks:
            hook.remove()
    return [store[layer] for layer in sorted(store)]  # each (batch, head, query, key)


def test_old_and_new_attention_metrics_match_a_brute_force_on_the_patterns(run):
    """Overload (mean H / log T >= 3/4), sink rate (heads, mean first-token mass over queries >= 1 above 0.3),
    and the old per-query variants, recomputed in float64 from the full attention patterns."""
    metrics = load_frame(run.data / "probes" / "tables" / "attention_metrics.parquet").set_index("model")
    tokens = eval_windows(load_embedded(seed=0), n_seq=6, n_ctx=16, seed=5)
    section = json.loads((run.data / "probes" / "section.json").read_text())
    checked = 0
    for entry in section["models"]:
        if entry["status"] != "ok":
            continue
        folder = (run.data / "models" / "ln-removed" / "seed-0" if entry["name"] == "ln→lnfree" else
                  run.data / "models" / "sweep" / "runs" / f"norm-{entry['name']}" / "seed-0")
        patterns = _patterns(load_checkpoint(folder / "model").eval(), tokens)
        T = tokens.shape[1]
        ratio, first, norm_mean, sink_queries, n_queries = [], [], [], 0, 0
        for p in patterns:
            h = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)  # (batch, head, query)
            ratio.append((h.mean(-1) / math.log(T)).mean(0))  # per head: mean over sequences of mean_i H_i / log T
            first.append(p[:, :, 1:, 0].mean(-1).mean(0))  # queries >= 1
            visible = torch.arange(1, T + 1, dtype=torch.float64)
            norm_mean.append((h[:, :, 1:] / torch.log(visible[1:])).mean(dim=(0, 2)))  # queries with a choice
            sink_queries += int((p[..., 0] > 0.3).sum())
            n_queries += p[..., 0].numel()
        ratio, first, norm_mean = torch.cat(ratio), torch.cat(first), torch.cat(norm_mean)
        row = metrics.loc[entry["label"]]
        assert row.overload_fraction == pytest.approx(float(((ratio >= 0.75) & (ratio <= 1)).double().mean()))
        assert row.mean_entropy_ratio == pytest.approx(float(ratio.mean()), abs=1e-5)
        assert row.sink_rate == pytest.approx(float((first > 0.3).double().mean()))
        assert row.overload_fraction_normalized == pytest.approx(float((norm_mean > 0.75).double().mean()))
        assert row.sink_query_fraction == pytest.approx(sink_queries / n_queries, abs=1e-9)
        assert row.overload_low <= row.overload_fraction <= row.overload_high and row.n_sequences == 6
        checked += 1
    assert checked == 5


def test_probes_over_training_are_recorded_and_drawn(run):
    training = json.loads((run.data / "training" / "training.json").read_text())
    ln = next(r for r in training["runs"] if r["name"] == "ln")
    record = ln["probes"]["attention"]
    assert record["steps"] == [0, 2, 4] and "entropy[layer,head]" in record["values"]
    assert "variance[site]" in ln["probes"]["residual"]["values"]
    page = run.page.read_text()
    assert "Residual-stream variance per depth over training" in page


def _constructed(dyt, removal, baseline="before", n=3, diverged=0):
    """A seeds.json with DyT's paired difference and the removal's cost given as (estimate, low, high)."""
    def interval(values):
        estimate, low, high = values
        return {"estimate": estimate, "low": low, "high": high, "level": 0.95, "n": n, "method": "BCa"}

    return {"seeds": list(range(n)), "detail_seed": 0, "baseline": "ln", "level": 0.95,
            "summary": [{"name": "ln", "label": "LayerNorm (Pre-LN)", "n_runs": n, "n_diverged": 0,
                         **interval((2.0, 1.9, 2.1))},
                        {"name": "dyt", "label": "DyT", "n_runs": n, "n_diverged": diverged,
                         **interval((2.0 + dyt[0], 1.9, 2.1))}],
            "paired": [{"name": "dyt", "label": "DyT", "baseline": "ln", **interval(dyt)}],
            "removal_cost": {"baseline": baseline, **interval(removal)}}


@pytest.mark.parametrize("dyt,removal,baseline,expect", [
    ((0.02, 0.01, 0.03), (0.03, 0.02, 0.04), "control",
     ["agrees with the DyT paper", "with LayerNorm kept", "agrees with the LN-removal paper"]),
    ((0.48, 0.45, 0.50), (0.20, 0.15, 0.25), "before",
     ["disagrees with the DyT paper", "before removal (no LayerNorm-kept control", "disagrees with the LN-removal"]),
    ((0.04, -0.02, 0.10), (0.05, 0.03, 0.12), "control",
     ["inconclusive at this scale about the DyT", "inconclusive at this scale about the LN-removal"]),
    ((-0.30, -0.45, -0.07), (-0.02, -0.03, -0.01), "before",
     ["0.300 nats below LayerNorm", "disagrees with the DyT", "agrees with the LN-removal"]),
])
def test_verdict_carries_intervals_and_says_when_it_disagrees(tmp_path, dyt, removal, baseline, expect):
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "seeds.json").write_text(json.dumps(_constructed(dyt, removal, baseline)))
    verdict = zoo_verdict(tmp_path)
    for text in expect:
        assert text in verdict, (text, verdict)
    assert f"95% CI [{dyt[1]:+.3f}, {dyt[2]:+.3f}] over 3 seeds" in verdict and verdict.count("over 3 seeds") == 2


def test_verdict_without_an_interval_or_with_divergences(tmp_path):
    (tmp_path / "training").mkdir()
    data = _constructed((0.01, math.nan, math.nan), (0.01, math.nan, math.nan), n=1, diverged=1)
    (tmp_path / "training" / "seeds.json").write_text(json.dumps(data))
    verdict = zoo_verdict(tmp_path)
    assert verdict.count("1 seed, no interval") == 2 and verdict.count("inconclusive at this scale") == 2
    assert "Diverged: DyT (1 of 1 seeds)" in verdict


def test_judge_reads_the_interval_against_the_claims_band():
    assert judge(-0.01, 0.04, -PARITY_NATS, PARITY_NATS) == "agrees"
    assert judge(0.06, 0.2, -PARITY_NATS, PARITY_NATS) == "disagrees"
    assert judge(-0.2, -0.06, -PARITY_NATS, PARITY_NATS) == "disagrees"
    assert judge(0.0, 0.08, -math.inf, REMOVAL_NATS) == "inconclusive at this scale"
    assert judge(math.nan, math.nan, -1, 1) == "inconclusive at this scale"


def test_seed_tables_pair_by_seed_and_prefer_the_layernorm_kept_control():
    runs = pd.DataFrame({"name": ["ln"] * 3 + ["dyt"] * 3, "cell": ["norm=ln"] * 3 + ["norm=dyt"] * 3,
                         "seed": [0, 1, 2] * 2, "final_val_loss": [2.0, 2.2, 2.1, 2.1, 2.25, math.nan],
                         "diverged": [False] * 5 + [True], "diverged_step": [None] * 5 + [3],
                         "wall_time_s": [1.0] * 6})
    removal = {s: SimpleNamespace(val_loss_before=1.0, val_loss_after=1.1, diverged=False, wall_time_s=1.0,
                                  gap_to_control=g) for s, g in zip((0, 1, 2), (0.01, 0.03, 0.02))}
    zoo = ZooSweep(sweep=SimpleNamespace(runs=runs), seeds=(0, 1, 2), detail=TrainedZoo({}, [], None),
                   removals=removal, removed_loss={0: 2.05, 1: 2.3, 2: 2.1})
    tables = zoo_seed_tables(zoo)
    dyt = next(p for p in tables["paired"] if p["name"] == "dyt")
    assert dyt["n"] == 2 and dyt["estimate"] == pytest.approx(np.mean([0.1, 0.05]))  # the diverged seed left out
    assert next(s for s in tables["summary"] if s["name"] == "dyt")["n_diverged"] == 1
    assert tables["removal_cost"]["baseline"] == "control"
    assert tables["removal_cost"]["estimate"] == pytest.approx(0.02)
    removed = next(p for p in tables["paired"] if p["name"] == "ln→lnfree")
    assert removed["values"] == pytest.approx([0.05, 0.1, 0.0])
    for r in removal.values():
        r.gap_to_control = math.nan  # no control recorded: the fixed-set difference to the model before removal
    cost = zoo_seed_tables(zoo)["removal_cost"]
    assert cost["baseline"] == "before" and cost["estimate"] == pytest.approx(np.mean([0.05, 0.1, 0.0]))
