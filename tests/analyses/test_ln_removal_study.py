"""The ln_removal study: a miniature run through run_study, byte-identical re-render, reuse, the verdict
on constructed result files, and the saved DLA / ablation numbers against a naive full-forward ablation."""
import json
import shutil

import numpy as np
import pytest
import torch

from analyses.common.attribution import load_head_attribution
from analyses.ln_removal import (STUDY, LNRemovalModeSettings, LNRemovalStudy, gap_row, ln_removal_verdict, loss_row,
                                 mode_settings)
from normlens import sites as S
from normlens.data.corpus import eval_windows, load_embedded
from normlens.models.checkpoint import load_checkpoint
from normlens.models.config import ZooConfig
from normlens.models.ln_removal import LNRemovalConfig
from normlens.study import StudyConfig, StudyError, discover_studies, rerender, run_study
from normlens.train import TrainConfig

TINY = LNRemovalModeSettings(
    model=ZooConfig(n_layers=2, d_model=16, n_heads=2, n_ctx=16, norm="ln"),
    train=TrainConfig(steps=4, eval_every=2, eval_seqs=4, batch_size=4),
    removal=LNRemovalConfig(warmup_steps=1, steps_per_removal=1, final_steps=1, batch_size=4, eval_seqs=4),
    n_seeds=2, attribution_seqs=2)


def tiny_study() -> LNRemovalStudy:
    return LNRemovalStudy({"quick": TINY, "full": TINY})


def quiet(_):
    pass


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lnr") / "ln_removal.html"
    return run_study(tiny_study(), StudyConfig(), out, log=quiet)


def test_study_is_discovered_and_options_are_checked():
    assert discover_studies()["ln_removal"] is STUDY
    with pytest.raises(StudyError, match="no option colour"):
        mode_settings(StudyConfig(options={"colour": 1}), {"quick": TINY})
    with pytest.raises(StudyError, match="seeds must be an integer >= 1, got 0"):
        mode_settings(StudyConfig(options={"seeds": 0}), {"quick": TINY})
    settings = mode_settings(StudyConfig(options={"seeds": 3, "steps": 7, "model": "gpt2"}), {"quick": TINY})
    assert (settings.n_seeds, settings.train.steps, settings.hf_model) == (3, 7, "gpt2")


def test_miniature_run_writes_data_report_and_rerenders_identically(run):
    data = run.parent / "ln_removal_data"
    losses = json.loads((data / "removal" / "losses.json").read_text())
    assert losses["seeds"] == [0, 1] and losses["mode"] == "quick" and len(losses["rows"]) == 2
    for row in losses["rows"]:
        assert row["cost"] == pytest.approx(row["val_loss_after"] - row["val_loss_control"])
        assert np.isfinite(row["val_loss_control"])
    seed0 = json.loads((data / "removal" / "seed0.json").read_text())
    assert [stage for _, stage in seed0["schedule"]] == [
        "blocks.0.ln2", "blocks.1.ln2", "blocks.0.ln1.qk", "blocks.1.ln1.qk", "blocks.0.ln1.v", "blocks.1.ln1.v",
        "ln_final", "first-position"]
    page = run.read_text()
    for words in ("LayerNorm model", "LayerNorm removed", "LayerNorm kept (control)", "quick mode",
                  'class="verdict"', "Direct logit attribution against the ablated direct effect"):
        assert words in page
    assert "could not be rendered" not in page and page.count("<img") >= 4 and 'alt=""' not in page
    verdict = ln_removal_verdict(data)
    assert verdict.startswith("Removing LayerNorm by fine-tuning cost") and "over 2 seeds" in verdict
    again = rerender(data, run.parent / "again.html", studies={"ln_removal": tiny_study()})
    assert again.read_bytes() == run.read_bytes()  # the same folder: byte-identical
    assert rerender(data, studies={"ln_removal": tiny_study()}) == run and run.read_text() == page  # in place


def test_rerun_reuses_the_trained_models(run, tmp_path):
    shutil.copytree(run.parent / "ln_removal_data" / "models", tmp_path / "ln_removal_data" / "models")
    run_study(tiny_study(), StudyConfig(), tmp_path / "ln_removal.html", log=quiet)
    first = json.loads((run.parent / "ln_removal_data" / "removal" / "losses.json").read_text())["rows"]
    again = json.loads((tmp_path / "ln_removal_data" / "removal" / "losses.json").read_text())["rows"]
    assert [r["ln_reused"] for r in first] == [False, False] and [r["ln_reused"] for r in again] == [True, True]
    assert [r["val_loss_after"] for r in again] == [r["val_loss_after"] for r in first]


def _naive_direct_effects(model, tokens):
    """(heads, tokens): target logit of a full forward minus the same with one head's output subtracted at
    the final norm's input (every other layer untouched)."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    z = {}
    hooks = [(S.attn_hook(l, "hook_z"), lambda t, hook, l=l: z.__setitem__(l, t.detach().clone())) for l in
             range(n_layers)]
    with torch.no_grad():
        full = model.run_with_hooks(tokens, fwd_hooks=hooks)
        target = tokens[:, 1:, None]
        full_logit = full[:, :-1].gather(-1, target)[..., 0]
        effects = []
        for layer in range(n_layers):
            zl = z[layer].reshape(*z[layer].shape[:2], n_heads, -1)
            for head in range(n_heads):
                out = zl[:, :, head] @ model.W_O[layer, head]  # (batch, pos, d_model)
                ablated = model.run_with_hooks(tokens, fwd_hooks=[(S.norm_in("ln_final"), lambda t, hook: t - out)])
                effects.append((full_logit - ablated[:, :-1].gather(-1, target)[..., 0]).reshape(-1))
    return torch.stack(effects).double().numpy()


def test_saved_attribution_matches_a_naive_ablation(run):
    data = run.parent / "ln_removal_data"
    gaps = json.loads((data / "attribution" / "gaps.json").read_text())
    saved = load_head_attribution(data / "attribution" / "seed0.npz")
    tokens = eval_windows(load_embedded(seed=0), n_seq=TINY.attribution_seqs, n_ctx=16, seed=0)
    models = {"ln": load_checkpoint(data / "models" / "seed0" / "ln" / "model").eval(),
              "lnfree": load_checkpoint(data / "models" / "seed0" / "ln-removed" / "model").eval()}
    naive = {key: _naive_direct_effects(model, tokens) for key, model in models.items()}
    for key in models:
        dla, ablation = saved[key]
        np.testing.assert_allclose(ablation, naive[key], rtol=0, atol=1e-5)
        row = next(r for r in gaps["rows"] if r["seed"] == 0 and r["model"] == key)
        assert row["max_abs_gap"] == pytest.approx(np.abs(dla - naive[key]).max(), abs=1e-5)
    np.testing.assert_allclose(saved["lnfree"][0], naive["lnfree"], rtol=0, atol=1e-5)  # exact without LN
    assert np.abs(saved["ln"][0] - naive["ln"]).max() > 1e-3 * np.abs(naive["ln"]).max()  # not with LN


def _write(folder, relative_costs, *, diverged=(), free_gap=1e-7, ln_gap=0.2):
    rows = []
    for seed, rel in enumerate(relative_costs):
        control = 2.0
        after = float("nan") if seed in diverged else control * (1 + rel)
        rows.append(loss_row(seed, {"val_loss_before": 2.05, "val_loss_after": after, "val_loss_control": control,
                                    "diverged": seed in diverged}))
    (folder / "removal").mkdir(parents=True, exist_ok=True)
    (folder / "removal" / "losses.json").write_text(json.dumps({"rows": rows, "agree_relative": 0.03, "level": 0.95}))
    gaps = [gap_row(s, key, {"max_abs_gap": gap, "max_abs_gap_head_mean": gap, "max_abs_effect": 1.0})
            for s in range(len(relative_costs)) for key, gap in (("ln", ln_gap), ("lnfree", free_gap))]
    (folder / "attribution").mkdir(exist_ok=True)
    (folder / "attribution" / "gaps.json").write_text(json.dumps({"rows": gaps, "exact_relative": 1e-4}))
    return ln_removal_verdict(folder)


def test_verdict_agrees_disagrees_or_is_inconclusive_from_saved_numbers(tmp_path):
    agree = _write(tmp_path / "a", [0.004, 0.006, 0.008])
    assert "cost +0.012 nats" in agree and "+0.6% of its loss" in agree and "over 3 seeds" in agree
    assert "agrees with the LN-removal paper's claim" in agree and "as the paper says (DLA becomes exact)" in agree
    disagree = _write(tmp_path / "d", [0.09, 0.11, 0.10])
    assert "above the threshold, so at this scale it disagrees" in disagree
    straddle = _write(tmp_path / "i", [0.01, 0.05, 0.02])
    assert "inconclusive at this scale" in straddle and "agrees" not in straddle.split(";")[0]
    one_seed = _write(tmp_path / "o", [0.01])
    assert "no interval" in one_seed and "inconclusive at this scale" in one_seed
    diverged = _write(tmp_path / "x", [0.01, 0.01], diverged=(1,))
    assert "diverged on seed(s) 1 of 2" in diverged and "disagrees" in diverged
    not_exact = _write(tmp_path / "n", [0.004, 0.006], free_gap=0.05)
    assert "does not equal the ablated direct effect" in not_exact and "contrary to the paper" in not_exact


def test_a_hugging_face_gpt2_goes_through_the_study_without_training(tmp_path, monkeypatch):
    """Full mode's path for a real GPT-2 (option model=), on a tiny GPT-2 stand-in with its own tokenizer."""
    import dataclasses

    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NORMLENS_CACHE_DIR", str(tmp_path / "cache"))
    from hf_stand_in import byte_bpe_tokenizer, save_gpt2

    folder = save_gpt2(tmp_path / "gpt2", byte_bpe_tokenizer(), n_layer=2, n_embd=32, n_head=4)
    settings = dataclasses.replace(TINY, corpus_bytes=60_000, removal=dataclasses.replace(TINY.removal, n_ctx=16))
    study = LNRemovalStudy({"quick": settings, "full": settings})
    out = run_study(study, StudyConfig(mode="full", options={"model": str(folder)}), tmp_path / "r.html", log=quiet)
    data = out.parent / "r_data"
    losses = json.loads((data / "removal" / "losses.json").read_text())
    assert losses["model"] == str(folder) and not (data / "models").exists()  # nothing trained
    assert all(np.isfinite(r["val_loss_control"]) and np.isfinite(r["val_loss_after"]) for r in losses["rows"])
    gaps = {(r["seed"], r["model"]): r for r in json.loads((data / "attribution" / "gaps.json").read_text())["rows"]}
    assert gaps[(0, "lnfree")]["relative_gap"] < 1e-4 < gaps[(0, "ln")]["relative_gap"]
    assert "full mode" in out.read_text()
